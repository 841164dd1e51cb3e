"""Preflight against real servers on 127.0.0.1: an S3-compatible server (moto's) for the bucket, the
Debian `docker-registry` (the Docker Registry v2 implementation) for image digests, and the stand-ins
for the cluster and the master."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import time

import pytest
import requests

from jobs.cli import JobError
from k8s import deploy as d
from k8s.config import load_config, load_lock
from k8s.preflight import check_bucket, check_image, run_preflight
from tests.support.net import free_port

REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if REGISTRY_BIN is None:
        pytest.skip("no docker-registry binary (Debian package docker-registry) on this machine")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    (root / "config.yml").write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "error"},
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    proc = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(root / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(f"{base}/v2/", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("docker-registry did not start")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def _push_manifest(registry: str, repo: str) -> str:
    """Push a minimal image (a config blob, no layers) by the Registry HTTP API; returns its digest."""
    base = f"http://{registry}/v2/{repo}"
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    up = requests.post(f"{base}/blobs/uploads/", timeout=10)
    assert up.status_code == 202, up.text
    loc = up.headers["Location"]
    loc = loc if loc.startswith("http") else f"http://{registry}{loc}"
    put = requests.put(
        loc,
        params={"digest": cdigest},
        data=config,
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
    )
    assert put.status_code == 201, put.text
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cdigest,
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    r = requests.put(
        f"{base}/manifests/latest",
        data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


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
    digest = _push_manifest(registry, "neox/trainer")
    check_image(f"{registry}/neox/trainer@{digest}")
    missing = "sha256:" + "0" * 64
    with pytest.raises(JobError, match=r"not in registry .* at that digest"):
        check_image(f"{registry}/neox/trainer@{missing}")
    with pytest.raises(JobError, match="unreachable"):
        check_image(f"127.0.0.1:9/neox/trainer@{digest}")


def test_preflight_reports_every_failure_and_applies_nothing(
    config_file, lock_file, s3, kube, cluster, master
):
    cfg = load_config(config_file)
    images = load_lock(lock_file)  # digests that are in no registry
    url, _ = s3
    cfg.raw["checkpoints"]["endpoint_url"] = url
    out = io.StringIO()
    with pytest.raises(JobError, match=r"preflight: 4 check\(s\) failed, nothing applied"):
        run_preflight(cfg, images, cluster, master, out=out)
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("preflight: FAIL") for line in lines) == 4  # the bucket and three images
    assert any("ok    cluster" in line and "v1.30.4" in line for line in lines)
    assert any("ok    Determined master" in line and "0.38.1" in line for line in lines)
    assert kube.writes == []


def test_deploy_with_preflight_passing(
    make_config, lock_file, s3, registry, kube, det, cluster, master, secret_env
):
    url, _ = s3
    digests = {n: _push_manifest(registry, f"neox/{n}") for n in ("trainer", "fetcher", "preprocessor")}
    lock_file.write_text(
        json.dumps({"images": {n: f"{registry}/neox/{n}@{dg}" for n, dg in digests.items()}})
    )
    cfg = make_config(lambda r: r["checkpoints"].update(endpoint_url=url))
    d.secrets(d.Options(config=str(cfg)), cluster=cluster, out=io.StringIO())
    log = io.StringIO()
    res = d.deploy(
        d.Options(config=str(cfg), create_bucket=True, poll=0.01), cluster=cluster, master=master, out=log
    )
    assert "preflight: ok    bucket model-checkpoints (created)" in log.getvalue()
    assert res.experiment_id == 1
    assert det.experiments[1]["config"]["checkpoint_storage"]["endpoint_url"] == url
