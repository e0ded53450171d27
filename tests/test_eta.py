"""The ETA model of a waiting export (``exporter.eta``): pure arithmetic over measured runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from exporter.eta import RunSample, WaitEstimate, estimate_wait

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
RUNS = [RunSample(rows=1000, duration_s=1.0), RunSample(rows=3000, duration_s=3.0)]


def _wait(**kwargs: object) -> WaitEstimate:
    args: dict[str, object] = {
        "position": 1,
        "running_ahead": 0,
        "slots": 1,
        "runs": RUNS,
        "estimated_rows": None,
        "now": NOW,
    }
    args.update(kwargs)
    return estimate_wait(**args)  # type: ignore[arg-type]  # the test varies one at a time


def test_nothing_measured_or_nobody_serving_gives_no_estimate() -> None:
    assert _wait(runs=[]) == WaitEstimate()
    assert _wait(slots=0) == WaitEstimate()


def test_a_free_slot_starts_it_now_and_a_full_queue_waits_for_runs_to_end() -> None:
    # Mean run 2 s. Position 1 with 4 slots, 3 running: a slot is free.
    assert _wait(position=1, running_ahead=3, slots=4).start_at == NOW
    # Position 3 on 2 slots, both busy: 3 runs must end, 2 per 2 s.
    assert _wait(position=3, running_ahead=2, slots=2).start_at == NOW + timedelta(seconds=3)


def test_its_run_time_follows_its_size_but_never_below_the_shortest_run() -> None:
    # 4000 rows in 4 s measured: 1000 rows/s.
    big = _wait(estimated_rows=60_000)
    assert big.start_at is not None and big.finish_at == big.start_at + timedelta(seconds=60)
    tiny = _wait(estimated_rows=1)
    assert tiny.start_at is not None and tiny.finish_at == tiny.start_at + timedelta(seconds=1)
    unknown = _wait(estimated_rows=None)  # the mean run
    assert unknown.start_at is not None
    assert unknown.finish_at == unknown.start_at + timedelta(seconds=2)
