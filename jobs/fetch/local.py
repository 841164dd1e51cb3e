"""A local path (file or folder) as a source: the same staged, verified copy as the remote kinds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from jobs.cli import JobError
from jobs.retry import RestartFile, SizeMismatch

from .plan import RESERVED, RemoteFile, safe_relpath

BLOCK = 4 << 20


class LocalSource:
    def __init__(self, path: str) -> None:
        self.root = Path(path)
        self.description = str(self.root)

    def list_files(self) -> list[RemoteFile]:
        if self.root.is_file():
            return [self._file(self.root, self.root.name)]
        if not self.root.is_dir():
            raise JobError(f"{self.root}: no such file or directory")
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in RESERVED)
            for name in sorted(filenames):
                p = Path(dirpath) / name
                rel = p.relative_to(self.root).as_posix()
                if rel not in RESERVED:
                    files.append(self._file(p, rel))
        if not files:
            raise JobError(f"{self.root}: the folder has no files")
        return files

    @staticmethod
    def _file(p: Path, rel: str) -> RemoteFile:
        st = p.stat()
        return RemoteFile(safe_relpath(rel, str(p)), str(p), st.st_size, f"{st.st_mtime_ns}-{st.st_size}")

    def read(self, file: RemoteFile, start: int, end: int | None) -> tuple[int, Iterator[bytes]]:
        def blocks():
            with open(file.url, "rb") as f:
                f.seek(start)
                left = (end if end is not None else 1 << 62) - start
                while left > 0 and (b := f.read(min(BLOCK, left))):
                    left -= len(b)
                    yield b

        try:
            st = os.stat(file.url)
        except OSError as exc:
            raise JobError(f"{file.url}: {exc.strerror}") from None
        if file.size is not None and st.st_size != file.size:
            raise SizeMismatch(f"listed with {file.size} bytes, now {st.st_size}")
        if file.identity and f"{st.st_mtime_ns}-{st.st_size}" != file.identity:
            raise RestartFile(f"{file.url}: modified while being copied")
        return start, blocks()
