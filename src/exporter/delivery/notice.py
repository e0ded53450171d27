"""The failure notice: one short, honest email when an export ends ``failed``.

At most once. Only the run (or sweep) that won the conditional move to ``failed`` calls
this (so one process per export), and it records ``delivered_at`` (stored as
``email_sent_at``) after the server accepted. A notice the mail service could not take is
``"failed"``: the run retries it with the same capped, jittered backoff as any transient
failure, within the retry budget counted from the failure (``jobs/run.py``), and the job
shows it is pending (``notice_next_attempt_at``).
"""

from __future__ import annotations

from typing import Literal

import structlog

from exporter.errors import ExporterError
from exporter.exports import lifecycle
from exporter.mail.messages import build_failure_message
from exporter.metrics import observe_failure_notice
from exporter.models import ExportJob, JobState
from exporter.resources import Resources

log = structlog.stdlib.get_logger("exporter.delivery.notice")

# What each error code means to the person who asked, in plain words. Codes not listed get
# the generic sentence; nothing from an exception ever reaches the email.
REASONS = {
    "database_unavailable": "our membership database was unavailable for too long.",
    "database_error": "reading your memberships from our database failed.",
    "store_unavailable": "our export records were unavailable for too long.",
    "too_large": "the file is larger than we can send by email.",
    "storage_error": "storing the file for download failed.",
    "smtp_unavailable": "our mail service could not send the file.",
    "smtp_rejected": "our mail service could not send the file.",
    "timed_out": "it took longer than we allow for an export.",
    "worker_lost": "the server preparing it stopped several times.",
}
GENERIC_REASON = "an internal error on our side."
# No notice for these: the account is gone or disabled, the address refuses our mail (a
# notice would bounce too), or the message did not come from the job's owner.
NO_NOTICE = frozenset({"user_unavailable", "recipient_refused", "bad_message"})


NoticeOutcome = Literal["sent", "skipped", "failed"]


async def send_failure_notice(resources: Resources, job: ExportJob) -> NoticeOutcome:
    """Email the owner of a failed export: ``sent`` (the server accepted it), ``skipped``
    (not due), or ``failed`` (a later try may succeed)."""
    code = job.error_code or ""
    if job.status is not JobState.FAILED or code in NO_NOTICE or job.delivered_at is not None:
        observe_failure_notice("skipped")
        return "skipped"
    try:
        user = await resources.users.get(job.user_id)
        if user is None or not user.active:
            observe_failure_notice("skipped")
            return "skipped"
        message = build_failure_message(
            sender=resources.mailer.sender,
            recipient=user.email,
            export_id=job.job_id,
            reason=REASONS.get(code, GENERIC_REASON),
        )
        await resources.mailer.send(message)
    except ExporterError as exc:
        observe_failure_notice("failed")
        log.warning("export.notice_failed", error_code=code, error=str(exc))
        return "failed"
    observe_failure_notice("sent")
    try:
        await lifecycle.record_notice_sent(resources.jobs, job.job_id)
    except ExporterError as exc:
        # Sent, but not recorded: nothing re-sends notices, so this only loses the timestamp.
        log.warning("export.notice_unrecorded", error=str(exc))
    log.info("export.notice_sent", error_code=code)
    return "sent"
