"""A real Docker Registry v2 on 127.0.0.1 (the Debian `docker-registry` binary) and a minimal image
pushed to it by the Registry HTTP API, for the preflight tests' digest checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.support.net import free_port

REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")


@contextlib.contextmanager
def docker_registry(root: Path) -> Iterator[str]:
    """`with docker_registry(tmp) as host:` a running registry at host ("127.0.0.1:PORT")."""
    if REGISTRY_BIN is None:
        raise RuntimeError("no docker-registry binary")
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
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/v2/", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("docker-registry did not start")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def push_manifest(registry: str, repo: str) -> str:
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
