"""Checks run before anything is applied, each failure one clear line: the checkpoint bucket exists
and the credentials in the environment (the ones `invoke secrets` stores) can write to it, every
pinned image exists in its registry at its digest, the cluster and the Determined master answer."""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable
from typing import TextIO

import botocore.exceptions
import requests

from jobs import remote
from jobs.cli import JobError
from k8s.cluster import Cluster
from k8s.config import PipelineConfig
from k8s.determined_api import Master

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def check_bucket(bucket: str, endpoint_url: str | None, prefix: str = "", create: bool = False) -> str:
    # a check answers quickly or says why: few retries, short timeouts
    s3 = remote.s3_client(endpoint_url, retries={"max_attempts": 2}, connect_timeout=10, read_timeout=30)
    try:
        s3.head_bucket(Bucket=bucket)
        note = "exists"
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise JobError(
                f"bucket {bucket}: not accessible with the credentials in the environment ({code})"
            ) from exc
        if not create:
            raise JobError(
                f"bucket {bucket}: does not exist at {endpoint_url or 'AWS'} (pass --create-bucket)"
            ) from exc
        try:
            s3.create_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc2:
            raise JobError(
                f"bucket {bucket}: could not create it ({exc2.response['Error'].get('Code')})"
            ) from exc2
        note = "created"
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.NoCredentialsError) as exc:
        raise JobError(f"bucket {bucket}: {type(exc).__name__} at {endpoint_url or 'AWS'}") from exc
    key = f"{prefix.strip('/') + '/' if prefix.strip('/') else ''}.neox-pipeline-preflight-{uuid.uuid4().hex[:8]}"
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"preflight\n")
        s3.delete_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise JobError(
            f"bucket {bucket}: the credentials in the environment cannot write to it ({code})"
        ) from exc
    return note


_REF = re.compile(r"^(?P<host>[^/]+)/(?P<repo>[^@]+)@(?P<digest>sha256:[0-9a-f]{64})$")


def registry_scheme(host: str) -> str:
    insecure = {h.strip() for h in os.environ.get("NEOX_INSECURE_REGISTRIES", "").split(",") if h.strip()}
    return "http" if host.split(":")[0] in ("127.0.0.1", "localhost") or host in insecure else "https"


def check_image(ref: str, timeout: float = 15.0) -> None:
    """HEAD the manifest by digest (Docker Registry HTTP API v2), following a Bearer token challenge."""
    m = _REF.match(ref)
    if not m:
        raise JobError(f"image {ref}: expected REGISTRY/REPOSITORY@sha256:DIGEST")
    host, repo, digest = m["host"], m["repo"], m["digest"]
    url = f"{registry_scheme(host)}://{host}/v2/{repo}/manifests/{digest}"
    headers = {"Accept": MANIFEST_TYPES}
    auth = None
    if os.environ.get("REGISTRY_USERNAME"):
        auth = (os.environ["REGISTRY_USERNAME"], os.environ.get("REGISTRY_PASSWORD", ""))
    try:
        resp = requests.head(url, headers=headers, timeout=timeout, auth=auth)
        challenge = resp.headers.get("WWW-Authenticate", "")
        if resp.status_code == 401 and challenge.lower().startswith("bearer"):
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            realm = params.pop("realm", "")
            params.setdefault("scope", f"repository:{repo}:pull")
            tok = requests.get(realm, params=params, auth=auth, timeout=timeout)
            if tok.status_code == 200:
                body = tok.json()
                headers["Authorization"] = f"Bearer {body.get('token') or body.get('access_token')}"
                resp = requests.head(url, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise JobError(f"image {ref}: registry {host} unreachable ({type(exc).__name__})") from exc
    if resp.status_code == 404:
        raise JobError(f"image {ref}: not in registry {host} at that digest (run `invoke push`)")
    if resp.status_code in (401, 403):
        raise JobError(
            f"image {ref}: registry {host} refused access ({resp.status_code}); set REGISTRY_USERNAME/"
            "REGISTRY_PASSWORD"
        )
    if resp.status_code != 200:
        raise JobError(f"image {ref}: registry {host} answered {resp.status_code}")
    served = resp.headers.get("Docker-Content-Digest")
    if served and served != digest:
        raise JobError(f"image {ref}: registry served digest {served}")


def run_preflight(
    cfg: PipelineConfig,
    images: dict[str, str],
    cluster: Cluster | None,
    master: Master | None,
    create_bucket: bool = False,
    out: TextIO | None = None,
    bucket_check: Callable[..., str] = check_bucket,
) -> None:
    """Run every check, print each failure as one line, then fail once if any did."""
    out = out or sys.stderr
    failures: list[str] = []

    def attempt(label: str, fn: Callable[[], str | None]) -> None:
        try:
            note = fn()
            print(f"preflight: ok    {label}{f' ({note})' if note else ''}", file=out)
        except JobError as exc:
            failures.append(str(exc))
            print(f"preflight: FAIL  {exc}", file=out)

    ck = cfg.checkpoints
    attempt(f"bucket {ck.bucket}", lambda: bucket_check(ck.bucket, ck.endpoint_url, ck.prefix, create_bucket))
    for name, ref in images.items():
        attempt(f"image {name}", lambda ref=ref: check_image(ref))
    if cluster is not None:
        attempt(f"cluster {cluster.creds.server}", lambda: f"Kubernetes {cluster.version()}")
    if master is not None:
        attempt(f"Determined master {master.url}", lambda: f"version {master.info().get('version', '?')}")
    if failures:
        raise JobError(f"preflight: {len(failures)} check(s) failed, nothing applied; first: {failures[0]}")
