"""When a waiting export may start and finish: a small model over measured runs (no I/O).

What is measured, per queue (``queue.py`` keeps it in Redis): the last successful runs, each
as (rows, seconds from pick-up to done), and the slots serving the queue now (each live
worker process counts its ``max_jobs``). From those:

- ``mean_s``: the mean run time, the time one slot takes per job ahead;
- ``rows_per_s``: Σ rows / Σ seconds, the queue's streaming rate per slot;
- this export's run time: ``estimated_rows / rows_per_s``, at least the shortest run seen
  (the fixed cost of any export), or ``mean_s`` when its size is unknown.

A job at ``position`` p with ``running_ahead`` R runs in progress before it, on S slots,
starts when p + R - S of those jobs have ended (none: a slot is free now); slots free up at
S / ``mean_s`` jobs per second, so it waits ``max(0, p + R - S) * mean_s / S``. Nothing
measured yet, or no live worker on the queue: no estimate (None), rather than a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RunSample:
    """One successful run: rows exported and seconds it took."""

    rows: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class WaitEstimate:
    start_at: datetime | None = None
    finish_at: datetime | None = None


def estimate_wait(
    *,
    position: int,
    running_ahead: int,
    slots: int,
    runs: list[RunSample],
    estimated_rows: int | None,
    now: datetime,
) -> WaitEstimate:
    """The model of the module docstring."""
    if not runs or slots <= 0:
        return WaitEstimate()
    total_s = sum(max(0.0, r.duration_s) for r in runs)
    total_rows = sum(max(0, r.rows) for r in runs)
    mean_s = total_s / len(runs)
    if estimated_rows is None or total_rows == 0:
        run_s = mean_s
    else:
        run_s = max(min(r.duration_s for r in runs), estimated_rows * total_s / total_rows)
    must_end = max(0, position + running_ahead - slots)
    start_at = now + timedelta(seconds=must_end * mean_s / slots)
    return WaitEstimate(start_at=start_at, finish_at=start_at + timedelta(seconds=run_s))
