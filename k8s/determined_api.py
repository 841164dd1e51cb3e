"""The thin seam to a Determined master: the REST calls the `determined` SDK (0.38.1) makes for
login, experiment creation and checkpoint lookup, made with plain `requests`, because the SDK pins
old libraries and is not installed beside the deploy tooling. The request bodies mirror
`determined.common.api.bindings` (v1LoginRequest with the SDK's salted hash, v1CreateExperimentRequest
with the context as a list of v1File) and the context walk mirrors `determined.common.context`
(.detignore with git-wildmatch patterns, the master's size limit). Tests run it against a local HTTP
stand-in of that subset."""

from __future__ import annotations

import base64
import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pathspec
import requests
import yaml

from jobs.cli import JobError, human_bytes

# determined.common.constants: MAX_ENCODED_SIZE (96 MiB) minus 1 MiB of envelope.
MAX_CONTEXT_SIZE = (128 * 1024 * 1024 // 8) * 6 - 1024 * 1024
DEFAULT_DETIGNORE = [
    "__pycache__/",
    "*.py[co]",
    "*$py.class",
    "terraform",
    "terraform_data",
    "terraform.tfstate*",
    "terraform.tfvars*",
    ".terraform*",
    ".git/",
    ".vscode/",
    ".idea/",
    ".mypy_cache/",
    "/shared_fs",
]
PASSWORD_SALT = "GubPEmmotfiK9TMD6Zdw"  # the SDK hashes passwords with this salt before sending them


def salt_and_hash(password: str) -> str:
    return hashlib.sha512((PASSWORD_SALT + password).encode()).hexdigest() if password else password


def _v1file(path: str, local: Path, is_dir: bool) -> dict:
    st = local.stat()
    content = "" if is_dir else base64.b64encode(local.read_bytes()).decode()
    return {
        "path": path,
        "type": ord(tarfile.DIRTYPE if is_dir else tarfile.REGTYPE),
        "content": content,
        "mtime": str(int(st.st_mtime)),
        "mode": st.st_mode,
        "uid": 0,
        "gid": 0,
    }


def read_context(root: str | os.PathLike, limit: int = MAX_CONTEXT_SIZE) -> list[dict]:
    """The context directory as the master wants it, honouring `root/.detignore`."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise JobError(f"experiment context {root}: not a directory")
    lines = list(DEFAULT_DETIGNORE)
    if (root / ".detignore").is_file():
        lines += (root / ".detignore").read_text().splitlines()
    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    files, size = [], 0
    for parent, dirs, names in os.walk(root):
        keep = []
        for d in sorted(dirs):
            rel = (Path(parent) / d).relative_to(root).as_posix()
            if spec.match_file(rel) or spec.match_file(rel + "/"):
                continue
            keep.append(d)
            files.append(_v1file(rel, Path(parent) / d, True))
        dirs[:] = keep
        for n in sorted(names):
            rel = (Path(parent) / n).relative_to(root).as_posix()
            if n == ".detignore" or spec.match_file(rel):
                continue
            f = _v1file(rel, Path(parent) / n, False)
            size += len(f["content"]) // 4 * 3
            if size > limit:
                raise JobError(
                    f"experiment context {root}: larger than the master's limit of {human_bytes(limit)} "
                    f"(at {rel}); exclude files with .detignore"
                )
            files.append(f)
    return files


@dataclass
class Master:
    url: str
    timeout: float = 30.0
    # The master's CA file, False for no check, True for the system store; None: as the SDK reads
    # DET_MASTER_CERT_FILE (a path, or "noverify").
    verify: bool | str | None = None

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.session = requests.Session()
        if self.verify is None:
            cert = os.environ.get("DET_MASTER_CERT_FILE")
            self.verify = False if cert == "noverify" else (cert or True)

    def _call(self, method: str, path: str, what: str, **kw) -> dict:
        try:
            # verify per request: requests lets REQUESTS_CA_BUNDLE override a Session's `verify`,
            # which would trust that bundle instead of the master's CA.
            resp = self.session.request(
                method, f"{self.url}{path}", timeout=self.timeout, verify=self.verify, **kw
            )
        except requests.RequestException as exc:
            raise JobError(f"Determined master {self.url}: unreachable ({type(exc).__name__})") from exc
        if resp.status_code != 200:
            try:
                msg = resp.json().get("message") or resp.json().get("error", {}).get("error") or resp.reason
            except (ValueError, AttributeError):
                msg = resp.reason
            raise JobError(f"{what}: Determined master answered {resp.status_code} {msg}")
        return resp.json()

    def info(self) -> dict:
        return self._call("GET", "/api/v1/master", "master info")

    def login(
        self, username: str | None = None, password: str | None = None, token: str | None = None
    ) -> None:
        """Use DET_SESSION_TOKEN if given, else log in as DET_USER/DET_PASS (the SDK's defaults)."""
        token = token or os.environ.get("DET_SESSION_TOKEN")
        if not token:
            username = username or os.environ.get("DET_USER", "determined")
            password = password if password is not None else os.environ.get("DET_PASS", "")
            body = {"username": username, "password": salt_and_hash(password), "isHashed": True}
            token = self._call("POST", "/api/v1/auth/login", f"login as {username}", json=body)["token"]
        self.session.headers["Authorization"] = f"Bearer {token}"

    def create_experiment(self, config: dict, context: list[dict], project_id: int | None = None) -> int:
        body = {
            "activate": True,
            "config": yaml.safe_dump(config, sort_keys=False),
            "modelDefinition": context,
        }
        if project_id is not None:
            body["projectId"] = project_id
        resp = self._call("POST", "/api/v1/experiments", "create experiment", json=body)
        return int(resp["experiment"]["id"])

    def experiment(self, exp_id: int) -> dict:
        return self._call("GET", f"/api/v1/experiments/{exp_id}", f"experiment {exp_id}")["experiment"]

    def experiment_url(self, exp_id: int) -> str:
        return f"{self.url}/det/experiments/{exp_id}"

    def latest_checkpoint(self, exp_id: int) -> dict:
        params = {
            "sortByAttr": "SORT_BY_BATCH_NUMBER",
            "orderBy": "ORDER_BY_DESC",
            "states": "STATE_COMPLETED",
            "limit": 1,
        }
        cks = (
            self._call(
                "GET",
                f"/api/v1/experiments/{exp_id}/checkpoints",
                f"checkpoints of experiment {exp_id}",
                params=params,
            ).get("checkpoints")
            or []
        )
        if not cks:
            raise JobError(f"experiment {exp_id}: no completed checkpoint yet")
        return cks[0]
