"""`images.lock.json`, the image refs a deployment runs, each pinned by digest (not the requirements
locks of images/lock.py). Written by `invoke push` (images/push.py), read by the deploy tooling (k8s/);
both go through here."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from jobs.cli import JobError

IMAGES = ("fetcher", "preprocessor", "trainer")
_DIGEST_RE = re.compile(r"^(?P<repo>[^\s@]+)@sha256:[0-9a-f]{64}$")


def load_lock(path: str | os.PathLike, names: tuple[str, ...] = IMAGES) -> dict[str, str]:
    """Image refs from the lock file, each checked to be pinned by digest."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise JobError(
            f"lock file {path}: cannot read ({exc.strerror or exc}); run `invoke push` first"
        ) from exc
    except json.JSONDecodeError as exc:
        raise JobError(f"lock file {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        raise JobError(f'lock file {path}: expected {{"images": {{name: ref@sha256:...}}}}')
    refs = {}
    for name in names:
        ref = images.get(name)
        if not ref:
            raise JobError(f"lock file {path}: no entry for image {name!r}")
        if not isinstance(ref, str) or not _DIGEST_RE.match(ref):
            raise JobError(f"lock file {path}: image {name!r} is not pinned by digest ({ref!r})")
        refs[name] = ref
    return refs


def existing_pins(path: Path) -> dict[str, str]:
    """The pins already in the lock file ({} when there is none); ValueError/OSError when unreadable."""
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("images", {})


def write_pins(path: Path, refs: dict[str, str]) -> None:
    """The lock file with exactly `refs`, written under a temporary name then renamed."""
    payload = {"images": dict(sorted(refs.items()))}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
