"""A local S3-compatible server (moto) for `invoke local`'s checkpoint storage, and folder
upload/download with boto3, the client Determined's S3 checkpoint storage uses."""

from __future__ import annotations

from pathlib import Path

from jobs.remote import s3_client

# moto accepts any keys; these are not secrets and never leave this process.
_KEYS = {"aws_access_key_id": "local", "aws_secret_access_key": "local", "region_name": "us-east-1"}


class LocalS3:
    """`with LocalS3() as s3:` starts moto's threaded server on 127.0.0.1 and stops it after."""

    def __enter__(self) -> LocalS3:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.client = s3_client(self.endpoint, keys=_KEYS)
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(Bucket=bucket)

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> int:
        files = [p for p in sorted(Path(folder).rglob("*")) if p.is_file()]
        for path in files:
            self.client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
        return len(files)

    def download_folder(self, bucket: str, prefix: str, dest: Path) -> int:
        count = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
            for obj in page.get("Contents", []):
                target = Path(dest) / obj["Key"][len(prefix) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(bucket, obj["Key"], str(target))
                count += 1
        return count
