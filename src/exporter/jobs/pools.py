"""One worker process serving both pools: ``exporter worker --queue default --queue large``.

Two arq ``Worker`` instances in one event loop, each with its own queue and its own slots
(``worker.max_jobs`` small, ``worker.large_max_jobs`` large), so a large export streaming
in every large slot never holds up a small one, on a box with only a couple of processes.
As the two pools share the process's cores (and usually the database's), the large pool
starts nothing while small exports wait to start, unless its first export has waited
``worker.large_yield_max_s`` (120 s): on the morning of the 1st the small ones go first.
They share one ``Resources`` (one PostgreSQL pool, one DynamoDB client, one mailer), opened
here before either starts and closed after both have stopped; only the default pool runs
the crons and serves the metrics port.

arq's ``Worker`` registers its own SIGINT/SIGTERM handlers on the loop, and the second
would replace the first's; so both are built with ``handle_signals=False`` and one handler
here tells each worker what arq's own handler would: stop picking jobs, give the running
ones ``worker.shutdown_grace_s``, then stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from arq.worker import Worker

from exporter.config import Settings
from exporter.jobs.worker import ExportWorker, build_worker_settings, lower_priority
from exporter.logs import configure_logging
from exporter.resources import Resources, open_resources

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def build_pool_workers(settings: Settings, shared: Resources) -> list[Worker]:
    """The default pool's worker (crons, metrics) and the large pool's, on one set of clients.

    Call from inside the running loop (arq's ``Worker`` binds to the current one)."""
    # ExportWorker: each pool is woken by its own queue's enqueue signal, as a single-pool
    # worker process is.
    return [
        ExportWorker(**build_worker_settings(settings, shared=shared, handle_signals=False)),
        ExportWorker(
            **build_worker_settings(
                settings,
                large=True,
                max_jobs=settings.worker.large_max_jobs,
                shared=shared,
                serve_metrics=False,
                handle_signals=False,
            ),
            # One process, one set of cores (and usually one database): small exports
            # first, a large one waiting at most large_yield_max_s for them.
            yield_to=settings.redis.queue_name,
            yield_max_s=settings.worker.large_yield_max_s,
        ),
    ]


def stop_workers(workers: list[Worker], signum: signal.Signals) -> None:
    """What arq's own handler does, for every worker of the process."""
    for worker in workers:
        if worker.main_task is None or worker.main_task.done() or not worker.allow_pick_jobs:
            continue  # not started, ended, or already stopping
        if worker._job_completion_wait:  # arq keeps this setting private
            worker.handle_sig_wait_for_completion(signum)
        else:
            worker.handle_sig(signum)


async def serve_pools(workers: list[Worker], stop: asyncio.Event) -> None:
    """Run the workers until ``stop`` is set (a signal) or one pool ends on its own, then
    stop them all and close each (its on_shutdown: liveness key, metrics port); a pool's
    failure is re-raised."""
    runs = [asyncio.create_task(w.async_run(), name=f"pool-{w.queue_name}") for w in workers]
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([*runs, stopping], return_when=asyncio.FIRST_COMPLETED)
        # A signal, or a pool that ended without one (its start-up failed, Redis refused
        # it): either way the process stops whole rather than go on half-served.
        stop_workers(workers, signal.SIGTERM)
        await asyncio.wait(runs)
    finally:
        stopping.cancel()
        for worker in workers:
            # Its jobs have ended or been cancelled by now; arq's close() would re-raise a
            # cancelled one's CancelledError and skip on_shutdown (the liveness key).
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
            worker.tasks.clear()
            await worker.close()
    for run in runs:
        if not run.cancelled() and (failure := run.exception()) is not None:
            raise failure


async def run_pools(settings: Settings) -> None:
    """Both pools on one set of clients, until SIGTERM or SIGINT."""
    async with open_resources(settings) as shared:
        workers = build_pool_workers(settings, shared)
        # The handler only sets the event: a signal that comes before the workers' tasks
        # have started is then not lost (arq's handlers need a running main task).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        try:
            await serve_pools(workers, stop)
        finally:
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)


def run_pools_forever(settings: Settings) -> None:
    """``exporter worker --queue default --queue large``."""
    configure_logging(settings)
    lower_priority(settings)
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run_pools(settings))
