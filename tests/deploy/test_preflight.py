"""Preflight against real servers on 127.0.0.1: an S3-compatible server (moto's) for the bucket, the
Debian `docker-registry` (the Docker Registry v2 implementation) for image digests, and the stand-ins
for the cluster and the master."""

from __future__ import annotations

import io
import json

import pytest

from jobs.cli import JobError
from k8s import deploy as d
from k8s.config import load_config, load_lock
from k8s.preflight import check_bucket, check_image, run_preflight
from tests.support.registry import REGISTRY_BIN, docker_registry, push_manifest


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if REGISTRY_BIN is None:
        pytest.skip("no docker-registry binary (Debian package docker-registry) on this machine")
    with docker_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


def test_bucket_missing_created_and_writable(s3):
    url, client = s3
    with pytest.raises(
        JobError, match=r"^bucket model-checkpoints: does not exist at .* \(pass --create-bucket\)$"
    ):
        check_bucket("model-checkpoints", url)
    assert check_bucket("model-checkpoints", url, prefix="gpt-neox-20b", create=True) == "created"
    assert check_bucket("model-checkpoints", url, prefix="gpt-neox-20b") == "exists"
    # The write probe cleaned up after itself.
    assert client.list_objects_v2(Bucket="model-checkpoints").get("KeyCount", 0) == 0


def test_bucket_unreachable_is_one_line(secret_env, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(JobError, match=r"^bucket b1: EndpointConnectionError at http://127.0.0.1:9$"):
        check_bucket("b1", "http://127.0.0.1:9")


def test_image_digest_checked_in_a_real_registry(registry):
    digest = push_manifest(registry, "neox/trainer")
    check_image(f"{registry}/neox/trainer@{digest}")
    missing = "sha256:" + "0" * 64
    with pytest.raises(JobError, match=r"not in registry .* at that digest"):
        check_image(f"{registry}/neox/trainer@{missing}")
    with pytest.raises(JobError, match="unreachable"):
        check_image(f"127.0.0.1:9/neox/trainer@{digest}")


def test_preflight_reports_every_failure_and_applies_nothing(
    make_config, lock_file, s3, kube, cluster, master
):
    url, _ = s3
    cfg = load_config(make_config(lambda r: r["checkpoints"].update(endpoint_url=url)))
    images = load_lock(lock_file)  # digests that are in no registry
    out = io.StringIO()
    with pytest.raises(JobError, match=r"preflight: 5 check\(s\) failed, nothing applied"):
        run_preflight(cfg, images, cluster, master, out=out)
    lines = out.getvalue().splitlines()
    # no Secret yet, the bucket (does not exist), three images
    assert sum(line.startswith("preflight: FAIL") for line in lines) == 5
    assert any("ok    cluster" in line and "v1.30.4" in line for line in lines)
    assert any("ok    Determined master" in line and "0.38.1" in line for line in lines)
    assert kube.writes == []


def test_deploy_with_preflight_passing(
    make_config, lock_file, s3, registry, kube, det, cluster, master, secret_env
):
    url, _ = s3
    digests = {n: push_manifest(registry, f"neox/{n}") for n in ("trainer", "fetcher", "preprocessor")}
    lock_file.write_text(
        json.dumps({"images": {n: f"{registry}/neox/{n}@{dg}" for n, dg in digests.items()}})
    )
    cfg = make_config(lambda r: r["checkpoints"].update(endpoint_url=url))
    d.secrets(d.Options(config=str(cfg)), cluster=cluster, out=io.StringIO())
    log = io.StringIO()
    res = d.deploy(
        d.Options(config=str(cfg), create_bucket=True, poll=0.01), cluster=cluster, master=master, out=log
    )
    assert (
        "preflight: ok    bucket model-checkpoints (created, checked with the keys of "
        "Secret/checkpoint-s3-credentials, as the pods will use them)"
    ) in log.getvalue()
    assert res.experiment_id == 1
    assert det.experiments[1]["config"]["checkpoint_storage"]["endpoint_url"] == url
