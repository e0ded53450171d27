"""Scheduler tests read the whole due index, so each starts from an empty schedules table.

Each pytest-xdist worker has its own DynamoDB Local (a session fixture), and one worker runs
its tests one at a time, so emptying the table here cannot disturb another test.
"""

from __future__ import annotations

import pytest

from exporter.resources import Resources


async def empty_schedules_table(resources: Resources) -> None:
    table = resources.settings.dynamo.schedules_table
    kwargs: dict[str, object] = {"TableName": table, "ProjectionExpression": "schedule_id"}
    while True:
        page = await resources.dynamo.scan(**kwargs)
        for item in page.get("Items", []):
            await resources.dynamo.delete_item(
                TableName=table, Key={"schedule_id": item["schedule_id"]}
            )
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@pytest.fixture(name="scheduler_resources")
async def _fix_scheduler_resources(resources: Resources) -> Resources:
    """``resources``, with no schedule but the test's own."""
    await empty_schedules_table(resources)
    return resources
