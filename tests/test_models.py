"""Unit tests for exporter.models: the job state machine, ExportJob and the queue message."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from exporter.errors import ExportFailed
from exporter.models import (
    ALLOWED_TRANSITIONS,
    MESSAGE_VERSION,
    TERMINAL_STATES,
    ExportFormat,
    ExportJob,
    ExportMessageV1,
    JobState,
    sources_of,
    utcnow,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
WEEK_S = 7 * 24 * 3600

# --- state machine --------------------------------------------------------------------------


def test_every_state_has_a_transition_entry() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(JobState)


def test_transitions_only_lead_to_known_states() -> None:
    for targets in ALLOWED_TRANSITIONS.values():
        assert targets <= set(JobState)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES - {JobState.SUCCEEDED}))
def test_final_states_have_no_exits(state: JobState) -> None:
    assert state.is_terminal
    assert ALLOWED_TRANSITIONS[state] == frozenset()


def test_a_succeeded_export_can_only_expire() -> None:
    assert JobState.SUCCEEDED.is_terminal
    assert ALLOWED_TRANSITIONS[JobState.SUCCEEDED] == {JobState.EXPIRED}


def test_terminal_and_active_states_split_all_states() -> None:
    assert {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.EXPIRED,
    } == TERMINAL_STATES
    assert {s for s in JobState if s.is_active} == {JobState.QUEUED, JobState.IN_PROGRESS}
    assert all(s.is_active != s.is_terminal for s in JobState)


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        (JobState.QUEUED, JobState.IN_PROGRESS, True),
        (JobState.QUEUED, JobState.FAILED, True),
        (JobState.QUEUED, JobState.SUCCEEDED, False),
        (JobState.QUEUED, JobState.QUEUED, False),
        (JobState.IN_PROGRESS, JobState.IN_PROGRESS, True),  # re-delivery after a crash
        (JobState.IN_PROGRESS, JobState.SUCCEEDED, True),
        (JobState.IN_PROGRESS, JobState.FAILED, True),
        (JobState.IN_PROGRESS, JobState.QUEUED, False),
        (JobState.QUEUED, JobState.CANCELLED, True),
        (JobState.IN_PROGRESS, JobState.CANCELLED, True),
        (JobState.SUCCEEDED, JobState.CANCELLED, False),
        (JobState.FAILED, JobState.CANCELLED, False),
        (JobState.SUCCEEDED, JobState.EXPIRED, True),
        (JobState.QUEUED, JobState.EXPIRED, False),
        (JobState.FAILED, JobState.EXPIRED, False),
        (JobState.CANCELLED, JobState.IN_PROGRESS, False),
        (JobState.SUCCEEDED, JobState.FAILED, False),
        (JobState.SUCCEEDED, JobState.IN_PROGRESS, False),
        (JobState.FAILED, JobState.QUEUED, False),
        (JobState.FAILED, JobState.SUCCEEDED, False),
    ],
)
def test_allowed_transitions(source: JobState, target: JobState, allowed: bool) -> None:
    assert (target in ALLOWED_TRANSITIONS[source]) is allowed


def test_nothing_returns_to_queued() -> None:
    assert all(JobState.QUEUED not in targets for targets in ALLOWED_TRANSITIONS.values())


@pytest.mark.parametrize(
    ("target", "sources"),
    [
        (JobState.QUEUED, set()),
        (JobState.IN_PROGRESS, {JobState.QUEUED, JobState.IN_PROGRESS}),
        (JobState.SUCCEEDED, {JobState.IN_PROGRESS}),
        (JobState.FAILED, {JobState.QUEUED, JobState.IN_PROGRESS}),
        (JobState.CANCELLED, {JobState.QUEUED, JobState.IN_PROGRESS}),
        (JobState.EXPIRED, {JobState.SUCCEEDED}),
    ],
)
def test_sources_of(target: JobState, sources: set[JobState]) -> None:
    assert sources_of(target) == frozenset(sources)


def test_sources_of_is_the_inverse_of_allowed_transitions() -> None:
    for target in JobState:
        for source in JobState:
            assert (source in sources_of(target)) == (target in ALLOWED_TRANSITIONS[source])


def test_job_states_serialise_as_their_lowercase_names() -> None:
    assert [s.value for s in JobState] == [
        "queued",
        "in_progress",
        "succeeded",
        "failed",
        "cancelled",
        "expired",
    ]
    assert JobState("in_progress") is JobState.IN_PROGRESS


@pytest.mark.parametrize(
    ("fmt", "value", "content_type"),
    [
        (ExportFormat.CSV, "csv", ("text", "csv")),
        (ExportFormat.CSV_GZ, "csv.gz", ("application", "gzip")),
    ],
)
def test_export_formats_and_their_content_types(
    fmt: ExportFormat, value: str, content_type: tuple[str, str]
) -> None:
    assert ExportFormat(value) is fmt
    assert fmt.content_type == content_type


# --- ExportJob ------------------------------------------------------------------------------


def test_new_job_is_queued_with_a_fresh_uuid() -> None:
    job = ExportJob.new(user_id="user-1", fmt=ExportFormat.CSV, now=NOW, retention_s=WEEK_S)

    assert job.status is JobState.QUEUED
    assert job.user_id == "user-1"
    assert job.format is ExportFormat.CSV
    assert str(uuid.UUID(job.job_id)) == job.job_id
    assert uuid.UUID(job.job_id).version == 4


def test_new_job_keeps_the_requested_format() -> None:
    job = ExportJob.new(user_id="u", fmt=ExportFormat.CSV_GZ, now=NOW, retention_s=60)

    assert job.format is ExportFormat.CSV_GZ


def test_new_jobs_get_distinct_ids() -> None:
    ids = {
        ExportJob.new(user_id="u", fmt=ExportFormat.CSV, now=NOW, retention_s=60).job_id
        for _ in range(20)
    }
    assert len(ids) == 20


def test_new_job_expires_after_the_retention_period() -> None:
    job = ExportJob.new(user_id="u", fmt=ExportFormat.CSV, now=NOW, retention_s=WEEK_S)

    assert job.created_at == NOW
    assert job.updated_at == NOW
    assert job.expires_at == NOW + timedelta(seconds=WEEK_S)
    assert job.expires_at.tzinfo is UTC


def test_new_job_starts_with_no_progress_recorded() -> None:
    job = ExportJob.new(user_id="u", fmt=ExportFormat.CSV, now=NOW, retention_s=60)

    assert job.started_at is None
    assert job.finished_at is None
    assert job.attempts == 0
    assert job.row_count is None
    assert job.byte_size is None
    assert job.file_name is None
    assert job.delivery is None
    assert job.error_code is None
    assert job.error_message is None


def test_expiry_is_whole_seconds_for_epoch_ttls() -> None:
    # Sub-second precision is dropped from expires_at (it becomes an epoch-seconds TTL).
    now = NOW.replace(microsecond=999_999)

    job = ExportJob.new(user_id="u", fmt=ExportFormat.CSV, now=now, retention_s=60)

    assert job.created_at == now
    assert job.expires_at == NOW + timedelta(seconds=60)
    assert job.expires_at.microsecond == 0


def test_expiry_from_a_non_utc_clock_is_the_same_instant_in_utc() -> None:
    now = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))

    job = ExportJob.new(user_id="u", fmt=ExportFormat.CSV, now=now, retention_s=3600)

    assert job.expires_at == datetime(2024, 5, 1, 13, 0, tzinfo=UTC)
    assert job.expires_at.utcoffset() == timedelta(0)


def test_replace_returns_a_changed_copy_and_leaves_the_original() -> None:
    job = ExportJob.new(user_id="u", fmt=ExportFormat.CSV, now=NOW, retention_s=60)
    later = NOW + timedelta(seconds=5)

    started = job.replace(status=JobState.IN_PROGRESS, started_at=later, attempts=1)

    assert started.status is JobState.IN_PROGRESS
    assert started.started_at == later
    assert started.attempts == 1
    assert started.job_id == job.job_id
    assert job.status is JobState.QUEUED
    assert job.attempts == 0


def test_replace_rejects_unknown_fields() -> None:
    job = ExportJob.new(user_id="u", fmt=ExportFormat.CSV, now=NOW, retention_s=60)

    with pytest.raises(TypeError):
        job.replace(colour="blue")


def test_jobs_are_immutable() -> None:
    job = ExportJob.new(user_id="u", fmt=ExportFormat.CSV, now=NOW, retention_s=60)

    with pytest.raises(dataclasses.FrozenInstanceError):
        job.status = JobState.FAILED  # type: ignore[misc]


def test_utcnow_is_timezone_aware_utc() -> None:
    now = utcnow()

    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


# --- ExportMessageV1 ------------------------------------------------------------------------

EXPORT_ID = "0b7e6c1e-3f4a-4c1e-9d59-6f0e2a8b9c10"


def test_message_payload_round_trips() -> None:
    message = ExportMessageV1(export_id=EXPORT_ID, user_id="user-1")

    payload = message.to_payload()

    assert payload == {"v": MESSAGE_VERSION, "export_id": EXPORT_ID, "user_id": "user-1"}
    assert ExportMessageV1.from_payload(payload) == message


def test_message_payload_survives_json() -> None:
    message = ExportMessageV1(export_id=EXPORT_ID, user_id="user-1")

    assert ExportMessageV1.from_payload(json.loads(json.dumps(message.to_payload()))) == message


def test_message_version_is_one() -> None:
    assert MESSAGE_VERSION == 1
    assert ExportMessageV1(export_id=EXPORT_ID, user_id="u").v == 1


def test_message_accepts_unknown_extra_fields() -> None:
    # A newer producer may add optional fields within v1; this worker ignores them.
    payload = {"v": 1, "export_id": EXPORT_ID, "user_id": "u", "priority": "high"}

    assert ExportMessageV1.from_payload(payload) == ExportMessageV1(
        export_id=EXPORT_ID, user_id="u"
    )


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(2, id="newer"),
        pytest.param(0, id="older"),
        pytest.param("1", id="string"),
        pytest.param(None, id="null"),
    ],
)
def test_unknown_message_version_is_refused(version: object) -> None:
    payload = {"v": version, "export_id": EXPORT_ID, "user_id": "u"}

    with pytest.raises(ExportFailed) as info:
        ExportMessageV1.from_payload(payload)

    assert info.value.code == "unsupported_message_version"
    assert info.value.transient is False


def test_message_without_a_version_is_refused() -> None:
    with pytest.raises(ExportFailed) as info:
        ExportMessageV1.from_payload({"export_id": EXPORT_ID, "user_id": "u"})

    assert info.value.code == "unsupported_message_version"


@pytest.mark.parametrize("version", [True, 1.0])
def test_boolean_or_float_version_is_refused(version: object) -> None:
    with pytest.raises(ExportFailed) as info:
        ExportMessageV1.from_payload({"v": version, "export_id": EXPORT_ID, "user_id": "u"})

    assert info.value.code == "unsupported_message_version"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(None, id="null"),
        pytest.param([1, EXPORT_ID, "u"], id="list"),
        pytest.param("v=1", id="string"),
        pytest.param(1, id="int"),
        pytest.param(b'{"v": 1}', id="bytes"),
    ],
)
def test_non_mapping_payload_is_a_bad_message(payload: object) -> None:
    with pytest.raises(ExportFailed) as info:
        ExportMessageV1.from_payload(payload)

    assert info.value.code == "bad_message"
    assert info.value.transient is False


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"user_id": "u"}, id="missing-export-id"),
        pytest.param({"export_id": EXPORT_ID}, id="missing-user-id"),
        pytest.param({}, id="missing-both"),
        pytest.param({"export_id": uuid.UUID(EXPORT_ID), "user_id": "u"}, id="uuid-object"),
        pytest.param({"export_id": 123, "user_id": "u"}, id="numeric-export-id"),
        pytest.param({"export_id": None, "user_id": "u"}, id="null-export-id"),
        pytest.param({"export_id": EXPORT_ID, "user_id": 7}, id="numeric-user-id"),
        pytest.param({"export_id": EXPORT_ID, "user_id": None}, id="null-user-id"),
        pytest.param({"export_id": EXPORT_ID, "user_id": ["u"]}, id="list-user-id"),
        pytest.param({"export_id": "not-a-uuid", "user_id": "u"}, id="export-id-not-uuid"),
        pytest.param({"export_id": "", "user_id": "u"}, id="empty-export-id"),
        pytest.param({"export_id": EXPORT_ID[:-1], "user_id": "u"}, id="export-id-truncated"),
    ],
)
def test_malformed_message_fields_are_a_bad_message(fields: dict[str, object]) -> None:
    with pytest.raises(ExportFailed) as info:
        ExportMessageV1.from_payload({"v": 1, **fields})

    assert info.value.code == "bad_message"
    assert info.value.transient is False


def test_bad_message_error_carries_a_readable_message() -> None:
    with pytest.raises(ExportFailed) as info:
        ExportMessageV1.from_payload({"v": 1, "export_id": "nope", "user_id": "u"})

    assert info.value.message == "export_id is not a UUID"
    assert str(info.value) == info.value.message


# --- the optional request id (a log aid carried from the API to the worker) ---


def test_message_round_trips_with_its_request_id() -> None:
    message = ExportMessageV1(str(uuid.uuid4()), "u-1", request_id="req-1")
    payload = message.to_payload()
    assert payload["v"] == 1 and payload["request_id"] == "req-1"
    assert ExportMessageV1.from_payload(payload) == message


def test_message_from_an_older_api_without_request_id_still_parses() -> None:
    export_id = str(uuid.uuid4())
    old = {"v": 1, "export_id": export_id, "user_id": "u-1"}
    message = ExportMessageV1.from_payload(old)
    assert message.request_id is None
    assert message.to_payload() == old  # and nothing new is written when there is none


@pytest.mark.parametrize("bad", [7, "", "x" * 129, "a\nb"])
def test_a_bad_request_id_is_dropped_not_fatal(bad: object) -> None:
    payload = {"v": 1, "export_id": str(uuid.uuid4()), "user_id": "u-1", "request_id": bad}
    assert ExportMessageV1.from_payload(payload).request_id is None


def test_the_version_stays_strict() -> None:
    with pytest.raises(ExportFailed):
        ExportMessageV1.from_payload({"v": 2, "export_id": str(uuid.uuid4()), "user_id": "u"})


@pytest.mark.parametrize(
    ("status", "rows", "total", "expected"),
    [
        (JobState.QUEUED, None, None, None),
        (JobState.IN_PROGRESS, 0, None, None),
        (JobState.IN_PROGRESS, 250, 1000, 0.25),
        (JobState.IN_PROGRESS, 1200, 1000, 1.0),  # rows added since the count: never above 1
        (JobState.IN_PROGRESS, 0, 0, 0.0),
        (JobState.SUCCEEDED, 1000, 1000, 1.0),
        (JobState.SUCCEEDED, None, None, 1.0),
    ],
)
def test_progress_is_a_bounded_fraction_of_the_known_total(
    status: JobState, rows: int | None, total: int | None, expected: float | None
) -> None:
    job = ExportJob.new(user_id="u", fmt=ExportFormat.CSV, now=NOW, retention_s=60).replace(
        status=status, rows_exported=rows, total_rows=total
    )

    assert job.progress == expected


# --- the optional file name (the worker starts the run without reading the record) ---


def test_message_round_trips_with_its_file_name() -> None:
    message = ExportMessageV1(str(uuid.uuid4()), "u-1", file_name="memberships-2026-12-01.csv")
    payload = message.to_payload()
    assert payload["v"] == 1 and payload["file_name"] == "memberships-2026-12-01.csv"
    assert ExportMessageV1.from_payload(payload) == message
    assert ExportMessageV1.from_payload(json.loads(json.dumps(payload))) == message


def test_message_from_an_older_api_without_file_name_still_parses() -> None:
    old = {"v": 1, "export_id": str(uuid.uuid4()), "user_id": "u-1", "request_id": "r"}
    message = ExportMessageV1.from_payload(old)
    assert message.file_name is None
    assert message.to_payload() == old


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(7, id="number"),
        pytest.param("", id="empty"),
        pytest.param("../other-export/memberships.csv", id="parent"),
        pytest.param("a/b.csv", id="slash"),
        pytest.param("a\\b.csv", id="backslash"),
        pytest.param("..", id="dot-dot"),
        pytest.param(".hidden.csv", id="leading-dot"),
        pytest.param("memberships.csv\n", id="newline"),
        pytest.param("mémberships.csv", id="non-ascii"),
        pytest.param("with space.csv", id="space"),
        pytest.param("x" * 252 + ".csv", id="too-long"),
    ],
)
def test_a_file_name_that_is_not_a_plain_name_fails_the_message(bad: object) -> None:
    payload = {"v": 1, "export_id": str(uuid.uuid4()), "user_id": "u-1", "file_name": bad}

    with pytest.raises(ExportFailed) as info:
        ExportMessageV1.from_payload(payload)

    assert info.value.code == "bad_message" and not info.value.transient


def test_the_longest_plain_file_name_is_accepted() -> None:
    name = "x" * 251 + ".csv"
    payload = {"v": 1, "export_id": str(uuid.uuid4()), "user_id": "u-1", "file_name": name}
    assert ExportMessageV1.from_payload(payload).file_name == name
