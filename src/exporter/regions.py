"""Which region may work on an export: the cross-region ownership rule. Pure; no I/O.

DynamoDB global tables replicate every write to the other region asynchronously (typically
within a second) and settle concurrent writes to one item by last writer wins, so a
conditional write is only exclusive within the region that makes it. The one-active-export
rule, the state machine and the email guard (``email_sent_at``) therefore hold across
regions only if one region at a time writes a job's record. This module says which:

- A job is **owned by its home region** (``home_region``, the region whose API created it).
  Only that region's workers run it and only its sweeper repairs it.
- Another region takes a job over **only once its home region is declared failed** (a flag
  an operator sets in the surviving region: docs/operations.md). The takeover is the
  sweeper's conditional claim, which also re-homes the job before it is enqueued here, so
  workers only ever run their own region's jobs and the region that comes back finds the
  job no longer its own.
- A region that sees **itself** declared failed is fenced: it runs nothing, not even its own
  jobs, until the flag is cleared (failback), because the other region owns them meanwhile.
- With no region configured (one region, local, tests) every process owns every job, as
  before regions existed. A job without a home (created before regions were turned on) is
  owned by every region.
"""

from __future__ import annotations

from collections.abc import Collection


def may_run(home: str | None, *, here: str | None, failed: Collection[str]) -> bool:
    """Whether region ``here`` may run a job homed in ``home`` (a worker's rule), while the
    regions in ``failed`` are declared failed. Workers run only their own region's jobs: a
    job moves between regions only by the sweeper's takeover claim, which re-homes it."""
    if here is None:
        return True  # one region: no ownership to honour
    if here in failed:
        return False  # fenced: the surviving region owns every job until failback
    return home is None or home == here


def may_take_over(home: str | None, *, here: str | None, failed: Collection[str]) -> bool:
    """Whether region ``here`` may take over a job homed in ``home`` (the sweeper's rule):
    only a job of another region that is declared failed, and never while ``here`` itself
    is. The claim that takes it must also re-home it to ``here``."""
    return (
        here is not None
        and here not in failed
        and home is not None
        and home != here
        and home in failed
    )


def may_sweep(home: str | None, *, here: str | None, failed: Collection[str]) -> bool:
    """Whether region ``here``'s sweeper may repair (requeue, give up) the job at all."""
    return may_run(home, here=here, failed=failed) or may_take_over(home, here=here, failed=failed)


def may_schedule(*, here: str | None, failed: Collection[str]) -> bool:
    """Whether region ``here``'s scheduler may claim due monthly schedules: not while it is
    declared failed (fenced, like its workers). Which region runs the scheduler at all is
    ``schedules.scheduler_enabled``, on in one region at a time (docs/operations.md): a claim
    is a conditional write, exclusive within one region only."""
    return here is None or here not in failed


def file_region(recorded: str | None, *, here: str | None) -> str | None:
    """The region whose bucket holds a job's file, as a key into the other regions' buckets:
    None means this region's own bucket (also every file of a one-region deployment)."""
    return None if recorded is None or recorded == here else recorded
