"""Build contexts and content-addressed tags.

Each image's context is a deterministic tar made from exactly the files its catalog entry
names, its lock files (images/<name>/*.lock, written by `invoke lock`), plus the host's CA
bundle for package installs under `.build/`. The tag is a hash of the same inputs, so an image whose inputs
did not change is found by tag and not rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from images.catalog import ImageSpec
from jobs.cli import JobError

# Files and folders never sent to the engine.
_IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
_IGNORED_SUFFIXES = (".pyc", ".pyo", ".so", ".o")

# Where a build stage finds the host's CA bundle; an empty file when the host has none.
CA_BUNDLE_PATH = ".build/ca-bundle.crt"


class ContextError(JobError):
    """A build context that cannot be made (a missing file, extra or lock): one line."""


def host_ca_bundle() -> Path | None:
    """The extra CA bundle the host trusts for package installs, if it names one."""
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


def extras_requirements(root: Path, extras: tuple[str, ...]) -> str:
    """The pinned requirements of the given pyproject extras, one per line, sorted: what an
    image's lock resolves (images/lock.py), so each image's lock follows its own extras only."""
    with open(root / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    lines = set(project.get("dependencies", [])) if extras else set()
    for extra in extras:
        if extra not in optional:
            raise ContextError(f"pyproject.toml has no extra named {extra!r}")
        lines.update(optional[extra])
    return "".join(f"{line}\n" for line in sorted(lines))


def _walk(root: Path, entry: str) -> list[Path]:
    path = root / entry
    if not path.exists():
        raise ContextError(f"context path {entry!r} does not exist under {root}")
    if path.is_file():
        return [path]
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_PARTS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if not name.endswith(_IGNORED_SUFFIXES):
                files.append(Path(dirpath) / name)
    return files


@dataclass(frozen=True)
class BuildContext:
    """The files of one image's build, as (path in context, bytes), in a fixed order."""

    files: tuple[tuple[str, bytes], ...]
    dockerfile: str

    def to_tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in self.files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0  # deterministic: the engine's layer cache keys on content
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def make_context(root: Path, spec: ImageSpec, ca_bundle: Path | None = None) -> BuildContext:
    dockerfile = root / spec.dockerfile
    if not dockerfile.is_file():
        raise ContextError(f"image {spec.name!r}: Dockerfile {spec.dockerfile} not found")
    files: dict[str, bytes] = {spec.dockerfile: dockerfile.read_bytes()}
    for entry in spec.context:
        for path in _walk(root, entry):
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    for lock in spec.lock_files:
        if not (root / lock).is_file():
            raise ContextError(f"image {spec.name!r}: lock file {lock} is missing: run `invoke lock`")
        files[lock] = (root / lock).read_bytes()
    files[CA_BUNDLE_PATH] = ca_bundle.read_bytes() if ca_bundle else b""
    return BuildContext(files=tuple(sorted(files.items())), dockerfile=spec.dockerfile)


def content_tag(context: BuildContext, build_args: dict[str, str], parent_id: str | None) -> str:
    """A short hash of everything that determines the image.

    The CA bundle is left out on purpose: it only lets the build reach the package index and
    does not change what is installed, so the same sources give the same tag on every host.
    """
    h = hashlib.sha256()
    for name, data in context.files:
        if name == CA_BUNDLE_PATH:
            continue
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    for key in sorted(build_args):
        h.update(f"arg:{key}={build_args[key]}\0".encode())
    h.update(f"parent:{parent_id or ''}\0".encode())
    return h.hexdigest()[:16]
