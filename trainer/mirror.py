"""Copy completed checkpoints to S3 (`--mirror s3://BUCKET/PREFIX` or env NEOX_CHECKPOINT_MIRROR), for
the Kubernetes engines, where no Determined uploads them.

Rank 0 only, in a background thread, so a long upload never holds the other ranks at a collective.
Layout: `PREFIX/global_stepN/<files>`, then `PREFIX/global_stepN/complete.json` last (a folder
in the bucket without it is an unfinished upload), then `PREFIX/latest`. Resumable: a file already
in the bucket with the same size and the same checkpoint id (object metadata, from the marker) is
skipped, so a restarted run finishes an interrupted upload without sending it again, and a replaced
checkpoint under an old name is sent in full. Each file is checked against the sha256 its marker records
before it goes (a file damaged since the save fails the upload, and no marker reaches the bucket) and
carries that sha256 as object metadata; downloads (`invoke export --local`, trainer.export) check the
same hashes, so a copy from the bucket is checked against what the trainer wrote. Big files go as boto3
managed multipart uploads.

Endpoint from boto3's standard `AWS_ENDPOINT_URL`, keys from boto3's default chain (the environment a
Kubernetes Secret fills); neither is ever logged. An upload failure is one warning line; training
goes on (the local checkpoint is complete either way).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from jobs.cli import JobError
from jobs.remote import s3_client
from trainer.checkpoint import COMPLETE, HASH, file_sha256

ENV = "NEOX_CHECKPOINT_MIRROR"
META_ID = "checkpoint-id"
_MB = 1024 * 1024


def parse_url(url: str, what: str = "--mirror") -> tuple[str, str]:
    """(bucket, prefix without slashes) of s3://BUCKET[/PREFIX]."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise JobError(f"{what} {url!r}: expected s3://BUCKET[/PREFIX]")
    return parsed.netloc, parsed.path.strip("/")


def _describe(exc: BaseException) -> str:
    """A short reason; botocore's messages name the operation and code, never the keys."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


class Mirror:
    def __init__(
        self,
        url: str,
        what: str = "--mirror",
        log: Callable[[str], None] = print,
        chunk_bytes: int = 64 * _MB,
    ) -> None:
        self.bucket, self.prefix = parse_url(url, what)
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.log = log
        try:
            from boto3.s3.transfer import TransferConfig
        except ImportError:
            raise JobError(f"{what} needs boto3 (the trainer extra)") from None
        self.client = s3_client()
        # 64 MiB parts: 10,000 parts (S3's limit) reach 625 GiB per file
        self.transfer = TransferConfig(multipart_threshold=chunk_bytes, multipart_chunksize=chunk_bytes)
        self.uploaded: list[str] = []
        self.failed: list[str] = []
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._busy: set[Path] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="checkpoint-mirror", daemon=True)
        self._thread.start()

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    # ---- the training loop's side ----

    def submit(self, tag_dir: str | os.PathLike) -> None:
        tag_dir = Path(tag_dir)
        with self._lock:
            self._busy.add(tag_dir)
        self._queue.put(tag_dir)

    def busy(self) -> set[Path]:
        """Folders queued or being uploaded: keep-last-n-checkpoints leaves them for later."""
        with self._lock:
            return set(self._busy)

    def close(self) -> None:
        """Wait for the queued uploads (the run's last checkpoint among them)."""
        pending = self.busy()
        if pending:
            self.log(f"waiting for the mirror to {self.url} ({', '.join(sorted(p.name for p in pending))})")
        self._queue.put(None)
        self._thread.join()

    # ---- the upload thread ----

    def _run(self) -> None:
        while (tag_dir := self._queue.get()) is not None:
            try:
                sent, skipped = self.upload(tag_dir)
                self.uploaded.append(tag_dir.name)
                self.log(
                    f"mirrored {tag_dir.name} to {self.url}/{tag_dir.name} "
                    f"({sent} files sent, {skipped} already there)"
                )
            except Exception as exc:  # noqa: BLE001 - any failure is one line, never the end of training
                self.failed.append(tag_dir.name)
                self.log(
                    f"warning: mirroring {tag_dir.name} to {self.url} failed ({_describe(exc)}); "
                    f"training continues, the local checkpoint is complete"
                )
            finally:
                with self._lock:
                    self._busy.discard(tag_dir)

    def _remote(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def upload(self, tag_dir: Path) -> tuple[int, int]:
        """Send one complete checkpoint folder; returns (files sent, files already there)."""
        marker_path = tag_dir / COMPLETE
        marker = json.loads(marker_path.read_text())
        ident, tag = marker["id"], tag_dir.name
        remote_marker = self._remote(self.key(tag, COMPLETE))
        if remote_marker and remote_marker.get("Metadata", {}).get(META_ID) != ident:
            # another save under this name: the bucket must not show a marker over mixed files
            self.client.delete_object(Bucket=self.bucket, Key=self.key(tag, COMPLETE))
        extra = {"Metadata": {META_ID: ident}}
        hashes = marker.get(HASH) or {}  # absent in markers written before content hashes
        sent = skipped = 0
        for rel, size in sorted(marker["files"].items()):
            key = self.key(tag, rel)
            head = self._remote(key)
            if head and head["ContentLength"] == size and head.get("Metadata", {}).get(META_ID) == ident:
                skipped += 1
                continue
            if rel in hashes and file_sha256(tag_dir / rel) != hashes[rel]:
                # never put a marker in the bucket over bytes other than the trainer wrote
                raise JobError(f"{rel} does not match its {HASH} in {COMPLETE} (damaged since it was saved)")
            meta = {**extra["Metadata"], HASH: hashes[rel]} if rel in hashes else extra["Metadata"]
            self.client.upload_file(
                str(tag_dir / rel), self.bucket, key, ExtraArgs={"Metadata": meta}, Config=self.transfer
            )
            sent += 1
        self.client.upload_file(str(marker_path), self.bucket, self.key(tag, COMPLETE), ExtraArgs=extra)
        self.client.put_object(Bucket=self.bucket, Key=self.key("latest"), Body=tag.encode())
        return sent, skipped
