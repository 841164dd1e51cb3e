"""trainer.export's S3 ends, so the export can run where the checkpoint is (a Job in the cluster):

- `--checkpoint s3://BUCKET/PREFIX`: the checkpoint is first fetched into `--work` with the fetcher
  (parallel ranged reads, resumable after an interruption, sizes and ETags verified, progress);
- `--out s3://BUCKET/PREFIX`: the Hugging Face folder is written under `--work`, then uploaded file by
  file (boto3 managed multipart), `config.json` last, so a reader that finds it finds a whole folder.

Endpoint from boto3's standard `AWS_ENDPOINT_URL`, keys from its default chain (a Secret's env);
neither is ever logged. `--work` is a folder of ours: made if missing, left for a resumed run on
failure, and its download removed once the export succeeded."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from jobs.cli import JobError
from jobs.remote import s3_client


def is_s3(url: str | Path | None) -> bool:
    return isinstance(url, str) and url.startswith("s3://")


def split(url: str, what: str) -> tuple[str, str]:
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket or not url.startswith("s3://"):
        raise JobError(f"{what} {url!r}: expected s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


def fetch_checkpoint(url: str, work: Path) -> Path:
    """The checkpoint under s3://... as a local folder in `work` (resumed if a previous run began it)."""
    from jobs.fetch.fetch import Options, fetch

    split(url, "--checkpoint")
    dest = work / "checkpoint"
    fetch(
        url.rstrip("/") + "/",
        dest,
        Options(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"), stream=sys.stderr),
    )
    return dest


def upload_folder(folder: Path, url: str) -> int:
    """Every file of `folder` under s3://BUCKET/PREFIX/, config.json last; returns the bytes sent."""
    from boto3.s3.transfer import TransferConfig

    bucket, prefix = split(url, "--out")
    client = s3_client()
    config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file()), key=lambda p: (p.name == "config.json", str(p))
    )
    sent = 0
    for path in files:
        key = "/".join(x for x in (prefix, path.relative_to(folder).as_posix()) if x)
        client.upload_file(str(path), bucket, key, Config=config)
        sent += path.stat().st_size
    return sent


def remove_download(work: Path) -> None:
    shutil.rmtree(work / "checkpoint", ignore_errors=True)
