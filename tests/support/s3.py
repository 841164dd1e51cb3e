"""An S3-compatible server for tests: moto's threaded server on 127.0.0.1, emptied on start (moto keeps
its state per process), and a boto3 client for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@contextlib.contextmanager
def moto_s3() -> Iterator[tuple[str, object]]:
    """`with moto_s3() as (endpoint_url, client):` a running, empty server and a client of it."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        requests.post(f"{url}/moto-api/reset", timeout=30).raise_for_status()
        yield url, boto3.client("s3", endpoint_url=url, **KEYS)
    finally:
        server.stop()
