"""Hugging Face Hub sources (`hf://org/repo[@revision]`, `hf://datasets/org/repo[@revision]`):
huggingface_hub lists the files of one commit with their sizes and hashes (sha256 for LFS files, the git blob id otherwise); the bytes
come over the hub's `resolve/<commit>/<file>` URLs through the ranged HTTP reader, so hub
downloads are parallel, resumable and verified like any other. Honours HF_ENDPOINT and HF_TOKEN."""

from __future__ import annotations

import os
from collections.abc import Iterator

from jobs.cli import JobError

from .http import ANY_HOST, HttpSource
from .plan import RemoteFile, safe_relpath

DEFAULT_ENDPOINT = "https://huggingface.co"


REPO_TYPES = {"datasets": "dataset", "models": "model"}  # the hub's own URL prefixes


def parse_hf_url(url: str) -> tuple[str, str, str | None]:
    """(repo type, org/repo, revision or None) of hf://[datasets/]org/repo[@revision]."""
    rest = url[len("hf://") :].strip("/")
    repo, _, rev = rest.partition("@")
    kind = "model"
    head, _, tail = repo.partition("/")
    if head in REPO_TYPES:  # no hub account can be named so
        kind, repo = REPO_TYPES[head], tail
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise JobError(f"{url}: expected hf://org/repo[@revision] or hf://datasets/org/repo[@revision]")
    return kind, repo, rev or None


class HubSource:
    def __init__(self, url: str, connections: int = 16) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import build_hf_headers

        self.repo_type, self.repo, self.revision = parse_hf_url(url)
        self.description = url
        # Read at call time: huggingface_hub freezes HF_ENDPOINT when first imported.
        self.endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
        token = os.environ.get("HF_TOKEN") or None
        self.api = HfApi(endpoint=self.endpoint, token=token)
        # Files are pinned to one commit (no If-Range); the hub serves large files from its CDN on
        # other hosts, so its redirects may go anywhere, but the token never follows one.
        self.http = HttpSource(
            f"{self.endpoint}/",
            headers=build_hf_headers(token=token),
            connections=connections,
            if_range=False,
            redirect_hosts=(ANY_HOST,),
        )
        self.commit: str | None = None

    def list_files(self) -> list[RemoteFile]:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

        prefix = "datasets/" if self.repo_type == "dataset" else ""
        where = f"hf://{prefix}{self.repo}" + (f"@{self.revision}" if self.revision else "")
        try:
            info = self.api.repo_info(
                self.repo, repo_type=self.repo_type, revision=self.revision, files_metadata=True
            )
        except RevisionNotFoundError:
            raise JobError(f"{where}: revision not found") from None
        except RepositoryNotFoundError:
            raise JobError(f"{where}: repository not found (or private without a valid HF_TOKEN)") from None
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", "?")
            raise JobError(f"{where}: HTTP {status} from {self.endpoint}") from None
        except OSError as exc:
            raise JobError(f"{where}: cannot reach {self.endpoint}: {type(exc).__name__}") from None
        self.commit = info.sha  # pin every file to one commit
        files = []
        for s in info.siblings or []:
            url = hf_hub_url(
                self.repo,
                s.rfilename,
                repo_type=self.repo_type,
                revision=self.commit or self.revision,
                endpoint=self.endpoint,
            )
            f = RemoteFile(safe_relpath(s.rfilename, where), url, s.size, s.blob_id, True)
            if s.lfs:
                f.expected["sha256"] = s.lfs.sha256
                f.expected_from = "the hub's LFS sha256"
            elif s.blob_id and s.size is not None:
                f.expected["git-sha1"] = s.blob_id
                f.expected_from = "the hub's git blob id"
            files.append(f)
        if not files:
            raise JobError(f"{where}: the repository has no files")
        return files

    @property
    def retries(self) -> int:
        return self.http.retries

    def read(self, file: RemoteFile, start: int, end: int | None) -> tuple[int, Iterator[bytes]]:
        return self.http.read(file, start, end)
