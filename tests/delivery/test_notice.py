"""The failure notice (delivery/notice.py): one plain email when an export fails, at most
once; a notice the mail service cannot take yet is retried, and changes nothing about the
failure."""

from __future__ import annotations

import pytest

from exporter.dev.smtp import SmtpSink
from exporter.errors import RetryLater
from exporter.exports.message import export_message
from exporter.exports.view import job_body
from exporter.jobs.run import run_export
from exporter.models import ExportMessageV1, JobState
from exporter.resources import Resources
from tests.conftest import MakeUser
from tests.helpers import new_job, past_its_budget


async def test_a_failed_export_sends_one_plain_failure_notice(
    resources: Resources, make_user: MakeUser, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id)
    # A message from a future worker version: permanent, and not the user's doing.
    payload = {**ExportMessageV1(job.job_id, user.user_id).to_payload(), "v": 99}

    await run_export(resources, payload, attempt=1, max_attempts=3)
    await run_export(resources, payload, attempt=1, max_attempts=3)  # changes nothing

    (notice,) = smtp_sink.for_export(job.job_id)
    assert notice["To"] == user.email
    assert notice["Subject"] == "Your memberships export could not be completed"
    assert list(notice.iter_attachments()) == []
    body = notice.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "an internal error on our side" in text and job.job_id in text
    assert "can ask for the export" in text
    assert "unsupported" not in text  # codes and exception texts stay in our logs
    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.email_sent_at is not None


@pytest.mark.parametrize("names_file", [True, False], ids=["message", "older-message"])
async def test_a_notice_the_mail_service_cannot_take_is_sent_once_it_is_back(
    resources: Resources, make_user: MakeUser, smtp_sink: SmtpSink, names_file: bool
) -> None:
    user = await make_user()
    job, down = await past_its_budget(resources, user.user_id)
    # The retries of a pending notice find the export failed: from the refused start's
    # record, or from the read of a message that names no file.
    message = export_message(job) if names_file else ExportMessageV1(job.job_id, user.user_id)
    payload = message.to_payload()

    # The budget is spent: the export fails, and its notice cannot go out yet.
    with pytest.raises(RetryLater):
        await run_export(down, payload, attempt=1, max_attempts=3)
    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED
    assert failed.error_code == "smtp_unavailable" and failed.email_sent_at is None
    assert job_body(failed)["failure_notice"] == "pending"
    with pytest.raises(RetryLater):  # still down: retried again, the failure unchanged
        await run_export(down, payload, attempt=2, max_attempts=3)

    # The mail service is back: the next try sends exactly one notice; later ones nothing.
    await run_export(resources, payload, attempt=3, max_attempts=3)
    await run_export(resources, payload, attempt=4, max_attempts=3)

    (notice,) = smtp_sink.for_export(job.job_id)
    assert notice["To"] == user.email
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.status is JobState.FAILED
    assert done.error_code == "smtp_unavailable" and done.email_sent_at is not None
    assert job_body(done)["failure_notice"] == "sent"
