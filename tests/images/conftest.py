"""Fixtures for image integration tests: a real Docker engine, the local base image, all images
built through the project's own builder, and a real registry (Debian's docker-registry)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def base_image(docker_engine):
    """The base every image builds on here: NEOX_BASE_IMAGE, else `invoke base`'s image (made if missing)."""
    from images.base import make_base_image
    from images.catalog import LOCAL_BASE_IMAGE

    ref = os.environ.get("NEOX_BASE_IMAGE", LOCAL_BASE_IMAGE)
    try:
        docker_engine.images.get(ref)
    except Exception:
        if ref != LOCAL_BASE_IMAGE:
            pytest.fail(f"NEOX_BASE_IMAGE={ref} is not in the local engine")
        make_base_image(tag=ref, client=docker_engine, log=lambda line: None)
    return ref


@pytest.fixture(scope="session")
def built_images(docker_engine, base_image):
    """All shipped images, built (or reused by content tag) by the project's builder."""
    from images.build import build_images

    log = ROOT / ".pytest_cache" / "image-build.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "w") as f:
        return build_images(
            ROOT,
            None,
            base_image=base_image,
            client=docker_engine,
            log=lambda line: print(line, file=f, flush=True),
        )


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """HOST:PORT of a real registry: NEOX_TEST_REGISTRY if set (.ci/run starts one), else our own."""
    if os.environ.get("NEOX_TEST_REGISTRY"):
        yield os.environ["NEOX_TEST_REGISTRY"]
        return
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("no registry: set NEOX_TEST_REGISTRY or apt-get install docker-registry")
    yield from _run_registry(binary, tmp_path_factory.mktemp("registry"))


def _run_registry(binary: str, workdir: Path, extra_config: str = ""):
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {workdir / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{extra_config}"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"docker-registry did not start: {proc.stderr.read().decode()[-500:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture()
def auth_registry(tmp_path):
    """A registry that demands credentials (htpasswd) none of the tests have."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("apt-get install docker-registry for the credential test")
    htpasswd = tmp_path / "htpasswd"
    # bcrypt hash of "secret" for user "someone"
    import bcrypt

    htpasswd.write_text("someone:" + bcrypt.hashpw(b"secret", bcrypt.gensalt()).decode() + "\n")
    extra = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    yield from _run_registry(binary, tmp_path, extra)
