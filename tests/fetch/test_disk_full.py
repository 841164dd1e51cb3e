"""Running out of disk: a clear error up front when the space is visibly short, and mid-transfer
(ENOSPC on a real small tmpfs) a clear error that keeps the staged data for the resume.
Needs permission to mount a tmpfs (root on this machine); skipped otherwise."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from jobs.cli import JobError
from jobs.fetch import Options, fetch
from jobs.fetch.staging import staging_dir
from tests.support.trees import BIG_FILE as BIG
from tests.support.trees import staged_bytes


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def mount(mib: int):
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mnt)], capture_output=True, text=True
        )
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs to fill up (needs root/CAP_SYS_ADMIN): {r.stderr.strip()}")
        return mnt

    yield mount
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_too_little_space_fails_before_fetching(nginx, small_fs):
    dest = small_fs(8) / "weights"
    with pytest.raises(JobError, match=r"weights: needs .* more but only .* is free"):
        fetch(f"{nginx.url}/", dest)


def test_disk_full_mid_transfer_keeps_what_was_fetched(nginx, weights, small_fs):
    root, files = weights
    mnt = small_fs(30)
    dest = mnt / "weights"
    filler = mnt / "filler"

    def fill():  # once the transfer is under way, take most of the remaining space
        deadline = time.monotonic() + 30
        while staged_bytes(dest) < (6 << 20) and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(filler, "wb") as f:
            try:
                f.write(b"\0" * (12 << 20))
            except OSError:
                pass

    t = threading.Thread(target=fill)
    t.start()
    try:
        with pytest.raises(JobError, match=r"out of disk space writing .*\.fetch-staging.*kept"):
            fetch(f"{nginx.url}/slow/{BIG}", dest, Options(connections=4))
    finally:
        t.join()
    kept = staged_bytes(dest)
    assert kept >= 6 << 20 and (staging_dir(dest) / "owner.json").exists() is False
    filler.unlink()
    stats = fetch(f"{nginx.url}/slow/{BIG}", dest, Options(connections=4))
    assert (dest / BIG.rsplit("/", 1)[1]).read_bytes() == files[BIG]
    assert stats["bytes_resumed"] >= kept and stats["bytes_moved"] <= len(files[BIG]) - kept
