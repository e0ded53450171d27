"""The rendered Helm chart has the properties production depends on."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from .manifests import (
    KNOWN_SETTINGS,
    PRODUCTION_VALUES,
    SECRET_SETTINGS,
    HelmError,
    Manifest,
    by_kind,
    one,
    pod_specs,
    selects,
)

Render = Callable[..., list[Manifest]]


def _container(pod_template: Manifest, name: str) -> Manifest:
    found: list[Manifest] = [c for c in pod_template["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def _env(container: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in container.get("env", [])}


def test_api_runs_at_least_two_replicas(rendered: list[Manifest]) -> None:
    api = one(rendered, "Deployment", "api")
    hpas = [
        h
        for h in by_kind(rendered, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == api["metadata"]["name"]
    ]
    if hpas:
        # The HPA owns the count; a replicas field would fight it on every upgrade.
        assert "replicas" not in api["spec"]
        assert hpas[0]["spec"]["minReplicas"] >= 2
    else:
        assert api["spec"]["replicas"] >= 2


def test_api_spreads_over_zones_and_hosts(rendered: list[Manifest]) -> None:
    api = one(rendered, "Deployment", "api")
    pod = api["spec"]["template"]
    constraints = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    zone = constraints["topology.kubernetes.io/zone"]
    host = constraints["kubernetes.io/hostname"]
    assert zone["whenUnsatisfiable"] == "DoNotSchedule", "API pods must never pile into one zone"
    assert zone["maxSkew"] == 1
    assert host["maxSkew"] == 1
    for constraint in (zone, host):
        assert selects(constraint["labelSelector"]["matchLabels"], pod["metadata"]["labels"])


def test_every_deployment_has_a_pdb_that_allows_eviction(rendered: list[Manifest]) -> None:
    pdbs = by_kind(rendered, "PodDisruptionBudget")
    for deployment in by_kind(rendered, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in pdbs if selects(p["spec"]["selector"]["matchLabels"], labels)]
        assert len(matching) == 1, deployment["metadata"]["name"]
        spec = matching[0]["spec"]
        # maxUnavailable >= 1 keeps node drains possible; minAvailable alone could block them.
        assert "maxUnavailable" in spec
        assert spec["maxUnavailable"] not in (0, "0", "0%")


def test_hpa_scales_the_api_deployment(rendered: list[Manifest]) -> None:
    (hpa,) = by_kind(rendered, "HorizontalPodAutoscaler")
    api = one(rendered, "Deployment", "api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 2


def test_api_probes_use_health_routes(rendered: list[Manifest]) -> None:
    container = _container(one(rendered, "Deployment", "api")["spec"]["template"], "api")
    port_names = {p["name"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names


def test_every_pod_is_hardened(rendered: list[Manifest]) -> None:
    pods = list(pod_specs(rendered))
    assert len(pods) == 4  # api, worker, worker-large, migrations
    for name, pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] > 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        # IRSA projects its own token; nothing here talks to the Kubernetes API.
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: read-only root needs a writable /tmp"  # noqa: S108 - a mount path, not a temp file


def test_worker_liveness_is_the_worker_check(rendered: list[Manifest]) -> None:
    container = _container(one(rendered, "Deployment", "worker")["spec"]["template"], "worker")
    assert container["args"] == ["worker"]
    assert container["livenessProbe"]["exec"]["command"] == ["exporter", "worker", "--check"]
    assert "httpGet" not in container["livenessProbe"]


def test_worker_grace_period_exceeds_its_shutdown_grace(rendered: list[Manifest]) -> None:
    pod = one(rendered, "Deployment", "worker")["spec"]["template"]
    grace = int(_env(_container(pod, "worker"))["EXPORTER_WORKER__SHUTDOWN_GRACE_S"]["value"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace


def test_workers_refuse_a_redis_that_would_evict_the_queue(
    rendered: list[Manifest], production: list[Manifest]
) -> None:
    # The chart does not run Redis; the worker checks the one it is given (INFO memory).
    for manifests in (rendered, production):
        pod = one(manifests, "Deployment", "worker")["spec"]["template"]
        env = _env(_container(pod, "worker"))
        assert env["EXPORTER_REDIS__REQUIRE_NOEVICTION"]["value"] == "true"


def test_the_redis_guard_takes_only_a_boolean(helm_template: Render) -> None:
    with pytest.raises(HelmError, match="requireNoeviction"):
        helm_template(sets=("config.redis.requireNoeviction=maybe",))


def test_too_short_worker_grace_period_is_refused(helm_template: Render) -> None:
    with pytest.raises(HelmError, match=r"must exceed config\.worker\.shutdownGraceS"):
        helm_template(
            sets=("config.worker.shutdownGraceS=60", "worker.terminationGracePeriodSeconds=60")
        )


def test_migrations_run_as_pre_install_and_pre_upgrade_hook(rendered: list[Manifest]) -> None:
    job = one(rendered, "Job", "migrations")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"pre-install", "pre-upgrade"}
    assert _container(job["spec"]["template"], "migrate")["args"] == ["db", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_ingress_is_an_alb_with_ip_targets(rendered: list[Manifest]) -> None:
    ingress = one(rendered, "Ingress", "api")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert annotations["alb.ingress.kubernetes.io/scheme"] in ("internet-facing", "internal")
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] in ("/healthz", "/readyz")
    host = ingress["spec"]["rules"][0]["host"]
    # external-dns names the host unless Route 53 records come from infra/ (production).
    assert annotations.get("external-dns.alpha.kubernetes.io/hostname", host) == host
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == one(rendered, "Service", "api")["metadata"]["name"]


def test_production_ingress_terminates_tls_with_acm(production: list[Manifest]) -> None:
    annotations = one(production, "Ingress", "api")["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/certificate-arn"].startswith("arn:aws:acm:")
    assert annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    assert "HTTPS" in annotations["alb.ingress.kubernetes.io/listen-ports"]
    # Two regions: CloudFormation owns the failover records (docs/operations.md), so
    # external-dns must not write latency records for the same name.
    assert not any(key.startswith("external-dns.") for key in annotations)


_SECRET_LOOKING = re.compile(r"-----BEGIN|://[^/@\s]*:[^/@\s]+@|(?i:password|secret|token)=")


def test_secrets_arrive_only_by_reference(rendered: list[Manifest]) -> None:
    assert not by_kind(rendered, "Secret"), "the chart must never render secret values"
    for name, pod in pod_specs(rendered):
        for container in pod["spec"]["containers"]:
            for var in container.get("env", []):
                if var["name"] in SECRET_SETTINGS:
                    assert "value" not in var, f"{name}: {var['name']} in plain text"
                    assert var["valueFrom"]["secretKeyRef"]["key"] == var["name"]
                else:
                    assert not _SECRET_LOOKING.search(str(var.get("value", ""))), (name, var)


def test_each_pod_gets_the_secrets_it_needs(rendered: list[Manifest]) -> None:
    required = {
        "api": {"EXPORTER_POSTGRES__DSN", "EXPORTER_REDIS__URL", "EXPORTER_JWT__PRIVATE_KEY"},
        "worker": {"EXPORTER_POSTGRES__DSN", "EXPORTER_REDIS__URL"},
    }
    for component, names in required.items():
        pod = one(rendered, "Deployment", component)["spec"]["template"]
        env = _env(_container(pod, component))
        for secret in names:
            assert env[secret]["valueFrom"]["secretKeyRef"]["optional"] is False
    api_env = _env(_container(one(rendered, "Deployment", "api")["spec"]["template"], "api"))
    assert "EXPORTER_SMTP__PASSWORD" not in api_env, "the API sends no mail"


def test_env_names_are_settings_the_app_reads(rendered: list[Manifest]) -> None:
    for name, pod in pod_specs(rendered):
        for container in pod["spec"]["containers"]:
            unknown = {v["name"] for v in container.get("env", [])} - KNOWN_SETTINGS
            assert not unknown, f"{name}: {sorted(unknown)}"


def test_aws_endpoint_is_real_aws_in_cluster(rendered: list[Manifest]) -> None:
    env = _env(_container(one(rendered, "Deployment", "api")["spec"]["template"], "api"))
    # The app's default points at DynamoDB Local; in a cluster it must be set to "".
    assert env["EXPORTER_DYNAMO__ENDPOINT_URL"]["value"] == ""
    assert env["EXPORTER_API__HOST"]["value"] == "0.0.0.0"  # noqa: S104 - pods must listen on their IP


def test_network_policies_isolate_each_component(rendered: list[Manifest]) -> None:
    policies = by_kind(rendered, "NetworkPolicy")
    for name, pod in pod_specs(rendered):
        labels = pod["metadata"]["labels"]
        (policy,) = [
            p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], labels)
        ]
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, name
        egress_ports = {
            (port.get("protocol", "TCP"), port["port"])
            for rule in policy["spec"]["egress"]
            for port in rule["ports"]
        }
        assert ("UDP", 53) in egress_ports, f"{name}: DNS"
        assert ("TCP", 5432) in egress_ports, f"{name}: PostgreSQL"


def test_api_accepts_traffic_only_from_the_alb(rendered: list[Manifest]) -> None:
    api_labels = one(rendered, "Deployment", "api")["spec"]["template"]["metadata"]["labels"]
    (policy,) = [
        p
        for p in by_kind(rendered, "NetworkPolicy")
        if selects(p["spec"]["podSelector"]["matchLabels"], api_labels)
    ]
    alb_rules = [r for r in policy["spec"]["ingress"] if all("ipBlock" in f for f in r["from"])]
    assert alb_rules, "an ingress rule from the ALB subnets"
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "an empty 'from' would admit everyone"
        assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]


def test_worker_accepts_no_traffic_by_default(helm_template: Render) -> None:
    manifests = helm_template()
    worker_labels = one(manifests, "Deployment", "worker")["spec"]["template"]["metadata"]["labels"]
    (policy,) = [
        p
        for p in by_kind(manifests, "NetworkPolicy")
        if selects(p["spec"]["podSelector"]["matchLabels"], worker_labels)
    ]
    assert policy["spec"]["ingress"] == []
    egress_ports = {p["port"] for r in policy["spec"]["egress"] for p in r["ports"]}
    assert {53, 5432, 6379, 443, 587} <= egress_ports


def test_service_accounts_carry_irsa_roles(production: list[Manifest]) -> None:
    accounts = {sa["metadata"]["name"]: sa for sa in by_kind(production, "ServiceAccount")}
    for component in ("api", "worker"):
        pod = one(production, "Deployment", component)["spec"]["template"]["spec"]
        sa = accounts[pod["serviceAccountName"]]
        role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert role.startswith("arn:aws:iam::")
        assert role.endswith(f"-{component}")
        assert sa["automountServiceAccountToken"] is False


def test_keda_is_off_by_default(helm_template: Render) -> None:
    manifests = helm_template()
    assert not by_kind(manifests, "ScaledObject")
    assert one(manifests, "Deployment", "worker")["spec"]["replicas"] >= 1


def test_keda_owns_worker_replicas_when_enabled(production: list[Manifest]) -> None:
    scaled = one(production, "ScaledObject", "worker")
    worker = one(production, "Deployment", "worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert "replicas" not in worker["spec"]
    assert scaled["spec"]["minReplicaCount"] >= 1
    # arq's queue is a sorted set: the redis (list) scaler would read nothing.
    assert [t["type"] for t in scaled["spec"]["triggers"]] == ["prometheus"]


def test_external_secret_exists_before_the_migration_hook(production: list[Manifest]) -> None:
    (external,) = by_kind(production, "ExternalSecret")
    job = one(production, "Job", "migrations")
    ext_ann = external["metadata"]["annotations"]
    job_ann = job["metadata"]["annotations"]
    assert set(ext_ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert int(ext_ann["helm.sh/hook-weight"]) < int(job_ann["helm.sh/hook-weight"])
    assert external["spec"]["target"]["creationPolicy"] == "Orphan"
    secret_refs = {
        v["valueFrom"]["secretKeyRef"]["name"]
        for _, pod in pod_specs(production)
        for c in pod["spec"]["containers"]
        for v in c["env"]
        if "valueFrom" in v
    }
    assert secret_refs == {external["spec"]["target"]["name"]}


@pytest.mark.parametrize(
    "bad",
    [
        "api.replicas=1",
        "api.autoscaling.minReplicas=1",
        "securityContext.readOnlyRootFilesystem=false",
        "podSecurityContext.runAsNonRoot=false",
        "config.environment=prod",
        "config.api.port=80",
        "api.pdb.maxUnavailable=0",
        "ingress.scheme=public",
        "image.tag=latest",
        "networkPolicy.albCidrs[0]=everywhere",
        "secrets.env[0].name=DATABASE_URL",
        "externalSecrets.enabled=true",
        "surprise=1",
    ],
)
def test_schema_rejects_bad_values(helm_template: Render, bad: str) -> None:
    with pytest.raises(HelmError, match=r"schema|must|Must|not allowed|fail"):
        helm_template(sets=(bad,))


def test_production_values_file_exists() -> None:
    assert PRODUCTION_VALUES.is_file()


def test_worker_metrics_port_reaches_the_settings_when_enabled(
    production: list[Manifest], helm_template: Render
) -> None:
    worker = one(production, "Deployment", "worker")["spec"]["template"]
    container = _container(worker, "worker")
    (port,) = container["ports"]
    env = _env(container)
    assert env["EXPORTER_WORKER__METRICS_PORT"]["value"] == str(port["containerPort"])
    assert env["EXPORTER_WORKER__METRICS_HOST"]["value"] == "0.0.0.0"  # noqa: S104 - pod IP
    default = one(helm_template(), "Deployment", "worker")["spec"]["template"]
    assert "EXPORTER_WORKER__METRICS_PORT" not in _env(_container(default, "worker"))


def test_keda_reads_the_queue_gauge_once_however_many_pods_report_it(
    production: list[Manifest],
) -> None:
    scaled = one(production, "ScaledObject", "worker")
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert query.startswith("max(exporter_queue_ready_jobs{")


# --- the large exports' pool (size-aware routing) ---------------------------------------------


def test_the_large_pool_is_its_own_deployment_on_the_large_queue(rendered: list[Manifest]) -> None:
    default = one(rendered, "Deployment", "worker")
    large = one(rendered, "Deployment", "worker-large")
    labels = large["spec"]["template"]["metadata"]["labels"]
    # Neither Deployment's selector takes the other's pods.
    assert not selects(default["spec"]["selector"]["matchLabels"], labels)
    assert selects(large["spec"]["selector"]["matchLabels"], labels)
    container = _container(large["spec"]["template"], "worker")
    assert container["args"] == ["worker", "--queue", "large"]
    assert container["livenessProbe"]["exec"]["command"] == [
        "exporter",
        "worker",
        "--queue",
        "large",
        "--check",
    ]
    env = _env(container)
    assert env["EXPORTER_WORKER__MAX_JOBS"]["value"] == "2"  # its own slots per pod
    default_env = _env(_container(default["spec"]["template"], "worker"))
    assert default_env["EXPORTER_WORKER__MAX_JOBS"]["value"] != "2"
    # Same identity and secrets as the default pool; its own resources and spool.
    assert (
        large["spec"]["template"]["spec"]["serviceAccountName"]
        == default["spec"]["template"]["spec"]["serviceAccountName"]
    )
    assert env["EXPORTER_POSTGRES__DSN"]["valueFrom"]["secretKeyRef"]["optional"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]
    (tmp,) = large["spec"]["template"]["spec"]["volumes"]
    assert tmp["emptyDir"]["sizeLimit"] == "8Gi"
    # The API routes only because a pool serves the large queue.
    api_env = _env(_container(one(rendered, "Deployment", "api")["spec"]["template"], "api"))
    assert api_env["EXPORTER_EXPORTS__ROUTING_ENABLED"]["value"] == "true"
    assert api_env["EXPORTER_REDIS__LARGE_QUEUE_NAME"]["value"] == "exporter:queue:large"


def test_keda_scales_the_large_pool_on_its_own_queue(production: list[Manifest]) -> None:
    scaled = one(production, "ScaledObject", "worker-large")
    large = one(production, "Deployment", "worker-large")
    assert scaled["spec"]["scaleTargetRef"]["name"] == large["metadata"]["name"]
    assert "replicas" not in large["spec"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == (
        'max(exporter_queue_ready_jobs{queue="exporter:queue:large"})'
    )
    default = one(production, "ScaledObject", "worker")
    assert scaled["spec"]["maxReplicaCount"] != default["spec"]["maxReplicaCount"] or (
        trigger["metadata"]["threshold"] != default["spec"]["triggers"][0]["metadata"]["threshold"]
    )


def test_without_the_large_pool_the_api_keeps_one_queue(helm_template: Render) -> None:
    manifests = helm_template(sets=("largeWorker.enabled=false", "keda.enabled=true"))
    assert [
        d["metadata"]["name"]
        for d in by_kind(manifests, "Deployment")
        if "worker" in d["metadata"]["name"]
    ] == ["exporter-worker"]
    assert len(by_kind(manifests, "ScaledObject")) == 1
    assert len(by_kind(manifests, "PodDisruptionBudget")) == 2  # api, worker
    api_env = _env(_container(one(manifests, "Deployment", "api")["spec"]["template"], "api"))
    assert api_env["EXPORTER_EXPORTS__ROUTING_ENABLED"]["value"] == "false"
