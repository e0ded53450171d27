"""What the deployment tests share: repository paths, the settings the app knows, and
small queries over rendered Kubernetes manifests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "exporter"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"

# Every setting the application reads (config.py); nothing deployed may invent another.
KNOWN_SETTINGS = frozenset(
    {
        "EXPORTER_ENVIRONMENT",
        "EXPORTER_REGION",
        "EXPORTER_LOG_LEVEL",
        "EXPORTER_LOG_JSON",
        "EXPORTER_POSTGRES__DSN",
        "EXPORTER_POSTGRES__REPLICA_DSN",
        "EXPORTER_POSTGRES__POOL_MAX_SIZE",
        "EXPORTER_REDIS__URL",
        "EXPORTER_REDIS__QUEUE_NAME",
        "EXPORTER_REDIS__REQUIRE_NOEVICTION",
        "EXPORTER_REDIS__LARGE_QUEUE_NAME",
        "EXPORTER_EXPORTS__ROUTING_ENABLED",
        "EXPORTER_EXPORTS__LARGE_THRESHOLD_ROWS",
        "EXPORTER_DYNAMO__ENDPOINT_URL",
        "EXPORTER_DYNAMO__REGION",
        "EXPORTER_DYNAMO__TABLE_PREFIX",
        "EXPORTER_SMTP__HOST",
        "EXPORTER_SMTP__PORT",
        "EXPORTER_SMTP__USERNAME",
        "EXPORTER_SMTP__PASSWORD",
        "EXPORTER_SMTP__START_TLS",
        "EXPORTER_SMTP__FROM_ADDRESS",
        "EXPORTER_JWT__PRIVATE_KEY",
        "EXPORTER_JWT__ISSUER",
        "EXPORTER_JWT__AUDIENCE",
        "EXPORTER_JWT__VERIFICATION_KEYS",
        "EXPORTER_AUTH__TRUSTED_PROXY_HOPS",
        "EXPORTER_API__HOST",
        "EXPORTER_API__PORT",
        "EXPORTER_API__PUBLIC_URL",
        "EXPORTER_WORKER__MAX_JOBS",
        "EXPORTER_WORKER__NICE",
        "EXPORTER_WORKER__JOB_TIMEOUT_S",
        "EXPORTER_WORKER__SHUTDOWN_GRACE_S",
        "EXPORTER_EXPORTS__MAX_PER_DAY",
        "EXPORTER_WORKER__METRICS_PORT",
        "EXPORTER_WORKER__METRICS_HOST",
        "EXPORTER_S3__BUCKET",
        "EXPORTER_S3__ENDPOINT_URL",
        "EXPORTER_S3__REGION",
        "EXPORTER_S3__SSE",
        "EXPORTER_S3__REGION_BUCKETS",
    }
)

# Settings whose values are secrets: they may only arrive by reference to a Secret.
SECRET_SETTINGS = frozenset(
    {
        "EXPORTER_POSTGRES__DSN",
        "EXPORTER_POSTGRES__REPLICA_DSN",
        "EXPORTER_REDIS__URL",
        "EXPORTER_SMTP__USERNAME",
        "EXPORTER_SMTP__PASSWORD",
        "EXPORTER_JWT__PRIVATE_KEY",
    }
)

Manifest = dict[str, Any]


class HelmError(Exception):
    """helm template refused the values."""


def find_helm() -> Path | None:
    """The helm binary from $HELM, .cache/tools/helm or PATH, if any."""
    candidates = [
        os.environ.get("HELM"),
        str(ROOT / ".cache" / "tools" / "helm"),
        shutil.which("helm"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, component: str) -> Manifest:
    """The single object of this kind labelled with this component."""
    found = [
        m
        for m in by_kind(manifests, kind)
        if m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} for {component}, found {len(found)}"
    return found[0]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(name, pod template) of every workload: Deployments and Jobs."""
    for m in manifests:
        if m["kind"] in ("Deployment", "Job"):
            yield m["metadata"]["name"], m["spec"]["template"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
