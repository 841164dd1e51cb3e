"""The thin seam to the Kubernetes API: plain `requests` against the API server, authenticated from
the kubeconfig (token or client certificate, CA) or the in-cluster service account. It speaks only
what deploy needs: server-side apply (PATCH with a field manager), GET/DELETE/list of the object kinds
we render, Job status and pod logs. Tests run it against a local HTTP stand-in of that subset."""

from __future__ import annotations

import atexit
import base64
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import requests
import yaml

from jobs.cli import JobError, human_duration

FIELD_MANAGER = "neox-pipeline"
IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# kind -> (API group path, plural)
KINDS = {
    "PersistentVolumeClaim": ("api/v1", "persistentvolumeclaims"),
    "ConfigMap": ("api/v1", "configmaps"),
    "Secret": ("api/v1", "secrets"),
    "Pod": ("api/v1", "pods"),
    "Job": ("apis/batch/v1", "jobs"),
}


@dataclass
class Credentials:
    server: str
    token: str | None = None
    verify: bool | str = True
    cert: tuple[str, str] | None = None


def _materialize(data_b64: str, suffix: str) -> str:
    """requests wants file paths for CA and client certs; kubeconfig may inline them."""
    fd, path = tempfile.mkstemp(prefix="neox-kube-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data_b64))
    atexit.register(lambda: Path(path).unlink(missing_ok=True))
    return path


def credentials_from_kubeconfig(path: str | os.PathLike | None = None, context: str | None = None) -> Credentials:
    path = Path(path or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube" / "config")
    try:
        kc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise JobError(f"kubeconfig {path}: cannot read ({exc.strerror or exc})") from exc
    ctx_name = context or kc.get("current-context")
    by_name = {k: {i["name"]: i.get(k.rstrip("s"), {}) for i in kc.get(k) or []} for k in ("contexts", "clusters", "users")}
    ctx = by_name["contexts"].get(ctx_name)
    if ctx is None:
        raise JobError(f"kubeconfig {path}: no context {ctx_name!r}")
    cluster = by_name["clusters"].get(ctx.get("cluster"), {})
    user = by_name["users"].get(ctx.get("user"), {})
    if not cluster.get("server"):
        raise JobError(f"kubeconfig {path}: context {ctx_name!r} names no cluster server")
    verify: bool | str = True
    if cluster.get("insecure-skip-tls-verify"):
        verify = False
    elif cluster.get("certificate-authority-data"):
        verify = _materialize(cluster["certificate-authority-data"], ".crt")
    elif cluster.get("certificate-authority"):
        verify = str((path.parent / cluster["certificate-authority"]).resolve())
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    cert = None
    if user.get("client-certificate-data") and user.get("client-key-data"):
        cert = (_materialize(user["client-certificate-data"], ".crt"), _materialize(user["client-key-data"], ".key"))
    elif user.get("client-certificate") and user.get("client-key"):
        cert = (user["client-certificate"], user["client-key"])
    if user.get("exec") or user.get("auth-provider"):
        raise JobError(f"kubeconfig {path}: user {ctx.get('user')!r} uses an exec/auth-provider plugin; "
                       "use a token or client certificate (e.g. a service account token)")
    return Credentials(server=cluster["server"].rstrip("/"), token=token, verify=verify, cert=cert)


def credentials_in_cluster() -> Credentials | None:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not (IN_CLUSTER / "token").is_file():
        return None
    return Credentials(server=f"https://{host}:{port or 443}", token=(IN_CLUSTER / "token").read_text().strip(),
                       verify=str(IN_CLUSTER / "ca.crt"))


def default_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    if kubeconfig is None and context is None and (creds := credentials_in_cluster()) is not None:
        return creds
    return credentials_from_kubeconfig(kubeconfig, context)


class Cluster:
    """One namespace of one cluster."""

    def __init__(self, creds: Credentials, namespace: str, timeout: float = 30.0) -> None:
        self.creds = creds
        self.namespace = namespace
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = creds.verify
        if creds.cert:
            self.session.cert = creds.cert
        if creds.token:
            self.session.headers["Authorization"] = f"Bearer {creds.token}"

    # -- plumbing
    def _url(self, kind: str, name: str | None = None, sub: str | None = None) -> str:
        group, plural = KINDS[kind]
        url = f"{self.creds.server}/{group}/namespaces/{self.namespace}/{plural}"
        if name:
            url += f"/{name}"
        if sub:
            url += f"/{sub}"
        return url

    def _request(self, method: str, url: str, what: str, ok=(200, 201), **kw) -> requests.Response:
        try:
            resp = self.session.request(method, url, timeout=self.timeout, **kw)
        except requests.RequestException as exc:
            raise JobError(f"Kubernetes API {self.creds.server}: unreachable ({type(exc).__name__})") from exc
        if resp.status_code not in ok:
            raise JobError(f"{what}: Kubernetes API answered {resp.status_code} {_reason(resp)}")
        return resp

    # -- calls
    def version(self) -> str:
        resp = self._request("GET", f"{self.creds.server}/version", "cluster version")
        v = resp.json()
        return v.get("gitVersion") or f"{v.get('major')}.{v.get('minor')}"

    def get(self, kind: str, name: str) -> dict | None:
        resp = self._request("GET", self._url(kind, name), f"{kind}/{name}", ok=(200, 404))
        return resp.json() if resp.status_code == 200 else None

    def apply(self, obj: dict) -> tuple[str, dict]:
        """Server-side apply; returns ("created" | "configured" | "unchanged", the live object).
        Unchanged means the API server kept the resourceVersion: the apply changed nothing."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        before = self.get(kind, name)
        resp = self._request(
            "PATCH", self._url(kind, name), f"apply {kind}/{name}",
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            headers={"Content-Type": "application/apply-patch+yaml"},
            data=yaml.safe_dump(obj, sort_keys=False),  # JSON is YAML, but YAML reads better in audit logs
        )
        live = resp.json()
        if before is None:
            return "created", live
        same = before["metadata"].get("resourceVersion") == live["metadata"].get("resourceVersion")
        return ("unchanged" if same else "configured"), live

    def delete(self, kind: str, name: str) -> bool:
        resp = self._request("DELETE", self._url(kind, name), f"delete {kind}/{name}", ok=(200, 202, 404),
                             json={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        return resp.status_code != 404

    def list(self, kind: str, label_selector: str) -> list[dict]:
        resp = self._request("GET", self._url(kind), f"list {kind}", params={"labelSelector": label_selector})
        return resp.json().get("items", [])

    def pod_log(self, pod: str, tail_lines: int = 50, container: str | None = None) -> str:
        params = {"tailLines": str(tail_lines)}
        if container:
            params["container"] = container
        resp = self._request("GET", self._url("Pod", pod, "log"), f"log of pod {pod}", ok=(200, 400, 404),
                             params=params)
        return resp.text if resp.status_code == 200 else f"(no log: {_reason(resp)})"

    def job_pods(self, job: str) -> list[dict]:
        pods = self.list("Pod", f"job-name={job}")
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))

    # -- waiting
    def wait_job(self, name: str, timeout: float, poll: float = 5.0, out: TextIO | None = None,
                 log_tail: int = 40, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> dict:
        """Wait until Job `name` completes. On failure print the last pod's log tail and raise."""
        out = out or sys.stderr
        start = next_line = clock()
        while True:
            job = self.get("Job", name)
            if job is None:
                raise JobError(f"Job/{name}: disappeared while waiting")
            state = job_state(job)
            if state == "Complete":
                print(f"deploy: Job/{name} succeeded after {human_duration(clock() - start)}", file=out)
                return job
            if state == "Failed":
                pods = self.job_pods(name)
                reason = _failed_reason(job)
                if pods:
                    pod = pods[-1]["metadata"]["name"]
                    print(f"deploy: Job/{name} failed ({reason}); last {log_tail} log lines of pod {pod}:", file=out)
                    for line in self.pod_log(pod, log_tail).rstrip("\n").splitlines():
                        print(f"  | {line}", file=out)
                raise JobError(f"Job/{name} failed: {reason}")
            now = clock()
            if now - start > timeout:
                raise JobError(f"Job/{name}: still running after {human_duration(timeout)}; see `invoke logs`")
            if now >= next_line:  # a plain progress line every 30 s, as Kubernetes-style logs want
                st = job.get("status", {})
                print(f"deploy: Job/{name}: {st.get('active', 0)} running, {st.get('failed', 0)} failed attempts, "
                      f"{human_duration(now - start)} elapsed", file=out)
                next_line = now + 30
            sleep(poll)


def job_state(job: dict) -> str:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return cond["type"]
    return "Running" if job.get("status", {}).get("active") else "Pending"


def _failed_reason(job: dict) -> str:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return cond.get("reason") or cond.get("message") or "Failed"
    return "Failed"


def _reason(resp: requests.Response) -> str:
    try:
        body = resp.json()
        return body.get("message") or body.get("reason") or resp.reason
    except ValueError:
        return resp.reason or ""
