"""Remote inputs (https://, s3://) read front to back that survive a dropped connection.

A corpus file can be many gigabytes; a reset halfway through must not lose the run. `ResumingReader`
counts the bytes it has passed on and, when the transfer breaks, reopens the object at that byte
(an HTTP or S3 Range request) after a backoff. A validator (the ETag: HTTP If-Range, S3 IfMatch) makes
sure the rest comes from the same version of the object; one that changed fails the input by name.
A server that ignores Range gets the whole object again, and the bytes already read are skipped.

HTTP redirects are followed by hand (jobs.fetch.http.request_following, as the fetcher does): one to another
host is refused unless that host is allowed (--allow-redirect-host), and credentials (user:password@ in the
URL, Authorization, cookies) go with the first request only. A resume follows them again from the URL given.
"""

from __future__ import annotations

import http.client
import io
import sys
from collections.abc import Callable

from jobs.cli import JobError
from jobs.remote import range_headers, transient_status
from jobs.retry import Backoff, TransientError

Opener = Callable[[int], io.RawIOBase]  # the object's bytes from an offset on


class ResumingReader(io.RawIOBase):
    def __init__(self, name: str, open_at: Opener, transient: tuple[type[BaseException], ...]) -> None:
        self.name = name
        self._open_at = open_at
        self._transient = (TransientError, *transient)
        self.offset = 0
        self.resumes = 0
        self._stream = self._open()

    def readable(self) -> bool:
        return True

    def _open(self) -> io.RawIOBase:
        backoff = Backoff()
        while True:
            try:
                return self._open_at(self.offset)
            except self._transient as exc:
                if not backoff.wait():
                    raise JobError(f"{self.name}: giving up after {backoff.attempts} tries: {exc}") from exc

    def readinto(self, b) -> int:
        backoff = Backoff()
        while True:
            try:
                data = self._stream.read(len(b))
            except self._transient as exc:
                self._close_stream()
                if not backoff.wait():
                    raise JobError(
                        f"{self.name}: giving up after {backoff.attempts} tries at byte {self.offset}: {exc}"
                    ) from exc
                # one line per resume, so a flaky link shows in the job's log
                print(
                    f"{self.name}: connection lost at byte {self.offset} ({type(exc).__name__}); resuming",
                    file=sys.stderr,
                    flush=True,
                )
                self._stream = self._open()
                self.resumes += 1
                continue
            n = len(data)
            b[:n] = data
            self.offset += n
            return n

    def _close_stream(self) -> None:
        try:
            self._stream.close()
        except Exception:
            pass  # a broken connection may fail to close too; it is being replaced

    def close(self) -> None:
        self._close_stream()
        super().close()


def skip(stream, count: int) -> None:
    """Read and drop `count` bytes: resuming from a server that sent the whole object again."""
    while count > 0:
        data = stream.read(min(count, 1 << 20))
        if not data:
            raise TransientError(f"the object ended {count} bytes before the resume point")
        count -= len(data)


# ---- HTTP -------------------------------------------------------------------------------------------


def http_transient() -> tuple[type[BaseException], ...]:
    import requests
    import urllib3

    return (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
        http.client.HTTPException,
        OSError,
    )


def open_http(url: str, redirect_hosts: tuple[str, ...] = ()) -> ResumingReader:
    import requests

    from jobs.fetch.http import new_session, request_following

    first: dict[str, str | None] = {}
    session = new_session()  # keeps the connection between resumes; takes no cookies

    def open_at(offset: int):
        headers = range_headers(offset, validator=first.get("etag")) if offset else {}
        resp = request_following(session, "GET", url, headers, redirect_hosts, stream=True, timeout=(30, 300))
        if transient_status(resp.status_code):
            resp.close()
            raise TransientError(f"HTTP {resp.status_code} {resp.reason}")
        if resp.status_code not in (200, 206):
            resp.close()
            raise JobError(f"{url}: HTTP {resp.status_code} {resp.reason}")
        etag, encoding = resp.headers.get("ETag"), resp.headers.get("Content-Encoding", "identity")
        if not offset:
            first.update(etag=etag, encoding=encoding)
        elif encoding != "identity" or first["encoding"] != "identity":
            resp.close()  # offsets count decoded bytes; a Range counts encoded ones
            raise JobError(
                f"{url}: the connection broke at byte {offset} and a {encoding} transfer cannot resume"
            )
        elif resp.status_code == 200 and first["etag"] and etag != first["etag"]:
            resp.close()
            raise JobError(f"{url}: changed while being read (ETag {first['etag']} became {etag})")
        resp.raw.decode_content = True  # undo transfer encodings; stored compression is ours to undo
        if offset and resp.status_code == 200:
            skip(resp.raw, offset)
        return resp.raw

    try:
        return ResumingReader(url, open_at, http_transient())
    except requests.RequestException as exc:
        raise JobError(f"{url}: {exc}") from exc


# ---- S3 ---------------------------------------------------------------------------------------------


def s3_transient() -> tuple[type[BaseException], ...]:
    import botocore.exceptions as e
    import urllib3

    return (
        e.ResponseStreamingError,
        e.IncompleteReadError,
        e.ReadTimeoutError,
        e.ConnectionError,
        e.ConnectionClosedError,
        urllib3.exceptions.HTTPError,
        http.client.HTTPException,
        OSError,
    )


def open_s3(client, bucket: str, key: str) -> ResumingReader:
    from botocore.exceptions import ClientError

    name = f"s3://{bucket}/{key}"
    first: dict[str, str] = {}

    def open_at(offset: int):
        kwargs = {"Bucket": bucket, "Key": key}
        if offset:
            kwargs.update(Range=f"bytes={offset}-", IfMatch=first["etag"])
        try:
            obj = client.get_object(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("PreconditionFailed", "412"):
                raise JobError(f"{name}: changed while being read (no longer ETag {first['etag']})") from exc
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"):
                raise TransientError(f"{code or status}") from exc
            raise JobError(f"{name}: {exc}") from exc
        if not offset:
            first["etag"] = obj["ETag"]
        return obj["Body"]

    return ResumingReader(name, open_at, s3_transient())
