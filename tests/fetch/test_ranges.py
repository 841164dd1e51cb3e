"""Ranged downloads: Range probed with a one-byte GET where HEAD does not advertise it, one stream where
the server ignores it, and idle connections splitting the chunks still in flight."""

from __future__ import annotations

import hashlib
import json
import random

from servers import FileServer

from jobs.fetch import Options, fetch
from jobs.fetch.staging import MIN_CHUNK


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
