"""Typed settings, read once at process start and passed down explicitly.

Sources, strongest first: keyword arguments (tests), ``EXPORTER_*`` environment variables
(``__`` separates groups: ``EXPORTER_SMTP__HOST``), files in ``EXPORTER_SECRETS_DIR`` named
like the variable (as Kubernetes mounts a Secret), then the defaults below, which work
against the local stack that ``make run`` starts. Secrets are ``SecretStr`` so they never
reach a log line or a repr.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "EXPORTER_"


class Environment(StrEnum):
    LOCAL = "local"
    TEST = "test"
    STAGING = "staging"
    PRODUCTION = "production"


class PostgresSettings(BaseModel):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/exporter")
    # Export reads go here when set (a read replica); nothing else does.
    replica_dsn: SecretStr | None = None
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=10, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    command_timeout_s: float = Field(default=60.0, gt=0)


class RedisSettings(BaseModel):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    queue_name: str = "exporter:queue"
    # The queue of exports above exports.large_threshold_rows, served by its own worker pool
    # (`exporter worker --queue large`). Empty: "{queue_name}:large".
    large_queue_name: str = ""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # Bound on any one command (arq only polls; nothing blocks server-side), so a hung Redis
    # turns into an error instead of a request or job that never returns.
    command_timeout_s: float = Field(default=5.0, gt=0)
    # A pending export lives only in Redis until a worker takes it: with this on, a worker
    # refuses to start unless Redis reports maxmemory-policy noeviction (and warns when AOF
    # is off). On in the chart; off locally and in tests, whose Redis is a plain one.
    require_noeviction: bool = False

    @property
    def large_queue(self) -> str:
        """The large exports' queue (its own sorted set, its own workers)."""
        return self.large_queue_name or f"{self.queue_name}:large"


class DynamoSettings(BaseModel):
    # None means the real AWS endpoint for the region; local and tests point at DynamoDB Local.
    endpoint_url: str | None = "http://127.0.0.1:8000"
    region: str = "eu-west-1"
    table_prefix: str = "exporter-local-"
    # Leave unset in AWS: the pod's IRSA role provides credentials. Against a local endpoint
    # with no keys set, dummy keys are used (DynamoDB Local accepts any).
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    connect_timeout_s: float = Field(default=3.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=4, ge=1)
    # Connections kept open to DynamoDB per process (a call waits for a free one).
    max_connections: int = Field(default=32, ge=1)

    @field_validator("endpoint_url", mode="before")
    @classmethod
    def _empty_is_aws(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def users_table(self) -> str:
        return f"{self.table_prefix}users"

    @property
    def user_emails_table(self) -> str:
        return f"{self.table_prefix}user-emails"

    @property
    def jobs_table(self) -> str:
        return f"{self.table_prefix}export-jobs"

    @property
    def refresh_tokens_table(self) -> str:
        return f"{self.table_prefix}refresh-tokens"

    @property
    def export_slots_table(self) -> str:
        return f"{self.table_prefix}export-slots"

    @property
    def idempotency_keys_table(self) -> str:
        return f"{self.table_prefix}idempotency-keys"

    @property
    def regions_table(self) -> str:
        """The failed-region flags (store/regions.py); read only when ``region`` is set."""
        return f"{self.table_prefix}regions"

    @property
    def schedules_table(self) -> str:
        # The name infra/ gave the table when it anticipated this change.
        return f"{self.table_prefix}schedules"


class S3Settings(BaseModel):
    """Where exports too large to attach are kept (a private bucket, one object per export)."""

    # None means the real AWS endpoint for the region; local and tests point at moto's server.
    endpoint_url: str | None = "http://127.0.0.1:9000"
    region: str = "eu-west-1"
    # Empty is refused (the chart renders "" until infra's bucket name is filled in).
    bucket: str = Field(default="exporter-local-exports", min_length=3, max_length=63)
    key_prefix: str = "exports/"
    # Leave unset in AWS (IRSA); against a local endpoint dummy keys are used.
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    # Server-side encryption on every upload: "aws:kms" (with kms_key_id, or the bucket's
    # key) in AWS, "AES256" (S3-managed keys) locally.
    sse: Literal["AES256", "aws:kms"] = "AES256"
    kms_key_id: str | None = None
    # Multipart part size: S3 needs >= 5 MiB for all parts but the last and allows 10,000
    # parts (160 GB at 16 MiB). Parts are streamed from the file, so this costs no memory.
    part_size_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    # Lifetime of the signed URL the download route redirects to: only long enough to
    # start the download, so a leaked Location header is of little use.
    presign_ttl_s: int = Field(default=60, ge=1, le=3600)
    connect_timeout_s: float = Field(default=3.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=4, ge=1)
    # Two regions (``Settings.region``): the other regions' export buckets, region -> bucket
    # (EXPORTER_S3__REGION_BUCKETS='{"us-east-1": "..."}'). A job records the region whose
    # bucket holds its file, so a link served here signs a URL for that bucket.
    region_buckets: dict[str, str] = {}

    @field_validator("endpoint_url", mode="before")
    @classmethod
    def _empty_is_aws(cls, value: object) -> object:
        return None if value == "" else value


class SmtpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=1025, ge=1, le=65535)
    username: SecretStr | None = None
    password: SecretStr | None = None
    # Amazon SES: port 587 with STARTTLS (start_tls) or 465 with implicit TLS (use_tls).
    start_tls: bool = False
    use_tls: bool = False
    # Extra CA bundle to trust (a private relay); SES certificates verify against system CAs.
    ca_file: Path | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    from_address: str = "Exporter <exports@exporter.local>"


class JwtSettings(BaseModel):
    issuer: str = "https://exporter.local"
    audience: str = "exporter-api"
    # PEM-encoded EC P-256 private key. Unset in local/test: an ephemeral key is generated
    # per process, which is fine for a single local API process and nothing else.
    private_key: SecretStr | None = None
    # Key rotation: PEM public keys (one or more blocks, concatenated) that verify tokens and
    # are published in the JWKS besides the signing key's own: the next key before a rotation,
    # the previous one after it. See docs/security.md.
    verification_keys: str | None = None
    # Access tokens are not revocable; their lifetime bounds how long a disabled account
    # keeps access, so it is capped at 15 minutes.
    access_ttl_s: int = Field(default=300, gt=0, le=900)
    refresh_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)
    leeway_s: int = Field(default=10, ge=0)


class AuthSettings(BaseModel):
    """Sign-in throttling (Redis fixed windows) and how to find the client's address."""

    # Failed sign-ins per account (normalised e-mail, known or not) per window.
    login_max_failures_per_account: int = Field(default=5, ge=1)
    # Sign-in attempts, good or bad, per client address per window.
    login_max_attempts_per_address: int = Field(default=30, ge=1)
    login_window_s: int = Field(default=300, ge=1)
    # Proxies in front of the API that append to X-Forwarded-For (the ALB: 1). 0 trusts no
    # header and uses the TCP peer address.
    trusted_proxy_hops: int = Field(default=0, ge=0, le=5)


class ExportSettings(BaseModel):
    # How long a finished export's file and download link live.
    retention_days: int = Field(default=7, ge=1)
    # The job record outlives its file by this much, so the download route can answer
    # 410 Gone (not 404) for a while; then DynamoDB TTL removes the record.
    record_grace_days: int = Field(default=7, ge=1)
    # Attach the file while the whole message, after base64, stays under this; otherwise
    # upload it to S3 and mail a link. SES caps messages at 40 MB counted after base64.
    attachment_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Exports one user may ask for in any rolling 24 hours (429 with Retry-After beyond).
    max_per_day: int = Field(default=10, ge=1)
    # Spooled temp files stay in memory up to this size, then move to disk.
    spool_max_bytes: int = Field(default=1024 * 1024, ge=0)
    # Bound on one export's COPY (the pool's command timeout is for short queries); keep it
    # below worker.job_timeout_s. 1,000,000 rows take ~2.5 s here, so this is ample.
    copy_timeout_s: float = Field(default=1200.0, gt=0)
    temp_dir: Path | None = None
    # While a job streams, its record gets rows_exported and heartbeat_at at most this often
    # (plus once when streaming starts). The write is also the worker's heartbeat, so keep
    # it well below the staleness after which a job counts as abandoned.
    progress_interval_s: float = Field(default=2.0, gt=0, le=60)
    # Size-aware routing: at create, the user's rows are counted (index-only, ~0.1 s per
    # million) and an export of more than large_threshold_rows goes to redis.large_queue,
    # served by its own worker pool, so small exports never wait behind large ones.
    # routing_enabled=false or a threshold of 0 keeps one queue for everything.
    routing_enabled: bool = True
    large_threshold_rows: int = Field(default=100_000, ge=0)

    @property
    def routes_by_size(self) -> bool:
        return self.routing_enabled and self.large_threshold_rows > 0


# The expiry cron's bound (a scan of the jobs table: minutes at most).
EXPIRE_TIMEOUT_S = 300


class WorkerSettings(BaseModel):
    max_jobs: int = Field(default=4, ge=1)
    # The large pool's slots in a process that serves both queues (`exporter worker --queue
    # default --queue large`: max_jobs small slots plus these); a process serving only the
    # large queue has max_jobs slots, as its own Deployment sets them.
    large_max_jobs: int = Field(default=2, ge=1)
    # In a process serving both queues, the two pools share its CPU and the database's: a
    # large export waits to start while small exports wait to start, for at most this long
    # (0: never waits), so a burst of small ones is not slowed by large COPYs on the same
    # cores. Separate Deployments (the chart) do not wait: they have cores of their own.
    large_yield_max_s: float = Field(default=120.0, ge=0)
    job_timeout_s: int = Field(default=1800, gt=0)
    # Runs a job may lose to dying workers before the sweeper gives it up (``worker_lost``);
    # transient failures are bounded by retry_budget_s instead, however many tries it takes.
    max_tries: int = Field(default=5, ge=1)
    poll_delay_s: float = Field(default=0.1, gt=0)
    # The worker process's CPU priority (nice, 0-19): where the API and the workers share a
    # box (a VM, docker compose), 10 has the API answer first and the workers use what is
    # left (docs/benchmarks.md, "Issue 15, evening"). Kubernetes gives each its own CPU: 0.
    nice: int = Field(default=0, ge=0, le=19)
    # Time given to running jobs on SIGTERM; keep below the pod's terminationGracePeriodSeconds.
    shutdown_grace_s: int = Field(default=60, ge=0)
    expire_cron_minute: int = Field(default=17, ge=0, le=59)
    # Transient failures (an outage of mail, S3, DynamoDB or the database) retry with
    # exponential backoff and full jitter (base * 2^n, capped: a long outage costs one try
    # every half minute on average), never past retry_budget_s after the export was
    # requested (a failure notice: after it failed).
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_cap_s: float = Field(default=60.0, gt=0)
    retry_budget_s: int = Field(default=1800, gt=0)
    # Recovery sweeper (an arq cron, unique across workers): how often it runs (seconds,
    # dividing 60 or a multiple of 60), how long a queued job may be missing from the queue,
    # how old a heartbeat means the run is dead, and when an active job is given up.
    # Together they bound recovery: a killed worker's export runs again within about
    # liveness_ttl_s + sweep_every_s (docs/reliability.md), a job Redis lost is back on the
    # queue within sweep_queued_grace_s + sweep_every_s of its request.
    sweep_every_s: int = Field(default=10, ge=1, le=3600)
    sweep_queued_grace_s: int = Field(default=30, ge=1)
    stale_after_s: int = Field(default=30, ge=1)
    max_job_age_s: int = Field(default=6 * 3600, ge=60)
    # Each worker process keeps a liveness key in Redis that lives this long and is
    # refreshed every third of it; a running job whose worker's key is gone (and whose own
    # heartbeat has been quiet as long) is an orphan, requeued without waiting stale_after_s.
    liveness_ttl_s: int = Field(default=15, ge=3, le=300)

    @property
    def sweep_timeout_s(self) -> int:
        """The sweeper's bound: about one interval (an overlap is safe, a hang is not)."""
        return max(10, min(self.sweep_every_s, 300))

    @property
    def liveness_refresh_s(self) -> float:
        """How often a worker refreshes its liveness key: two refreshes may fail in a row
        (a Redis blip, a busy event loop) before the key lapses."""
        return self.liveness_ttl_s / 3

    @property
    def in_progress_marker_s(self) -> int:
        """How long arq keeps a job marked running after its worker took it: the largest
        function timeout on the worker + 10 s (arq's rule), kept even if the worker dies."""
        return max(self.job_timeout_s, EXPIRE_TIMEOUT_S, self.sweep_timeout_s) + 10

    @model_validator(mode="after")
    def _coherent(self) -> WorkerSettings:
        if self.sweep_every_s < 60 and 60 % self.sweep_every_s:
            raise ValueError("sweep_every_s below 60 must divide 60")
        if self.sweep_every_s >= 60 and self.sweep_every_s % 60:
            raise ValueError("sweep_every_s of 60 or more must be whole minutes")
        return self

    # Prometheus metrics of this worker process on http://metrics_host:metrics_port/metrics;
    # 0 turns them off (several local workers would fight over one port). The chart sets 9100.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # Public base URL used in links (emails, Location headers are relative).
    public_url: str = "http://127.0.0.1:8080"
    max_body_bytes: int = Field(default=16 * 1024, ge=256)
    # Hostile clients: a request's head must arrive within header_timeout_s of its first
    # byte, and its whole body within body_timeout_s of the head (408 otherwise), so a client
    # trickling bytes cannot hold a connection or a handler for minutes.
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    body_timeout_s: float = Field(default=10.0, gt=0, le=300)
    page_size_default: int = Field(default=20, ge=1, le=100)
    # Browser origins allowed to call the API (CORS). Empty: no CORS headers at all.
    cors_origins: list[str] = []
    # On SIGTERM: stop accepting, give in-flight requests this long, then close the pools.
    # Keep it below the pod's terminationGracePeriodSeconds minus its preStop sleep.
    shutdown_timeout_s: float = Field(default=15.0, gt=0)


class ScheduleSettings(BaseModel):
    """Monthly exports that run by themselves (``exporter.schedules``)."""

    # Schedules of one day do not all start at midnight: each starts at a stable offset (a
    # hash of its id, like cron's H) inside this window of the user's local day, so the
    # morning's load is flat. Wall-clock hours in the schedule's own time zone.
    window_start_hour: int = Field(default=0, ge=0, le=23)
    window_hours: int = Field(default=6, ge=1, le=24)
    # Schedules one user may have (409 beyond).
    max_per_user: int = Field(default=3, ge=1, le=100)
    # Whether this deployment's workers run the scheduler cron. With two regions, run it in
    # one: a claim is a conditional write, and those hold within a region only.
    scheduler_enabled: bool = True
    # The scheduler (an arq cron, unique across workers) looks for due schedules this often.
    tick_every_s: int = Field(default=60, ge=1, le=3600)
    # Due schedules one tick takes on at most (the rest wait for the next tick), and how
    # many of them it starts at once.
    batch_size: int = Field(default=500, ge=1, le=10_000)
    concurrency: int = Field(default=8, ge=1, le=64)
    # A claimed run not recorded within this long (its scheduler died) is claimed again;
    # the retry reuses the same idempotency key, so it never makes a second export.
    claim_lease_s: int = Field(default=600, ge=30)
    # The user had an export running (or the quota was used up, or a store was down): try
    # again this much later, up to retry_attempts tries for the month's run.
    retry_after_s: int = Field(default=1800, ge=10)
    retry_attempts: int = Field(default=8, ge=1, le=48)
    # Runs kept on the schedule (what GET shows).
    runs_kept: int = Field(default=12, ge=1, le=100)
    # Lifetime of the one-click pause link in a scheduled export's email.
    pause_link_ttl_days: int = Field(default=62, ge=1, le=366)

    @model_validator(mode="after")
    def _window_inside_the_day(self) -> ScheduleSettings:
        if self.window_start_hour + self.window_hours > 24:
            raise ValueError("schedules.window_start_hour + window_hours must be at most 24")
        if self.tick_every_s < 60 and 60 % self.tick_every_s:
            raise ValueError("schedules.tick_every_s below 60 must divide 60")
        if self.tick_every_s >= 60 and self.tick_every_s % 60:
            raise ValueError("schedules.tick_every_s of 60 or more must be whole minutes")
        return self

    @property
    def window_start_s(self) -> int:
        return self.window_start_hour * 3600

    @property
    def window_s(self) -> int:
        return self.window_hours * 3600


class Settings(BaseSettings):
    """Everything the API, the worker and the CLI need to know."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        secrets_nested_delimiter="__",
        extra="ignore",
        frozen=True,
    )

    environment: Environment = Environment.LOCAL
    # The region this process serves in a two-region deployment (EXPORTER_REGION, e.g.
    # "eu-west-1"): every job it creates is homed here, and it runs only jobs homed here or
    # in a region declared failed (regions.py). None (the default, local, tests): one
    # region, no ownership rule, exactly as before regions existed.
    region: str | None = None
    log_level: str = "INFO"
    log_json: bool | None = None  # None: JSON unless attached to a terminal
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    dynamo: DynamoSettings = DynamoSettings()
    smtp: SmtpSettings = SmtpSettings()
    s3: S3Settings = S3Settings()
    jwt: JwtSettings = JwtSettings()
    auth: AuthSettings = AuthSettings()
    exports: ExportSettings = ExportSettings()
    worker: WorkerSettings = WorkerSettings()
    api: ApiSettings = ApiSettings()
    schedules: ScheduleSettings = ScheduleSettings()

    @field_validator("region", mode="before")
    @classmethod
    def _empty_is_one_region(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _heartbeat_well_inside_staleness(self) -> Settings:
        # The progress write is the heartbeat: a late or lost one must not make a live run
        # look dead to the sweeper.
        if self.worker.stale_after_s < 3 * self.exports.progress_interval_s:
            raise ValueError(
                "worker.stale_after_s must be at least 3 x exports.progress_interval_s"
            )
        if self.worker.liveness_ttl_s < 3 * self.exports.progress_interval_s:
            # The orphan rule also waits this long for the run's own heartbeat, so a live
            # run whose worker's key vanished (Redis wiped) keeps its job.
            raise ValueError(
                "worker.liveness_ttl_s must be at least 3 x exports.progress_interval_s"
            )
        return self

    @property
    def is_deployed(self) -> bool:
        return self.environment in (Environment.STAGING, Environment.PRODUCTION)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Secret files may be nested like env vars: a file `exporter_jwt__private_key` (any
        # case) sets jwt.private_key. Env vars win over files.
        return init_settings, env_settings, NestedSecretsSettingsSource(file_secret_settings)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment and, if EXPORTER_SECRETS_DIR names a folder (a
    mounted Kubernetes Secret), from one file per setting in it."""
    secrets_dir = os.environ.get(f"{ENV_PREFIX}SECRETS_DIR") or None
    # `_secrets_dir` is pydantic-settings' init-time option (not a field, so not typed).
    options: dict[str, Any] = {"_secrets_dir": secrets_dir}
    return Settings(**options, **overrides)
