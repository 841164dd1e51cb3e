"""Ranged downloads: Range probed with a one-byte GET where HEAD does not advertise it, one stream where
the server ignores it, and idle connections splitting the chunks still in flight."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from jobs.fetch import Options, fetch
from jobs.fetch.plan import RemoteFile
from jobs.fetch.staging import MIN_CHUNK, Chunk, plan_chunks
from jobs.fetch.transfer import BLOCK_MAX, STEAL_MIN, FileJob
from tests.support.servers import FileServer


def _file(root, name: str, size: int, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    (root / name).write_bytes(data)
    return data


def _gets(srv: FileServer, name: str) -> list[str | None]:
    return [rng for method, path, rng in srv.requests if method == "GET" and path.endswith(name)]


def test_ranges_probed_when_head_omits_accept_ranges(tmp_path):
    """HEAD without Accept-Ranges (S3 presigned URLs, some CDNs), GET honouring Range: one probe of
    bytes=0-0, then the file in ranged chunks over several connections."""
    root = tmp_path / "src"
    root.mkdir()
    data = _file(root, "big.bin", 3 * MIN_CHUNK + 12345)
    with FileServer(root) as srv:
        srv.head_ranges = False
        stats = fetch(f"{srv.url}/big.bin", tmp_path / "d", Options(connections=4))
        gets = _gets(srv, "big.bin")
    assert (tmp_path / "d/big.bin").read_bytes() == data
    assert gets[0] == "bytes=0-0"  # the probe
    ranged = [g for g in gets[1:] if g]
    assert len(ranged) >= 4 and None not in gets[1:], gets
    assert stats["restarts"] == 0


def test_one_stream_when_the_server_ignores_ranges(tmp_path):
    """No Accept-Ranges and a 200 to the probe: the file comes as one plain GET, exact."""
    root = tmp_path / "src"
    root.mkdir()
    data = _file(root, "big.bin", 2 * MIN_CHUNK + 7)
    with FileServer(root, ranges=False) as srv:
        stats = fetch(f"{srv.url}/big.bin", tmp_path / "d", Options(connections=4))
        gets = _gets(srv, "big.bin")
    assert (tmp_path / "d/big.bin").read_bytes() == data
    assert gets == ["bytes=0-0"], gets  # the probe's whole-file reply is the one stream
    assert stats["restarts"] == 0 and stats["bytes_moved"] == len(data)


def test_no_probe_for_small_files_or_explicit_none(tmp_path):
    """Files that would be one request anyway are not probed."""
    root = tmp_path / "src"
    root.mkdir()
    data = _file(root, "small.bin", MIN_CHUNK // 2)
    with FileServer(root) as srv:
        srv.head_ranges = False
        fetch(f"{srv.url}/small.bin", tmp_path / "d", Options(connections=4))
        gets = _gets(srv, "small.bin")
    assert (tmp_path / "d/small.bin").read_bytes() == data
    assert gets == [None]


def test_idle_connections_split_the_chunks_in_flight(tmp_path):
    """Three chunks for four connections at 8 MB/s each: the idle ones cut chunks in flight in two and
    fetch the second halves (ranges off the 4 MiB grid), and every byte arrives once and verified."""
    root = tmp_path / "src"
    root.mkdir()
    size = 2 * MIN_CHUNK + MIN_CHUNK // 2
    data = _file(root, "big.bin", size)
    with FileServer(root) as srv:
        srv.rate = 8 << 20
        stats = fetch(f"{srv.url}/big.bin", tmp_path / "d", Options(connections=4))
        gets = _gets(srv, "big.bin")
        sent = srv.sent
    got = (tmp_path / "d/big.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert stats["splits"] >= 1
    starts = {int(g[6:].split("-")[0]) for g in gets if g}
    assert any(s % MIN_CHUNK for s in starts), gets  # a second half starts inside a planned chunk
    # Owners stop at the moved end: at most the block in flight (1 MiB) per split comes twice.
    assert sent <= size + stats["splits"] * (1 << 20), (sent, size, stats["splits"])
    manifest = json.loads((tmp_path / "d/fetch-manifest.json").read_text())
    assert manifest["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [MIN_CHUNK + 1, 100_000_000, 1_200_000_000, 10_000_000_000])
def test_plan_covers_the_file_in_order_with_a_last_wave_of_small_chunks(size):
    chunks = plan_chunks(size, True, 16)
    assert chunks[0].start == 0 and chunks[-1].end == size
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:], strict=False))
    tail = [c for c in chunks if c.end - c.start <= MIN_CHUNK]
    assert sum(c.end - c.start for c in tail) >= min(size, 16 * MIN_CHUNK) - MIN_CHUNK  # one wave at least
    assert plan_chunks(size, False, 16) == [Chunk(0, size, 0)]


def test_a_split_leaves_the_owner_its_next_block_and_keeps_offset_order(tmp_path):
    f = RemoteFile("x.bin", "http://h/x.bin", 3 * MIN_CHUNK, identity='"v1"')
    job = FileJob(f, tmp_path, connections=1)
    job.state.chunks = [Chunk(0, 3 * MIN_CHUNK, 5 << 20)]  # the owner is at 5 MiB of 12 MiB
    new, gen = job.split_largest()
    owner = job.state.chunks[0]
    assert gen == job.generation and job.state.chunks == [owner, new]
    assert owner.end == new.start >= 5 * (1 << 20) + BLOCK_MAX and new.end == 3 * MIN_CHUNK
    assert new.end - new.start >= STEAL_MIN and new.done == 0
    while job.split_largest() is not None:  # halves until nothing is worth a request
        pass
    chunks = job.state.chunks
    assert len(chunks) > 2 and all(a.end == b.start for a, b in zip(chunks, chunks[1:], strict=False))
    assert all(c.end - (c.start + c.done) - BLOCK_MAX < 2 * STEAL_MIN for c in chunks)
