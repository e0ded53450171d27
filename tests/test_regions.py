"""The cross-region ownership rule (regions.py), case by case."""

from __future__ import annotations

import pytest

from exporter.regions import file_region, may_run, may_schedule, may_sweep, may_take_over

A, B = "eu-west-1", "eu-central-1"
NONE: frozenset[str] = frozenset()


@pytest.mark.parametrize(
    ("home", "here", "failed", "run", "take_over"),
    [
        # One region (no EXPORTER_REGION): every job is ours, as before regions existed.
        (None, None, NONE, True, False),
        (A, None, NONE, True, False),
        (A, None, {A}, True, False),
        # Two regions, all healthy: each runs its own, never the other's.
        (A, A, NONE, True, False),
        (A, B, NONE, False, False),
        # Created before regions were turned on: owned by every region.
        (None, B, NONE, True, False),
        # Region a declared failed: b takes a's jobs over (the claim re-homes them) and a,
        # fenced, runs nothing, not even its own.
        (A, B, {A}, False, True),
        (A, A, {A}, False, False),
        (B, A, {A}, False, False),
        # b declared failed too (both): nobody runs anything.
        (A, B, {A, B}, False, False),
        # The other region's failure changes nothing for a job at home.
        (B, B, {A}, True, False),
    ],
)
def test_ownership(
    home: str | None, here: str | None, failed: set[str], run: bool, take_over: bool
) -> None:
    assert may_run(home, here=here, failed=failed) is run
    assert may_take_over(home, here=here, failed=failed) is take_over
    assert may_sweep(home, here=here, failed=failed) is (run or take_over)


def test_a_workers_rule_never_runs_a_job_it_did_not_take_over() -> None:
    """A worker runs only its own region's jobs: a failed region's job must first be
    re-homed by the sweeper's claim, so the region that comes back cannot claim it too."""
    assert not may_run(A, here=B, failed={A})
    assert may_run(B, here=B, failed={A})


@pytest.mark.parametrize(
    ("recorded", "here", "expected"),
    [(None, None, None), (None, A, None), (A, A, None), (A, B, A), (B, None, B)],
)
def test_file_region(recorded: str | None, here: str | None, expected: str | None) -> None:
    assert file_region(recorded, here=here) == expected


def test_a_scheduler_claims_nothing_while_its_region_is_declared_failed() -> None:
    assert may_schedule(here=None, failed={"eu-west-1"})  # one region: nothing to honour
    assert may_schedule(here="eu-central-1", failed={"eu-west-1"})
    assert not may_schedule(here="eu-west-1", failed={"eu-west-1"})
