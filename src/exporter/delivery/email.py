"""The email channel: the file attached when the whole message fits, otherwise a link.

Attached when the email, counted after base64 as SES counts it, stays within
``exports.attachment_max_bytes``; the attachment is read from the produced file while the
message is sent. For a larger file the email carries a capability link
(``links.issue_link``, signed with ``Resources.tokens``): one click opens the stored file,
no sign-in, until it expires (never a presigned URL, which the link route makes fresh on
every use). Every file is
stored before this channel runs (``delivery/storage.py``). What the emails say is
``mail/messages.py``; how they are sent, ``mail/smtp.py``.
"""

from __future__ import annotations

import functools
import time

import structlog

from exporter.delivery.base import DeliveryGuard, ProducedFile, Receipt
from exporter.delivery.schedule_notice import schedule_notice
from exporter.links import issue_link, page_url
from exporter.mail.contents import describe
from exporter.mail.messages import (
    DownloadLink,
    ExportAttachment,
    ExportEmail,
    ScheduleNotice,
    build_export_message,
)
from exporter.mail.smtp import base64_wire_size
from exporter.metrics import observe_email
from exporter.models import ExportJob, User
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
    """Delivers an export by email (``Channel``): the stored file attached, or a one-click
    link to it."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def deliver(
        self, produced: ProducedFile, job: ExportJob, user: User, *, guard: DeliveryGuard
    ) -> Receipt | None:
        """Compose, check with the guard, send; the receipt."""
        message, kind = self._compose(produced, job, user, await self._schedule_notice(job))
        # The produced file stays open until the email is sent: an attached file is read
        # from it while it goes out, never held in memory whole.
        if not await guard.may_deliver():
            return None
        mail_started = time.monotonic()
        receipts: list[Receipt] = []

        async def record_sent() -> None:
            # The guard, written the moment the server accepted (before QUIT), is also the
            # export's success: one write. A crash before it lands is the one window for a
            # second email. The attachment and the link go through the same guard.
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

    async def _schedule_notice(self, job: ExportJob) -> ScheduleNotice | None:
        """For an export its monthly schedule made: the pause link and the next date."""
        if job.schedule_id is None:
            return None
        return await schedule_notice(self._resources, job.schedule_id, job.user_id)

    def _compose(
        self, produced: ProducedFile, job: ExportJob, user: User, schedule: ScheduleNotice | None
    ) -> tuple[ExportEmail, str]:
        """Attach the file when the whole email stays under the limit; otherwise link to it
        (the file is already stored: ``delivery/storage.py``). The message and the kind."""
        settings = self._resources.settings
        compose = functools.partial(
            build_export_message,
            sender=self._resources.mailer.sender,
            recipient=user.email,
            recipient_name=user.display_name,
            export_id=job.job_id,
            sha256=produced.sha256,
            page_url=page_url(settings.api.public_url),
            schedule=schedule,
            contents=describe(job.format, job.selection),
        )
        if encoded_message_size(produced.byte_size) <= settings.exports.attachment_max_bytes:
            attachment = ExportAttachment(
                content=produced.content,
                file_name=produced.name,
                row_count=produced.rows,
                byte_size=produced.byte_size,
                content_type=produced.content_type,
            )
            return compose(attachment=attachment), ATTACHMENT
        assert job.file_expires_at is not None  # stored before any channel runs
        link = DownloadLink(
            url=issue_link(self._resources.tokens, settings.api.public_url, job).url,
            expires_at=job.file_expires_at,
            file_name=produced.name,
            row_count=produced.rows,
            byte_size=produced.byte_size,
        )
        return compose(link=link), DOWNLOAD_LINK
