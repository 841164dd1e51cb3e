"""Resume after kill -9 (a real process killed mid-transfer, against nginx's rate-limited location),
and the one-owner lease over the staging area."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from jobs.cli import JobError
from jobs.fetch import Options, fetch
from jobs.fetch.staging import Chunk, Lease, PartState, staging_dir
from tests.support.trees import BIG_FILE as BIG
from tests.support.trees import assert_same_tree, staged_bytes


def test_kill_9_then_resume_moves_only_the_missing_bytes(slow_nginx, weights, dest):
    nginx = slow_nginx
    root, files = weights
    total = sum(map(len, files.values()))
    cmd = [sys.executable, "-m", "jobs.fetch", f"{nginx.url}/slow/", str(dest), "--connections", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while staged_bytes(dest) < 0.4 * len(files[BIG]):
            assert proc.poll() is None, "the fetch finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    kept = staged_bytes(dest, skip_in_place=True)
    assert not (dest / BIG).exists()  # incomplete: not in place
    in_place = sum(len(files[p]) for p in files if (dest / p).exists())
    stats = fetch(f"{nginx.url}/slow/", dest, Options(connections=4))  # the lease of a dead pid is taken over
    assert_same_tree(dest, files)
    assert stats["bytes_resumed"] >= kept
    # only what was missing moves again (slack: a file killed between its rename and its sidecar update)
    assert stats["bytes_moved"] <= total - kept - in_place + 1_000_000
    assert stats["bytes_moved"] + kept <= 1.1 * total


def test_a_changed_file_restarts_from_zero(nginx, weights, dest, tmp_path):
    """A staged part whose sidecar names another ETag is stale: discarded, the file starts over."""
    root, files = weights
    fetch(f"{nginx.url}/latest", dest)
    part = staging_dir(dest) / "latest.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"XXXXXXXX")
    PartState(
        f"{nginx.url}/latest", len(files["latest"]), '"old-etag"', True, [Chunk(0, len(files["latest"]), 8)]
    ).save(part.with_name("latest.part.json"))
    (dest / "latest").unlink()
    stats = fetch(f"{nginx.url}/latest", dest)
    assert (dest / "latest").read_bytes() == files["latest"] and stats["bytes_resumed"] == 0


def test_lease_refuses_a_live_owner_and_takes_over_dead_ones(tmp_path):
    lease_file = staging_dir(tmp_path) / "owner.json"
    lease_file.parent.mkdir(parents=True)
    lease_file.write_text(json.dumps({"host": "other-pod", "pid": 1, "token": "t", "heartbeat": time.time()}))
    with pytest.raises(JobError, match="other-pod"):
        Lease(tmp_path).acquire(wait_s=0.3)
    # a silent owner (old heartbeat) and a dead pid on this host are both taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for other in (
        {"host": "other-pod", "pid": 1, "token": "t", "heartbeat": time.time() - 600},
        {"host": socket.gethostname(), "pid": dead.pid, "token": "t", "heartbeat": time.time()},
    ):
        lease_file.write_text(json.dumps(other))
        lease = Lease(tmp_path)
        lease.acquire(wait_s=0.3)
        assert json.loads(lease_file.read_text())["token"] == lease.me["token"]
        lease.release()
        assert not lease_file.exists()
