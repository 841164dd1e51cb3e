"""S3-compatible sources (`s3://bucket/prefix`): listing with list_objects_v2, ranged GETs with
If-Match on the ETag, a plain-MD5 ETag used as the expected checksum. Credentials come only from
boto3's standard chain (environment, shared files, instance roles) and are never logged."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import botocore.exceptions as bex
import urllib3.exceptions

from jobs.cli import JobError
from jobs.remote import s3_client, s3_endpoint
from jobs.retry import RestartFile, SizeMismatch, TransientError

from .plan import RemoteFile, safe_relpath

BLOCK = 1 << 20
_MD5 = re.compile(r'^"?([0-9a-f]{32})"?$')
_TRANSIENT = (
    bex.EndpointConnectionError,
    bex.ConnectionClosedError,
    bex.ReadTimeoutError,
    bex.ConnectTimeoutError,
    bex.ResponseStreamingError,
    bex.IncompleteReadError,
)


def parse_s3_url(url: str) -> tuple[str, str]:
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise JobError(f"{url}: no bucket name")
    return bucket, prefix


class S3Source:
    def __init__(self, url: str, endpoint_url: str | None = None, connections: int = 16) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.description = url
        self.endpoint_url = s3_endpoint(endpoint_url)
        self.client = s3_client(
            self.endpoint_url,
            max_pool_connections=max(10, connections),
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=15,
            read_timeout=60,
        )
        self._local = threading.local()

    def _where(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}" if key else self.description

    def _client_error(self, exc: bex.ClientError, where: str) -> Exception:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("PreconditionFailed", "412") or status == 412:
            return RestartFile(f"{where}: the object changed")
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"):
            return TransientError(f"{where}: {code or status}")
        return JobError(f"{where}: {code or 'HTTP ' + str(status)}")

    def list_files(self) -> list[RemoteFile]:
        files = []
        prefix = self.prefix
        try:
            if prefix and not prefix.endswith("/"):
                # A prefix that names one object is a single file; otherwise it is a folder.
                try:
                    head = self.client.head_object(Bucket=self.bucket, Key=prefix)
                    name = prefix.rsplit("/", 1)[-1]
                    return [self._file(name, prefix, head["ContentLength"], head.get("ETag"))]
                except bex.ClientError as exc:
                    if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                        raise
                prefix += "/"
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue  # folder markers
                    files.append(self._file(key[len(prefix) :], key, obj["Size"], obj.get("ETag")))
        except bex.ClientError as exc:
            err = self._client_error(exc, self._where(prefix))
            raise (err if isinstance(err, JobError) else JobError(str(err))) from None
        except (bex.NoCredentialsError, bex.PartialCredentialsError):
            raise JobError(
                f"{self.description}: no AWS credentials found (environment, shared files or role)"
            ) from None
        except _TRANSIENT as exc:
            raise JobError(f"{self.description}: {type(exc).__name__}") from None
        if not files:
            raise JobError(f"{self._where(prefix)}: no objects under this prefix")
        return files

    def _file(self, rel: str, key: str, size: int, etag: str | None) -> RemoteFile:
        f = RemoteFile(safe_relpath(rel, self._where(key)), self._where(key), size, etag, True)
        f.key = key  # type: ignore[attr-defined]
        if etag and (m := _MD5.match(etag)):  # multipart ETags ("...-N") are not an MD5
            f.expected["md5"] = m.group(1)
            f.expected_from = "the S3 ETag"
        return f

    def read(self, file: RemoteFile, start: int, end: int | None) -> tuple[int, Iterator[bytes]]:
        kw = {"Bucket": self.bucket, "Key": file.key}  # type: ignore[attr-defined]
        if start > 0 or (end is not None and end < (file.size or 0)):
            kw["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if file.identity:
            kw["IfMatch"] = file.identity
        try:
            resp = self.client.get_object(**kw)
        except bex.ClientError as exc:
            raise self._client_error(exc, file.url) from None
        except _TRANSIENT as exc:
            raise TransientError(f"{file.url}: {type(exc).__name__}") from None
        real = start
        if "Range" in kw and not resp.get("ContentRange"):
            real = 0  # the store ignored the range
        body = resp["Body"]
        total = (resp.get("ContentRange") or "").rsplit("/", 1)[-1]
        if not total.isdigit() and "Range" not in kw:
            total = str(resp.get("ContentLength", ""))
        if file.size is not None and total.isdigit() and int(total) != file.size:
            body.close()
            raise SizeMismatch(f"listed with {file.size} bytes, the object now has {total}")

        def blocks():
            try:
                yield from body.iter_chunks(BLOCK)
            except (*_TRANSIENT, urllib3.exceptions.HTTPError) as exc:
                raise TransientError(f"{file.url}: {type(exc).__name__} mid-transfer") from None
            finally:
                body.close()

        return real, blocks()
