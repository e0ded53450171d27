"""An export's queue message, built from its record: one place for every sender (the API's
create, an operator's retry, the recovery sweeper), so every message names the file the
export will produce (``ExportMessageV1.file_name``) and the worker can start the run without
reading the record first (docs/reliability.md)."""

from __future__ import annotations

from exporter.jobs.produce import export_file_name
from exporter.models import ExportJob, ExportMessageV1


def export_message(job: ExportJob, *, request_id: str | None = None) -> ExportMessageV1:
    """The message that runs ``job``; ``request_id``: the request that asked for it."""
    return ExportMessageV1(
        export_id=job.job_id,
        user_id=job.user_id,
        request_id=request_id,
        file_name=export_file_name(job),
    )
