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


def test_the_lease_appears_whole_and_only_one_of_many_racing_fetchers_gets_it(tmp_path):
    """Eight processes take the lease of one DEST at once: one gets it, the others are refused naming it,
    and no temporary lease file is left behind."""
    script = (
        "import sys, time; from pathlib import Path; from jobs.cli import JobError; "
        "from jobs.fetch.staging import Lease\n"
        "lease = Lease(Path(sys.argv[1]))\n"
        "try:\n    lease.acquire(wait_s=0)\nexcept JobError as e:\n    print('refused', e); sys.exit(3)\n"
        "time.sleep(3); lease.release(); print('won')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outs = [(p.wait(timeout=120), p.stdout.read()) for p in procs]
    assert sorted(rc for rc, _ in outs) == [0] + [3] * 7, outs
    for rc, out in outs:
        if rc == 3:  # the owner is named from a whole record, never an empty one
            assert "is being fetched by pid " in out and "pid None" not in out, out
    assert list(staging_dir(tmp_path).iterdir()) == []  # no temporary lease file left behind


def test_the_lease_file_is_never_written_in_place(tmp_path):
    """Every write of owner.json puts a whole file there (a hard link or a rename of a file written aside),
    never an open for writing of the lease itself, which a second fetcher could read empty and take for a
    dead owner's. Python's audit events (sys.addaudithook, in a subprocess) show each call."""
    script = (
        "import sys, json, os\n"
        "from pathlib import Path\n"
        "events = []\n"
        "def hook(name, args):\n"
        "    if name in ('open', 'os.link', 'os.rename') and any('owner.json' in str(a) for a in args[:2]):\n"
        "        events.append([name, [str(a) for a in args[:3]]])\n"
        "sys.addaudithook(hook)\n"
        "import jobs.fetch.staging as st\n"
        "st.HEARTBEAT_S = 0.1\n"
        "import time\n"
        "lease = st.Lease(Path(sys.argv[1])); lease.acquire(wait_s=0); time.sleep(0.35); lease.release()\n"
        "print(json.dumps(events))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    events = json.loads(proc.stdout)
    lease = str(staging_dir(tmp_path) / "owner.json")
    on_lease = [e for e in events if lease in e[1][:2]]
    assert [e for e in on_lease if e[0] == "open" and e[1][1] != "r"] == []  # never opened for writing
    assert on_lease[0][0] == "os.link" and on_lease[0][1][1] == lease  # created by linking a whole file
    assert any(e[0] == "os.rename" and e[1][1] == lease for e in events)  # heartbeats: atomic renames
