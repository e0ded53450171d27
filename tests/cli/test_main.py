"""The exporter command: plain messages, exit codes, no tracebacks for common trouble."""

from __future__ import annotations

import io
import uuid

import pytest
from pydantic import SecretStr

from exporter.cli.main import main
from exporter.config import Environment, PostgresSettings, Settings
from exporter.dev.ports import free_port


def test_migrate_reports_nothing_to_do_on_a_migrated_database(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "migrate"], settings_factory=lambda: settings) == 0
    assert "applied 0 migration(s)" in capsys.readouterr().out


def test_unreachable_postgres_is_explained_with_how_to_start_it(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = settings.model_copy(
        update={
            "postgres": PostgresSettings(
                dsn=SecretStr(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
            )
        }
    )
    assert main(["db", "migrate"], settings_factory=lambda: dead) == 2
    err = capsys.readouterr().err
    assert "PostgreSQL is not reachable" in err
    assert "pg_ctlcluster" in err


def test_users_create_reads_the_password_from_stdin_and_refuses_duplicates(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    assert (
        main(
            ["users", "create", "--email", email, "--password-stdin"],
            settings_factory=lambda: settings,
        )
        == 0
    )
    user_id = capsys.readouterr().out.strip()
    assert uuid.UUID(user_id)

    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    assert (
        main(
            ["users", "create", "--email", email, "--password-stdin"],
            settings_factory=lambda: settings,
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err


def test_short_password_is_refused(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert (
        main(
            ["users", "create", "--email", "x@example.com", "--password-stdin"],
            settings_factory=lambda: settings,
        )
        == 2
    )
    assert "at least 8" in capsys.readouterr().err


def test_invalid_configuration_is_reported_plainly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPORTER_API__PORT", "70000")
    assert main(["db", "migrate"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "api.port" in err


def test_deployed_api_refuses_to_start_without_a_signing_key(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    deployed = settings.model_copy(
        update={
            "environment": Environment.PRODUCTION,
            "jwt": settings.jwt.model_copy(update={"private_key": None}),
        }
    )
    assert main(["api"], settings_factory=lambda: deployed) == 2
    assert "jwt.private_key is required" in capsys.readouterr().err
