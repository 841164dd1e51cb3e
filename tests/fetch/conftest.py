"""Fixtures for the fetcher: a small weights-like tree, and real servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import NGINX, Nginx  # noqa: E402

BIG = 24 << 20  # large enough for many ranged chunks (4 MiB minimum chunk)


def make_tree(root: Path, big: int = BIG, seed: int = 0) -> dict[str, bytes]:
    """A miniature of the slim checkpoint layout: one big file, some small ones, nested folders."""
    rnd = __import__("random").Random(seed)
    files = {
        "20B_tokenizer.json": b'{"version": "1.0"}\n' * 50,
        "configs/20B.yml": b"hidden-size: 6144\n",
        "latest": b"global_step150000",
        "global_step150000/layer_00-model_00-model_states.pt": rnd.randbytes(big),
        "global_step150000/mp_rank_00_model_states.pt": rnd.randbytes(300_000),
        "global_step150000/name with space.pt": rnd.randbytes(5_000),
        "empty.txt": b"",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def assert_same_tree(dest: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        got = (dest / rel).read_bytes()
        assert len(got) == len(data) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), rel
    extra = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} - set(files)
    assert extra <= {"fetch-manifest.json", "fetch-stats.json"}, extra


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
