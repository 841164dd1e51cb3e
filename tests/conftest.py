"""Shared pytest configuration. Area fixtures live in tests/<area>/conftest.py."""

import os

import pytest

# testcontainers' Ryuk reaper image cannot be pulled on hosts without registry access;
# fixtures clean up their own containers instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


@pytest.fixture(scope="session")
def docker_engine():
    """A client of the real Docker engine (skipped, with the reason, when none is reachable)."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=900)
        client.ping()
    except DockerException as exc:
        pytest.skip(f"no Docker engine reachable ({exc}); .ci/run starts dockerd")
    return client
