"""DynamoDB table definitions, and creating them where we own the endpoint (local, tests).

In AWS the tables come from infra/ (CloudFormation); these specs must match it.
"""

from __future__ import annotations

from typing import Any

from exporter.config import DynamoSettings
from exporter.dynamodb import DynamoDB
from exporter.store.dynamo import dynamo_errors

USER_CREATED_INDEX = "user-created-index"
# Sparse index of the jobs still to finish: ``active_status`` (the status while it is queued or
# in_progress) is removed by every move to a final state, so the recovery sweeper reads only
# live jobs instead of scanning the table each minute.
ACTIVE_INDEX = "active-created-index"
ACTIVE_ATTRIBUTE = "active_status"
TTL_ATTRIBUTE = "expires_at"
# export-schedules (store/schedules.py): the owner's schedules, and the sparse index of the
# schedules that are not paused, by when the scheduler next looks at them.
SCHEDULE_USER_INDEX = "user-created-index"
SCHEDULE_DUE_INDEX = "due-index"


def table_specs(settings: DynamoSettings) -> list[dict[str, Any]]:
    """CreateTable arguments for every table the service uses."""
    on_demand = {"BillingMode": "PAY_PER_REQUEST"}
    return [
        {
            "TableName": settings.users_table,
            "KeySchema": [{"AttributeName": "user_id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "user_id", "AttributeType": "S"}],
            **on_demand,
        },
        {
            # One item per address makes e-mail uniqueness a conditional write, which a
            # GSI cannot enforce.
            "TableName": settings.user_emails_table,
            "KeySchema": [{"AttributeName": "email", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "email", "AttributeType": "S"}],
            **on_demand,
        },
        {
            "TableName": settings.jobs_table,
            "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
            "AttributeDefinitions": [
                {"AttributeName": "job_id", "AttributeType": "S"},
                {"AttributeName": "user_id", "AttributeType": "S"},
                {"AttributeName": "created_at", "AttributeType": "S"},
                {"AttributeName": ACTIVE_ATTRIBUTE, "AttributeType": "S"},
            ],
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": USER_CREATED_INDEX,
                    "KeySchema": [
                        {"AttributeName": "user_id", "KeyType": "HASH"},
                        {"AttributeName": "created_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
                {
                    "IndexName": ACTIVE_INDEX,
                    "KeySchema": [
                        {"AttributeName": ACTIVE_ATTRIBUTE, "KeyType": "HASH"},
                        {"AttributeName": "created_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
            ],
            **on_demand,
        },
        {
            # Refresh tokens (as hashes) and their families; see store/refresh_tokens.py.
            "TableName": settings.refresh_tokens_table,
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            **on_demand,
        },
        {
            # One item per user naming their current export: creating an export claims it
            # in the same transaction as the job's Put, so a user has one active export at
            # most; see JobStore.create_exclusive. It expires with the job it names.
            "TableName": settings.export_slots_table,
            "KeySchema": [{"AttributeName": "user_id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "user_id", "AttributeType": "S"}],
            **on_demand,
        },
        {
            # Idempotency-Key of POST /v1/exports -> the response it got, for 24 hours; see
            # store/idempotency.py.
            "TableName": settings.idempotency_keys_table,
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            **on_demand,
        },
        {
            # Regions an operator declared failed (two-region deployments); see
            # store/regions.py. One item per failed region, none while all are healthy.
            "TableName": settings.regions_table,
            "KeySchema": [{"AttributeName": "region", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "region", "AttributeType": "S"}],
            **on_demand,
        },
        {
            # Monthly export schedules and, per owner, a counter of them (the per-user limit
            # as a transaction condition); see store/schedules.py.
            "TableName": settings.schedules_table,
            "KeySchema": [{"AttributeName": "schedule_id", "KeyType": "HASH"}],
            "AttributeDefinitions": [
                {"AttributeName": "schedule_id", "AttributeType": "S"},
                {"AttributeName": "user_id", "AttributeType": "S"},
                {"AttributeName": "created_at", "AttributeType": "S"},
                {"AttributeName": "due_shard", "AttributeType": "S"},
                {"AttributeName": "wake_at", "AttributeType": "S"},
            ],
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": SCHEDULE_USER_INDEX,
                    "KeySchema": [
                        {"AttributeName": "user_id", "KeyType": "HASH"},
                        {"AttributeName": "created_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
                {
                    "IndexName": SCHEDULE_DUE_INDEX,
                    "KeySchema": [
                        {"AttributeName": "due_shard", "KeyType": "HASH"},
                        {"AttributeName": "wake_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
            ],
            **on_demand,
        },
    ]


def ttl_tables(settings: DynamoSettings) -> list[str]:
    """Tables whose items expire by themselves through ``TTL_ATTRIBUTE``."""
    return [
        settings.jobs_table,
        settings.refresh_tokens_table,
        settings.export_slots_table,
        settings.idempotency_keys_table,
    ]


async def create_tables(client: DynamoDB, settings: DynamoSettings) -> list[str]:
    """Create missing tables and enable TTL where items expire; returns the names it created."""
    with dynamo_errors("list_tables"):
        existing: set[str] = set()
        async for page in client.pages("ListTables"):
            existing.update(page.get("TableNames", []))
    created = []
    for spec in table_specs(settings):
        if spec["TableName"] in existing:
            continue
        with dynamo_errors("create_table"):
            await client.create_table(**spec)
            await client.wait_for_table(spec["TableName"])
        created.append(spec["TableName"])
    for table in ttl_tables(settings):
        with dynamo_errors("update_time_to_live"):
            ttl = await client.describe_time_to_live(TableName=table)
            status = ttl["TimeToLiveDescription"].get("TimeToLiveStatus")
            if status not in ("ENABLED", "ENABLING"):
                await client.update_time_to_live(
                    TableName=table,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
                )
    return created
