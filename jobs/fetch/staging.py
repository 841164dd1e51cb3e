"""The staging area under DEST/.fetch-staging: partial files, their sidecars, and who owns them.

A Kubernetes shared volume is NFS-like and `flock` there may silently not lock, so ownership is a
lease file created whole and exclusively (written aside, then hard-linked into place) and kept fresh by
a heartbeat; a second fetcher into the same DEST
fails (or waits for a dead owner's lease to go stale) instead of writing the same partial files.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

from jobs.cli import JobError, write_json_atomic
from jobs.procs import pid_alive

STAGING = ".fetch-staging"
HEARTBEAT_S = 5.0
STALE_AFTER_S = 30.0


def staging_dir(dest: Path) -> Path:
    return dest / STAGING


@dataclass(slots=True)
class Chunk:
    """One range of a file: bytes [start, start + done) of [start, end) are on disk; end -1 = unknown size."""

    start: int
    end: int
    done: int = 0

    def complete(self) -> bool:
        return self.end >= 0 and self.start + self.done >= self.end


@dataclass
class PartState:
    """What the sidecar records: enough to resume after kill -9 with only the missing bytes."""

    url: str
    size: int | None
    identity: str | None
    ranges: bool
    chunks: list[Chunk]  # stored in the sidecar as [start, end, done] lists
    sha256: str | None = None  # set once verified and renamed into place, until the manifest records it

    def matches(self, url: str, size: int | None, identity: str | None) -> bool:
        return self.url == url and self.size == size and self.identity == identity

    def save(self, path: Path) -> None:
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["chunks"] = [[c.start, c.end, c.done] for c in self.chunks]
        write_json_atomic(path, record)

    @classmethod
    def load(cls, path: Path) -> PartState | None:
        try:
            state = cls(**json.loads(path.read_text()))
            state.chunks = [Chunk(*c) for c in state.chunks]
            return state
        except (OSError, ValueError, TypeError):
            return None  # missing or torn: start that file afresh


MIN_CHUNK = 4 << 20  # a file up to this size is one request


def plan_chunks(
    size: int | None, ranges: bool, connections: int, min_chunk: int = MIN_CHUNK, max_chunk: int = 64 << 20
) -> list[Chunk]:
    """Split a file so that all connections share a large file, about four chunks each, taken in order;
    the last wave (one chunk per connection) in chunks of `min_chunk`, so that the bytes still unhashed
    when the last byte arrives are few (the hash must wait for every chunk before it). Idle connections
    also split the largest chunk in flight (transfer.py). Small chunks throughout measured slower: more
    requests, and the hash reading back bytes while the connections still write beside them."""
    if size is None:
        return [Chunk(0, -1)]
    if not ranges or size <= min_chunk:
        return [Chunk(0, size)]
    chunk = min(max(size // (connections * 4), min_chunk), max_chunk)
    tail = max(0, size - connections * chunk) // chunk * chunk
    return [Chunk(s, s + chunk) for s in range(0, tail, chunk)] + [
        Chunk(s, min(s + min_chunk, size)) for s in range(tail, size, min_chunk)
    ]


def part_paths(dest: Path, rel: str) -> tuple[Path, Path]:
    part = staging_dir(dest) / f"{rel}.part"
    return part, part.with_name(part.name + ".json")


class Lease:
    """One fetcher per DEST at a time, safe on NFS-like volumes (no flock)."""

    def __init__(self, dest: Path) -> None:
        self.path = staging_dir(dest) / "owner.json"
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        return {**self.me, "heartbeat": time.time()}

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _create(self) -> bool:
        """Create the lease whole, or not at all where one exists: written under a temporary name (as every
        JSON file here), then hard-linked into place, which unlike a rename refuses an existing name and is
        atomic on NFS too. A reader never sees it empty (and would take an empty one for a dead owner's)."""
        tmp = self.path.with_name(f".{self.path.name}.{self.me['token']}")
        write_json_atomic(tmp, self._record())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a volume without hard links: exclusive create, then fill (the old two steps)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _dead(self, other: dict) -> bool:
        """True when the holder is provably gone: same host and its pid is not running (or is us,
        which means a restarted container with the same pid)."""
        if other.get("host") != self.me["host"]:
            return False
        pid = other.get("pid")
        if pid == os.getpid():
            return True
        try:
            return not pid_alive(int(pid))
        except (TypeError, ValueError):
            return False

    def acquire(self, wait_s: float | None = None) -> None:
        """Take the lease; wait (up to about one stale period) for a silent owner's lease to expire."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + (STALE_AFTER_S + HEARTBEAT_S if wait_s is None else wait_s)
        while True:
            if not self._create():
                other = self._read()
                age = time.time() - float(other.get("heartbeat", 0)) if other else STALE_AFTER_S + 1
                if other is None or age > STALE_AFTER_S or self._dead(other):
                    write_json_atomic(self.path, self._record())  # take over a dead owner's lease
                    time.sleep(0.05)
                    if (self._read() or {}).get("token") == self.me["token"]:
                        break
                    continue
                if time.monotonic() > deadline:
                    raise JobError(
                        f"{self.path.parent.parent} is being fetched by pid {other.get('pid')} on "
                        f"{other.get('host')} (heartbeat {age:.0f}s ago); wait for it or remove {self.path}"
                    ) from None
                time.sleep(1.0)
                continue
            break
        self._thread = threading.Thread(target=self._beat, name="fetch-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if (self._read() or {}).get("token") == self.me["token"]:
                write_json_atomic(self.path, self._record())

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if (self._read() or {}).get("token") == self.me["token"]:
            self.path.unlink(missing_ok=True)
