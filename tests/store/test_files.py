"""ExportFiles against a real S3 endpoint (moto's server on loopback)."""

from __future__ import annotations

import io
import os
import tempfile
import uuid
from typing import IO

import aiohttp
import pytest

from exporter.aws import open_s3
from exporter.config import S3Settings
from exporter.errors import StoreError, StoreUnavailable
from exporter.resources import Resources
from exporter.store.files import ExportFiles, FileWindow
from tests.aws_errors import AwsError, aws_error_endpoint

MIB = 1024 * 1024


def files_with_part_size(resources: Resources, part_size: int) -> ExportFiles:
    settings = resources.settings.s3.model_copy(update={"part_size_bytes": part_size})
    return ExportFiles(resources.files._client, settings)


async def read_object(resources: Resources, key: str) -> tuple[bytes, dict[str, object]]:
    response = await resources.files._client.get_object(Bucket=resources.files.bucket, Key=key)
    async with response["Body"] as body:
        return await body.read(), response


async def test_a_small_file_goes_up_in_one_put_encrypted(resources: Resources) -> None:
    key = resources.files.key_for(str(uuid.uuid4()), "memberships.csv")
    data = b"id,name\n1,a\n"

    await resources.files.upload(key, io.BytesIO(data), size=len(data), content_type="text/csv")

    body, response = await read_object(resources, key)
    assert body == data
    assert response["ServerSideEncryption"] == "AES256"
    assert response["ContentType"] == "text/csv"


async def test_a_large_file_goes_up_in_parts_and_arrives_whole(resources: Resources) -> None:
    files = files_with_part_size(resources, 5 * MIB)
    key = files.key_for(str(uuid.uuid4()), "memberships.csv.gz")
    data = os.urandom(12 * MIB + 123)  # three parts, the last one short

    await files.upload(key, io.BytesIO(data), size=len(data), content_type="application/gzip")

    body, response = await read_object(resources, key)
    assert body == data
    assert str(response["ETag"]).strip('"').endswith("-3")  # a multipart object of 3 parts
    assert response["ServerSideEncryption"] == "AES256"


async def test_uploading_the_same_export_again_overwrites_it(resources: Resources) -> None:
    export_id = str(uuid.uuid4())
    key = resources.files.key_for(export_id, "memberships.csv")

    await resources.files.upload(key, io.BytesIO(b"first"), size=5, content_type="text/csv")
    await resources.files.upload(key, io.BytesIO(b"second"), size=6, content_type="text/csv")

    listing = await resources.files._client.list_objects_v2(
        Bucket=resources.files.bucket, Prefix=key.rsplit("/", 1)[0]
    )
    assert [o["Key"] for o in listing["Contents"]] == [key]
    assert (await read_object(resources, key))[0] == b"second"


class BrokenSource(io.BytesIO):
    """Fails after the first part, like a disk error halfway through."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        super().__init__(data)
        self._fail_after = fail_after

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self._fail_after:
            raise OSError("disk gone")
        return super().read(size)


async def test_a_failed_multipart_upload_is_aborted_not_left_behind(
    resources: Resources,
) -> None:
    files = files_with_part_size(resources, 5 * MIB)
    key = files.key_for(str(uuid.uuid4()), "memberships.csv")
    data = b"x" * (11 * MIB)

    with pytest.raises(OSError, match="disk gone"):
        await files.upload(
            key, BrokenSource(data, 5 * MIB), size=len(data), content_type="text/csv"
        )

    pending = await resources.files._client.list_multipart_uploads(Bucket=files.bucket, Prefix=key)
    assert pending.get("Uploads", []) == []
    with pytest.raises(Exception, match=r"NoSuchKey|Not Found|404"):
        await read_object(resources, key)


async def test_a_signed_url_downloads_the_file_under_its_name(resources: Resources) -> None:
    key = resources.files.key_for(str(uuid.uuid4()), "memberships-2026-11-27.csv")
    await resources.files.upload(key, io.BytesIO(b"a,b\n"), size=4, content_type="text/csv")

    url = await resources.files.signed_url(
        key, file_name="memberships-2026-11-27.csv", content_type="text/csv"
    )

    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert await response.read() == b"a,b\n"
        assert response.headers["Content-Disposition"] == (
            'attachment; filename="memberships-2026-11-27.csv"'
        )


async def test_deleting_removes_the_file_and_is_idempotent(resources: Resources) -> None:
    key = resources.files.key_for(str(uuid.uuid4()), "memberships.csv")
    await resources.files.upload(key, io.BytesIO(b"x"), size=1, content_type="text/csv")

    await resources.files.delete(key)
    await resources.files.delete(key)

    with pytest.raises(Exception, match=r"NoSuchKey|Not Found|404"):
        await read_object(resources, key)


async def test_a_missing_bucket_is_a_store_error_not_a_crash(resources: Resources) -> None:
    settings = resources.settings.s3.model_copy(update={"bucket": "no-such-bucket-here"})
    files = ExportFiles(resources.files._client, settings)

    with pytest.raises(StoreError):
        await files.upload("k", io.BytesIO(b"x"), size=1, content_type="text/csv")


def test_a_file_window_reads_only_its_range_and_rewinds() -> None:
    source = io.BytesIO(b"0123456789")
    window = FileWindow(source, 3, 4)

    assert len(window) == 4
    assert window.read() == b"3456"
    assert window.read() == b""
    window.seek(0)  # what botocore does after hashing, and before a retry
    assert window.read(2) == b"34"
    source.seek(9)  # another reader moved the shared file meanwhile
    assert window.read() == b"56"
    assert window.seek(0, io.SEEK_END) == 4
    window.close()  # aiohttp does this after each attempt; a retry sends the body again
    window.seek(0)
    assert not window.closed and window.read() == b"3456"


@pytest.mark.parametrize("on_disk", [False, True])
async def test_parts_are_read_from_the_file_at_their_own_offsets(
    resources: Resources, on_disk: bool
) -> None:
    # The worker's spool is positioned anywhere when the upload starts; each part reads at
    # its own offsets (pread on a real file), so what arrives does not depend on that.
    files = files_with_part_size(resources, 5 * MIB)
    key = files.key_for(str(uuid.uuid4()), "memberships.csv")
    data = os.urandom(11 * MIB)
    source: IO[bytes] = tempfile.TemporaryFile() if on_disk else io.BytesIO()  # noqa: SIM115
    source.write(data)
    source.flush()
    source.seek(7 * MIB)

    with source:
        await files.upload(key, source, size=len(data), content_type="text/csv")

    body, _ = await read_object(resources, key)
    assert body == data


async def upload_and_delete_against(error: AwsError) -> list[StoreError]:
    """An upload and a delete through the real client, against an endpoint answering
    ``error``; what each raised."""
    raised: list[StoreError] = []
    async with aws_error_endpoint(error) as url:
        # One attempt: botocore's own retries (with their backoff) are not what is tested.
        settings = S3Settings(endpoint_url=url, bucket="exports", max_attempts=1)
        async with open_s3(settings) as client:
            files = ExportFiles(client, settings)
            for call in (
                files.upload("k", io.BytesIO(b"x"), size=1, content_type="text/csv"),
                files.delete("k"),
            ):
                with pytest.raises(StoreError) as caught:
                    await call
                raised.append(caught.value)
    return raised


@pytest.mark.parametrize(
    "error",
    [
        AwsError.s3("SlowDown", status=503),
        AwsError.s3("InternalError", status=500),
        AwsError.s3("ServiceUnavailable", status=503),
        # A 5xx without S3's error document (botocore calls it "502").
        AwsError.bare(502),
    ],
    ids=lambda e: e.name,
)
async def test_throttling_and_server_errors_are_transient(error: AwsError) -> None:
    raised = await upload_and_delete_against(error)

    assert [type(e) for e in raised] == [StoreUnavailable, StoreUnavailable]


@pytest.mark.parametrize(
    "error",
    [AwsError.s3("AccessDenied", status=403), AwsError.s3("NoSuchBucket", status=404)],
    ids=lambda e: e.name,
)
async def test_a_refused_request_is_a_permanent_store_error(error: AwsError) -> None:
    raised = await upload_and_delete_against(error)

    assert [type(e) for e in raised] == [StoreError, StoreError]
