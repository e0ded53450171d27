"""Prometheus metrics: every metric the service exports is defined here, and only here.

Names follow the Prometheus conventions (``exporter_`` namespace, base units, ``_total`` on
counters, ``_seconds`` / ``_bytes`` on histograms). Metrics live in prometheus-client's
default registry, one per process: the API serves them at ``/metrics``; a worker serves its
own on ``worker.metrics_port`` (off when 0; ``jobs/metrics_server.py``). This module
defines the metrics and the ``observe_*`` functions that record them; the HTTP middleware
is ``api/metrics.py``, and what the queue gauges read comes from ``queue.py``.

Label values are bounded: routes are templates (``/v1/exports/{export_id}``), never raw
paths; unmatched paths are one ``route="unmatched"`` series; failure reasons are the short
stable error codes of ``ExportFailed``.

The queue gauges describe Redis, not this process, so every process that refreshes them
reports the same numbers: aggregate them with ``max()``, not ``sum()``. So does
``exporter_operator_cancellations_total``: ``exporter jobs cancel`` runs in a process that
exits before any scrape, so it counts in Redis and the queue refresh reads the count back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.queue import QueueRedis, QueueSnapshot, queue_snapshot

NAMESPACE = "exporter"

# --- HTTP API -------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
    namespace=NAMESPACE,
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from request to response, by method, route template and status.",
    ["method", "route", "status"],
    namespace=NAMESPACE,
    # Most answers take a few DynamoDB round trips (milliseconds); the tail is timeouts.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# --- exports --------------------------------------------------------------------------------

EXPORTS_CREATED = Counter(
    "exports_created",
    "Exports recorded and queued by the API.",
    ["format"],
    namespace=NAMESPACE,
)
EXPORTS_FINISHED = Counter(
    "exports_finished",
    "Exports that reached a final state, by status (succeeded, failed, cancelled) and reason "
    "(the error code; empty when succeeded).",
    ["status", "reason"],
    namespace=NAMESPACE,
)
EXPORT_DURATION = Histogram(
    "export_duration_seconds",
    "Time one export attempt took from pick-up to its final state, by status.",
    ["status"],
    namespace=NAMESPACE,
    # Small exports take well under a second; the job timeout (30 min) bounds the top.
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0),
)
EXPORT_ROWS = Histogram(
    "export_rows",
    "Rows in each successful export.",
    namespace=NAMESPACE,
    buckets=(0, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000),
)
EXPORT_SIZE = Histogram(
    "export_size_bytes",
    "Size of each successful export file.",
    namespace=NAMESPACE,
    # 1 KiB .. 1 GiB by powers of 4; the e-mail attachment limit (10 MiB) sits inside.
    buckets=tuple(float(1024 * 4**i) for i in range(11)),
)
EXPORT_RETRIES = Counter(
    "export_retries",
    "Export attempts that failed transiently and were put back on the queue, by reason.",
    ["reason"],
    namespace=NAMESPACE,
)
EMAIL_SEND_DURATION = Histogram(
    "email_send_duration_seconds",
    "Time to hand one export e-mail to the SMTP server (successful or not).",
    namespace=NAMESPACE,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
EMAIL_SEND_FAILURES = Counter(
    "email_send_failures",
    "E-mail sends that the SMTP server refused or that could not reach it.",
    namespace=NAMESPACE,
)

# --- DynamoDB (counted by our client, once per call: ``dynamodb.py``) ------------------------

DYNAMODB_CALLS = Counter(
    "dynamodb_calls",
    "DynamoDB API calls made by this process, by operation (GetItem, TransactWriteItems, ...); "
    "one per call, however many HTTP attempts its retries needed.",
    ["operation"],
    namespace=NAMESPACE,
)
# The operations that write: what "writes per run" counts.
DYNAMODB_WRITE_OPERATIONS = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}
)


def observe_dynamodb_call(operation: str) -> None:
    """One DynamoDB API call is about to be made."""
    DYNAMODB_CALLS.labels(operation).inc()


def dynamodb_calls() -> dict[str, int]:
    """This process's DynamoDB calls so far, by operation (for tests and benchmarks, which
    compare two readings)."""
    return {
        sample.labels["operation"]: int(sample.value)
        for metric in DYNAMODB_CALLS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


SMTP_CONNECTIONS = Counter(
    "smtp_connections_opened",
    "SMTP connections opened (and logged in) by a worker's kept connection: one, plus one "
    "per reconnect after the relay closed it or a send failed.",
    namespace=NAMESPACE,
)


def observe_smtp_connection() -> None:
    """The mailer opened a new SMTP connection."""
    SMTP_CONNECTIONS.inc()


# Series that exist from the start, so rates and ratios do not begin as "no data".
EXPORTS_FINISHED.labels("succeeded", "")
for _status in ("succeeded", "failed"):
    EXPORT_DURATION.labels(_status)

# --- queue (refreshed from Redis; see the module docstring) --------------------------------

QUEUE_JOBS = Gauge(
    "queue_jobs",
    "Jobs in the arq queue: ready, running and deferred (retries waiting for their time).",
    ["queue"],
    namespace=NAMESPACE,
)
QUEUE_READY = Gauge(
    "queue_ready_jobs",
    "Jobs due now that no worker has started: the backlog to scale workers on.",
    ["queue"],
    namespace=NAMESPACE,
)
QUEUE_IN_PROGRESS = Gauge(
    "queue_in_progress_jobs",
    "Jobs a worker is running.",
    ["queue"],
    namespace=NAMESPACE,
)
QUEUE_OLDEST_AGE = Gauge(
    "queue_oldest_ready_age_seconds",
    "How long the oldest ready job has waited to be started (0 when none waits).",
    ["queue"],
    namespace=NAMESPACE,
)


class RedisCounter(Collector):
    """A counter kept in Redis by processes nobody scrapes, exposed by those that are scraped
    with the value their last queue refresh read (one series per queue)."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name, self._documentation = name, documentation
        self._values: dict[str, float] = {}
        self._lock = threading.Lock()  # set by the event loop, read by the scrape thread

    def set(self, queue: str, value: float) -> None:
        with self._lock:
            self._values[queue] = value

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=["queue"])
        with self._lock:
            values = sorted(self._values.items())
        for queue, value in values:
            family.add_metric([queue], value)
        yield family


OPERATOR_CANCELLATIONS = RedisCounter(
    f"{NAMESPACE}_operator_cancellations",
    "Exports cancelled with `exporter jobs cancel`, counted in Redis (the command's process "
    "is never scraped); every process reports the same count: aggregate with max().",
)
REGISTRY.register(OPERATOR_CANCELLATIONS)


def observe_http_request(method: str, route: str, status: int, duration_s: float) -> None:
    """One request answered: ``route`` is the template (or ``unmatched``), never a raw path."""
    labels = (method, route, str(status))
    HTTP_REQUESTS.labels(*labels).inc()
    HTTP_REQUEST_DURATION.labels(*labels).observe(duration_s)


def observe_export_created(fmt: str) -> None:
    """The API recorded and queued an export."""
    EXPORTS_CREATED.labels(fmt).inc()


def observe_export_finished(
    status: str,
    reason: str | None = None,
    *,
    duration_s: float | None = None,
    rows: int | None = None,
    size_bytes: int | None = None,
) -> None:
    """An export reached a final state.

    :param status: ``succeeded``, ``failed`` or ``cancelled``.
    :param reason: the error code for failed/cancelled (``too_large``); None when succeeded,
        except a success whose file could not be delivered (its delivery error code).
    :param duration_s: pick-up to final state for this attempt, if a worker ran it.
    """
    EXPORTS_FINISHED.labels(status, reason or "").inc()
    if duration_s is not None:
        EXPORT_DURATION.labels(status).observe(duration_s)
    if status == "succeeded":
        if rows is not None:
            EXPORT_ROWS.observe(rows)
        if size_bytes is not None:
            EXPORT_SIZE.observe(size_bytes)


def observe_export_retry(reason: str) -> None:
    """A transient failure sent the export back to the queue."""
    EXPORT_RETRIES.labels(reason).inc()


def observe_email(duration_s: float, *, ok: bool) -> None:
    """One attempt to send an export e-mail."""
    EMAIL_SEND_DURATION.observe(duration_s)
    if not ok:
        EMAIL_SEND_FAILURES.inc()


# --- recovery (the sweeper and failure notices) --------------------------------------------

SWEEPER_ACTIONS = Counter(
    "sweeper_actions",
    "What the recovery sweeper did to a job: requeued_lost (queued in DynamoDB but absent "
    "from the queue), requeued_orphaned (in progress, its worker process gone), "
    "requeued_stale (in progress with a stale heartbeat), failed_too_old.",
    ["action"],
    namespace=NAMESPACE,
)
SWEEPER_RUNS = Counter(
    "sweeper_runs",
    "Sweeper runs, by outcome (ok, error).",
    ["outcome"],
    namespace=NAMESPACE,
)
SWEEPER_ACTIVE_JOBS = Gauge(
    "sweeper_active_jobs",
    "Queued and in-progress jobs the last sweep saw, by status.",
    ["status"],
    namespace=NAMESPACE,
)
FAILURE_NOTICES = Counter(
    "failure_notices",
    "Failure notice emails, by outcome (sent, failed, skipped).",
    ["outcome"],
    namespace=NAMESPACE,
)
for _action in ("requeued_lost", "requeued_orphaned", "requeued_stale", "failed_too_old"):
    SWEEPER_ACTIONS.labels(_action)


def observe_sweeper_action(action: str) -> None:
    """The sweeper requeued or gave up on one job."""
    SWEEPER_ACTIONS.labels(action).inc()


def observe_sweep(*, ok: bool, queued: int = 0, in_progress: int = 0) -> None:
    """One sweeper run finished (or failed) having seen these active jobs."""
    SWEEPER_RUNS.labels("ok" if ok else "error").inc()
    if ok:
        SWEEPER_ACTIVE_JOBS.labels("queued").set(queued)
        SWEEPER_ACTIVE_JOBS.labels("in_progress").set(in_progress)


def observe_failure_notice(outcome: str) -> None:
    """One failure notice was sent, could not be sent, or was not due."""
    FAILURE_NOTICES.labels(outcome).inc()


# --- monthly schedules (exporter.schedules) -------------------------------------------------

SCHEDULE_RUNS = Counter(
    f"{NAMESPACE}_schedule_runs_total",
    "Scheduled runs by outcome (created, skipped_active, skipped_quota, failed, stopped).",
    ["outcome"],
)
SCHEDULE_LAG = Histogram(
    f"{NAMESPACE}_schedule_lag_seconds",
    "Time between a scheduled run falling due and the scheduler starting it (first try).",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
)


def observe_schedule_run(outcome: str) -> None:
    """The scheduler ran one due schedule, with this outcome."""
    SCHEDULE_RUNS.labels(outcome).inc()


def observe_schedule_lag(lag_s: float) -> None:
    """A scheduled run started ``lag_s`` after it fell due."""
    SCHEDULE_LAG.observe(max(0.0, lag_s))


def publish_queue_snapshot(snapshot: QueueSnapshot) -> None:
    QUEUE_JOBS.labels(snapshot.queue).set(snapshot.jobs)
    QUEUE_READY.labels(snapshot.queue).set(snapshot.ready)
    QUEUE_IN_PROGRESS.labels(snapshot.queue).set(snapshot.in_progress)
    QUEUE_OLDEST_AGE.labels(snapshot.queue).set(snapshot.oldest_ready_age_s)
    OPERATOR_CANCELLATIONS.set(snapshot.queue, snapshot.operator_cancellations)


async def refresh_queue_metrics(redis: QueueRedis, queue: str) -> QueueSnapshot:
    """Read the queue and set the queue gauges from it."""
    snapshot = await queue_snapshot(redis, queue)
    publish_queue_snapshot(snapshot)
    return snapshot


def render_latest() -> tuple[bytes, str]:
    """The text exposition of this process's metrics and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


def sample_value(name: str, labels: Mapping[str, str] | None = None) -> float:
    """The current value of one sample (0.0 if absent): for tests and the ops CLI."""
    value = REGISTRY.get_sample_value(name, dict(labels or {}))
    return 0.0 if value is None else float(value)
