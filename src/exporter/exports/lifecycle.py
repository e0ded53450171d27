"""Every transition of an export's record, named, with the fields it writes.

The state machine itself (which state may follow which) is ``models.ALLOWED_TRANSITIONS``;
the conditional writes are ``JobStore.transition``. Callers say what happened
(``mark_enqueue_failed``, ``mark_cancelled``) instead of building field dicts.
"""

from __future__ import annotations

from exporter.models import ACTIVE_STATES, ExportJob, JobState, utcnow
from exporter.store.jobs import JobStore

ENQUEUE_FAILED = "enqueue_failed"
CANCELLED_BY_USER = "cancelled_by_user"
CANCELLED_BY_OPERATOR = "cancelled_by_operator"


async def mark_enqueue_failed(jobs: JobStore, job_id: str, *, message: str) -> ExportJob:
    """A recorded export whose message never reached the queue: failed, ``enqueue_failed``
    (not counted in the quota), so it is not left queued forever."""
    now = utcnow()
    return await jobs.transition(
        job_id,
        to=JobState.FAILED,
        expected=(JobState.QUEUED,),
        now=now,
        fields={"finished_at": now, "error_code": ENQUEUE_FAILED, "error_message": message},
    )


async def mark_cancelled(jobs: JobStore, job_id: str, *, by_operator: bool) -> ExportJob:
    """Queued or running -> cancelled. An operator's cancel says so on the record, so the
    owner sees why an export they did not cancel stopped."""
    now = utcnow()
    fields: dict[str, object] = {"finished_at": now}
    if by_operator:
        fields |= {"error_code": CANCELLED_BY_OPERATOR, "error_message": "cancelled by an operator"}
    return await jobs.transition(
        job_id, to=JobState.CANCELLED, expected=ACTIVE_STATES, now=now, fields=fields
    )
