"""What a source offers: one RemoteFile per file, with what we know of its size, identity and checksums."""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from jobs.cli import JobError

# Names the fetcher itself writes into DEST; never taken from a source.
RESERVED = ("fetch-manifest.json", "fetch-stats.json", ".fetch-staging")


@dataclass
class RemoteFile:
    path: str  # relative, POSIX separators; where the file lands under DEST
    url: str  # shown in messages; what the source reads from
    size: int | None
    identity: str | None = None  # ETag / Last-Modified / blob id: a change means the partial data is stale
    ranges: bool = True  # False: one stream from the start (the server ignores Range)
    expected: dict[str, str] = field(
        default_factory=dict
    )  # algorithm -> hex digest ("sha256", "md5", "git-sha1")
    expected_from: str | None = None  # where the expected checksum came from, for the error message


class Source(Protocol):
    description: str

    def list_files(self) -> list[RemoteFile]: ...

    def read(self, file: RemoteFile, start: int, end: int | None) -> tuple[int, Iterator[bytes]]:
        """Bytes [start, end) of the file. Returns the offset the data really starts at: 0 when the
        server answered a Range request with the whole file. Raises TransientError to retry,
        JobError to stop."""
        ...


def safe_relpath(path: str, where: str) -> str:
    """Refuse paths that would escape DEST or collide with the fetcher's own files."""
    norm = posixpath.normpath(path.lstrip("/"))
    parts = norm.split("/")
    if norm in ("", ".") or ".." in parts or parts[0] in RESERVED or "\x00" in norm:
        raise JobError(f"refusing unsafe file path {path!r} from {where}")
    return norm


def select(files: Iterable[RemoteFile], include: list[str], exclude: list[str]) -> list[RemoteFile]:
    """Keep files matching any --include (all when none) and no --exclude; globs match the relative path."""

    def hit(path: str, globs: list[str]) -> bool:
        return any(
            fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(posixpath.basename(path), g) for g in globs
        )

    return [f for f in files if (not include or hit(f.path, include)) and not hit(f.path, exclude)]
