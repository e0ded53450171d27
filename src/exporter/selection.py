"""Which columns and which rows an export holds, and in which time zone. Pure: no I/O.

``ExportSelection`` is validated where a request comes in (``api/schemas.py``) and checked
again by ``ExportSelection.from_dict`` whenever it is read back (the job record), so the
query builder (``store/memberships.py``) only ever sees names from the allow-lists below
and typed values (dates, members of a fixed vocabulary, a time zone the tz database knows).
A record without a selection (from before issue 17) is ``ALL``: every column, every row,
UTC, exactly as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from exporter.timezones import is_time_zone

# Column names and order of a full export; documented in the README. Stable: users script
# on them. ``store/memberships.py`` maps each name to its SQL.
COLUMNS: tuple[str, ...] = (
    "membership_id",
    "organization_id",
    "organization_name",
    "plan",
    "status",
    "role",
    "started_on",
    "ends_on",
    "auto_renew",
    "price",
    "currency",
    "created_at",
    "updated_at",
)
# The CHECK constraint of migration 0001 (tests/store/test_memberships.py pins it).
STATUSES: tuple[str, ...] = ("active", "trialing", "past_due", "cancelled", "expired")
# The product's plan catalogue: what the ``plan`` filter accepts.
PLANS: tuple[str, ...] = ("free", "pro", "team", "enterprise")
DEFAULT_TIME_ZONE = "UTC"


class SelectionError(ValueError):
    """A selection that breaks the rules; ``field`` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class ExportSelection:
    """Columns (in file order), row filters and the time zone of the timestamps."""

    columns: tuple[str, ...] = COLUMNS
    statuses: tuple[str, ...] = ()  # empty: every status
    plan: str | None = None
    started_from: date | None = None  # started_on between these two, both inclusive
    started_to: date | None = None
    updated_since: date | None = None  # updated_at at or after 00:00 of it in time_zone
    time_zone: str = DEFAULT_TIME_ZONE

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``SelectionError`` naming the field of the first rule broken."""
        if not self.columns:
            raise SelectionError("columns", "Name at least one column.")
        for name in self.columns:
            if name not in COLUMNS:
                raise SelectionError("columns", "Unknown column; see the documented columns.")
        if len(set(self.columns)) != len(self.columns):
            raise SelectionError("columns", "A column is named twice.")
        for status in self.statuses:
            if status not in STATUSES:
                raise SelectionError("status", f"Must be one of: {', '.join(STATUSES)}.")
        if len(set(self.statuses)) != len(self.statuses):
            raise SelectionError("status", "A status is named twice.")
        if self.plan is not None and self.plan not in PLANS:
            raise SelectionError("plan", f"Must be one of: {', '.join(PLANS)}.")
        if (self.started_from is None) != (self.started_to is None):
            raise SelectionError("started_between", "Give both from and to.")
        if (
            self.started_from is not None
            and self.started_to is not None
            and self.started_from > self.started_to
        ):
            raise SelectionError("started_between", "from must not be after to.")
        if not is_time_zone(self.time_zone):
            raise SelectionError("time_zone", "Unknown time zone; use an IANA name.")

    @property
    def is_all(self) -> bool:
        return self == ALL

    @property
    def filtered(self) -> bool:
        """Some rows may be left out."""
        return bool(
            self.statuses
            or self.plan is not None
            or self.started_from is not None
            or self.updated_since is not None
        )

    def filters(self) -> dict[str, Any]:
        """The row filters as the API names them (empty: every row)."""
        out: dict[str, Any] = {}
        if self.statuses:
            out["status"] = list(self.statuses)
        if self.plan is not None:
            out["plan"] = self.plan
        if self.started_from is not None and self.started_to is not None:
            out["started_between"] = {
                "from": self.started_from.isoformat(),
                "to": self.started_to.isoformat(),
            }
        if self.updated_since is not None:
            out["updated_since"] = self.updated_since.isoformat()
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data: what the job record keeps and an idempotency key's fingerprint hashes."""
        return {"columns": list(self.columns), **self.filters(), "time_zone": self.time_zone}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: object) -> ExportSelection:
        """The inverse of ``to_dict``; raises ``SelectionError`` on anything else."""
        if not isinstance(data, dict):
            raise SelectionError("$", "Expected an object.")
        try:
            between = data.get("started_between")
            since = data.get("updated_since")
            return cls(
                columns=tuple(data.get("columns", COLUMNS)),
                statuses=tuple(data.get("status", ())),
                plan=data.get("plan"),
                started_from=date.fromisoformat(between["from"]) if between else None,
                started_to=date.fromisoformat(between["to"]) if between else None,
                updated_since=date.fromisoformat(since) if since else None,
                time_zone=str(data.get("time_zone", DEFAULT_TIME_ZONE)),
            )
        except (TypeError, KeyError, ValueError) as exc:
            if isinstance(exc, SelectionError):
                raise
            raise SelectionError("$", "Not a selection.") from None

    @classmethod
    def from_json(cls, text: str) -> ExportSelection:
        try:
            data = json.loads(text)
        except ValueError:
            raise SelectionError("$", "Not JSON.") from None
        return cls.from_dict(data)

    def file_name_part(self) -> str:
        """What the file name says about the selection ('' for everything): only names from
        the allow-lists and ISO dates, so it is safe in any file system."""
        parts: list[str] = []
        if self.statuses:
            parts.append("status-" + "+".join(self.statuses))
        if self.plan is not None:
            parts.append(f"plan-{self.plan}")
        if self.started_from is not None and self.started_to is not None:
            parts.append(f"started-{self.started_from:%Y%m%d}-{self.started_to:%Y%m%d}")
        if self.updated_since is not None:
            parts.append(f"updated-since-{self.updated_since:%Y%m%d}")
        if self.columns != COLUMNS:
            parts.append(f"{len(self.columns)}-columns")
        if self.time_zone != DEFAULT_TIME_ZONE:
            parts.append(self.time_zone.replace("/", "_"))
        return "".join(f"_{p}" for p in parts)


ALL = ExportSelection()
