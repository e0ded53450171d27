"""infra/exporter.yaml (CloudFormation) has what the app and the runbook rely on.

cfn-lint (make lint-deploy) checks the template against the AWS specs; these tests check
our own decisions.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from exporter.config import DynamoSettings
from exporter.store.tables import ACTIVE_ATTRIBUTE, ACTIVE_INDEX, table_specs, ttl_tables

from .manifests import ROOT


class _CfnLoader(yaml.SafeLoader):
    """PyYAML loader that keeps CloudFormation's short intrinsic tags as plain data."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(name="resources", scope="module")
def _fix_resources() -> dict[str, Any]:
    template = yaml.load((ROOT / "infra" / "exporter.yaml").read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    resources: dict[str, Any] = template["Resources"]
    return resources


def _of_type(resources: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def test_tables_match_the_app(resources: dict[str, Any]) -> None:
    tables = {
        r["Properties"]["TableName"]["Fn::Sub"].split("}-", 1)[1]: r
        for r in _of_type(resources, "AWS::DynamoDB::Table").values()
    }
    assert set(tables) == {
        "users",
        "user-emails",
        "export-jobs",
        "refresh-tokens",
        "export-slots",
        "idempotency-keys",
        "export-schedules",
    }
    keys = {name: t["Properties"]["KeySchema"][0]["AttributeName"] for name, t in tables.items()}
    assert keys == {
        "users": "user_id",
        "user-emails": "email",
        "export-jobs": "job_id",
        "refresh-tokens": "pk",
        "export-slots": "user_id",
        "idempotency-keys": "pk",
        "export-schedules": "pk",
    }
    ttl = {"AttributeName": "expires_at", "Enabled": True}
    for name in ("refresh-tokens", "export-slots", "idempotency-keys"):
        assert tables[name]["Properties"]["TimeToLiveSpecification"] == ttl, name
    jobs = tables["export-jobs"]["Properties"]
    indexes = {
        index["IndexName"]: [(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]]
        for index in jobs["GlobalSecondaryIndexes"]
    }
    assert indexes == _app_job_indexes()
    assert indexes[ACTIVE_INDEX] == [(ACTIVE_ATTRIBUTE, "HASH"), ("created_at", "RANGE")]
    assert jobs["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    (app_schedules,) = [
        s
        for s in table_specs(DynamoSettings(table_prefix="x-"))
        if s["TableName"] == "x-export-schedules"
    ]
    infra_schedules = tables["export-schedules"]["Properties"]
    assert infra_schedules["GlobalSecondaryIndexes"] == app_schedules["GlobalSecondaryIndexes"]
    assert sorted(
        infra_schedules["AttributeDefinitions"], key=lambda a: a["AttributeName"]
    ) == sorted(app_schedules["AttributeDefinitions"], key=lambda a: a["AttributeName"])
    for table in tables.values():
        props = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert props["SSESpecification"]["SSEEnabled"] is True
        assert table["DeletionPolicy"] == "Retain"


def _app_job_indexes() -> dict[str, list[tuple[str, str]]]:
    """The export-jobs indexes as the app creates them locally (store/tables.py)."""
    (spec,) = [
        s
        for s in table_specs(DynamoSettings(table_prefix="x-"))
        if s["TableName"] == "x-export-jobs"
    ]
    return {
        index["IndexName"]: [(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]]
        for index in spec["GlobalSecondaryIndexes"]
    }


def test_the_worker_may_query_the_active_index(resources: dict[str, Any]) -> None:
    role = resources["WorkerRole"]["Properties"]
    granted = [
        statement
        for policy in role["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        if "dynamodb:Query" in statement["Action"]
    ]
    resources_named = [str(r) for statement in granted for r in statement["Resource"]]
    assert any(f"/index/{ACTIVE_INDEX}" in r for r in resources_named)


def test_bucket_is_private_encrypted_and_expiring(resources: dict[str, Any]) -> None:
    (bucket,) = _of_type(resources, "AWS::S3::Bucket").values()
    props = bucket["Properties"]
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    (rule,) = props["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["ExpirationInDays"]
    (policy,) = _of_type(resources, "AWS::S3::BucketPolicy").values()
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_redis_is_multi_az_encrypted_and_never_evicts(resources: dict[str, Any]) -> None:
    (group,) = _of_type(resources, "AWS::ElastiCache::ReplicationGroup").values()
    props = group["Properties"]
    assert props["MultiAZEnabled"] is True
    assert props["AutomaticFailoverEnabled"] is True
    assert props["NumCacheClusters"] >= 2
    assert props["TransitEncryptionEnabled"] is True
    assert props["AtRestEncryptionEnabled"] is True
    assert "resolve:secretsmanager" in props["AuthToken"]["Fn::Sub"]
    (params,) = _of_type(resources, "AWS::ElastiCache::ParameterGroup").values()
    assert params["Properties"]["Properties"]["maxmemory-policy"] == "noeviction"


def test_postgres_has_a_multi_az_primary_and_a_replica(resources: dict[str, Any]) -> None:
    instances = _of_type(resources, "AWS::RDS::DBInstance")
    primaries = [
        r for r in instances.values() if "SourceDBInstanceIdentifier" not in r["Properties"]
    ]
    replicas = [r for r in instances.values() if "SourceDBInstanceIdentifier" in r["Properties"]]
    assert len(primaries) == 1
    assert len(replicas) == 1
    primary = primaries[0]["Properties"]
    assert primary["MultiAZ"] is True
    assert primary["StorageEncrypted"] is True
    assert primary["PubliclyAccessible"] is False
    assert primary["DeletionProtection"] is True
    assert primary["ManageMasterUserPassword"] is True, "no password in the template"


def test_iam_is_least_privilege(resources: dict[str, Any]) -> None:
    roles = _of_type(resources, "AWS::IAM::Role")
    assert set(roles) == {"ApiRole", "WorkerRole"}
    actions: dict[str, set[str]] = {}
    for name, role in {**roles, **_of_type(resources, "AWS::IAM::User")}.items():
        actions[name] = set()
        for policy in role["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                assert statement["Effect"] == "Allow"
                assert statement["Resource"] != "*", name
                assert "*" not in statement["Resource"], name
                granted = statement["Action"]
                granted = [granted] if isinstance(granted, str) else granted
                assert not any(a.endswith(":*") or a == "*" for a in granted), name
                actions[name] |= set(granted)
    # The API signs download URLs (s3:GetObject) and touches nothing else outside DynamoDB.
    api_other = {a for a in actions["ApiRole"] if not a.startswith("dynamodb:")}
    assert api_other == {"s3:GetObject"}
    assert {"s3:PutObject", "ses:SendRawEmail", "dynamodb:UpdateItem"} <= actions["WorkerRole"]
    for role in roles.values():
        trust = role["Properties"]["AssumeRolePolicyDocument"]["Fn::Sub"][0]
        assert "sts:AssumeRoleWithWebIdentity" in trust
        assert ":sub" in trust
        assert ":aud" in trust


def test_route53_latency_records_and_dkim(resources: dict[str, Any]) -> None:
    records = _of_type(resources, "AWS::Route53::RecordSet")
    latency = [r for r in records.values() if "Region" in r["Properties"]]
    assert latency
    assert all(r["Properties"]["AliasTarget"]["EvaluateTargetHealth"] for r in latency)
    assert sum(r["Properties"]["Type"] == "CNAME" for r in records.values()) == 3  # DKIM


def test_the_template_has_every_table_the_app_creates_locally(resources: dict[str, Any]) -> None:
    """store/tables.py (what tests and `make run` create) and the template must agree."""
    settings = DynamoSettings(table_prefix="p-")
    expiring = {name.removeprefix("p-") for name in ttl_tables(settings)}
    app = {spec["TableName"].removeprefix("p-"): spec for spec in table_specs(settings)}
    infra = {
        r["Properties"]["TableName"]["Fn::Sub"].split("}-", 1)[1]: (name, r["Properties"])
        for name, r in _of_type(resources, "AWS::DynamoDB::Table").items()
    }
    assert set(app) == set(infra)
    api_tables = {
        # `!GetAtt X.Arn` loads as the scalar "X.Arn"
        str(ref["Fn::GetAtt"]).split(".", 1)[0]
        for policy in resources["ApiRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        for ref in statement["Resource"]
        if isinstance(ref, dict) and "Fn::GetAtt" in ref
    }
    for table, spec in app.items():
        logical, props = infra[table]
        assert props["KeySchema"] == spec["KeySchema"], table
        assert ("TimeToLiveSpecification" in props) == (table in expiring), table
        assert logical in api_tables, f"the API cannot reach {table}"
