"""``make bench-rush`` at a toy size: it runs end to end on the real local stack, reports
every round in the shape docs/benchmarks.md describes, and every export it asked for was
e-mailed exactly once. Counts, never timings: the machine may be busy."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench.rush import default_threshold, dynamodb_calls_in, parse_args, table
from prometheus_client import CollectorRegistry, Counter, generate_latest

ROOT = Path(__file__).resolve().parents[2]
SMALL_USERS, LARGE_USERS = 4, 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_toy_rush_delivers_every_export_exactly_once_in_all_three_rounds(
    tmp_path: Path,
) -> None:
    report_path = tmp_path / "rush.json"
    bench = subprocess.run(
        [
            *(sys.executable, "-m", "bench.rush"),
            *("--small-users", str(SMALL_USERS), "--small-rows", "20"),
            *("--large-users", str(LARGE_USERS), "--large-rows", "3000"),
            *("--warmup-users", "2", "--spread-s", "0.5", "--settle-s", "1"),
            *("--timeout-s", "120", "--out", str(report_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    text = bench.stdout + bench.stderr
    assert bench.returncode == 0, text
    report = json.loads(report_path.read_text())

    assert report["sizes"]["large_threshold_rows"] == 1510  # halfway: 20 and 3000 rows
    rounds = {r["round"]: r for r in report["rounds"]}
    assert list(rounds) == ["a", "b", "c"]
    assert [rounds[k]["routing"] for k in "abc"] == [False, True, True]
    for key, r in rounds.items():
        asked = SMALL_USERS + (LARGE_USERS if key != "c" else 0)
        assert r["errors"] == {}, r
        assert r["accepted"] == r["delivered_once"] == asked
        assert r["small_request_to_email_ms"]["n"] == SMALL_USERS
        assert len(r["large_request_to_email_s"]) == (LARGE_USERS if key != "c" else 0)
        assert r["small_per_min"] > 0
        assert r["post_ms"]["peak_in_flight"] >= 1
        # Every process of the stack is accounted for by name.
        assert {"api", "worker-1", "worker-2", "dynamodb-local", "smtp sink"} <= set(r["cpu_s"])
        assert r["cpu_ms_all_in_per_small_export"] > 0
        assert "dynamodb_calls_per_create" in r and "dynamodb_calls_per_run" in r
        unknown = r["size_unknown_at_create"]  # how many, depends on the machine's load
        assert set(unknown) == {"small", "large"} and unknown["large"] <= LARGE_USERS

    # The sink's own record, independently of the report's arithmetic: one export e-mail
    # per export, no failure notice, and as many exports as the rounds accepted (plus the
    # unmeasured warm-up's two).
    lines = [json.loads(line) for line in Path(ROOT, report["mail_log"]).read_text().splitlines()]
    per_export = collections.Counter(
        line["export_id"] for line in lines if line["kind"] == "export"
    )
    assert set(per_export.values()) == {1}
    assert len(per_export) == sum(r["accepted"] for r in rounds.values()) + 2
    assert all(line["kind"] == "export" for line in lines)

    # The side-by-side table, as printed.
    assert "| | (a) routing off | (b) routing on | (c) routing on, no large users |" in text
    assert "DynamoDB calls per create" in text
    assert text.count("target: ") == 4


def test_the_threshold_separates_the_sizes_and_rounds_are_each_run_once() -> None:
    assert default_threshold(1000, 500_000) == 100_000
    assert default_threshold(1000, 50_000) == 25_500
    assert parse_args(["--large-threshold", "7"]).large_threshold == 7
    assert parse_args(["--rounds", "cb"]).rounds == "cb"
    for wrong in ("abd", "aa", ""):
        with pytest.raises(SystemExit):
            parse_args(["--rounds", wrong])


def test_a_measure_nobody_took_reads_n_a() -> None:
    row = {
        "title": "(x)",
        "routing": True,
        "size_unknown_at_create": {"small": 0, "large": 1},
        "asked": {"small": 1, "large": 0},
        "accepted": 1,
        "worker_processes": 2,
        "worker_nice": 10,
        "slots_per_process": {"small": 4, "large": 2},
        "delivered_once": 1,
        "errors": {},
        "small_request_to_email_ms": {"p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0},
        "small_per_min": 60,
        "small_done_after_s": 1.0,
        "large_request_to_email_s": [],
        "post_ms": {"p50": 1.0, "p99": 1.0, "peak_in_flight": 1, "last_answered_s": 0.1},
        "cpu_ms_per_export": {"api": 1.0},
        "cpu_ms_all_in_per_small_export": 1.0,
        "dynamodb_calls_per_create": None,
        "dynamodb_calls_per_run": 2.5,
        "dynamodb_writes_per_run": 2.0,
    }
    rendered = table([row])
    assert "| DynamoDB calls per create | n/a |" in rendered
    assert "| DynamoDB calls (writes) per run | 2.5 (2.0) |" in rendered
    assert "| size unknown at create, small + large (routed to the default queue) | 0 + 1 |" in (
        rendered
    )
    assert "| worker processes x slots (small + large), at nice | 2 x (4 + 2), 10 |" in rendered


def test_dynamodb_calls_are_read_by_operation_and_absent_reads_none() -> None:
    registry = CollectorRegistry()
    calls = Counter("exporter_dynamodb_calls", "DynamoDB calls", ["operation"], registry=registry)
    calls.labels("GetItem").inc(3)
    calls.labels("TransactWriteItems").inc(2)
    other = Counter("exporter_other", "something else", registry=registry)
    other.inc(7)
    page = generate_latest(registry).decode()
    assert dynamodb_calls_in(page) == {"GetItem": 3, "TransactWriteItems": 2}
    assert dynamodb_calls_in("# nothing here\n") is None
