"""Shared pytest configuration. Area fixtures live in tests/<area>/conftest.py."""

import os
import re
from pathlib import Path

import pytest

# Fixtures shared by several areas; helpers without fixtures are imported as `tests.support.X`.
pytest_plugins = ["tests.support.fixtures"]

# testcontainers' Ryuk reaper image cannot be pulled on hosts without registry access;
# fixtures clean up their own containers instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

# ../shared sits beside CI's and developers' clones only (never a GitHub runner's): tests that need a
# file from it skip with the reason where it is absent.
SHARED = Path(__file__).resolve().parents[2] / "shared"
DETERMINED_SCHEMAS = SHARED / "schemas" / "determined-expconf-v0"
if DETERMINED_SCHEMAS.is_dir():
    os.environ.setdefault("NEOX_DETERMINED_SCHEMAS", str(DETERMINED_SCHEMAS))


@pytest.fixture
def determined_schemas() -> Path:
    """Determined's expconf schemas (FORMATS section 5), which only ../shared holds."""
    where = os.environ.get("NEOX_DETERMINED_SCHEMAS")
    if not where or not Path(where).is_dir():
        pytest.skip(
            f"Determined's expconf schemas are not at {DETERMINED_SCHEMAS} and NEOX_DETERMINED_SCHEMAS is unset"
        )
    return Path(where)


@pytest.fixture(scope="session")
def docker_engine():
    """A client of the real Docker engine (skipped, with the reason, when none is reachable)."""
    from images.build import ImageError, docker_client

    try:
        client = docker_client(timeout=900)
    except ImageError as exc:
        pytest.skip(f"no Docker engine reachable: {exc}")
    before = _tags(client)
    yield client
    _remove_scratch_tags(client, before)


def _tags(client) -> set[str]:
    """Every name an image is known by: its tags and the registry digests a push left behind."""
    return {ref for image in client.images.list() for ref in image.tags + image.attrs.get("RepoDigests", [])}


# Tags the tests make and no one needs after them: pushes to the tests' own registries on
# 127.0.0.1 and the throwaway images of the builder's tests. Tags that existed before stay.
_SCRATCH_TAG = re.compile(r"^127\.0\.0\.1:\d+/|^neox-pipeline/(cache|broken)[0-9a-f]*[:@]")


def _remove_scratch_tags(client, before: set[str]) -> None:
    from docker.errors import APIError

    for tag in sorted(_tags(client) - before):
        if _SCRATCH_TAG.search(tag):
            try:
                client.images.remove(tag, noprune=False)
            except APIError:
                pass  # still used by a container, or already gone with its image


def pytest_sessionfinish(session, exitstatus):
    """Tests that train in this process (LoRA's, the optimizer's) leave DeepSpeed's Gloo process group
    up; destroy it before interpreter finalization, which can abort with SIGABRT (trainer.engine's
    leave_distributed says why). Only where torch.distributed was imported at all."""
    import sys

    if "torch.distributed" in sys.modules:
        from trainer.engine import leave_distributed

        leave_distributed()
