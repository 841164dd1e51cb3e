"""Checksums: the `--checksums` list, hashing files, and comparing against what the source promised."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from jobs.cli import JobError

_ALGO_BY_LEN = {64: "sha256", 32: "md5"}
_LINE = re.compile(r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{64})\s+\*?(.+?)\s*$")
_BSD_LINE = re.compile(r"^(SHA256|MD5)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")


def read_checksums(path: str) -> dict[str, dict[str, str]]:
    """Parse `sha256sum`/`md5sum` output (or BSD `SHA256 (f) = x`): relative path -> {algorithm: hex}."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise JobError(f"cannot read checksum file {path}: {exc.strerror}") from None
    out: dict[str, dict[str, str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if m := _LINE.match(line):
            digest, name = m.group(1).lower(), m.group(2)
        elif m := _BSD_LINE.match(line):
            name, digest = m.group(2), m.group(3).lower()
        else:
            raise JobError(f"{path}:{n}: not a checksum line: {line.strip()[:80]!r}")
        if len(digest) not in _ALGO_BY_LEN:
            raise JobError(f"{path}:{n}: digest of unknown length {len(digest)}")
        name = name.removeprefix("./")
        out.setdefault(name, {})[_ALGO_BY_LEN[len(digest)]] = digest
    if not out:
        raise JobError(f"checksum file {path} lists no files")
    return out


class Hashers:
    """sha256 always (it goes into the manifest), plus whatever the source lets us check."""

    def __init__(self, algorithms, size: int | None) -> None:
        self.h = {"sha256": hashlib.sha256()}
        for algo in algorithms:
            if algo == "md5":
                self.h["md5"] = hashlib.md5(usedforsecurity=False)
            elif algo == "git-sha1":  # a git blob id: sha1 over "blob <size>\0" + content
                g = hashlib.sha1(usedforsecurity=False)
                g.update(b"blob %d\0" % (size or 0))
                self.h["git-sha1"] = g

    def update(self, data) -> None:
        for h in self.h.values():
            h.update(data)

    def hexdigests(self) -> dict[str, str]:
        return {k: h.hexdigest() for k, h in self.h.items()}


def mismatch(expected: dict[str, str], got: dict[str, str]) -> str | None:
    """The first disagreeing algorithm as 'algo expected X, got Y', or None when all agree."""
    for algo, want in expected.items():
        if algo in got and got[algo] != want.lower():
            return f"{algo} expected {want.lower()}, got {got[algo]}"
    return None


def hash_file(
    path: Path,
    algorithms=(),
    size: int | None = None,
    block: int = 8 << 20,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """sha256 (and `algorithms`) of a file; hashlib releases the GIL on large blocks, so threads hash
    several files at once. `on_bytes(n)` after each block, for progress."""
    h = Hashers(algorithms, size if size is not None else path.stat().st_size)
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(block)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            if on_bytes:
                on_bytes(n)
    return h.hexdigests()
