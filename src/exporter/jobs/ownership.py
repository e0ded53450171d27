"""The cross-region ownership rule (regions.py) as the worker and the sweeper apply it: read
the failed-region flags from this region's replica, then ask the pure rule.

A worker's run reads the flags at most every ``RUN_FLAGS_MAX_AGE_S`` per process (a Scan per
export would be one DynamoDB call in three), and its start is conditional on the job's home
(``lifecycle.start_run``): a job the other region took over and re-homed is refused by the
start itself. The sweeper and the scheduler read the flags afresh on every pass.

In a one-region deployment (``Settings.region`` unset) nothing is read and every job is ours.
"""

from __future__ import annotations

from exporter.models import ExportJob
from exporter.regions import may_run, may_schedule, may_sweep, may_take_over
from exporter.resources import Resources

# How old the failed-region flags a worker's run goes by may be: a region declared failed is
# fenced within this long of the flag replicating to it (docs/operations.md, *Fencing*).
RUN_FLAGS_MAX_AGE_S = 5.0


async def failed_regions(resources: Resources) -> frozenset[str]:
    """The regions declared failed, as this region knows them; none with one region."""
    if resources.settings.region is None or resources.region_flags is None:
        return frozenset()
    return await resources.region_flags.failed_regions()


async def run_failed_regions(resources: Resources) -> frozenset[str]:
    """``failed_regions`` for a worker's run: read at most ``RUN_FLAGS_MAX_AGE_S`` ago."""
    if resources.settings.region is None or resources.region_flags is None:
        return frozenset()
    return await resources.region_flags.failed_regions_cached(max_age_s=RUN_FLAGS_MAX_AGE_S)


async def fenced_here(resources: Resources) -> bool:
    """Whether this region is declared failed (its workers run nothing until failback)."""
    here = resources.settings.region
    return here is not None and here in await run_failed_regions(resources)


async def may_run_here(resources: Resources, job: ExportJob) -> bool:
    """Whether this region's workers may run ``job`` now: it is homed here (a job taken
    over from a failed region is re-homed by the sweeper's claim before it is enqueued),
    and this region is not declared failed itself."""
    here = resources.settings.region
    if here is None:
        return True
    return may_run(job.home_region, here=here, failed=await run_failed_regions(resources))


def may_sweep_here(resources: Resources, job: ExportJob, failed: frozenset[str]) -> bool:
    """Whether this region's sweeper may repair ``job`` (its own, or a failed region's)."""
    return may_sweep(job.home_region, here=resources.settings.region, failed=failed)


def new_home(resources: Resources, job: ExportJob, failed: frozenset[str]) -> str | None:
    """This region, when repairing ``job`` takes it over from its failed home (the claim
    then re-homes it); None when the job is already ours."""
    here = resources.settings.region
    return here if may_take_over(job.home_region, here=here, failed=failed) else None


async def may_schedule_here(resources: Resources) -> bool:
    """Whether this region's scheduler may claim due schedules now: never while this region
    is declared failed (a region that comes back keeps its hands off until failback)."""
    here = resources.settings.region
    if here is None:
        return True
    return may_schedule(here=here, failed=await failed_regions(resources))
