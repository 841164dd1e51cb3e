"""Fixtures for the fetcher: a small weights-like tree, and real servers on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.servers import NGINX, Nginx
from tests.support.trees import make_tree


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("weights")
    return root, make_tree(root)


def _serve(weights, tmp_path_factory, name: str, rate: str):
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (Debian package nginx-light or nginx)")
    server = Nginx(weights[0], tmp_path_factory.mktemp(name), rate=rate).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nginx(weights, tmp_path_factory):
    yield from _serve(weights, tmp_path_factory, "nginx", "4m")


@pytest.fixture(scope="session")
def slow_nginx(weights, tmp_path_factory):
    """1 MB/s per connection: the big file takes seconds, so a kill lands mid-transfer on an idle machine."""
    yield from _serve(weights, tmp_path_factory, "nginx-slow", "1m")


@pytest.fixture
def dest(tmp_path) -> Path:
    d = tmp_path / "dest"
    yield d
    shutil.rmtree(d, ignore_errors=True)
