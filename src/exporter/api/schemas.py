"""Request and response schemas: they validate input and document the API (OpenAPI 3)."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from exporter.models import ExportFormat, JobState
from exporter.selection import (
    COLUMNS,
    DEFAULT_TIME_ZONE,
    PLANS,
    STATUSES,
    ExportSelection,
)
from exporter.timezones import is_time_zone, time_zone_names


class JsonBoolean(fields.Boolean):
    """JSON ``true``/``false`` only. ``truthy={True}`` alone lets 0 and 1 through, because
    ``0 in {False}`` holds in Python (0 == False, same hash)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE  # unknown fields are an error, not silently dropped


# --- requests -------------------------------------------------------------------------------


class TokenRequest(StrictSchema):
    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024))


class RefreshRequest(StrictSchema):
    refresh_token = fields.String(required=True, validate=validate.Length(min=1, max=4096))


class DateRange(StrictSchema):
    from_ = fields.Date(
        required=True,
        data_key="from",
        metadata={"description": "First day (inclusive), YYYY-MM-DD.", "example": "2025-01-01"},
    )
    to = fields.Date(
        required=True,
        metadata={"description": "Last day (inclusive), YYYY-MM-DD.", "example": "2025-12-31"},
    )

    @validates_schema
    def _ordered(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["from_"] > data["to"]:
            raise ValidationError("from must not be after to.", field_name="from")


def _time_zone(value: str) -> None:
    if not is_time_zone(value):
        raise ValidationError("Unknown time zone; use an IANA name such as Europe/Paris.")


class CreateExportRequest(StrictSchema):
    format = fields.String(
        load_default=ExportFormat.CSV.value,
        validate=validate.OneOf([f.value for f in ExportFormat]),
        metadata={
            "description": "File format: `csv`, `csv.gz`, `jsonl` (one JSON object per "
            "line), `parquet` (typed, zstd) or `xlsx` (an Excel workbook; past 1,048,576 "
            "rows the rows continue on a second sheet).",
            "example": "csv",
        },
    )
    bom = JsonBoolean(
        load_default=False,
        # JSON true/false only: "yes" or 1 is a mistake worth a 422, not a guess.
        metadata={
            "description": "Start the CSV with a UTF-8 byte order mark, so Excel on Windows "
            "reads accents and non-Latin names correctly (`csv` and `csv.gz` only).",
            "example": False,
        },
    )
    columns = fields.List(
        fields.String(validate=validate.OneOf(COLUMNS)),
        load_default=None,
        validate=validate.Length(min=1, max=len(COLUMNS)),
        metadata={
            "description": "Which columns, in this order (default: all of them, in the "
            "documented order). Each at most once.",
            "example": ["organization_name", "plan", "status", "started_on"],
        },
    )
    status = fields.List(
        fields.String(validate=validate.OneOf(STATUSES)),
        load_default=None,
        validate=validate.Length(min=1, max=len(STATUSES)),
        metadata={
            "description": "Only memberships in one of these statuses.",
            "example": ["active", "trialing"],
        },
    )
    plan = fields.String(
        load_default=None,
        validate=validate.OneOf(PLANS),
        metadata={"description": "Only memberships on this plan.", "example": "pro"},
    )
    started_between = fields.Nested(
        DateRange,
        load_default=None,
        metadata={"description": "Only memberships whose `started_on` is in this range."},
    )
    updated_since = fields.Date(
        load_default=None,
        metadata={
            "description": "Only memberships updated on or after this day (from 00:00 in "
            "`time_zone`).",
            "example": "2026-01-01",
        },
    )
    time_zone = fields.String(
        load_default=DEFAULT_TIME_ZONE,
        validate=[validate.Length(min=1, max=64), _time_zone],
        metadata={
            "description": "IANA time zone of the timestamps (default `UTC`): CSV and JSON "
            "lines write ISO 8601 with its offset, xlsx its wall-clock time, parquet "
            "timestamps carry it.",
            "example": "Europe/Paris",
            # Every zone the service knows, as for schedules: the self-service page offers
            # exactly these, read from this document.
            "enum": time_zone_names(),
        },
    )

    @validates_schema
    def _consistent(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}
        for name in ("columns", "status"):
            values = data.get(name)
            if values is not None and len(set(values)) != len(values):
                errors[name] = ["Name each value at most once."]
        if data.get("bom") and not ExportFormat(data["format"]).is_csv:
            errors["bom"] = ["A byte order mark applies only to csv and csv.gz."]
        if errors:
            raise ValidationError(errors)

    @staticmethod
    def selection(data: dict[str, Any]) -> ExportSelection:
        """The validated options as the export's selection."""
        between = data.get("started_between")
        return ExportSelection(
            columns=tuple(data["columns"]) if data.get("columns") else COLUMNS,
            statuses=tuple(data["status"]) if data.get("status") else (),
            plan=data.get("plan"),
            started_from=between["from_"] if between else None,
            started_to=between["to"] if between else None,
            updated_since=data.get("updated_since"),
            time_zone=data.get("time_zone") or DEFAULT_TIME_ZONE,
        )


class ExportPath(StrictSchema):
    export_id = fields.UUID(required=True, metadata={"description": "The export's id."})


class ListExportsQuery(StrictSchema):
    limit = fields.Integer(
        load_default=None,
        validate=validate.Range(min=1, max=100),
        metadata={"description": "Page size, 1 to 100 (default 20)."},
    )
    cursor = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=1024),
        metadata={"description": "Opaque cursor from a previous page's `next_cursor`."},
    )


# --- responses ------------------------------------------------------------------------------


class TokenResponse(Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = fields.Integer(required=True, metadata={"description": "Seconds."})


class Jwk(Schema):
    kty = fields.String()
    crv = fields.String()
    x = fields.String()
    y = fields.String()
    kid = fields.String()
    use = fields.String()
    alg = fields.String()


class JwksResponse(Schema):
    keys = fields.List(fields.Nested(Jwk))


class ExportError(Schema):
    code = fields.String(required=True, metadata={"example": "user_unavailable"})
    message = fields.String(required=True)


class ExportLinks(Schema):
    self = fields.String(required=True)
    download = fields.String(
        metadata={
            "description": "Present once the export succeeded and until its file expires: "
            "the file, for this API's bearer token (a browser uses `POST "
            "/v1/exports/{id}/download-link` instead)."
        }
    )


class ExportManifest(Schema):
    file_name = fields.String(required=True)
    format = fields.String(required=True)
    row_count = fields.Integer(required=True, metadata={"description": "Rows, without header."})
    byte_size = fields.Integer(required=True)
    columns = fields.List(fields.String(), required=True)
    time_zone = fields.String(
        required=True, metadata={"description": "Time zone of every timestamp in the file."}
    )
    filters = fields.Dict(
        keys=fields.String(),
        metadata={
            "description": "The row filters the export applied (`status`, `plan`, "
            "`started_between`, `updated_since`); empty: every row."
        },
    )
    sha256 = fields.String(
        required=True,
        metadata={"description": "SHA-256 of the file (hex); check it with `sha256sum`."},
    )


class ExportResponse(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in JobState]))
    format = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(required=True)
    attempts = fields.Integer(required=True)
    row_count = fields.Integer(allow_none=True)
    rows_exported = fields.Integer(
        allow_none=True,
        metadata={
            "description": "Rows written so far while running (an estimate, at most "
            "`total_rows`); `row_count` once finished. Updated every few seconds."
        },
    )
    total_rows = fields.Integer(
        allow_none=True,
        metadata={"description": "Rows the export will hold, counted when streaming started."},
    )
    progress = fields.Float(
        allow_none=True,
        validate=validate.Range(min=0, max=1),
        metadata={
            "description": "0 to 1 while running and the total is known; 1 once succeeded.",
            "example": 0.42,
        },
    )
    estimated_rows = fields.Integer(
        allow_none=True,
        metadata={
            "description": "Rows counted when the export was requested (what decided its "
            "queue: large exports have their own workers); null if they could not be counted."
        },
    )
    queue_position = fields.Integer(
        allow_none=True,
        validate=validate.Range(min=1),
        metadata={
            "description": "While `queued` (single export view): 1 when it is next to "
            "start in its queue.",
            "example": 3,
        },
    )
    estimated_start_at = fields.DateTime(
        allow_none=True,
        metadata={
            "description": "While `queued`: when it should start, from the measured "
            "throughput of its queue; null until something is measured."
        },
    )
    estimated_finish_at = fields.DateTime(
        allow_none=True,
        metadata={"description": "While `queued`: when it should finish, from its size."},
    )
    byte_size = fields.Integer(allow_none=True)
    file_name = fields.String(allow_none=True)
    delivery = fields.String(
        allow_none=True,
        validate=validate.OneOf(["email_attachment", "download_link"]),
        metadata={"example": "email_attachment"},
    )
    bom = fields.Boolean(required=True)
    columns = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The file's columns, in order (as asked for)."},
    )
    filters = fields.Dict(
        keys=fields.String(),
        required=True,
        metadata={
            "description": "The row filters asked for (`status`, `plan`, `started_between`, "
            "`updated_since`); empty: every row."
        },
    )
    time_zone = fields.String(
        required=True, metadata={"description": "Time zone of the file's timestamps."}
    )
    download_expires_at = fields.DateTime(
        allow_none=True, metadata={"description": "When the downloadable file is deleted."}
    )
    download_count = fields.Integer(
        required=True,
        metadata={"description": "How many times its download links were used (audited)."},
    )
    last_downloaded_at = fields.DateTime(allow_none=True)
    next_attempt_at = fields.DateTime(
        allow_none=True,
        metadata={
            "description": "While an outage is waited out (status stays `in_progress`): "
            "when the next try starts."
        },
    )
    last_error = fields.String(
        allow_none=True,
        metadata={"description": "While waiting for the next try: what is wrong, in words."},
    )
    failure_notice = fields.String(
        allow_none=True,
        validate=validate.OneOf(["sent", "pending", "not_sent"]),
        metadata={"description": "For a failed export: whether its notice email went out."},
    )
    manifest = fields.Nested(
        ExportManifest,
        allow_none=True,
        metadata={"description": "What the file holds, once it exists."},
    )
    delivery_error = fields.Nested(
        ExportError,
        allow_none=True,
        metadata={
            "description": "Why the file was not delivered (e.g. the mail server refused "
            "the address); the export succeeded and its file can be downloaded."
        },
    )
    error = fields.Nested(ExportError, allow_none=True)
    links = fields.Nested(ExportLinks, required=True)


class ExportListLinks(Schema):
    next = fields.String(allow_none=True)


class ExportListResponse(Schema):
    items = fields.List(fields.Nested(ExportResponse), required=True)
    next_cursor = fields.String(allow_none=True)
    links = fields.Nested(ExportListLinks, required=True)


class FieldError(Schema):
    field = fields.String(required=True)
    message = fields.String(required=True)
    location = fields.String()


class Problem(Schema):
    """RFC 9457 problem details (application/problem+json)."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    code = fields.String(required=True, metadata={"description": "Stable machine-readable code."})
    errors = fields.List(fields.Nested(FieldError))


class HealthResponse(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String())


# --- export schedules -----------------------------------------------------------------------


class DayOfMonthField(fields.Field):
    """1 to 28, or ``"last"``: the days every month has. A precise message for 29 to 31."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's own class attribute
        "invalid": 'Must be a whole number from 1 to 28, or "last".',
        "missing_days": 'Days 29 to 31 are missing from some months: use "last" for the '
        "month's last day.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value == "last" and isinstance(value, str):
            return value
        if type(value) is not int:  # not a bool, a float or a numeric string
            raise self.make_error("invalid")
        if 29 <= value <= 31:
            raise self.make_error("missing_days")
        if not 1 <= value <= 28:
            raise self.make_error("invalid")
        return value

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class TimeZoneField(fields.String):
    """An IANA time zone name this service knows, e.g. ``Europe/Berlin``."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's own class attribute
        "unknown_zone": "Unknown time zone: use an IANA name such as Europe/Berlin or "
        "America/New_York.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = str(super()._deserialize(value, attr, data, **kwargs))
        if not is_time_zone(text):
            raise self.make_error("unknown_zone")
        return text


_DAY_DOC: dict[str, Any] = {
    "description": 'The day of the month the export runs: 1 to 28, or "last" (the month\'s '
    "last day). 29 to 31 are refused: not every month has them.",
    "oneOf": [
        {"type": "integer", "minimum": 1, "maximum": 28},
        {"type": "string", "enum": ["last"]},
    ],
    "example": 1,
}
_ZONE_DOC: dict[str, Any] = {
    "description": "IANA time zone the day is counted in; the export starts at a stable "
    "time in the configured early-morning window of that day (spread, like cron's H).",
    "example": "Europe/Berlin",
    # The document names every zone the service knows, so a client (or a fuzzer) can tell
    # a valid value from the schema alone.
    "enum": time_zone_names(),
}


class CreateScheduleRequest(StrictSchema):
    frequency = fields.String(
        load_default="monthly",
        validate=validate.OneOf(["monthly"]),
        metadata={"description": "Only `monthly` for now.", "example": "monthly"},
    )
    day_of_month = DayOfMonthField(required=True, metadata=_DAY_DOC)
    time_zone = TimeZoneField(
        required=True, validate=validate.Length(min=1, max=64), metadata=_ZONE_DOC
    )
    format = fields.String(
        load_default=ExportFormat.CSV.value,
        validate=validate.OneOf([f.value for f in ExportFormat]),
        metadata={"description": "File format of each export.", "example": "csv"},
    )
    bom = JsonBoolean(
        load_default=False,
        metadata={"description": "Start each CSV with a UTF-8 byte order mark.", "example": False},
    )


class UpdateScheduleRequest(StrictSchema):
    day_of_month = DayOfMonthField(metadata=_DAY_DOC)
    time_zone = TimeZoneField(validate=validate.Length(min=1, max=64), metadata=_ZONE_DOC)
    format = fields.String(validate=validate.OneOf([f.value for f in ExportFormat]))
    bom = JsonBoolean()
    paused = JsonBoolean(
        metadata={
            "description": "true pauses the schedule; false resumes it from its next day "
            "(runs missed while paused are not made up)."
        }
    )


class SchedulePath(StrictSchema):
    schedule_id = fields.UUID(required=True, metadata={"description": "The schedule's id."})


class ScheduleRunResponse(Schema):
    due_at = fields.DateTime(required=True, metadata={"description": "When the run was due."})
    ran_at = fields.DateTime(required=True)
    outcome = fields.String(
        required=True,
        validate=validate.OneOf(
            ["created", "skipped_active", "skipped_quota", "failed", "stopped"]
        ),
        metadata={
            "description": "`created` (the export is `export_id`); `skipped_active` (you "
            "had an export running: `export_id` is that one, and the run is tried again "
            "later that day); `skipped_quota` and `failed` are tried again too; `stopped`: "
            "the account is disabled."
        },
    )
    export_id = fields.UUID(allow_none=True)


class ScheduleLinks(Schema):
    self = fields.String(required=True)


class ScheduleResponse(Schema):
    id = fields.UUID(required=True)
    frequency = fields.String(required=True, metadata={"example": "monthly"})
    day_of_month = DayOfMonthField(required=True, metadata=_DAY_DOC)
    time_zone = fields.String(required=True, metadata={"example": "Europe/Berlin"})
    format = fields.String(required=True)
    bom = fields.Boolean(required=True)
    paused = fields.Boolean(required=True)
    paused_reason = fields.String(
        allow_none=True,
        validate=validate.OneOf(["user", "unsubscribed", "operator", "user_inactive"]),
    )
    next_run_at = fields.DateTime(
        allow_none=True,
        metadata={"description": "When the next export starts (UTC); null while paused."},
    )
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    runs = fields.List(
        fields.Nested(ScheduleRunResponse),
        required=True,
        metadata={"description": "The last runs, oldest first."},
    )
    links = fields.Nested(ScheduleLinks, required=True)


class ScheduleListResponse(Schema):
    items = fields.List(fields.Nested(ScheduleResponse), required=True)
