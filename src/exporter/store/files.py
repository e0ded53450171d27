"""Export files in S3: upload (multipart, streamed from the worker's temp file), sign, delete.

One object per export under a key derived from the export id alone, so a re-run of the same
export overwrites its object instead of leaving a second copy. Signed URLs are made on
demand by the download route and never stored.
"""

from __future__ import annotations

import io
import os
from contextlib import AbstractContextManager
from typing import IO, Any

from botocore.exceptions import ClientError

from exporter.aws import aws_errors
from exporter.config import S3Settings

# S3 answers these (or any 5xx) when a later attempt may succeed.
_RETRYABLE_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling"}
)


def s3_errors(operation: str) -> AbstractContextManager[None]:
    """Translate botocore errors into the store's own exceptions (one boundary, as for
    DynamoDB): transient trouble is ``StoreUnavailable``, the rest ``StoreError``."""
    return aws_errors(operation, retryable_codes=_RETRYABLE_CODES)


# Read size of a download into the worker's spool: large enough to keep the loop cheap.
_DOWNLOAD_CHUNK_BYTES = 1024 * 1024


class ExportFiles:
    """The export bucket, as the worker (upload, delete) and the API (sign) need it."""

    def __init__(self, client: Any, settings: S3Settings) -> None:
        self._client = client
        self._settings = settings

    @property
    def bucket(self) -> str:
        return self._settings.bucket

    def key_for(self, export_id: str, file_name: str) -> str:
        """Deterministic per export: a re-run writes the same object again."""
        return f"{self._settings.key_prefix}{export_id}/{file_name}"

    def _encryption(self) -> dict[str, str]:
        args: dict[str, str] = {"ServerSideEncryption": self._settings.sse}
        if self._settings.sse == "aws:kms" and self._settings.kms_key_id:
            args["SSEKMSKeyId"] = self._settings.kms_key_id
        return args

    async def upload(self, key: str, source: IO[bytes], *, size: int, content_type: str) -> None:
        """Upload ``size`` bytes of ``source`` part by part. Each part's body is a window
        onto the file that botocore and aiohttp read in small chunks, so memory stays flat
        whatever the part size (a part read into ``bytes`` would cost the whole part)."""
        part_size = self._settings.part_size_bytes
        common = {
            "Bucket": self.bucket,
            "Key": key,
            "ContentType": content_type,
            **self._encryption(),
        }
        if size <= part_size:
            with s3_errors("put_object"):
                await self._client.put_object(Body=FileWindow(source, 0, size), **common)
            return
        with s3_errors("create_multipart_upload"):
            started = await self._client.create_multipart_upload(**common)
        upload_id = started["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, part_size), start=1):
                with s3_errors("upload_part"):
                    part = await self._client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=FileWindow(source, start, min(part_size, size - start)),
                    )
                parts.append({"ETag": part["ETag"], "PartNumber": number})
            with s3_errors("complete_multipart_upload"):
                await self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            # Uploaded parts cost storage until aborted (the bucket's lifecycle rule also
            # aborts leftovers after a day, for the crash that skips this).
            with s3_errors("abort_multipart_upload"):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )
            raise

    async def signed_url(self, key: str, *, file_name: str, content_type: str) -> str:
        """A short-lived GET URL that downloads the file under its own name."""
        with s3_errors("generate_presigned_url"):
            url: str = await self._client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentDisposition": f'attachment; filename="{file_name}"',
                    "ResponseContentType": content_type,
                },
                ExpiresIn=self._settings.presign_ttl_s,
            )
        return url

    async def download(self, key: str, out: IO[bytes]) -> int:
        """Write the stored file into ``out`` in chunks (never whole in memory); its size.
        A re-run of an export whose file is stored delivers it from here instead of running
        its COPY again."""
        written = 0
        with s3_errors("get_object"):
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                while chunk := await body.read(_DOWNLOAD_CHUNK_BYTES):
                    out.write(chunk)
                    written += len(chunk)
        out.flush()
        return written

    async def delete(self, key: str) -> None:
        """Remove the file; deleting one that is already gone is fine."""
        with s3_errors("delete_object"):
            await self._client.delete_object(Bucket=self.bucket, Key=key)

    async def ensure_bucket(self) -> None:
        """Create the bucket where we own the endpoint (local, tests); AWS's comes from infra."""
        with s3_errors("head_bucket"):
            try:
                await self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                    raise
        with s3_errors("create_bucket"):
            await self._client.create_bucket(
                Bucket=self.bucket,
                CreateBucketConfiguration={"LocationConstraint": self._settings.region},
            )


class FileWindow(io.RawIOBase):
    """``length`` bytes of ``source`` from ``start``, as a seekable file of their own.

    botocore hashes (or checksums) a body and rewinds it for retries; aiohttp then streams it
    in 64 KiB reads, in an executor thread. The source must be flushed: a file on disk is
    read with ``os.pread`` at the window's own offsets; an in-memory one by seek and read.
    """

    def __init__(self, source: IO[bytes], start: int, length: int) -> None:
        super().__init__()
        self._source = source
        self._start = start
        self._length = length
        self._pos = 0
        # A real file is read with pread: no shared position, so a read still running in an
        # executor thread after its request was cancelled cannot shift the next one's.
        try:
            self._fd: int | None = source.fileno()
        except (OSError, ValueError):  # in memory (BytesIO, a small spool): no descriptor
            self._fd = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._length - self._pos)
        if want <= 0:
            return 0
        if self._fd is not None:
            data = os.pread(self._fd, want, self._start + self._pos)
        else:
            self._source.seek(self._start + self._pos)
            data = self._source.read(want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def __len__(self) -> int:
        # botocore takes the request's Content-Length from this.
        return self._length

    def close(self) -> None:
        """Nothing to release (the file is the worker's), and the window must stay usable:
        aiohttp closes a request's body after each attempt, and botocore rewinds and sends
        the same body again on a retry."""
