"""DEST/fetch-manifest.json: the source and, per file, its size, sha256 and source identity.
It lets a second run over a complete DEST skip every file without re-hashing 39 GB."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from jobs.cli import write_json_atomic

NAME = "fetch-manifest.json"
FLUSH_S = 2.0


class Manifest:
    def __init__(self, dest: Path, source: str) -> None:
        self.path = dest / NAME
        self.source = source
        self.files: dict[str, dict] = {}
        self.lock = threading.Lock()
        self._last = 0.0
        try:
            old = json.loads(self.path.read_text())
            self.files = {f["path"]: f for f in old.get("files", [])}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no manifest yet (or a torn one): files are checked against the source afresh

    def get(self, path: str) -> dict | None:
        return self.files.get(path)

    def record(self, path: str, size: int, sha256: str, identity: str | None, url: str) -> None:
        with self.lock:
            self.files[path] = {
                "path": path,
                "size": size,
                "sha256": sha256,
                "identity": identity,
                "url": url,
            }
        if time.monotonic() - self._last > FLUSH_S:  # keep it current so a kill loses little
            self.save(complete=False)

    def save(self, complete: bool, keep: set[str] | None = None, revision: str | None = None) -> None:
        with self.lock:
            if keep is not None:
                self.files = {p: f for p, f in self.files.items() if p in keep}
            files = [self.files[p] for p in sorted(self.files)]
            self._last = time.monotonic()
            payload = {
                "source": self.source,
                "complete": complete,
                "files": files,
                "total_bytes": sum(f["size"] for f in files),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            if revision:
                payload["revision"] = revision
            write_json_atomic(self.path, payload)
