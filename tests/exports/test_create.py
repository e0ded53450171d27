"""The create use case on its own, without HTTP: what the API, the CLI and a scheduler get."""

from __future__ import annotations

import dataclasses

import pytest
from arq.connections import ArqRedis

from exporter.dev.ports import free_port
from exporter.errors import IdempotencyKeyReused, QueueUnavailable, QuotaExceeded
from exporter.exports.create import (
    Active,
    Created,
    ExportRequest,
    Replayed,
    create_export,
)
from exporter.exports.lifecycle import ENQUEUE_FAILED
from exporter.models import ExportFormat, JobState, utcnow
from exporter.queue import ExportQueue
from exporter.resources import Resources
from tests.conftest import MakeUser
from tests.helpers import DynamoCalls, with_exports


async def test_create_records_queues_and_then_answers_with_the_active_export(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()

    first = await create_export(
        resources, user.user_id, ExportRequest(fmt=ExportFormat.CSV_GZ), request_id="req-1"
    )
    again = await create_export(resources, user.user_id, ExportRequest())

    assert isinstance(first, Created)
    assert first.job.status is JobState.QUEUED and first.job.format is ExportFormat.CSV_GZ
    assert (await resources.queue.probe(first.job.job_id)).queued
    assert isinstance(again, Active) and again.job.job_id == first.job.job_id
    assert await resources.queue.depth() == 1


async def test_a_key_replays_the_first_status_and_refuses_another_body(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    created = await create_export(resources, user.user_id, ExportRequest(), idempotency_key="k1")

    replayed = await create_export(resources, user.user_id, ExportRequest(), idempotency_key="k1")

    assert isinstance(created, Created)
    assert isinstance(replayed, Replayed)
    assert (replayed.job.job_id, replayed.status) == (created.job.job_id, 202)
    with pytest.raises(IdempotencyKeyReused):
        await create_export(resources, user.user_id, ExportRequest(bom=True), idempotency_key="k1")


async def test_over_the_quota_says_when_the_next_one_is_possible(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    limited = resources.settings.exports.model_copy(update={"max_per_day": 1})
    small = dataclasses.replace(
        resources, settings=resources.settings.model_copy(update={"exports": limited})
    )
    first = await create_export(small, user.user_id, ExportRequest())
    assert isinstance(first, Created)
    await small.jobs.transition(
        first.job.job_id,
        to=JobState.CANCELLED,
        expected=(JobState.QUEUED,),
        now=first.job.created_at,
    )

    with pytest.raises(QuotaExceeded) as refused:
        await create_export(small, user.user_id, ExportRequest())

    assert 86_000 < refused.value.retry_after_s <= 86_400
    assert refused.value.limit == 1


async def test_a_queue_that_refuses_leaves_the_record_failed_and_the_slot_free(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    # A real Redis client aimed at a port where nothing listens: enqueue really fails.
    dead = ArqRedis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    broken = dataclasses.replace(
        resources, queue=ExportQueue(dead, queue_name=resources.settings.redis.queue_name)
    )
    try:
        with pytest.raises(QueueUnavailable):
            await create_export(broken, user.user_id, ExportRequest())
    finally:
        await dead.aclose()

    current = await resources.jobs.current_for_user(user.user_id)
    assert current.active is None
    assert current.job is not None and current.job.status is JobState.FAILED
    assert current.job.error_code == ENQUEUE_FAILED
    # The slot is free again: the next request creates an export.
    assert isinstance(await create_export(resources, user.user_id, ExportRequest()), Created)


async def test_a_create_costs_two_dynamodb_calls_and_so_does_the_active_answer(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    await create_export(resources, user.user_id, ExportRequest())  # the user has a slot now
    first = await resources.jobs.read_slot(user.user_id)
    assert first.job_id is not None
    await resources.jobs.transition(first.job_id, to=JobState.CANCELLED, now=utcnow())

    with DynamoCalls() as created:
        result = await create_export(resources, user.user_id, ExportRequest())
    with DynamoCalls() as answered:
        again = await create_export(resources, user.user_id, ExportRequest())

    assert isinstance(result, Created)
    assert isinstance(again, Active) and again.job == result.job
    # The slot's read, then one transaction: job, slot (with the quota's count) and the
    # check that the slot's previous job is finished, which hands back the active one.
    assert created.calls == {"GetItem": 1, "TransactWriteItems": 1}
    assert answered.calls == {"GetItem": 1, "TransactWriteItems": 1}


async def test_the_quota_is_counted_on_the_slot_and_an_unqueued_export_leaves_it(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    small = with_exports(resources, max_per_day=2)
    dead = ArqRedis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    broken = dataclasses.replace(
        small, queue=ExportQueue(dead, queue_name=resources.settings.redis.queue_name)
    )
    try:
        with pytest.raises(QueueUnavailable):
            await create_export(broken, user.user_id, ExportRequest())
    finally:
        await dead.aclose()
    created = []
    for _ in range(2):
        result = await create_export(small, user.user_id, ExportRequest())
        assert isinstance(result, Created)  # the unqueued one does not count
        created.append(result.job)
        await small.jobs.transition(result.job.job_id, to=JobState.CANCELLED, now=utcnow())

    with DynamoCalls() as refused_calls, pytest.raises(QuotaExceeded) as refused:
        await create_export(small, user.user_id, ExportRequest())

    slot = await small.jobs.read_slot(user.user_id)
    assert slot.recent is not None and set(slot.recent) == {j.job_id for j in created}
    oldest = created[0].created_at
    expected = 86_400 - (utcnow() - oldest).total_seconds()
    assert abs(refused.value.retry_after_s - expected) <= 2
    # The refusal read the slot, and the job it names (active ones answer 200 instead).
    assert refused_calls.calls == {"GetItem": 2}
