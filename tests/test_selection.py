"""The export's selection: its rules, its round trip through the job record, and what the
file name says about it."""

from __future__ import annotations

from datetime import date

import pytest

from exporter.selection import ALL, COLUMNS, ExportSelection, SelectionError


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"columns": ()}, "columns"),
        ({"columns": ("plan", "nope")}, "columns"),
        ({"columns": ("plan", "plan")}, "columns"),
        ({"statuses": ("active", "gone")}, "status"),
        ({"statuses": ("active", "active")}, "status"),
        ({"plan": "platinum"}, "plan"),
        ({"started_from": date(2026, 1, 2)}, "started_between"),
        ({"started_from": date(2026, 1, 2), "started_to": date(2026, 1, 1)}, "started_between"),
        ({"time_zone": "Mars/Base"}, "time_zone"),
        ({"time_zone": "../../etc/passwd"}, "time_zone"),
    ],
)
def test_a_selection_that_breaks_a_rule_cannot_exist(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(SelectionError) as raised:
        ExportSelection(**changes)  # type: ignore[arg-type]
    assert raised.value.field == field


def test_json_round_trip_and_defaults() -> None:
    chosen = ExportSelection(
        columns=("price", "plan"),
        statuses=("expired",),
        plan="team",
        started_from=date(2025, 1, 1),
        started_to=date(2025, 1, 1),
        updated_since=date(2026, 2, 28),
        time_zone="Asia/Kolkata",
    )
    assert ExportSelection.from_json(chosen.to_json()) == chosen
    assert ExportSelection.from_json(ALL.to_json()) is not ALL
    assert ExportSelection.from_json(ALL.to_json()).is_all
    assert ALL.columns == COLUMNS and ALL.time_zone == "UTC" and not ALL.filtered
    assert chosen.filters() == {
        "status": ["expired"],
        "plan": "team",
        "started_between": {"from": "2025-01-01", "to": "2025-01-01"},
        "updated_since": "2026-02-28",
    }


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"columns": "plan"}',
        '{"columns": ["nope"]}',
        '{"started_between": {"from": "2026-01-01"}}',
        '{"updated_since": "yesterday"}',
        "not json",
    ],
)
def test_a_record_with_a_bad_selection_is_refused_not_guessed(text: str) -> None:
    with pytest.raises(SelectionError):
        ExportSelection.from_json(text)


def test_the_file_name_part_says_what_was_chosen_in_safe_characters() -> None:
    assert ALL.file_name_part() == ""
    chosen = ExportSelection(
        columns=("plan",),
        statuses=("active", "trialing"),
        updated_since=date(2026, 1, 1),
        time_zone="America/Argentina/Buenos_Aires",
    )
    assert chosen.file_name_part() == (
        "_status-active+trialing_updated-since-20260101_1-columns_America_Argentina_Buenos_Aires"
    )
