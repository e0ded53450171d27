"""The failure notice (delivery/notice.py): one plain email when an export fails, at most
once, and a notice that cannot be sent changes nothing about the failure."""

from __future__ import annotations

from exporter.dev.smtp import SmtpSink
from exporter.jobs.run import run_export
from exporter.models import ExportMessageV1, JobState
from exporter.resources import Resources
from tests.conftest import MakeUser
from tests.helpers import new_job, without_smtp


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


async def test_a_notice_that_cannot_be_sent_leaves_the_failure_as_it_is(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id)
    down = without_smtp(resources)
    payload = ExportMessageV1(job.job_id, user.user_id).to_payload()

    outcome = await run_export(down, payload, attempt=3, max_attempts=3)

    assert outcome is not None and outcome.status is JobState.FAILED
    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.error_code == "smtp_unavailable"
    assert failed.email_sent_at is None
