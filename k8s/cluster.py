"""The seam to the Kubernetes API, through the official `kubernetes` client: credentials exactly as
kubectl finds them (its kubeconfig loaders: several KUBECONFIG files merged, exec credential plugins,
auth-provider, paths relative to the file that names them; or the in-cluster service account), the
kubeconfig's CA as the only one trusted for the cluster, server-side apply with our field manager,
get/list/delete of the kinds in KINDS, waiting on an object with a watch, and pod logs (tail or
followed). Everything goes through `ApiClient.call_api` on the kind table below, so custom resources
(TrainJob, JobSet) need no discovery (preflight asks it only whether they are served, and
SelfSubjectAccessReviews whether we may touch them); answers stay plain dicts. Tests run it over TLS
against the stand-in in tests/deploy/standins.py."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import urllib3
import yaml
from kubernetes import watch as k8s_watch
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

from jobs.cli import JobError, human_duration
from k8s import progress
from k8s.render import FIELD_MANAGER  # the one name we apply as and label our objects with

IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PROGRESS_EVERY = 30.0  # seconds between "still running" lines, as Kubernetes-style logs want


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool = True  # False: cluster-scoped (no /namespaces/NS/ in its path)

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


# Every kind deploy touches, in one place; the cluster-scoped ones only preflight reads.
KINDS = {
    "PersistentVolumeClaim": Kind("", "v1", "persistentvolumeclaims"),
    "ConfigMap": Kind("", "v1", "configmaps"),
    "Secret": Kind("", "v1", "secrets"),
    "Pod": Kind("", "v1", "pods"),
    "Service": Kind("", "v1", "services"),
    "Job": Kind("batch", "v1", "jobs"),
    "TrainJob": Kind("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    "TrainingRuntime": Kind("trainer.kubeflow.org", "v1alpha1", "trainingruntimes"),
    "JobSet": Kind("jobset.x-k8s.io", "v1alpha2", "jobsets"),
    "Namespace": Kind("", "v1", "namespaces", namespaced=False),
    "StorageClass": Kind("storage.k8s.io", "v1", "storageclasses", namespaced=False),
    "PersistentVolume": Kind("", "v1", "persistentvolumes", namespaced=False),
    "ClusterTrainingRuntime": Kind(
        "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", namespaced=False
    ),
}
ACCESS_REVIEW = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
# kind -> (condition that means done, condition that means failed)
TERMINAL = {
    "Job": ("Complete", "Failed"),
    "JobSet": ("Completed", "Failed"),
    "TrainJob": ("Complete", "Failed"),
}
# How the controllers label the pods of each workload kind (name -> label selector).
POD_SELECTOR = {
    "Job": "job-name={}",
    "JobSet": "jobset.sigs.k8s.io/jobset-name={}",
    "TrainJob": "jobset.sigs.k8s.io/jobset-name={}",  # a TrainJob runs as a JobSet of the same name
}


@dataclass
class Credentials:
    """Where and how to reach the API server. From the loaders, `configuration` is the official
    client's (it refreshes exec-plugin and service-account tokens); built by hand, the fields are it."""

    server: str
    token: str | None = field(default=None, repr=False)
    verify: bool | str = True  # a CA file: trust only it; True: the system store; False: no check
    cert: tuple[str, str] | None = None
    configuration: Configuration | None = field(default=None, repr=False)
    source: str = ""  # "kubeconfig FILE, context NAME" or "in-cluster service account", for messages

    def client_configuration(self) -> Configuration:
        if self.configuration is not None:
            return self.configuration
        c = Configuration(host=self.server.rstrip("/"))
        if self.token:
            c.api_key["BearerToken"] = f"Bearer {self.token}"
        c.verify_ssl = self.verify is not False
        if isinstance(self.verify, str):
            c.ssl_ca_cert = self.verify
        if self.cert:
            c.cert_file, c.key_file = self.cert
        return c


def _from_configuration(c: Configuration, source: str) -> Credentials:
    scheme, _, token = (c.api_key.get("BearerToken") or "").partition(" ")
    return Credentials(
        server=c.host,
        token=token if scheme.lower() == "bearer" else None,
        verify=False if not c.verify_ssl else (c.ssl_ca_cert or True),
        cert=(c.cert_file, c.key_file) if c.cert_file else None,
        configuration=c,
        source=source,
    )


# -- credentials


_PATH_KEYS = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile"),
}


def _resolve_relative(merged) -> None:
    """kubectl resolves a relative path against the file that names it; the client's loader uses the
    cluster's file for client certificates too, so make every path absolute first."""
    for section, inner in (("clusters", "cluster"), ("users", "user")):
        for node in merged.value.get(section) or []:
            entry = node.value.get(inner) if hasattr(node, "value") else None
            if not isinstance(entry, dict) or not getattr(node, "path", None):
                continue
            base = os.path.dirname(os.path.abspath(node.path))
            for key in _PATH_KEYS[inner]:
                if isinstance(entry.get(key), str) and entry[key] and not os.path.isabs(entry[key]):
                    entry[key] = os.path.join(base, os.path.expanduser(entry[key]))
            if inner == "user" and entry.get("tokenFile"):
                # read here, trimmed as client-go does (the client would send a trailing newline along)
                try:
                    entry["token"] = Path(entry.pop("tokenFile")).read_text().strip()
                except OSError as exc:
                    raise JobError(
                        f"kubeconfig {node.path}: user {node.value.get('name')!r}: tokenFile "
                        f"{exc.filename}: cannot read ({exc.strerror})"
                    ) from exc
            cmd = (entry.get("exec") or {}).get("command")
            if isinstance(cmd, str) and os.sep in cmd and not os.path.isabs(cmd):  # bare names come from PATH
                entry["exec"]["command"] = os.path.join(base, cmd)


@contextmanager
def _captured_log() -> Iterator[list[str]]:
    """The client's loader logs an exec plugin's failure instead of raising; keep the message."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    root, handler = logging.getLogger(), Keep(logging.ERROR)
    root.addHandler(handler)
    try:
        yield messages
    finally:
        root.removeHandler(handler)


def credentials_from_kubeconfig(
    path: str | os.PathLike | None = None, context: str | None = None
) -> Credentials:
    """`path` as kubectl's --kubeconfig (one file that must exist); else KUBECONFIG (files joined by
    ':' and merged, first wins, missing ones skipped); else ~/.kube/config."""
    if path is not None:
        files = [os.path.expanduser(str(path))]
    else:
        spec = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        files = [os.path.expanduser(p) for p in spec.split(os.pathsep) if p]
        files = [f for f in files if os.path.exists(f)] or files[:1]
    where = f"kubeconfig {os.pathsep.join(files)}"
    first_current = (
        None  # kubectl: the first file that sets current-context wins (the client's merger keeps the last)
    )
    for f in files:
        try:
            doc = yaml.safe_load(Path(f).read_text())
            first_current = first_current or (doc.get("current-context") if isinstance(doc, dict) else None)
        except OSError as exc:
            raise JobError(f"kubeconfig {f}: cannot read ({exc.strerror or exc})") from exc
        except yaml.YAMLError as exc:
            raise JobError(f"kubeconfig {f}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    try:
        merged = KubeConfigMerger(os.pathsep.join(files)).config
    except ConfigException as exc:
        raise JobError(f"{where}: {exc}") from exc
    contexts = [c["name"] for c in merged.value.get("contexts") or [] if "name" in c]
    ctx = context or first_current
    if not ctx:
        raise JobError(
            f"{where}: no current-context; pass --context (one of: {', '.join(contexts) or 'none'})"
        )
    if ctx not in contexts:
        raise JobError(f"{where}: no context {ctx!r} (contexts: {', '.join(contexts) or 'none'})")
    _resolve_relative(merged)
    configuration = Configuration()
    try:
        loader = KubeConfigLoader(config_dict=merged, active_context=ctx, config_base_path=None)
        with _captured_log() as messages:
            loader.load_and_set(configuration)
    except ConfigException as exc:
        raise JobError(f"{where}, context {ctx!r}: {exc}") from exc
    except Exception as exc:  # an auth-provider's own failure, e.g. a refresh that was refused
        raise JobError(f"{where}, context {ctx!r}: credentials failed ({type(exc).__name__}: {exc})") from exc
    user_name = loader._current_context["context"].safe_get("user")
    user = loader._user.value if loader._user is not None else {}
    if not configuration.api_key.get("BearerToken") and not configuration.cert_file:
        if "exec" in user:
            why = messages[-1] if messages else "printed no token or client certificate"
            raise JobError(
                f"{where}, context {ctx!r}: user {user_name!r}: exec/auth-provider plugin "
                f"{user['exec'].get('command')!r} failed ({why.splitlines()[0]})"
            )
        if "auth-provider" in user:
            name = (user["auth-provider"] or {}).get("name")
            raise JobError(
                f"{where}, context {ctx!r}: user {user_name!r}: exec/auth-provider plugin {name!r} is not "
                "supported by the Kubernetes client; use an exec credential plugin"
            )
    if not configuration.host or configuration.host == Configuration().host:
        raise JobError(f"{where}, context {ctx!r}: names no cluster server")
    return _from_configuration(configuration, f"{where}, context {ctx!r}")


def credentials_in_cluster(root: Path = IN_CLUSTER, environ: dict | None = None) -> Credentials | None:
    """The pod's service account (token re-read as the kubelet rotates it), or None outside a pod."""
    environ = os.environ if environ is None else environ
    if not environ.get("KUBERNETES_SERVICE_HOST") or not (root / "token").is_file():
        return None
    configuration = Configuration()
    try:
        InClusterConfigLoader(
            token_filename=str(root / "token"), cert_filename=str(root / "ca.crt"), environ=environ
        ).load_and_set(configuration)
    except ConfigException as exc:
        raise JobError(f"in-cluster service account {root}: {exc}") from exc
    return _from_configuration(configuration, f"in-cluster service account {root}")


def default_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    if kubeconfig is None and context is None and (creds := credentials_in_cluster()) is not None:
        return creds
    return credentials_from_kubeconfig(kubeconfig, context)


# -- errors


class ApiError(JobError):
    """An answer other than 2xx, as one line; `status` lets callers treat 404 or 410 specially."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _status_body(body) -> dict:
    try:
        data = json.loads(body.decode() if isinstance(body, bytes) else body or "")
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}


def _conflict_line(what: str, status: dict) -> str:
    """A 409 from apply: which fields, owned by which other manager."""
    by_manager: dict[str, list[str]] = {}
    for cause in (status.get("details") or {}).get("causes") or []:
        msg = cause.get("message", "")
        manager = msg.split('"')[1] if msg.count('"') >= 2 else msg
        by_manager.setdefault(manager, []).append(cause.get("field", "?"))
    if not by_manager:
        return f"{what}: conflict ({status.get('message', 'Conflict')})"
    owners = "; ".join(
        f"{', '.join(fields)} owned by field manager {m!r}" for m, fields in by_manager.items()
    )
    return f"{what}: conflict: {owners}; rerun with --force-conflicts to take them over"


def missing_namespace_line(namespace: str, config: str = "the config") -> str:
    return (
        f"namespace {namespace}: does not exist in the cluster; create it (`kubectl create namespace "
        f"{namespace}`) or set `namespace` in {config} (or --namespace) to one that exists"
    )


def _is_missing_namespace(status: dict, namespace: str) -> bool:
    """The API server's answer to a create in a namespace that does not exist (NamespaceLifecycle)."""
    details = status.get("details") or {}
    return details.get("kind") == "namespaces" and details.get("name") == namespace


def _unreachable(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, urllib3.exceptions.SSLError) or "SSL" in type(reason).__name__:
        m = re.search(
            r"\] ([^(\]]+?)\s*\(_ssl", str(reason)
        )  # "[SSL: X] certificate verify failed: why (_ssl.c:1006)"
        return f"TLS: {m.group(1) if m else 'handshake failed'}"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # a subclass of the timeout error
        return "ConnectionError"
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return "Timeout"
    return "ConnectionError"


# -- the cluster


class Cluster:
    """One namespace of one cluster."""

    def __init__(self, creds: Credentials, namespace: str, timeout: float = 30.0) -> None:
        self.creds = creds
        self.namespace = namespace
        self.timeout = timeout
        self.api = ApiClient(creds.client_configuration())

    @classmethod
    def from_kubeconfig(
        cls, namespace: str, kubeconfig: str | None = None, context: str | None = None, timeout: float = 30.0
    ) -> Cluster:
        return cls(default_credentials(kubeconfig, context), namespace, timeout)

    # -- plumbing
    def _path(self, kind: str, name: str | None = None, sub: str | None = None) -> str:
        k = KINDS.get(kind)
        if k is None:
            raise JobError(f"kind {kind!r}: not one deploy knows ({', '.join(KINDS)})")
        path = (
            f"{k.prefix}/namespaces/{self.namespace}/{k.plural}" if k.namespaced else f"{k.prefix}/{k.plural}"
        )
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        query: list | None = None,
        body=None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> urllib3.HTTPResponse:
        """One request; the raw response (callers read JSON, text or a stream); errors as one line."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            return self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout or self.timeout,
            )
        except ApiException as exc:
            if not exc.status:  # the client's own wrapping of a TLS failure
                raise JobError(
                    f"Kubernetes API {self.creds.server}: unreachable ({_unreachable(exc)})"
                ) from exc
            status = _status_body(exc.body)
            if exc.status == 409 and status.get("reason") == "Conflict" and method == "PATCH":
                raise ApiError(_conflict_line(what, status), 409) from exc
            if exc.status == 404 and _is_missing_namespace(status, self.namespace):
                raise ApiError(missing_namespace_line(self.namespace), 404) from exc
            reason = status.get("message") or status.get("reason") or exc.reason or ""
            raise ApiError(f"{what}: Kubernetes API answered {exc.status} {reason}", exc.status) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise JobError(f"Kubernetes API {self.creds.server}: unreachable ({_unreachable(exc)})") from exc

    def _json(self, *args, **kw) -> dict:
        resp = self._call(*args, **kw)
        try:
            return json.loads(resp.data or b"{}")
        finally:
            resp.release_conn()

    # -- calls
    def version(self) -> str:
        v = self._json("GET", "/version", "cluster version")
        return v.get("gitVersion") or f"{v.get('major')}.{v.get('minor')}"

    def get(self, kind: str, name: str) -> dict | None:
        try:
            return self._json("GET", self._path(kind, name), f"{kind}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    # -- what preflight asks (cluster-scoped reads, discovery, access reviews)
    def namespace_exists(self) -> bool | None:
        """Whether our namespace exists; None when we may not read namespaces (many tenants may not)."""
        try:
            return self.get("Namespace", self.namespace) is not None
        except ApiError as exc:
            if exc.status == 403:
                return None
            raise

    def served(self, kind: str) -> bool:
        """Whether the API server serves `kind`, by API discovery of its group/version (a CRD that is
        not installed is not served: its group answers 404)."""
        k = KINDS[kind]
        try:
            listing = self._json("GET", k.prefix, f"API discovery of {k.api_version}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == k.plural for r in listing.get("resources") or [])

    def access_review(self, verb: str, kind: str, subresource: str = "") -> tuple[bool, str]:
        """May we `verb` `kind` (in our namespace, for a namespaced kind)? A SelfSubjectAccessReview,
        which every authenticated user may create; (allowed, the authorizer's reason)."""
        k = KINDS[kind]
        attrs = {"verb": verb, "group": k.group, "resource": k.plural}
        if k.namespaced:
            attrs["namespace"] = self.namespace
        if subresource:
            attrs["subresource"] = subresource
        review = self._json(
            "POST",
            ACCESS_REVIEW,
            f"access review ({verb} {k.plural})",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs},
            },
            content_type="application/json",
        )
        status = review.get("status") or {}
        allowed = bool(status.get("allowed")) and not status.get("denied")
        return allowed, status.get("reason") or status.get("evaluationError") or ""

    def apply(self, obj: dict, force: bool = False, dry_run: bool = False) -> tuple[str, dict]:
        """Server-side apply as FIELD_MANAGER; returns ("created" | "configured" | "unchanged", the live
        object). Unchanged means the API server kept the resourceVersion: the apply changed nothing.
        Fields another manager owns are a conflict unless `force` (kubectl's --force-conflicts).
        `dry_run`: the server validates and admits it (webhooks, quotas) but stores nothing
        (`dryRun=All`); the answer is the object as it would be."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        before = self.get(kind, name)
        query = [("fieldManager", FIELD_MANAGER)] + ([("force", "true")] if force else [])
        query += [("dryRun", "All")] if dry_run else []
        live = self._json(
            "PATCH",
            self._path(kind, name),
            f"apply {kind}/{name}" + (" (server dry run)" if dry_run else ""),
            query=query,
            body=obj,
            content_type="application/apply-patch+yaml",
        )  # the client sends it as JSON, which is YAML
        if before is None:
            return "created", live
        same = before["metadata"].get("resourceVersion") == live["metadata"].get("resourceVersion")
        return ("unchanged" if same else "configured"), live

    def delete(self, kind: str, name: str, propagation: str = "Background") -> bool:
        """Delete, its dependents (a Job's pods) with it: Background (now) or Foreground (the object
        stays until they are gone)."""
        try:
            self._json(
                "DELETE",
                self._path(kind, name),
                f"delete {kind}/{name}",
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation},
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def list(self, kind: str, label_selector: str = "", field_selector: str | None = None) -> list[dict]:
        return self._list(kind, label_selector, field_selector)["items"]

    def _list(self, kind: str, label_selector: str = "", field_selector: str | None = None) -> dict:
        query = [("labelSelector", label_selector)] if label_selector else []
        query += [("fieldSelector", field_selector)] if field_selector else []
        body = self._json("GET", self._path(kind), f"list {kind}", query=query)
        body["items"] = body.get("items") or []
        return body

    def pod_log(
        self,
        pod: str,
        tail_lines: int = 50,
        container: str | None = None,
        follow: bool = False,
        out: TextIO | None = None,
    ) -> str:
        """The last `tail_lines` of the log; with `follow`, streamed to `out` until the container ends."""
        if follow:
            self.follow_log(pod, out or sys.stdout, container=container, tail_lines=tail_lines)
            return ""
        query = [("tailLines", str(tail_lines))] + ([("container", container)] if container else [])
        try:
            resp = self._call("GET", self._path("Pod", pod, "log"), f"log of pod {pod}", query=query)
        except ApiError as exc:
            if exc.status in (400, 404):  # not started yet, or gone
                return f"(no log: {str(exc).split(' answered ', 1)[-1]})"
            raise
        try:  # raw bytes: the client's "str" deserializer would turn a JSON log line into a Python repr
            return resp.data.decode(errors="replace")
        finally:
            resp.release_conn()

    def follow_log(
        self,
        pod: str,
        out: TextIO,
        container: str | None = None,
        tail_lines: int | None = None,
        prefix: str = "",
    ) -> None:
        """Stream the pod's log to `out` as it is written (kubectl logs -f), until the container ends."""
        query = [("follow", "true")] + ([("container", container)] if container else [])
        query += [("tailLines", str(tail_lines))] if tail_lines is not None else []
        # No read timeout: a quiet training step may print nothing for a long while.
        resp = self._call(
            "GET",
            self._path("Pod", pod, "log"),
            f"log of pod {pod}",
            query=query,
            timeout=(self.timeout, None),
        )
        try:
            for line in k8s_watch.watch.iter_resp_lines(resp):
                print(f"{prefix}{line}", file=out, flush=True)
        finally:
            resp.release_conn()

    def try_log(self, pod: str, tail_lines: int, out: TextIO | None) -> str | None:
        """The log tail, or None (after a warning line on `out`) when it cannot be read (a kubelet's 500,
        a 403 on pods/log): logs are a nicety, outcomes come from the objects' status."""
        try:
            return self.pod_log(pod, tail_lines)
        except ApiError as exc:
            if out is not None:
                why = str(exc).split(" answered ", 1)[-1]
                print(
                    f"deploy: warning: log of pod {pod} not readable ({why}); going by its status", file=out
                )
            return None

    def last_event(self, kind: str, name: str) -> str | None:
        """The newest Warning event about kind/name ("ProvisioningFailed: ..."), or None: events are a
        nicety too (not every user may list them), so any error is None."""
        query = [("fieldSelector", f"involvedObject.kind={kind},involvedObject.name={name}")]
        try:
            body = self._json(
                "GET", f"/api/v1/namespaces/{self.namespace}/events", "list events", query=query
            )
        except JobError:
            return None
        warnings = [e for e in body.get("items") or [] if e.get("type") == "Warning"]
        if not warnings:
            return None
        e = max(warnings, key=lambda e: int((e.get("metadata") or {}).get("resourceVersion") or 0))
        return f"{e.get('reason')}: {e.get('message', '').strip()}"

    def pods_of(self, kind: str, name: str, owner: dict | None = None) -> list[dict]:
        """The workload's pods, oldest first; with `owner` (a Job), only that very object's, not those of
        an earlier Job of the same name that are still being deleted."""
        pods = self.list("Pod", POD_SELECTOR[kind].format(name))
        uid = ((owner or {}).get("metadata") or {}).get("uid")
        if uid and kind == "Job":
            pods = [
                p
                for p in pods
                if not p["metadata"].get("ownerReferences")
                or any(r.get("uid") == uid for r in p["metadata"]["ownerReferences"])
            ]
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))

    def job_pods(self, job: str) -> list[dict]:
        return self.pods_of("Job", job)

    def state(self, kind: str, obj: dict) -> str:
        return state(kind, obj)

    # -- waiting
    def wait(
        self,
        kind: str,
        name: str,
        timeout: float,
        out: TextIO | None = None,
        log_tail: int = 40,
        clock: Callable[[], float] = time.monotonic,
        progress_every: float = PROGRESS_EVERY,
        stall_timeout: float = progress.STALL_TIMEOUT,
        controller_timeout: float = progress.CONTROLLER_TIMEOUT,
    ) -> dict:
        """Follow `kind`/`name` with a watch until it completes; on failure print why (the failed pod's
        end, its log tail when readable) and raise. A progress line (k8s/progress.py: pods by phase,
        why they are Pending, restarts) whenever it changes and every `progress_every` seconds; gives up
        after `stall_timeout` without change while pods are not running, or `controller_timeout` with no
        controller acting on it."""
        out = out or sys.stderr
        what = f"{kind}/{name}"
        start = next_line = clock()
        obj, rv = self._get_listed(kind, name)
        tracker = progress.Tracker(kind, name, obj or {}, start, stall_timeout, controller_timeout)
        last_line = None
        while True:
            if obj is None:
                raise JobError(f"{what}: not found in namespace {self.namespace} (deleted while waiting?)")
            st = state(kind, obj)
            if st in ("Complete", "Failed") and ((obj.get("status") or {}).get("restarts") or 0) != (
                tracker.restarts or 0
            ):  # restarts between our last look and its end are news too
                for line in tracker.update(self.snapshot(kind, name, obj), clock(), obj):
                    print(f"deploy: {what}: {line}", file=out)
            if st == "Complete":
                print(f"deploy: {what} succeeded after {human_duration(clock() - start)}", file=out)
                return obj
            if st == "Failed":
                self._report_failure(kind, name, obj, out, log_tail)
            now = clock()
            if now - start > timeout:
                raise JobError(f"{what}: still running after {human_duration(timeout)}; see `invoke logs`")
            snap = self.snapshot(kind, name, obj)
            for line in tracker.update(snap, now, obj):
                print(f"deploy: {what}: {line}", file=out)
            tracker.check(snap, now, lambda: self.last_event(kind, name))
            if now >= next_line or snap.line != last_line:
                print(f"deploy: {what}: {snap.line}, {human_duration(now - start)} elapsed", file=out)
                last_line, next_line = snap.line, now + progress_every
            until = min(next_line, tracker.next_deadline(now), start + timeout + 1)
            window = max(1.0, until - now)
            try:
                obj, rv = self._watch(kind, name, obj, rv, window)
            except ApiError as exc:
                if exc.status != 410:
                    raise
                obj, rv = self._get_listed(kind, name)  # our resourceVersion was compacted away: re-list

    def snapshot(self, kind: str, name: str, obj: dict) -> progress.Snapshot:
        """What the workload's pods are doing now (k8s/progress.py)."""
        phases: dict[str, str | None] = {}

        def claim_phase(claim: str) -> str | None:
            if claim not in phases:
                pvc = self.get("PersistentVolumeClaim", claim)
                phase = ((pvc or {}).get("status") or {}).get("phase", "Pending") if pvc else "absent"
                if phase == "Pending" and (event := self.last_event("PersistentVolumeClaim", claim)):
                    phase += f" ({event})"  # the provisioner says why: no such StorageClass, no capacity
                phases[claim] = phase
            return phases[claim]

        if kind == "TrainJob":  # restarts are counted on the JobSet the Trainer made (best effort)
            try:
                child = self.get("JobSet", name)
            except JobError:
                child = None
            if child is not None and (restarts := (child.get("status") or {}).get("restarts")):
                obj = {**obj, "status": {**(obj.get("status") or {}), "restarts": restarts}}
        return progress.snapshot(kind, obj, self.pods_of(kind, name, owner=obj), claim_phase)

    def wait_job(
        self,
        name: str,
        timeout: float,
        poll: float = 5.0,
        out: TextIO | None = None,
        log_tail: int = 40,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> dict:
        """Wait for Job `name` (kept for callers from before `wait`; `poll` and `sleep` are unused:
        the watch is told of each change)."""
        return self.wait("Job", name, timeout, out=out, log_tail=log_tail, clock=clock)

    def _get_listed(self, kind: str, name: str) -> tuple[dict | None, str]:
        """The object and the list's resourceVersion, the point a watch starts from."""
        listed = self._list(kind, field_selector=f"metadata.name={name}")
        items = listed["items"]
        return (items[0] if items else None), (listed.get("metadata") or {}).get("resourceVersion", "")

    def _watch(self, kind: str, name: str, obj: dict, rv: str, seconds: float) -> tuple[dict | None, str]:
        """Follow changes for up to `seconds`; return at the first terminal state or deletion."""
        what = f"watch {kind}/{name}"

        def list_fn(
            *, watch=True, resource_version=None, timeout_seconds=None, _preload_content=False, **_ignored
        ):
            query = [
                ("watch", "true"),
                ("fieldSelector", f"metadata.name={name}"),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", str(timeout_seconds)),
            ]
            query += [("resourceVersion", resource_version)] if resource_version else []
            return self._call(
                "GET", self._path(kind), what, query=query, timeout=(self.timeout, timeout_seconds + 30)
            )

        w = k8s_watch.Watch(return_type="object")  # "object": events stay dicts
        try:
            for event in w.stream(list_fn, resource_version=rv, timeout_seconds=max(1, int(seconds))):
                if event["type"] == "DELETED":
                    return None, rv
                if event["type"] in ("ADDED", "MODIFIED"):
                    before = obj.get("status")
                    obj = event["raw_object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    # its end, or any change of its status (a restart, a node failed): the caller looks
                    if state(kind, obj) in ("Complete", "Failed") or obj.get("status") != before:
                        w.stop()
                        break
        except ApiException as exc:  # an ERROR event in the stream (410 Gone when compacted)
            raise ApiError(f"{what}: Kubernetes API answered {exc.status} {exc.reason}", exc.status) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise JobError(f"Kubernetes API {self.creds.server}: unreachable ({_unreachable(exc)})") from exc
        return obj, w.resource_version or rv

    def _report_failure(self, kind: str, name: str, obj: dict, out: TextIO, log_tail: int):
        reason = failed_reason(obj)
        pods = self.pods_of(kind, name, owner=obj)
        failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
        if kind == "TrainJob":  # the trainer step's pods say why, not the initializers'
            failed = [
                p for p in failed if _label(p, "trainer.kubeflow.org/trainjob-ancestor-step") == "trainer"
            ] or failed
        pod = (failed or pods or [None])[0 if failed else -1]
        if pod is not None:
            pod_name = pod["metadata"]["name"]
            if (ended := progress.terminated(pod)) is not None:
                print(f"deploy: {kind}/{name}: pod {pod_name} ended: {ended}", file=out)
            log = self.try_log(pod_name, log_tail, out)
            if log is not None:
                print(
                    f"deploy: {kind}/{name} failed ({reason}); last {log_tail} log lines of pod {pod_name}:",
                    file=out,
                )
                for line in log.rstrip("\n").splitlines():
                    print(f"  | {line}", file=out)
        raise JobError(f"{kind}/{name} failed: {reason}")


def _label(obj: dict, key: str) -> str | None:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(key)


def _true_conditions(obj: dict) -> dict[str, dict]:
    return {
        c.get("type"): c
        for c in (obj.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }


def _child_jobs(kind: str, status: dict) -> list[dict]:
    return status.get("replicatedJobsStatus" if kind == "JobSet" else "jobsStatus") or []


def state(kind: str, obj: dict) -> str:
    """Pending | Running | Complete | Failed, from the conditions each controller sets."""
    status = obj.get("status") or {}
    if kind == "Pod":
        return {"Succeeded": "Complete", "Failed": "Failed", "Running": "Running"}.get(
            status.get("phase"), "Pending"
        )
    done, failed = TERMINAL.get(kind, ("Complete", "Failed"))
    conds = _true_conditions(obj)
    if failed in conds or status.get("terminalState") == "Failed":
        return "Failed"
    if done in conds or status.get("terminalState") == "Completed":
        return "Complete"
    if kind == "Job":
        return "Running" if status.get("active") else "Pending"
    return (
        "Running" if any(j.get("active") or j.get("ready") for j in _child_jobs(kind, status)) else "Pending"
    )


def job_state(job: dict) -> str:
    return state("Job", job)


def failed_reason(obj: dict) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            reason, message = cond.get("reason"), cond.get("message")
            return f"{reason} ({message})" if reason and message else reason or message or "Failed"
    return "Failed"
