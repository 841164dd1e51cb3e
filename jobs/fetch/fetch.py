"""The fetch job as a library function: list the source, skip what DEST already holds, stage and
verify the rest in parallel, rename into place, write the manifest and the stats file."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from jobs.cli import JobError, Progress, human_bytes, human_duration, write_json_atomic

from .manifest import NAME as MANIFEST_NAME
from .manifest import Manifest
from .plan import RemoteFile, Source, select
from .staging import Lease, PartState, part_paths, staging_dir
from .transfer import Done, Engine, FileJob, Stats
from .verify import hash_file, mismatch, read_checksums

PROG = "fetch"
STATS_NAME = "fetch-stats.json"


@dataclass
class Options:
    connections: int = 16
    checksums: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    endpoint_url: str | None = None
    redirect_hosts: list[str] = field(default_factory=list)  # other hosts an https:// redirect may go to
    verify: bool = False  # re-hash files already in DEST instead of trusting size + manifest
    stream: TextIO | None = None  # progress output (stderr by default)


FORMS = {
    "http": "http://host/path",
    "https": "https://host/path",
    "s3": "s3://bucket/prefix",
    "hf": "hf://org/repo[@revision]",
}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def open_source(source: str, opts: Options) -> Source:
    if not source.strip():
        raise JobError("SOURCE is empty (give an https:// URL, s3://bucket/prefix, hf://org/repo or a path)")
    if "\x00" in source:
        raise JobError(f"{source!r}: SOURCE holds a NUL character")
    m = _SCHEME.match(source)
    scheme = m[1].lower() if m else ""
    if scheme in FORMS and not source[m.end() :].startswith("//"):
        raise JobError(f"{source}: malformed URL (expected {FORMS[scheme]})")
    if scheme in ("http", "https"):
        from .http import HttpSource, check_url

        check_url(source)
        return HttpSource(source, connections=opts.connections, redirect_hosts=tuple(opts.redirect_hosts))
    if scheme == "s3":
        from .s3 import S3Source

        return S3Source("s3" + source[2:], opts.endpoint_url, opts.connections)
    if scheme == "hf":
        from .hf import HubSource

        return HubSource("hf" + source[2:], opts.connections)
    if "://" in source:
        raise JobError(f"{source}: unsupported source (use https://, s3://, hf:// or a local path)")
    from .local import LocalSource

    return LocalSource(source)


def _up_to_date(f: RemoteFile, dest: Path, manifest: Manifest, verify: bool) -> bool:
    """Cheap by default (size + manifest entry + source identity); --verify re-hashes."""
    final = dest / f.path
    entry = manifest.get(f.path)
    try:
        size = final.stat().st_size
    except OSError:
        return False
    if f.size is not None and size != f.size:
        return False
    if entry is None:  # renamed into place by a run killed before its manifest was saved?
        side = PartState.load(part_paths(dest, f.path)[1])
        if not (side and side.sha256 and side.size == size and side.matches(f.url, f.size, f.identity)):
            return False
        if f.expected.get("sha256") and side.sha256 != f.expected["sha256"]:
            return False
        manifest.record(f.path, size, side.sha256, f.identity, f.url)
        entry = manifest.get(f.path)
    if entry.get("size") != size:
        return False
    if f.identity and entry.get("identity") and entry["identity"] != f.identity:
        return False  # the source changed since
    if f.expected.get("sha256") and entry.get("sha256") != f.expected["sha256"]:
        return False
    if verify:
        got = hash_file(final, f.expected, size)
        if got["sha256"] != entry.get("sha256") or mismatch(f.expected, got):
            return False
    return True


def fetch(source: str, dest: str | os.PathLike, opts: Options | None = None) -> dict:
    opts = opts or Options()
    if opts.connections < 1:
        raise JobError(f"--connections must be at least 1, got {opts.connections}")
    if not str(dest).strip():
        raise JobError("DEST is empty (give the folder to fill)")
    dest = Path(dest)
    sums = read_checksums(opts.checksums) if opts.checksums else {}
    src = open_source(source, opts)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobError(f"cannot create {dest}: {exc.strerror}") from None
    t0 = time.monotonic()
    lease = Lease(dest)
    try:
        lease.acquire()
    except OSError as exc:  # a read-only DEST (or its staging folder)
        raise JobError(f"cannot write to {dest}: {exc.strerror} ({exc.filename})") from None
    # Temp files of a killed run's manifest/stats writes (write_json_atomic's mkstemp names, nothing
    # else): under the lease, nobody else is writing them.
    for name in (MANIFEST_NAME, STATS_NAME):
        for stale in dest.glob(f".{name}.*.tmp"):
            if re.fullmatch(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp", stale.name):
                stale.unlink(missing_ok=True)
    stats = Stats()
    summary: dict = {"source": src.description, "dest": str(dest), "ok": False}
    manifest = Manifest(dest, src.description)
    ok = False
    try:
        files = select(src.list_files(), opts.include, opts.exclude)
        if not files:
            raise JobError(f"{src.description}: no files match --include/--exclude")
        for f in files:
            if f.path in sums:
                f.expected.update(sums[f.path])
                f.expected_from = opts.checksums
        todo = [f for f in files if not _up_to_date(f, dest, manifest, opts.verify)]
        jobs = [FileJob(f, dest, opts.connections) for f in todo]
        need = sum(j.remaining() for j in jobs)
        # Space a partial file already holds (possibly more than its sidecar claims) is not needed again.
        more = sum(max(0, (j.file.size or 0) - j.allocated()) for j in jobs)
        free = shutil.disk_usage(dest).free
        if more > free:
            raise JobError(f"{dest}: needs {human_bytes(more)} more but only {human_bytes(free)} is free")
        stats.add(bytes_resumed=sum(j.resumed for j in jobs))
        summary.update(
            files_total=len(files),
            files_fetched=len(todo),
            files_up_to_date=len(files) - len(todo),
            bytes_total=sum(f.size or 0 for f in files),
            connections=opts.connections,
        )

        progress = Progress(PROG, _describe, total=need or None, stream=opts.stream or sys.stderr)
        plock = threading.Lock()

        def on_bytes(n: int) -> None:
            with plock:
                progress.advance(n)

        def on_done(d: Done) -> None:
            manifest.record(d.file.path, d.size, d.sha256, d.file.identity, d.file.url)

        try:
            Engine(src, jobs, opts.connections, stats, on_bytes, on_done).run()
        finally:
            progress.close()
        manifest.save(complete=True, keep={f.path for f in files}, revision=getattr(src, "commit", None))
        ok = True
    finally:
        # On failure these are best effort (the disk may be full) and must not hide the first error.
        with contextlib.suppress(OSError) if not ok else contextlib.nullcontext():
            if not ok and manifest.files:
                manifest.save(complete=False)  # what is in place stays recorded for the resume
            if ok:
                _clean_staging(dest)
            lease.release()
            if ok:
                shutil.rmtree(staging_dir(dest), ignore_errors=True)
            getattr(src, "close", lambda: None)()  # kept replies no download used
            stats.add(retries=getattr(src, "retries", 0))  # listing and HEAD retries
            secs = time.monotonic() - t0
            summary.update(
                ok=ok,
                seconds=round(secs, 3),
                bytes_moved=stats.bytes_moved,
                bytes_resumed=stats.bytes_resumed,
                retries=stats.retries,
                restarts=stats.restarts,
                splits=stats.splits,
                rate_bytes_per_s=round(stats.bytes_moved / secs) if secs > 0 else 0,
            )
            write_json_atomic(dest / STATS_NAME, summary)
    return summary


def _clean_staging(dest: Path) -> None:
    """After a full success nothing staged is needed (files of other selections are refetched)."""
    for p in staging_dir(dest).iterdir() if staging_dir(dest).exists() else []:
        if p.name != "owner.json":
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def _describe(done: float, total: float | None, rate: float, eta: float | None) -> str:
    of = f" / {human_bytes(total)}" if total else ""
    left = f", ETA {human_duration(eta)}" if eta is not None else ""
    return f"{human_bytes(done)}{of} at {human_bytes(rate)}/s{left}"


def summary_line(s: dict) -> str:
    return (
        f"{s['files_total']} files ({human_bytes(s['bytes_total'])}) in {s['dest']}: "
        f"{s['files_fetched']} fetched, {s['files_up_to_date']} already up to date; "
        f"{human_bytes(s['bytes_moved'])} transferred in {human_duration(s['seconds'])} "
        f"({human_bytes(s['rate_bytes_per_s'])}/s), {s['retries']} retries"
    )
