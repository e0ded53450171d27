"""No secret, token or password reaches the logs, at any level, through the production logging
setup: sign-in, refresh, reuse, logout, exports end to end (worker and mail), and error paths.

The services get real credentials here: PostgreSQL (trust auth ignores the password), Redis
(the default user accepts any password), SMTP (a sink that requires AUTH), so each secret is
actually used while the logs are recorded.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from arq.worker import Worker
from pydantic import SecretStr

from exporter import audit
from exporter.app import create_app
from exporter.auth import SigningKey
from exporter.config import Settings
from exporter.dev.ports import free_port
from exporter.dev.smtp import OutboxHandler
from exporter.jobs.worker import build_worker_settings
from exporter.logs import configure_logging
from exporter.redact import redact_text
from tests.conftest import MakeUser, SeedRows

PG_PASSWORD = "pg-" + uuid.uuid4().hex
REDIS_PASSWORD = "redis-" + uuid.uuid4().hex
SMTP_PASSWORD = "smtp-" + uuid.uuid4().hex


@pytest.fixture(name="smtp_with_auth")
def _fix_smtp_with_auth(tmp_path: Path) -> Iterator[Controller]:
    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == SMTP_PASSWORD.encode()
        return AuthResult(success=ok)

    controller = Controller(
        OutboxHandler(tmp_path / "outbox"),
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,  # loopback only; the point here is that the password is used
    )
    controller.start()
    yield controller
    controller.stop()


@pytest.fixture(name="secret_settings")
def _fix_secret_settings(
    settings: Settings, smtp_with_auth: Controller, signing_key: SigningKey
) -> Settings:
    dsn = settings.postgres.dsn.get_secret_value().replace(
        "postgres@", f"postgres:{PG_PASSWORD}@", 1
    )
    redis_url = settings.redis.url.get_secret_value().replace(
        "redis://", f"redis://default:{REDIS_PASSWORD}@", 1
    )
    return settings.model_copy(
        update={
            "log_level": "DEBUG",
            "log_json": True,
            "postgres": settings.postgres.model_copy(update={"dsn": SecretStr(dsn)}),
            "redis": settings.redis.model_copy(update={"url": SecretStr(redis_url)}),
            "smtp": settings.smtp.model_copy(
                update={
                    "host": smtp_with_auth.hostname,
                    "port": smtp_with_auth.port,
                    "username": SecretStr("exporter"),
                    "password": SecretStr(SMTP_PASSWORD),
                }
            ),
        }
    )


@pytest.fixture(name="production_logging")
def _fix_production_logging(secret_settings: Settings) -> Iterator[io.StringIO]:
    """Everything logged, as production renders it, collected in a buffer."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(secret_settings)
    # Same processors and renderer as production; without logger caching, so loggers that
    # other tests capture are not bound to this configuration for good.
    structlog.configure(cache_logger_on_first_use=False)
    buffer = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def secrets_of(settings: Settings, signing_key: SigningKey) -> list[str]:
    pem_lines = [
        line
        for line in signing_key.private_pem().splitlines()
        if line and not line.startswith("-----")
    ]
    return [PG_PASSWORD, REDIS_PASSWORD, SMTP_PASSWORD, *pem_lines]


# The SMTP sink asks for AUTH over plain loopback on purpose (see the fixture).
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_no_secret_token_or_password_in_logs(
    production_logging: io.StringIO,
    secret_settings: Settings,
    signing_key: SigningKey,
    make_user: MakeUser,
    seed_rows: SeedRows,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 3)
    app = create_app(secret_settings)

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app.router.add_get("/broken", broken)
    seen: list[str] = [user.password]
    async with TestClient(TestServer(app)) as client:
        # Sign-in: wrong password, unknown e-mail, then right.
        for email, password in (
            (user.email, "Wrong-" + uuid.uuid4().hex),
            ("nobody@example.com", "Other-" + uuid.uuid4().hex),
        ):
            seen.append(password)
            response = await client.post(
                "/v1/auth/token", json={"email": email, "password": password}
            )
            assert response.status == 401
        response = await client.post(
            "/v1/auth/token", json={"email": user.email, "password": user.password}
        )
        first = await response.json()
        # Malformed bodies echo nothing secret either.
        await client.post("/v1/auth/token", json={"email": "x", "password": user.password})
        await client.post("/v1/auth/token", data=f"{{{user.password}", headers=_json())
        # Refresh, reuse of the spent token, logout.
        second = await (
            await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        ).json()
        await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        await client.post("/v1/auth/logout", json={"refresh_token": second["refresh_token"]})
        third = await (
            await client.post(
                "/v1/auth/token", json={"email": user.email, "password": user.password}
            )
        ).json()
        bearer = {"Authorization": f"Bearer {third['access_token']}"}
        # Exports, and bad tokens of every kind.
        created = await client.post("/v1/exports", headers=bearer)
        assert created.status == 202
        await client.get(f"/v1/exports/{(await created.json())['id']}", headers=bearer)
        await client.get(
            "/v1/exports", headers={"Authorization": f"Bearer {first['access_token']}x"}
        )
        await client.get("/v1/exports", headers={"Authorization": "Bearer " + "A" * 9000})
        await client.get("/broken")
        seen += [t[k] for t in (first, second, third) for k in ("access_token", "refresh_token")]

    # No crons: a sweep (every 10 s) falling due during the burst would count as a job.
    worker = Worker(
        **build_worker_settings(
            secret_settings, burst=True, poll_delay=0, handle_signals=False, cron_jobs=[]
        )
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    assert worker.jobs_complete == 1

    logs = production_logging.getvalue()
    for event in ("auth.login", "security.refresh_token_reused", "export.succeeded"):
        assert event in logs, f"{event} missing: the flow did not run as intended"
    assert "http.unhandled" in logs
    # aiohttp's parser logs the start of an oversized header itself; redaction masks it.
    assert "Bearer [redacted]" in logs
    for secret in [*secrets_of(secret_settings, signing_key), *seen]:
        assert secret not in logs
    for token in seen[3:]:
        assert token.rsplit(".", 1)[1] not in logs  # not even a token's signature


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


def test_redaction_masks_what_slips_through() -> None:
    key = SigningKey.generate()
    text = (
        "token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl and "
        f"postgresql://app:{PG_PASSWORD}@db/x and Authorization: Bearer abc.def "
        f"{key.private_pem()}"
    )
    masked = redact_text(text)
    assert "eyJzdWIiOiJ4In0" not in masked and "[jwt]" in masked
    assert PG_PASSWORD not in masked and "postgresql://app:***@db/x" in masked
    assert "abc.def" not in masked
    assert "PRIVATE KEY" not in masked and "[pem]" in masked


def test_pause_links_are_masked_like_download_links() -> None:
    """A pause link's token (even cut short, so not a whole JWT) never reaches a log line;
    the route template stays readable."""
    masked = redact_text(
        "GET /v1/schedule-pause/eyJhbGciOiJFUzI1 HTTP/1.1 route=/v1/schedule-pause/{token}"
    )
    assert "eyJhbGciOiJFUzI1" not in masked
    assert "/v1/schedule-pause/[redacted]" in masked
    assert "/v1/schedule-pause/{token}" in masked


def test_audit_event_per_export_says_who_when_how_much_and_how() -> None:
    from datetime import UTC, datetime

    requested = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with structlog.testing.capture_logs() as logs:
        audit.export_delivered(
            user_id="u-1",
            export_id="e-1",
            rows=1234,
            byte_size=56789,
            delivery="email_attachment",
            requested_at=requested,
        )
    (event,) = logs
    assert event["event"] == "audit.export_delivered"
    assert event["audit"] is True and event["log_level"] == "info"
    assert event["user_id"] == "u-1" and event["export_id"] == "e-1"
    assert event["rows"] == 1234 and event["bytes"] == 56789
    assert event["delivery"] == "email_attachment"
    assert event["requested_at"] == "2026-01-02T03:04:05Z" and event["at"].endswith("Z")
    # Identifiers and counts only: nothing that could carry membership data.
    assert set(event) == {
        "event",
        "log_level",
        "audit",
        "actor",
        "user_id",
        "export_id",
        "rows",
        "bytes",
        "delivery",
        "requested_at",
        "at",
    }
