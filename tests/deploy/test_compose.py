"""docker-compose.yml cannot run here (no Docker engine); check what can be checked."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .manifests import KNOWN_SETTINGS, ROOT


@pytest.fixture(name="compose", scope="module")
def _fix_compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=VALUE form
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "dynamodb", "s3", "mailpit", "api", "worker", "migrate"} <= set(
        services
    )
    published = {
        name: {str(p).split(":")[0] for p in svc.get("ports", [])} for name, svc in services.items()
    }
    assert published["postgres"] == {"5432"}
    assert published["redis"] == {"6379"}
    assert published["dynamodb"] == {"8000"}
    assert published["s3"] == {"5000"}
    assert "1025" in published["mailpit"]
    assert published["api"] == {"8080"}
    assert not published["worker"], "the worker takes no inbound traffic"


def test_every_exporter_variable_is_a_real_setting(compose: dict[str, Any]) -> None:
    seen: set[str] = set()
    for name, service in compose["services"].items():
        exporter_vars = {k for k in _environment(service) if k.startswith("EXPORTER_")}
        unknown = exporter_vars - KNOWN_SETTINGS
        assert not unknown, f"{name} sets unknown settings {sorted(unknown)}"
        seen |= exporter_vars
    assert {
        "EXPORTER_POSTGRES__DSN",
        "EXPORTER_REDIS__URL",
        "EXPORTER_DYNAMO__ENDPOINT_URL",
    } <= seen


def test_app_services_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        env = _environment(compose["services"][name])
        assert "@postgres:5432/" in env["EXPORTER_POSTGRES__DSN"]
        assert env["EXPORTER_REDIS__URL"].startswith("redis://redis:6379/")
        assert env["EXPORTER_DYNAMO__ENDPOINT_URL"] == "http://dynamodb:8000"
        assert env["EXPORTER_SMTP__HOST"] == "mailpit"
        assert env["EXPORTER_API__HOST"] == "0.0.0.0"  # noqa: S104 - containers listen on their IP


def test_redis_keeps_the_queue(compose: dict[str, Any]) -> None:
    command = " ".join(str(part) for part in compose["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    # ...and the worker refuses to start on one that would evict it.
    assert _environment(compose["services"]["worker"])["EXPORTER_REDIS__REQUIRE_NOEVICTION"] == (
        "true"
    )


def test_worker_health_and_shutdown(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["command"] == ["worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "exporter", "worker", "--check"]
    grace = int(_environment(worker)["EXPORTER_WORKER__SHUTDOWN_GRACE_S"])
    assert int(str(worker["stop_grace_period"]).rstrip("s")) > grace


def test_app_waits_for_migrations(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["db", "migrate"]
    assert services["tables"]["command"] == ["tables", "create"]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["tables"]["condition"] == "service_completed_successfully"
