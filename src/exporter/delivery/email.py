"""The email channel: the file attached when the whole message fits, otherwise a link.

Attached when the email, counted after base64 as SES counts it, stays within
``exports.attachment_max_bytes``; the attachment is read from the produced file while the
message is sent. A larger file is uploaded to S3 under a key fixed by the export id (a
re-run overwrites it), recorded on the job before the upload starts, and the email links
to the API's download route (never to a presigned URL). What the emails say is
``mail/messages.py``; how they are sent, ``mail/smtp.py``.
"""

from __future__ import annotations

import functools
import time
from datetime import timedelta

import structlog

from exporter.delivery.base import DeliveryGuard, ProducedFile, Receipt
from exporter.exports import lifecycle
from exporter.mail.messages import (
    DownloadLink,
    ExportAttachment,
    ExportEmail,
    build_export_message,
    download_url,
)
from exporter.mail.smtp import base64_wire_size
from exporter.metrics import observe_email
from exporter.models import ExportJob, JobState, User, utcnow
from exporter.resources import Resources

log = structlog.stdlib.get_logger("exporter.delivery.email")

ATTACHMENT = "email_attachment"
DOWNLOAD_LINK = "download_link"

# Headers, the text and HTML parts and MIME boundaries around the attachment; generous,
# so a message near the limit is never refused by SES for a few bytes.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


def encoded_message_size(file_bytes: int) -> int:
    """What an email carrying ``file_bytes`` weighs on the wire: the file's base64 lines,
    plus the rest of the message. SES counts this size."""
    return base64_wire_size(file_bytes) + MESSAGE_OVERHEAD_BYTES


class EmailChannel:
    """Delivers an export by email (``Channel``), attached or as a link to the download."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def deliver(
        self, produced: ProducedFile, job: ExportJob, user: User, *, guard: DeliveryGuard
    ) -> Receipt | None:
        """Compose (and upload, for a link), check with the guard, send; the receipt."""
        uploaded: list[str] = []  # the S3 key, once this run has recorded it and uploads
        try:
            return await self._deliver(produced, job, user, guard=guard, uploaded=uploaded)
        except BaseException:
            # The arq abort (CancelledError) or a refused write (ConditionFailed) of a
            # cancelled export: an upload that landed after the canceller deleted the object
            # is ours to remove. A shutdown or a takeover leaves it: the record is live and
            # the next run writes the same key.
            if uploaded:
                await _drop_file_if_cancelled(self._resources, job.job_id, uploaded[0])
            raise

    async def _deliver(
        self,
        produced: ProducedFile,
        job: ExportJob,
        user: User,
        *,
        guard: DeliveryGuard,
        uploaded: list[str],
    ) -> Receipt | None:
        message, kind = await self._compose(produced, job, user, guard=guard, uploaded=uploaded)
        # The produced file stays open until the email is sent: an attached file is read
        # from it while it goes out, never held in memory whole.
        if not await guard.may_deliver():
            return None
        mail_started = time.monotonic()
        receipts: list[Receipt] = []

        async def record_sent() -> None:
            # The guard, written the moment the server accepted (before QUIT), then the
            # outcome by the run: a crash between the two leaves a re-run that only finishes
            # the record. A crash before this write is the one window for a second email.
            receipt = Receipt(kind, produced.name, accepted_at=time.monotonic())
            receipts.append(receipt)
            await guard.delivered(receipt)

        try:
            # The heartbeat goes on while the mail goes out (a slow relay is not a dead worker).
            await guard.keep_alive(self._resources.mailer.send(message, on_accepted=record_sent))
        except Exception:
            if not receipts:
                observe_email(time.monotonic() - mail_started, ok=False)
            raise
        (receipt,) = receipts
        observe_email(receipt.accepted_at - mail_started, ok=True)
        return receipt

    async def _compose(
        self,
        produced: ProducedFile,
        job: ExportJob,
        user: User,
        *,
        guard: DeliveryGuard,
        uploaded: list[str],
    ) -> tuple[ExportEmail, str]:
        """Attach the file when the whole email stays under the limit; otherwise upload it
        to S3 (under a key fixed by the export id, so a re-run overwrites it), record where
        it is before uploading (so cleanup can always find it), and link to the download
        route. The message and the delivery kind."""
        resources = self._resources
        settings = resources.settings
        compose = functools.partial(
            build_export_message,
            sender=resources.mailer.sender,
            recipient=user.email,
            recipient_name=user.display_name,
            export_id=job.job_id,
        )
        if encoded_message_size(produced.byte_size) <= settings.exports.attachment_max_bytes:
            attachment = ExportAttachment(
                content=produced.content,
                file_name=produced.name,
                row_count=produced.rows,
                byte_size=produced.byte_size,
                content_type=produced.content_type,
            )
            message = compose(attachment=attachment)
            if job.file_key is not None:
                # An earlier run of this export uploaded a file (the data shrank since): drop
                # it, so the job does not offer a download of an older snapshot.
                await resources.files.delete(job.file_key)
                await lifecycle.clear_file_location(resources.jobs, job.job_id)
            return message, ATTACHMENT
        key = resources.files.key_for(job.job_id, produced.name)
        now = utcnow()
        expires_at = now + timedelta(days=settings.exports.retention_days)
        # Recorded before the upload (the key is fixed by the export id): whatever interrupts
        # the upload (a cancel, a crash), the expiry cron can find and delete what arrived.
        await lifecycle.record_file_location(
            resources.jobs, job.job_id, key=key, expires_at=expires_at, now=now
        )
        uploaded.append(key)
        # The heartbeat goes on during a long upload, as during the stream.
        await guard.keep_alive(
            resources.files.upload(
                key,
                produced.content,
                size=produced.byte_size,
                content_type="/".join(produced.content_type),
            )
        )
        link = DownloadLink(
            url=download_url(settings.api.public_url, job.job_id),
            expires_at=expires_at,
            file_name=produced.name,
            row_count=produced.rows,
            byte_size=produced.byte_size,
        )
        log.info("export.uploaded", key=key, bytes=produced.byte_size)
        return compose(link=link), DOWNLOAD_LINK


async def _drop_file_if_cancelled(resources: Resources, job_id: str, key: str) -> None:
    """Delete ``key`` if the export is cancelled now; best effort, the expiry cron (which
    finds the key still on the record) retries what this misses."""
    try:
        current = await resources.jobs.get(job_id)
        if current is not None and current.status is JobState.CANCELLED:
            await resources.files.delete(key)
            log.info("export.cancelled_file_deleted", key=key)
    except Exception as exc:
        # Never hide why the run stopped behind a cleanup error.
        log.warning("export.cancelled_file_not_deleted", key=key, error=str(exc))
