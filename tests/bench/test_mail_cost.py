"""``python -m bench.mail_cost`` at a toy size: the email it measures the old way (the
baseline kept in the bench: ``EmailMessage`` under ``policy.default``) and the new way is
the same email, and it reports every stage. Never timings: the machine may be busy."""

from __future__ import annotations

import io
import uuid

import pytest
from bench.mail_cost import (
    build_before,
    build_now,
    csv_like,
    flatten_before,
    flatten_now,
    main,
    same_email,
    wire_before,
    wire_now,
)


@pytest.mark.parametrize("size", [0, 1, 57 * 1024, 190 * 1024])
def test_the_baseline_and_the_new_way_make_the_same_email(size: int) -> None:
    source, export_id = io.BytesIO(csv_like(size)), str(uuid.uuid4())
    message, marker = build_before(source, export_id)
    email = build_now(source, export_id)

    same_email(
        wire_before(flatten_before(message), marker, source), wire_now(flatten_now(email), email)
    )


def test_the_bench_reports_every_stage_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--emails", "2", "--rounds", "1", "--attachment-kb", "3"])

    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["stage", "before", "now"]
    assert [line.split()[0] for line in lines[2:6]] == ["build", "flatten", "wire", "total"]
    assert "load average" in lines[6]
