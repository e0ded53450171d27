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


def _tables(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The global tables by their name without the environment prefix."""
    return {
        r["Properties"]["TableName"]["Fn::Sub"].split("}-", 1)[1]: r
        for r in _of_type(resources, "AWS::DynamoDB::GlobalTable").values()
    }


# Tables the template anticipates before the app creates them (none since the schedules
# change created its own).
ANTICIPATED_TABLES: set[str] = set()


def test_tables_match_the_app(resources: dict[str, Any]) -> None:
    tables = _tables(resources)
    assert not _of_type(resources, "AWS::DynamoDB::Table"), "every table is a global table"
    assert set(tables) == {
        "users",
        "user-emails",
        "export-jobs",
        "refresh-tokens",
        "export-slots",
        "idempotency-keys",
        "regions",
        "schedules",
    }
    keys = {name: t["Properties"]["KeySchema"][0]["AttributeName"] for name, t in tables.items()}
    assert keys == {
        "users": "user_id",
        "user-emails": "email",
        "export-jobs": "job_id",
        "refresh-tokens": "pk",
        "export-slots": "user_id",
        "idempotency-keys": "pk",
        "regions": "region",
        "schedules": "schedule_id",
    }
    ttl = {"AttributeName": "expires_at", "Enabled": True}
    for name in ("refresh-tokens", "export-slots", "idempotency-keys", "export-jobs"):
        assert tables[name]["Properties"]["TimeToLiveSpecification"] == ttl, name
    jobs = tables["export-jobs"]["Properties"]
    indexes = {
        index["IndexName"]: [(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]]
        for index in jobs["GlobalSecondaryIndexes"]
    }
    assert indexes == _app_job_indexes()
    assert indexes[ACTIVE_INDEX] == [(ACTIVE_ATTRIBUTE, "HASH"), ("created_at", "RANGE")]
    (app_schedules,) = [
        s for s in table_specs(DynamoSettings(table_prefix="x-")) if s["TableName"] == "x-schedules"
    ]
    infra_schedules = tables["schedules"]["Properties"]
    assert infra_schedules["GlobalSecondaryIndexes"] == app_schedules["GlobalSecondaryIndexes"]
    assert sorted(
        infra_schedules["AttributeDefinitions"], key=lambda a: a["AttributeName"]
    ) == sorted(app_schedules["AttributeDefinitions"], key=lambda a: a["AttributeName"])
    for table in tables.values():
        props = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["SSESpecification"]["SSEEnabled"] is True
        assert table["DeletionPolicy"] == "Retain"


def test_every_table_is_replicated_to_both_regions_with_recovery(
    resources: dict[str, Any],
) -> None:
    """Global tables: one replica per region, each with point-in-time recovery and deletion
    protection, replicated through a stream; created once, by the primary region's stack."""
    for name, table in _tables(resources).items():
        assert table["Condition"] == "IsPrimaryRegion", name
        props = table["Properties"]
        regions = [replica["Region"] for replica in props["Replicas"]]
        assert regions == [{"Ref": "PrimaryRegion"}, {"Ref": "SecondaryRegion"}], name
        for replica in props["Replicas"]:
            pitr = replica["PointInTimeRecoverySpecification"]
            assert pitr == {"PointInTimeRecoveryEnabled": True}, name
            assert replica["DeletionProtectionEnabled"] is True, name
        # MREC global tables with more than one replica need a stream of both images.
        assert props["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}, name


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


def test_postgres_has_a_multi_az_primary_and_a_replica_in_each_region(
    resources: dict[str, Any],
) -> None:
    instances = _of_type(resources, "AWS::RDS::DBInstance")
    primaries = {
        name: r
        for name, r in instances.items()
        if "SourceDBInstanceIdentifier" not in r["Properties"]
    }
    replicas = {
        name: r for name, r in instances.items() if "SourceDBInstanceIdentifier" in r["Properties"]
    }
    assert set(primaries) == {"Database"}
    assert primaries["Database"]["Condition"] == "IsPrimaryRegion"
    primary = primaries["Database"]["Properties"]
    assert primary["MultiAZ"] is True
    assert primary["StorageEncrypted"] is True
    assert primary["PubliclyAccessible"] is False
    assert primary["DeletionProtection"] is True
    assert primary["ManageMasterUserPassword"] is True, "no password in the template"
    # The primary region's exports read an in-region replica; the secondary region's read a
    # cross-region replica of the same primary (its workers never cross the ocean per row).
    assert {name: r["Condition"] for name, r in replicas.items()} == {
        "DatabaseReplica": "IsPrimaryRegion",
        "CrossRegionDatabaseReplica": "IsSecondaryRegion",
    }
    remote = replicas["CrossRegionDatabaseReplica"]["Properties"]
    assert remote["SourceDBInstanceIdentifier"] == {"Ref": "PrimaryDatabaseArn"}
    assert remote["SourceRegion"] == {"Ref": "PrimaryRegion"}
    assert remote["KmsKeyId"], "an encrypted source needs a key in the replica's region"
    assert remote["PubliclyAccessible"] is False
    # Both regions' pods find their local database in the infra secret.
    infra_secret = resources["AppInfraSecret"]["Properties"]["SecretString"]["Fn::Sub"][1]
    assert infra_secret["DbHost"]["Fn::If"][2] == {
        "Fn::GetAtt": "CrossRegionDatabaseReplica.Endpoint.Address"
    }


def test_signing_keys_and_db_password_are_replicated_to_the_other_region(
    resources: dict[str, Any],
) -> None:
    """One issuer, one JWKS, the same kids: the JWT keys exist once and are replicated, as
    is the database role's password (the cross-region replica has the same roles)."""
    secrets = _of_type(resources, "AWS::SecretsManager::Secret")
    replicated = {name: s for name, s in secrets.items() if "ReplicaRegions" in s["Properties"]}
    assert set(replicated) == {"JwtSigningKeys", "AppDbPassword"}
    for name, secret in replicated.items():
        assert secret["Condition"] == "IsPrimaryRegion", name
        assert secret["Properties"]["ReplicaRegions"] == [{"Region": {"Ref": "SecondaryRegion"}}]
    assert replicated["JwtSigningKeys"]["Properties"]["Name"] == {
        "Fn::Sub": "exporter/${EnvironmentName}/jwt"
    }
    # No key material in a template: operators write the keys into the primary's secret.
    assert replicated["JwtSigningKeys"]["Properties"]["SecretString"] == "{}"


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


def test_route53_health_checks_and_failover_records(resources: dict[str, Any]) -> None:
    (check,) = _of_type(resources, "AWS::Route53::HealthCheck").values()
    config = check["Properties"]["HealthCheckConfig"]
    assert config["Type"] == "HTTPS"
    assert config["ResourcePath"] == {"Ref": "HealthCheckPath"}
    # Detection time the runbook states: RequestInterval x FailureThreshold = 30 s.
    assert config["RequestInterval"] * config["FailureThreshold"] == 30
    assert config["FullyQualifiedDomainName"] == {"Fn::Sub": "${AWS::Region}.${ApiDomainName}"}
    records = _of_type(resources, "AWS::Route53::RecordSet")
    failover = [r["Properties"] for r in records.values() if "Failover" in r["Properties"]]
    assert {r["Type"] for r in failover} == {"A", "AAAA"}
    for record in failover:
        assert record["Failover"] == {"Fn::If": ["IsPrimaryRegion", "PRIMARY", "SECONDARY"]}
        assert record["HealthCheckId"] == {"Ref": "ApiHealthCheck"}
        assert record["SetIdentifier"] == {"Ref": "AWS::Region"}
        assert record["AliasTarget"]["EvaluateTargetHealth"] is True
    assert not [r for r in records.values() if "Region" in r["Properties"]], "no latency records"
    assert sum(r["Properties"]["Type"] == "CNAME" for r in records.values()) == 3  # DKIM


def test_replication_is_watched(resources: dict[str, Any]) -> None:
    alarms = {
        r["Properties"]["MetricName"]: r
        for r in _of_type(resources, "AWS::CloudWatch::Alarm").values()
    }
    assert set(alarms) == {"ReplicationLatency", "ReplicaLag"}
    dims = {d["Name"] for d in alarms["ReplicationLatency"]["Properties"]["Dimensions"]}
    assert dims == {"TableName", "ReceivingRegion"}


def test_either_region_reads_both_buckets(resources: dict[str, Any]) -> None:
    """A file stays in the bucket of the region that stored it: a download link served by
    either region signs a URL for that bucket, so both roles may read both buckets."""
    for role in ("ApiRole", "WorkerRole"):
        readable = [
            str(r)
            for policy in resources[role]["Properties"]["Policies"]
            for statement in policy["PolicyDocument"]["Statement"]
            if "s3:GetObject" in statement["Action"]
            for r in statement["Resource"]
        ]
        for region in ("PrimaryRegion", "SecondaryRegion"):
            assert any(f"${{{region}}}/*" in r for r in readable), (role, region)


def test_the_template_has_every_table_the_app_creates_locally(resources: dict[str, Any]) -> None:
    """store/tables.py (what tests and `make run` create) and the template must agree."""
    settings = DynamoSettings(table_prefix="p-")
    expiring = {name.removeprefix("p-") for name in ttl_tables(settings)}
    app = {spec["TableName"].removeprefix("p-"): spec for spec in table_specs(settings)}
    infra = {name: table["Properties"] for name, table in _tables(resources).items()}
    assert set(app) == set(infra) - ANTICIPATED_TABLES
    # The roles name this region's replica of each table by its ARN.
    api_tables = {
        str(ref["Fn::Sub"]).rsplit(":table/exporter-${EnvironmentName}-", 1)[1]
        for policy in resources["ApiRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        for ref in statement["Resource"]
        if isinstance(ref, dict) and ":table/" in str(ref.get("Fn::Sub", ""))
    }
    for table, spec in app.items():
        props = infra[table]
        assert props["KeySchema"] == spec["KeySchema"], table
        assert ("TimeToLiveSpecification" in props) == (table in expiring), table
        assert table in api_tables, f"the API cannot reach {table}"
