"""`invoke export`: fetch a finished checkpoint from the bucket (boto3) and turn it into a Hugging Face
model folder with the trainer's `python -m trainer.export`, for inference elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TextIO
from urllib.parse import urlparse

import botocore.exceptions

from jobs import remote
from jobs.cli import JobError, human_bytes
from k8s.config import PipelineConfig
from k8s.determined_api import Master

EXPORT_CMD = (sys.executable, "-m", "trainer.export")


def checkpoint_url(cfg: PipelineConfig, master: Master, experiment_id: int) -> str:
    """Determined stores a checkpoint under s3://BUCKET/PREFIX/UUID/."""
    master.login()
    ck = master.latest_checkpoint(experiment_id)
    prefix = cfg.checkpoints.prefix.strip("/")
    return f"s3://{cfg.checkpoints.bucket}/{prefix + '/' if prefix else ''}{ck['uuid']}"


def mirror_checkpoint(mirror: str, endpoint_url: str | None) -> str:
    """The newest complete checkpoint in a trainer's mirror (`PREFIX/latest` names it; the trainer
    writes it only after the checkpoint's marker), as s3://BUCKET/PREFIX/TAG."""
    parsed = urlparse(mirror)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    key = f"{prefix}/latest" if prefix else "latest"
    try:
        tag = (
            remote.s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read().decode().strip()
        )
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "S3 error")
        raise JobError(
            f"checkpoint mirror {mirror}: no latest ({code}); has the run saved a checkpoint yet?"
        ) from exc
    return f"{mirror.rstrip('/')}/{tag}"


def recorded_sha256(url: str, endpoint_url: str | None) -> dict[str, str]:
    """{relative path: sha256} from the checkpoint's complete.json in the bucket (trainer.train's mirror
    writes it last); empty for a checkpoint without one (Determined's) or one written before hashes."""
    import json

    parsed = urlparse(url)
    prefix = parsed.path.strip("/")
    key = f"{prefix}/complete.json" if prefix else "complete.json"
    try:
        body = remote.s3_client(endpoint_url).get_object(Bucket=parsed.netloc, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return {}
        code = exc.response.get("Error", {}).get("Code")
        raise JobError(f"checkpoint {url}: cannot read complete.json ({code})") from None
    try:
        return dict(json.loads(body).get("sha256") or {})
    except (ValueError, AttributeError, TypeError):
        raise JobError(f"checkpoint {url}: its complete.json is unreadable") from None


def download(url: str, dest: Path, endpoint_url: str | None, stream: TextIO | None = None) -> tuple[int, int]:
    """Every object under the s3:// prefix into `dest` with the fetcher (parallel ranged reads, resumable
    after an interruption, sizes and ETags verified, progress on `stream`); returns (files, bytes). The
    files of a checkpoint of trainer.train are checked against the sha256 its complete.json records (the
    fetcher hashes as it downloads, so this costs nothing): a copy in the bucket that differs from what
    the trainer wrote is refused, naming the file."""
    import tempfile

    from jobs.fetch.fetch import Options, fetch

    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise JobError(f"checkpoint {url}: expected s3://BUCKET/PREFIX")
    sums = recorded_sha256(url, endpoint_url)
    with tempfile.TemporaryDirectory(prefix="neox-export-") as tmp:
        checksums = None
        if sums:  # the fetcher's --checksums list, sha256sum style
            checksums = Path(tmp) / "complete.json.sha256"
            checksums.write_text("".join(f"{h}  {rel}\n" for rel, h in sorted(sums.items())))
        summary = fetch(
            url.rstrip("/") + "/",
            dest,
            Options(
                endpoint_url=endpoint_url,
                stream=stream or sys.stderr,
                checksums=str(checksums) if checksums else None,
            ),
        )
    return summary["files_total"], summary["bytes_total"]


def export(
    cfg: PipelineConfig,
    out: str | os.PathLike,
    experiment_id: int | None = None,
    checkpoint: str | None = None,
    master: Master | None = None,
    command: tuple[str, ...] = EXPORT_CMD,
    stream: TextIO | None = None,
) -> Path:
    stream = stream or sys.stderr
    if (experiment_id is None) == (checkpoint is None):
        raise JobError("export: give exactly one of --experiment ID or --checkpoint s3://...")
    if checkpoint is None:
        checkpoint = checkpoint_url(cfg, master or Master(cfg["determined_master"]), experiment_id)
    out = Path(out)
    # An --out of another's files is refused; our own interrupted export (its download folder only)
    # is taken up again, and the fetcher resumes the download.
    if out.exists() and (not out.is_dir() or {p.name for p in out.iterdir()} - {"checkpoint"}):
        raise JobError(
            f"export: --out {out} exists and holds other files; name a new folder (nothing in it was touched)"
        )
    raw = out / "checkpoint"
    files, total = download(checkpoint, raw, cfg.checkpoints.endpoint_url, stream)
    print(f"export: downloaded {files} files ({human_bytes(total)}) from {checkpoint}", file=stream)
    hf = out / "hf"
    proc = subprocess.run(
        [*command, "--checkpoint", str(raw), "--out", str(hf)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise JobError(f"export: {' '.join(command[1:])} failed ({tail[0]})")
    print(f"export: Hugging Face model folder at {hf}", file=stream)
    return hf
