"""Nothing lost, nothing half-accepted: sizes that disagree, files without validators, redirects,
malformed sources and unwritable folders, each against a real server on 127.0.0.1 (tests/support/servers.py)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.cli import JobError
from jobs.fetch import Options, fetch
from jobs.fetch.cli import main
from jobs.fetch.http import HttpSource
from jobs.fetch.staging import Chunk, PartState, staging_dir
from tests.support.readonly import unprivileged_cmd, world_readable_tmp
from tests.support.servers import FileServer

REPO = Path(__file__).parents[2]
SIZE = 6 << 20  # two ranged chunks (4 MiB minimum chunk)
EXIT_LIMIT_S = 120  # generous for a loaded 2-core machine; a fetch that loops never gets there


@pytest.fixture
def served(tmp_path) -> Path:
    root = tmp_path / "served"
    root.mkdir()
    (root / "data.bin").write_bytes(random.Random(1).randbytes(SIZE))
    (root / "latest").write_bytes(b"global_step150000")
    return root


@pytest.fixture
def fast_backoff(monkeypatch):
    from jobs import retry

    monkeypatch.setattr(retry.Backoff, "base", 0.02)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The fetcher as a process; the test fails (not hangs) when it has not exited in time."""
    cmd = [sys.executable, "-m", "jobs.fetch", *args]
    try:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=EXIT_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the fetcher had not exited {EXIT_LIMIT_S}s after starting: {' '.join(cmd)}")


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fetch: error:")]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("lie", [-1000, 1000], ids=["longer-than-head", "shorter-than-head"])
def test_a_file_whose_head_size_is_wrong_fails_by_name_in_bounded_time(served, tmp_path, lie):
    dest = tmp_path / "dest"
    with FileServer(served) as srv:
        srv.head_lie = lie
        proc = run_cli(f"{srv.url}/data.bin", str(dest), "--connections", "4")
    line = one_error_line(proc)
    assert f"{srv.url}/data.bin" in line and "size" in line, line
    assert not (dest / "data.bin").exists()  # never cut to HEAD's size and accepted


def test_a_file_that_shrinks_on_the_server_mid_run_fails_by_name_in_bounded_time(served, tmp_path):
    dest = tmp_path / "dest"
    with FileServer(served) as srv:
        take_fault = srv.take_fault

        def cut_then_shrink(path, kind):
            hit = take_fault(path, kind)
            if hit and kind == "cut":
                (served / "data.bin").write_bytes(b"x" * (SIZE // 3))
            return hit

        srv.take_fault = cut_then_shrink
        srv.faults = {"cut": 1}
        proc = run_cli(f"{srv.url}/data.bin", str(dest), "--connections", "1")
    line = one_error_line(proc)
    assert f"{srv.url}/data.bin" in line, line
    assert not (dest / "data.bin").exists()


def test_a_resumed_file_without_validators_is_never_spliced_from_stale_bytes(served, dest):
    """No ETag, no Last-Modified, no checksum: staged bytes cannot be proven to be of the same version,
    so the file starts over instead of appending the new version's tail to the old version's head."""
    new = (served / "data.bin").read_bytes()
    with FileServer(served) as srv:
        srv.validators = False
        url = f"{srv.url}/data.bin"
        part = staging_dir(dest) / "data.bin.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"old version " * (SIZE // 24))  # what an earlier, interrupted run staged
        PartState(url, SIZE, None, True, [Chunk(0, SIZE, SIZE // 2)]).save(
            part.with_name("data.bin.part.json")
        )
        stats = fetch(url, dest, Options(connections=4))
    assert (dest / "data.bin").read_bytes() == new
    assert stats["bytes_resumed"] == 0


def test_a_file_without_validators_broken_mid_stream_starts_over(served, dest, fast_backoff):
    with FileServer(served) as srv:
        srv.validators = False
        take_fault = srv.take_fault

        def cut_then_change(path, kind):
            hit = take_fault(path, kind)
            if hit and kind == "cut":  # same size, other bytes: only a restart from zero is right
                (served / "data.bin").write_bytes(random.Random(2).randbytes(SIZE))
            return hit

        srv.take_fault = cut_then_change
        srv.faults = {"cut": 1}
        srv.fault_match = "data.bin"
        fetch(f"{srv.url}/data.bin", dest, Options(connections=1))  # one stream: the cut lands in it
        assert srv.faults == {"cut": 0}
    assert (dest / "data.bin").read_bytes() == (served / "data.bin").read_bytes()


def test_a_redirect_to_another_host_is_refused_unless_allowed(served, dest):
    with FileServer(served) as a, FileServer(served) as b:
        other = f"http://localhost:{b.server_address[1]}/latest"  # same machine, another host name
        a.redirects = {"/latest": other}
        with pytest.raises(
            JobError, match=r"/latest: redirects to another host .*--allow-redirect-host localhost"
        ):
            fetch(f"{a.url}/latest", dest)
        assert b.requests == []
        fetch(f"{a.url}/latest", dest, Options(redirect_hosts=["localhost"]))
        assert (dest / "latest").read_bytes() == b"global_step150000"
        assert any(p == "/latest" for _, p, _ in b.requests)


def test_credentials_never_follow_a_redirect(served):
    with FileServer(served) as srv:
        srv.redirects = {"/moved": "/latest"}  # even on the same host
        src = HttpSource(f"{srv.url}/moved", headers={"Authorization": "Bearer s3cret"})
        [f] = src.list_files()
        real, blocks = src.read(f, 0, None)
        assert b"".join(blocks) == b"global_step150000"
    sent = {path: h for path, h in srv.seen_headers if path == "/moved"}
    assert sent["/moved"].get("Authorization") == "Bearer s3cret"  # the URL asked for gets them
    followed = [h for path, h in srv.seen_headers if path == "/latest"]
    assert followed and all("Authorization" not in h for h in followed), followed


@pytest.mark.parametrize(
    "source",
    [
        "",
        "  ",
        "s3:/bucket/x",
        "hf:/org/repo",
        "http://",
        "https:///x",
        "http://[::1",
        "http://h:99999/x",
        "http://exa mple.com/x",
    ],
)
def test_a_malformed_source_is_one_line(source, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "unrelated.txt").write_text("an empty SOURCE must not copy the current folder")
    monkeypatch.chdir(cwd)
    dest = tmp_path / "dest"
    assert main([source, str(dest)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fetch: error: "), err
    if ":" in source:  # a URL, never taken for a local path
        assert "malformed URL" in err[0], err
    assert not (dest / "unrelated.txt").exists()


def test_a_nul_in_a_listing_link_is_one_line(served, dest, capsys):
    with FileServer(served) as srv:
        srv.pages = {"/list/": '<a href="ok.bin">ok</a> <a href="bad%00name.bin">bad</a>'}
        assert main([f"{srv.url}/list/", str(dest)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsafe file path" in err[0] and "\\x00" in err[0], err


def test_a_read_only_dest_is_one_line(served):
    with world_readable_tmp() as tmp:
        src = tmp / "src"
        src.mkdir()
        (src / "latest").write_bytes(b"x")
        dest = tmp / "dest"
        dest.mkdir(mode=0o555)
        dest.chmod(0o555)
        repo = Path(__file__).resolve().parents[2]
        proc = subprocess.run(  # the writer without the right to ignore file modes (tests.support.readonly)
            unprivileged_cmd([sys.executable, "-m", "jobs.fetch", str(src), str(dest)]),
            cwd=repo,
            env={**os.environ, "PYTHONPATH": str(repo)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    rc, err = proc.returncode, proc.stderr.strip().splitlines()
    assert rc == 1 and len(err) == 1 and str(dest) in err[0] and "Permission denied" in err[0], err


def test_a_dest_folder_keeps_its_unrelated_files(served, dest):
    keep = {
        "notes/readme.txt": b"mine",
        ".fetch-manifest.json.backup.tmp": b"mine too",  # looks like, but is not, a temp file of ours
        ".fetch-stats.json.old.tmp": b"and this",
    }
    for rel, data in keep.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    old = time.time() - 3600
    for rel in keep:
        os.utime(dest / rel, (old, old))
    fetch(str(served), dest)
    for rel, data in keep.items():
        assert (dest / rel).read_bytes() == data, rel
    assert (dest / "latest").read_bytes() == b"global_step150000"
