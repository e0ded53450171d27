"""Draw docs/architecture.png: every component from the export request to the emailed file,
in two regions that can each serve every user (global tables, a cross-region database
replica, replicated signing keys, Route 53 failover).

    python docs/diagram.py [--output docs/architecture]     (make diagram)

Needs the `diagrams` package and Graphviz's `dot` (make deploy-tools installs both).
Numbered edges follow docs/architecture.md; keep the two in step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diagrams import Cluster, Diagram, Edge
from diagrams.aws.compute import EKS
from diagrams.aws.database import Dynamodb, ElasticacheForRedis, RDSPostgresqlInstance
from diagrams.aws.engagement import SimpleEmailServiceSes
from diagrams.aws.management import Cloudwatch
from diagrams.aws.network import ElbApplicationLoadBalancer, Route53
from diagrams.aws.security import IAMRole, SecretsManager
from diagrams.aws.storage import SimpleStorageServiceS3
from diagrams.k8s.compute import Cronjob, Job, Pod
from diagrams.onprem.client import User
from diagrams.onprem.monitoring import Prometheus

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "architecture"

GRAPH = {
    "fontsize": "22",
    "fontname": "Helvetica",
    "pad": "0.4",
    "nodesep": "0.55",
    "ranksep": "1.0",
    "splines": "spline",
    "labelloc": "t",
}
NODE = {"fontsize": "12", "fontname": "Helvetica"}
EDGE = {"fontsize": "11", "fontname": "Helvetica"}

FLOW = "#1f6feb"  # the request-to-email path
STATUS = "#2da44e"  # job status reads and writes
BACKGROUND = "#8250df"  # crons: sweeper and expiry
PLATFORM = "#6e7781"  # secrets, identity, telemetry
REPLICATION = "#cf222e"  # cross-region replication


def step(label: str, color: str = FLOW, **attrs: str) -> Edge:
    return Edge(label=label, color=color, fontcolor=color, **attrs)


def draw(output: Path) -> Path:
    """Render the diagram to OUTPUT.png and return that path."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with Diagram(
        "exporter: membership CSV export, from request to mailbox, in two regions",
        filename=str(output),
        outformat="png",
        show=False,
        direction="LR",
        graph_attr=GRAPH,
        node_attr=NODE,
        edge_attr=EDGE,
    ):
        user = User("user\n(browser / client)")
        mailbox = User("user's mailbox")
        dns = Route53("Route 53\nfailover records\n+ health checks (/readyz)")

        with Cluster("AWS region eu-west-1 (primary: serves every user)"):
            alb = ElbApplicationLoadBalancer("ALB\n(AWS LB Controller,\nACM TLS, WAF)")

            with Cluster("EKS cluster - namespace exporter"):
                EKS("EKS")
                with Cluster("API Deployment (HPA >= 2, PDB, zone spread)"):
                    with Cluster("AZ a"):
                        api_a = Pod("api")
                    with Cluster("AZ b"):
                        api_b = Pod("api")
                with Cluster("arq worker Deployment (PDB, optional KEDA)"):
                    worker_a = Pod("worker")
                    worker_b = Pod("worker")
                    crons = Cronjob("arq crons\n(sweeper, expiry)\nunique=True")
                migrate = Job("migrations\n(pre-upgrade hook)")

            with Cluster("Data (private subnets, Multi-AZ)"):
                redis = ElasticacheForRedis(
                    "ElastiCache Redis\narq queue (zset)\nTLS + AUTH, noeviction"
                )
                with Cluster("RDS PostgreSQL"):
                    pg_primary = RDSPostgresqlInstance("primary\n(memberships)")
                    pg_replica = RDSPostgresqlInstance("read replica\n(export reads)")
                jobs = Dynamodb("DynamoDB export-jobs\n(global table replica,\nhome_region, TTL)")
                users = Dynamodb(
                    "DynamoDB users, user-emails,\nrefresh tokens, slots,\nregion flags (global)"
                )

            bucket = SimpleStorageServiceS3("S3 exports\n(private, SSE-KMS,\nlifecycle expiry)")
            ses = SimpleEmailServiceSes("SES SMTP 587\n(STARTTLS, DKIM,\nconfiguration set)")

            with Cluster("Platform"):
                secrets = SecretsManager("Secrets Manager\n-> External Secrets\n-> K8s Secret")
                irsa = IAMRole("IRSA roles\n(api, worker)")
                prom = Prometheus("Prometheus\n/metrics, :9100")
                logs = Cloudwatch("CloudWatch\nlogs + SES events")

        with Cluster("AWS region eu-central-1 (secondary: serves every user too)"):
            alb_2 = ElbApplicationLoadBalancer("ALB")
            with Cluster(
                "EKS: api + worker + crons (own jobs; takes over\na region declared failed)"
            ):
                pods_2 = Pod("api / worker")
            redis_2 = ElasticacheForRedis("Redis\n(own queue)")
            pg_2 = RDSPostgresqlInstance("cross-region\nread replica")
            jobs_2 = Dynamodb("DynamoDB replicas\n(every table)")
            bucket_2 = SimpleStorageServiceS3("S3 exports\n(this region's files)")
            secrets_2 = SecretsManager("JWT keys\n(replica)")

        # Replicas are identical: draw each flow once, from the first pod of each group.
        apis = api_a
        workers = worker_a
        api_b >> Edge(style="invis") >> worker_b

        # The request path, numbered as in docs/architecture.md.
        user >> step("1 POST /v1/exports (HTTPS)") >> dns
        dns >> step("1 nearest healthy region") >> alb
        dns >> Edge(style="dashed", color=PLATFORM, label="failover\n(health check)") >> alb_2
        alb_2 >> Edge(color=PLATFORM) >> pods_2
        pods_2 >> Edge(color=PLATFORM) >> [redis_2, jobs_2, bucket_2, pg_2]

        # Cross-region replication: each region reads its own copy.
        (
            jobs
            >> Edge(
                color=REPLICATION, style="bold", label="global tables\n(async, last writer wins)"
            )
            << jobs_2
        )
        users >> Edge(color=REPLICATION, style="bold") << jobs_2
        (
            pg_primary
            >> Edge(color=REPLICATION, style="bold", label="cross-region\nread replica")
            >> pg_2
        )
        secrets >> Edge(color=REPLICATION, style="bold", label="ReplicaRegions") >> secrets_2
        (
            pods_2
            >> Edge(color=REPLICATION, style="dashed", label="links sign for the\nfile's region")
            >> bucket
        )
        alb >> step("1 target type ip") >> [api_a, api_b]
        apis >> step("2 auth: JWT, refresh tokens") >> users
        apis >> step("3 job record: queued (conditional put)", STATUS) >> jobs
        apis >> step("4 enqueue (_job_id = export id)") >> redis
        redis >> step("5 dequeue (poll)") >> [worker_a, worker_b]
        workers >> step("6 stream rows (COPY, read-only txn)") >> pg_replica
        pg_primary >> Edge(style="dashed", label="replication", color=PLATFORM) >> pg_replica
        workers >> step("7 CSV file") >> bucket
        workers >> step("8 email: attachment or link") >> ses
        ses >> step("8 deliver") >> mailbox
        workers >> step("9 status: in_progress -> succeeded | failed", STATUS) >> jobs
        user >> step("10 GET /v1/exports/{id}", STATUS, style="dashed") >> dns

        # Background work.
        crons >> step("11 sweeper: re-enqueue stale queued jobs", BACKGROUND) >> redis
        crons >> step("11/12 scan stale + expired", BACKGROUND) >> jobs
        bucket >> step("12 lifecycle expiry", BACKGROUND, style="dashed") >> bucket
        migrate >> Edge(label="schema", color=PLATFORM, style="dashed") >> pg_primary

        # Platform: secrets, identity, telemetry.
        (
            secrets
            >> Edge(color=PLATFORM, style="dotted", label="DSNs, Redis URL,\nJWT key, SMTP")
            >> workers
        )
        secrets >> Edge(color=PLATFORM, style="dotted") >> apis
        irsa >> Edge(color=PLATFORM, style="dotted", label="AWS creds") >> workers
        apis >> Edge(color=PLATFORM, style="dotted", label="metrics") >> prom
        workers >> Edge(color=PLATFORM, style="dotted") >> prom
        workers >> Edge(color=PLATFORM, style="dotted", label="JSON logs") >> logs
    return output.with_suffix(".png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="output path without extension (default: docs/architecture)",
    )
    args = parser.parse_args()
    sys.stdout.write(f"{draw(args.output)}\n")


if __name__ == "__main__":
    main()
