"""Unit tests for exporter.config: defaults, environment overrides, secrets and secret files.

Every test starts from an environment with no ``EXPORTER_*`` variables, so what the shell
or CI exports cannot leak in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from exporter.auth import SigningKey, build_token_service
from exporter.config import (
    ENV_PREFIX,
    DynamoSettings,
    Environment,
    JwtSettings,
    S3Settings,
    Settings,
    load_settings,
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def _with_secrets(secrets_dir: Path, **overrides: Any) -> Settings:
    """Settings reading secret files from ``secrets_dir``, as load_settings does."""
    # `_secrets_dir` is pydantic-settings' init-time option, not a field, so not typed.
    options: dict[str, Any] = {"_secrets_dir": secrets_dir, **overrides}
    return Settings(**options)


# --- defaults -------------------------------------------------------------------------------


def test_defaults_work_without_any_environment() -> None:
    settings = Settings()

    assert settings.environment is Environment.LOCAL
    assert not settings.is_deployed
    assert settings.log_level == "INFO"
    assert settings.log_json is None
    assert settings.postgres.dsn.get_secret_value().startswith("postgresql://")
    assert settings.postgres.replica_dsn is None
    assert settings.redis.url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert settings.dynamo.endpoint_url == "http://127.0.0.1:8000"
    assert settings.smtp.host == "127.0.0.1"
    assert settings.smtp.port == 1025
    assert settings.api.port == 8080
    assert settings.jwt.private_key is None
    assert settings.jwt.access_ttl_s == 300
    assert settings.jwt.refresh_ttl_s == 30 * 24 * 3600
    assert settings.exports.retention_days == 7


def test_load_settings_without_environment_equals_defaults() -> None:
    assert load_settings() == Settings()


def test_dynamo_table_names_share_the_prefix() -> None:
    dynamo = DynamoSettings(table_prefix="exporter-prod-")

    assert dynamo.users_table == "exporter-prod-users"
    assert dynamo.user_emails_table == "exporter-prod-user-emails"
    assert dynamo.jobs_table == "exporter-prod-export-jobs"


def test_settings_are_frozen() -> None:
    settings = Settings()

    with pytest.raises(ValidationError):
        settings.log_level = "DEBUG"


# --- environment variables ------------------------------------------------------------------


def test_top_level_env_var_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORTER_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("EXPORTER_ENVIRONMENT", "staging")
    monkeypatch.setenv("EXPORTER_LOG_JSON", "false")

    settings = Settings()

    assert settings.log_level == "DEBUG"
    assert settings.environment is Environment.STAGING
    assert settings.log_json is False


def test_nested_env_vars_use_double_underscore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORTER_SMTP__HOST", "email-smtp.eu-west-1.amazonaws.com")
    monkeypatch.setenv("EXPORTER_SMTP__PORT", "587")
    monkeypatch.setenv("EXPORTER_SMTP__START_TLS", "true")
    monkeypatch.setenv("EXPORTER_DYNAMO__TABLE_PREFIX", "exporter-prod-")
    monkeypatch.setenv("EXPORTER_WORKER__MAX_JOBS", "16")
    monkeypatch.setenv("EXPORTER_JWT__ACCESS_TTL_S", "120")

    settings = Settings()

    assert settings.smtp.host == "email-smtp.eu-west-1.amazonaws.com"
    assert settings.smtp.port == 587
    assert settings.smtp.start_tls is True
    assert settings.dynamo.jobs_table == "exporter-prod-export-jobs"
    assert settings.worker.max_jobs == 16
    assert settings.jwt.access_ttl_s == 120


def test_nested_env_var_keeps_the_other_fields_of_its_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXPORTER_SMTP__PORT", "2525")

    settings = Settings()

    assert settings.smtp.port == 2525
    assert settings.smtp.host == "127.0.0.1"
    assert settings.smtp.from_address == "Exporter <exports@exporter.local>"


def test_env_var_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("exporter_smtp__host", "relay.internal")

    assert Settings().smtp.host == "relay.internal"


def test_env_vars_without_the_prefix_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("SMTP__HOST", "elsewhere")

    settings = Settings()

    assert settings.log_level == "INFO"
    assert settings.smtp.host == "127.0.0.1"


def test_keyword_arguments_beat_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORTER_LOG_LEVEL", "DEBUG")

    assert Settings(log_level="WARNING").log_level == "WARNING"
    assert load_settings(log_level="ERROR").log_level == "ERROR"


def test_empty_dynamo_endpoint_means_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORTER_DYNAMO__ENDPOINT_URL", "")

    assert Settings().dynamo.endpoint_url is None


def test_dynamo_endpoint_can_point_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORTER_DYNAMO__ENDPOINT_URL", "http://dynamodb:8000")

    assert Settings().dynamo.endpoint_url == "http://dynamodb:8000"


def test_empty_dynamo_endpoint_keyword_means_real_aws() -> None:
    assert DynamoSettings(endpoint_url="").endpoint_url is None
    assert DynamoSettings(endpoint_url=None).endpoint_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EXPORTER_ENVIRONMENT", "prod"),
        ("EXPORTER_SMTP__PORT", "0"),
        ("EXPORTER_SMTP__PORT", "70000"),
        ("EXPORTER_SMTP__PORT", "smtp"),
        ("EXPORTER_WORKER__MAX_JOBS", "0"),
        ("EXPORTER_JWT__ACCESS_TTL_S", "-1"),
        ("EXPORTER_S3__PART_SIZE_BYTES", "1048576"),
        ("EXPORTER_LOG_JSON", "maybe"),
    ],
)
def test_invalid_env_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError):
        Settings()


def test_unknown_exporter_env_vars_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORTER_NO_SUCH_SETTING", "x")
    monkeypatch.setenv("EXPORTER_SMTP__NO_SUCH_FIELD", "x")

    assert Settings().smtp.host == "127.0.0.1"


# --- deployed environments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "deployed"),
    [
        (Environment.LOCAL, False),
        (Environment.TEST, False),
        (Environment.STAGING, True),
        (Environment.PRODUCTION, True),
    ],
)
def test_is_deployed(environment: Environment, deployed: bool) -> None:
    assert Settings(environment=environment).is_deployed is deployed


def test_production_without_a_jwt_key_cannot_build_a_token_service() -> None:
    # The check lives where the key is used: settings load, the API refuses to start.
    settings = Settings(environment=Environment.PRODUCTION)

    assert settings.jwt.private_key is None
    with pytest.raises(ValueError, match="private_key is required"):
        build_token_service(settings.jwt, allow_ephemeral=not settings.is_deployed)


def test_production_with_a_jwt_key_builds_a_token_service(monkeypatch: pytest.MonkeyPatch) -> None:
    key = SigningKey.generate()
    monkeypatch.setenv("EXPORTER_ENVIRONMENT", "production")
    monkeypatch.setenv("EXPORTER_JWT__PRIVATE_KEY", key.private_pem())

    settings = Settings()
    service = build_token_service(settings.jwt, allow_ephemeral=not settings.is_deployed)

    assert service.jwks()["keys"][0]["kid"] == key.kid


# --- secrets stay secret --------------------------------------------------------------------

SECRET_VALUES = {
    "EXPORTER_POSTGRES__DSN": "postgresql://app:pg-s3cret-1@db/exporter",
    "EXPORTER_POSTGRES__REPLICA_DSN": "postgresql://app:pg-s3cret-2@replica/exporter",
    "EXPORTER_REDIS__URL": "redis://:redis-s3cret@cache:6379/0",
    "EXPORTER_DYNAMO__ACCESS_KEY_ID": "AKIA-S3CRET-ID",
    "EXPORTER_DYNAMO__SECRET_ACCESS_KEY": "aws-s3cret-key",
    "EXPORTER_SMTP__USERNAME": "smtp-s3cret-user",
    "EXPORTER_SMTP__PASSWORD": "smtp-s3cret-password",
    "EXPORTER_JWT__PRIVATE_KEY": "jwt-s3cret-pem",
}


@pytest.fixture(name="secret_settings")
def fixture_secret_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_secret_values_are_loaded(secret_settings: Settings) -> None:
    s = secret_settings
    assert s.postgres.dsn.get_secret_value() == SECRET_VALUES["EXPORTER_POSTGRES__DSN"]
    assert s.postgres.replica_dsn is not None
    assert s.redis.url.get_secret_value() == SECRET_VALUES["EXPORTER_REDIS__URL"]
    assert s.smtp.password is not None
    assert s.smtp.password.get_secret_value() == SECRET_VALUES["EXPORTER_SMTP__PASSWORD"]
    assert s.jwt.private_key is not None
    assert s.jwt.private_key.get_secret_value() == SECRET_VALUES["EXPORTER_JWT__PRIVATE_KEY"]


@pytest.mark.parametrize(
    "render",
    [
        pytest.param(repr, id="repr"),
        pytest.param(str, id="str"),
        pytest.param(lambda s: s.model_dump_json(), id="model_dump_json"),
        pytest.param(lambda s: str(s.model_dump()), id="model_dump"),
        pytest.param(lambda s: repr(s.jwt) + repr(s.smtp) + repr(s.postgres), id="groups"),
        pytest.param(lambda s: f"{s}", id="format"),
    ],
)
def test_secrets_never_appear_when_settings_are_printed(
    secret_settings: Settings, render: object
) -> None:
    assert callable(render)
    text = str(render(secret_settings))

    assert "**********" in text
    for secret in SECRET_VALUES.values():
        assert secret not in text
    assert "s3cret" not in text


@pytest.mark.parametrize(
    ("group", "field"),
    [
        ("postgres", "dsn"),
        ("postgres", "replica_dsn"),
        ("redis", "url"),
        ("dynamo", "access_key_id"),
        ("dynamo", "secret_access_key"),
        ("smtp", "username"),
        ("smtp", "password"),
        ("jwt", "private_key"),
    ],
)
def test_secret_fields_are_secret_str(secret_settings: Settings, group: str, field: str) -> None:
    assert isinstance(getattr(getattr(secret_settings, group), field), SecretStr)


# --- secret files ---------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", ["exporter_jwt__private_key", "EXPORTER_JWT__PRIVATE_KEY"])
def test_nested_secret_is_read_from_a_file_named_like_the_env_var(
    tmp_path: Path, file_name: str
) -> None:
    (tmp_path / file_name).write_text("pem-from-file")

    settings = _with_secrets(tmp_path)

    assert settings.jwt.private_key is not None
    assert settings.jwt.private_key.get_secret_value() == "pem-from-file"


@pytest.mark.parametrize("file_name", ["exporter_log_level", "EXPORTER_LOG_LEVEL"])
def test_top_level_setting_is_read_from_a_secret_file(tmp_path: Path, file_name: str) -> None:
    (tmp_path / file_name).write_text("DEBUG")

    assert _with_secrets(tmp_path).log_level == "DEBUG"


@pytest.mark.parametrize(
    "file_name",
    [
        "jwt__private_key",  # no prefix
        "private_key",
        "exporter_jwt_private_key",  # single underscore
        "exporter_jwt.private_key",
        ".exporter_jwt__private_key",  # hidden files are skipped
    ],
)
def test_secret_files_with_other_names_are_ignored(tmp_path: Path, file_name: str) -> None:
    (tmp_path / file_name).write_text("pem-from-file")

    assert _with_secrets(tmp_path).jwt.private_key is None


def test_several_nested_secret_files_fill_their_groups(tmp_path: Path) -> None:
    (tmp_path / "exporter_postgres__dsn").write_text("postgresql://app:pw@db/exporter")
    (tmp_path / "exporter_smtp__password").write_text("smtp-pw")
    (tmp_path / "exporter_smtp__username").write_text("smtp-user")

    settings = _with_secrets(tmp_path)

    assert settings.postgres.dsn.get_secret_value() == "postgresql://app:pw@db/exporter"
    assert settings.smtp.username is not None
    assert settings.smtp.username.get_secret_value() == "smtp-user"
    assert settings.smtp.password is not None
    assert settings.smtp.password.get_secret_value() == "smtp-pw"
    # Fields of the same groups without a file keep their defaults.
    assert settings.smtp.host == "127.0.0.1"
    assert settings.postgres.pool_max_size == 10


def test_secret_file_trailing_newline_is_stripped(tmp_path: Path) -> None:
    (tmp_path / "exporter_smtp__password").write_text("smtp-pw\n")

    settings = _with_secrets(tmp_path)

    assert settings.smtp.password is not None
    assert settings.smtp.password.get_secret_value() == "smtp-pw"


def test_pem_key_from_a_secret_file_signs_tokens(tmp_path: Path) -> None:
    key = SigningKey.generate()
    (tmp_path / "exporter_jwt__private_key").write_text(key.private_pem())

    settings = _with_secrets(tmp_path, environment=Environment.PRODUCTION)
    service = build_token_service(settings.jwt, allow_ephemeral=False)

    assert service.jwks()["keys"][0]["kid"] == key.kid


def test_env_var_beats_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "exporter_jwt__private_key").write_text("from-file")
    (tmp_path / "exporter_smtp__password").write_text("smtp-from-file")
    monkeypatch.setenv("EXPORTER_JWT__PRIVATE_KEY", "from-env")

    settings = _with_secrets(tmp_path)

    assert settings.jwt.private_key is not None
    assert settings.jwt.private_key.get_secret_value() == "from-env"
    assert settings.smtp.password is not None
    assert settings.smtp.password.get_secret_value() == "smtp-from-file"


def test_env_var_and_secret_file_merge_within_one_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exporter_jwt__private_key").write_text("from-file")
    monkeypatch.setenv("EXPORTER_JWT__ISSUER", "https://issuer.example")

    settings = _with_secrets(tmp_path)

    assert settings.jwt.issuer == "https://issuer.example"
    assert settings.jwt.private_key is not None
    assert settings.jwt.private_key.get_secret_value() == "from-file"


def test_keyword_dict_merges_with_secret_file(tmp_path: Path) -> None:
    (tmp_path / "exporter_jwt__private_key").write_text("from-file")

    settings = _with_secrets(tmp_path, jwt={"audience": "other-api"})

    assert settings.jwt.audience == "other-api"
    assert settings.jwt.private_key is not None


def test_keyword_model_replaces_the_whole_group_including_secret_files(tmp_path: Path) -> None:
    # Passing a JwtSettings object (as tests do) wins over every other source for the group.
    (tmp_path / "exporter_jwt__private_key").write_text("from-file")

    settings = _with_secrets(tmp_path, jwt=JwtSettings(audience="other-api"))

    assert settings.jwt.audience == "other-api"
    assert settings.jwt.private_key is None


def test_kubernetes_style_secret_volume_is_read(tmp_path: Path) -> None:
    # A mounted Secret: files are symlinks through ..data into a hidden timestamped folder.
    version = tmp_path / "..2024_05_01_12_00_00.000000001"
    version.mkdir()
    (version / "exporter_jwt__private_key").write_text("k8s-pem\n")
    (version / "exporter_log_level").write_text("WARNING")
    (tmp_path / "..data").symlink_to(version.name)
    for name in ("exporter_jwt__private_key", "exporter_log_level"):
        (tmp_path / name).symlink_to(f"..data/{name}")

    settings = _with_secrets(tmp_path)

    assert settings.log_level == "WARNING"
    assert settings.jwt.private_key is not None
    assert settings.jwt.private_key.get_secret_value() == "k8s-pem"


def test_secret_file_linking_outside_the_secrets_dir_is_ignored(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    outside = tmp_path / "elsewhere"
    outside.write_text("DEBUG")
    (secrets_dir / "exporter_log_level").symlink_to(outside)

    assert _with_secrets(secrets_dir).log_level == "INFO"


def test_load_settings_reads_exporter_secrets_dir_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exporter_jwt__private_key").write_text("pem-from-file")
    assert load_settings().jwt.private_key is None

    monkeypatch.setenv("EXPORTER_SECRETS_DIR", str(tmp_path))
    settings = load_settings()

    assert settings.jwt.private_key is not None
    assert settings.jwt.private_key.get_secret_value() == "pem-from-file"


def test_empty_exporter_secrets_dir_means_no_secret_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXPORTER_SECRETS_DIR", "")

    assert load_settings() == Settings()


def test_missing_secrets_dir_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pydantic-settings warns (it does not fail) when the folder is absent; the service then
    # starts without those secrets. Pinned so a change in that behaviour is noticed.
    monkeypatch.setenv("EXPORTER_SECRETS_DIR", str(tmp_path / "missing"))

    with pytest.warns(UserWarning, match="does not exist"):
        settings = load_settings()

    assert settings.jwt.private_key is None


def test_secrets_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")

    with pytest.raises(Exception, match="must reference a directory"):
        _with_secrets(not_a_dir)


def test_secret_read_from_a_file_is_still_hidden(tmp_path: Path) -> None:
    (tmp_path / "exporter_smtp__password").write_text("file-s3cret")

    settings = _with_secrets(tmp_path)

    assert "file-s3cret" not in repr(settings)
    assert "file-s3cret" not in settings.model_dump_json()


def test_an_empty_bucket_name_is_refused_rather_than_guessed() -> None:
    # The chart renders "" until infra's bucket name is filled in: the pod must not start.
    with pytest.raises(ValidationError):
        Settings(s3=S3Settings(bucket=""))


@pytest.mark.parametrize(
    ("worker", "exports", "problem"),
    [
        ({"sweep_every_s": 7}, {}, "must divide 60"),
        ({"sweep_every_s": 90}, {}, "whole minutes"),
        ({"stale_after_s": 5}, {"progress_interval_s": 2.0}, "3 x exports.progress_interval_s"),
        ({"liveness_ttl_s": 5}, {"progress_interval_s": 2.0}, "liveness_ttl_s must be at least"),
    ],
)
def test_recovery_settings_that_would_misfire_are_refused(
    worker: dict[str, Any], exports: dict[str, Any], problem: str
) -> None:
    from exporter.config import ExportSettings, WorkerSettings

    with pytest.raises(ValidationError, match=problem):
        Settings(worker=WorkerSettings(**worker), exports=ExportSettings(**exports))


def test_arq_keeps_a_killed_jobs_running_marker_for_the_longest_timeout_plus_10_s() -> None:
    from exporter.config import WorkerSettings

    assert WorkerSettings(job_timeout_s=1800).in_progress_marker_s == 1810
    # The expiry cron's 300 s bound dominates short job timeouts, as arq takes the maximum.
    assert WorkerSettings(job_timeout_s=60).in_progress_marker_s == 310


def test_one_region_unless_a_region_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """EXPORTER_REGION turns the two-region ownership rule on; unset or empty, one region."""
    assert Settings().region is None
    monkeypatch.setenv("EXPORTER_REGION", "")
    assert Settings().region is None
    monkeypatch.setenv("EXPORTER_REGION", "eu-central-1")
    monkeypatch.setenv(
        "EXPORTER_S3__REGION_BUCKETS", '{"eu-west-1": "b-west", "eu-central-1": "b-central"}'
    )
    settings = Settings()
    assert settings.region == "eu-central-1"
    assert settings.s3.region_buckets == {"eu-west-1": "b-west", "eu-central-1": "b-central"}
    assert settings.dynamo.regions_table == "exporter-local-regions"
