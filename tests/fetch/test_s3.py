"""The fetcher against an S3-compatible server on 127.0.0.1 (moto's threaded server, real HTTP)."""

from __future__ import annotations

import hashlib
import json

import pytest

from jobs.cli import JobError
from jobs.fetch import Options, fetch
from jobs.fetch.cli import main
from tests.support.s3 import moto_s3
from tests.support.trees import assert_same_tree

pytest.importorskip("moto.server", reason="moto[server] is not installed")
boto3 = pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def s3(weights):
    with moto_s3() as (endpoint, _):
        mp = pytest.MonkeyPatch()
        # Credentials only through boto3's standard chain (here: the environment).
        mp.setenv("AWS_ACCESS_KEY_ID", "testing-key")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="weights")
        root, files = weights
        for rel, data in files.items():
            client.put_object(Bucket="weights", Key=f"neox/slim/{rel}", Body=data)
        # one multipart object: its ETag is not an MD5, so sha256 is computed instead
        up = client.create_multipart_upload(Bucket="weights", Key="multi/blob.bin")
        parts, blob = [], bytes(range(256)) * (24 << 12)  # 6 MiB
        for n, off in enumerate(range(0, len(blob), 5 << 20), 1):
            r = client.upload_part(
                Bucket="weights",
                Key="multi/blob.bin",
                UploadId=up["UploadId"],
                PartNumber=n,
                Body=blob[off : off + (5 << 20)],
            )
            parts.append({"PartNumber": n, "ETag": r["ETag"]})
        client.complete_multipart_upload(
            Bucket="weights", Key="multi/blob.bin", UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
        )
        yield endpoint, client, blob
        mp.undo()


def test_prefix_exact_bytes_and_idempotent(s3, weights, dest, capsys):
    endpoint, client, _ = s3
    root, files = weights
    assert main(["s3://weights/neox/slim", str(dest), "--endpoint-url", endpoint, "--connections", "6"]) == 0
    assert_same_tree(dest, files)
    out = capsys.readouterr()
    assert "testing-secret" not in out.out + out.err and "testing-key" not in out.out + out.err
    manifest = json.loads((dest / "fetch-manifest.json").read_text())
    assert manifest["source"] == "s3://weights/neox/slim"
    big = next(f for f in manifest["files"] if f["path"].endswith("layer_00-model_00-model_states.pt"))
    assert (
        big["sha256"]
        == hashlib.sha256(files["global_step150000/layer_00-model_00-model_states.pt"]).hexdigest()
    )
    stats = fetch("s3://weights/neox/slim/", dest, Options(endpoint_url=endpoint))
    assert stats["bytes_moved"] == 0 and stats["files_up_to_date"] == len(files)


def test_endpoint_from_environment_and_multipart_object(s3, dest, monkeypatch):
    endpoint, client, blob = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    fetch("s3://weights/multi/blob.bin", dest, Options(connections=3))
    assert (dest / "blob.bin").read_bytes() == blob


def test_etag_md5_mismatch_is_caught(s3, weights, dest):
    """The plain-MD5 ETag is the expected checksum: bytes that disagree with it (corrupted here inside
    the server's own store, keeping the ETag) are not moved into place."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    endpoint, client, _ = s3
    key = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets["weights"].keys["neox/slim/latest"]
    good = key.value
    key.value = good[::-1]  # same size, different bytes, stale ETag
    try:
        with pytest.raises(JobError, match=r"checksum mismatch for latest \(md5 expected .*the S3 ETag"):
            fetch("s3://weights/neox/slim", dest, Options(endpoint_url=endpoint))
    finally:
        key.value = good
    assert not (dest / "latest").exists()
    assert (dest / "configs/20B.yml").exists()  # the rest completed


def test_missing_bucket_and_empty_prefix(s3, dest):
    endpoint, client, _ = s3
    with pytest.raises(JobError, match="s3://nope"):
        fetch("s3://nope/x/", dest, Options(endpoint_url=endpoint))
    with pytest.raises(JobError, match="s3://weights/empty/"):
        fetch("s3://weights/empty", dest, Options(endpoint_url=endpoint))
