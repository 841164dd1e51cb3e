"""Remote storage, one way for every job and tool: S3 clients, and the pieces of ranged HTTP reads.

An S3 client's endpoint is the one given, else `$AWS_ENDPOINT_URL`, else AWS; its keys come from boto3's
default chain (environment, shared files, instance role) unless given, and are never logged."""

from __future__ import annotations

import os


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client(endpoint_url: str | None = None, *, keys: dict[str, str] | None = None, **config):
    """A boto3 S3 client; `config` goes to botocore's Config (retries, timeouts, pool size)."""
    import boto3  # imported late: local runs need no AWS stack
    from botocore.config import Config

    # A session of its own: boto3's default session is not safe to share between threads.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3_endpoint(endpoint_url),
        config=Config(**config) if config else None,
        **(keys or {}),
    )


# ---- ranged, resuming HTTP reads (the fetcher's chunks, the preprocessor's resumes) ------------------


def transient_status(status: int) -> bool:
    """An HTTP status worth retrying: a server error, a request timeout, too many requests."""
    return status >= 500 or status in (408, 429)


def range_headers(start: int, end: int | None = None, validator: str | None = None) -> dict[str, str]:
    """Headers asking for bytes [start, end) (to the object's end without `end`); with a validator (ETag,
    Last-Modified) also If-Range, so a changed object answers 200 with its whole new version."""
    headers = {"Range": f"bytes={start}-{'' if end is None else end - 1}"}
    if validator:
        headers["If-Range"] = validator
    return headers
