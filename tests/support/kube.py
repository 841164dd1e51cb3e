"""Local stand-ins for the two APIs deploy talks to. No Kubernetes API server (it needs etcd and a
container runtime) or Determined master can run here, so these speak the subset k8s/cluster.py and
k8s/determined_api.py use, on 127.0.0.1, and record what they received so tests can assert on it.

FakeKube speaks HTTPS only (a throwaway CA from `make_pki`, which only the test's kubeconfig names),
authenticates bearer tokens (`tokens`), and serves the routes the official `kubernetes` client
calls: GET /version; under /api/v1/namespaces/NS/ and /apis/GROUP/VERSION/namespaces/NS/ the core
kinds (persistentvolumeclaims, configmaps, secrets, pods, services), batch/v1 jobs and every
namespaced custom resource of the CRDs deploy renders for (JobSet jobset.x-k8s.io/v1alpha2, TrainJob
and TrainingRuntime trainer.kubeflow.org/v1alpha1), with group, version and plural read from the
vendored CRD files in k8s/crds/ (held equal to the upstream manifests) rather than from the client's table. Per route: server-side apply (PATCH
`application/apply-patch+yaml` with a fieldManager; the body's apiVersion/kind/name must match the
URL; resourceVersion moves only when something changes; a field another manager owns, listed in
`conflicts[(kind, name)] = {".data.key": "manager"}`, is a 409 Conflict Status naming field and
manager unless force=true, which takes it over; a Job's pod template is immutable), GET, DELETE
(cascading to the pods), list with labelSelector (k=v, k!=v, k) and fieldSelector
(metadata.name/namespace), `watch=true` as newline-delimited JSON events (ADDED/MODIFIED/DELETED,
BOOKMARK-free) from a resourceVersion for timeoutSeconds, with `expire_watches` answering the next
watches with 410 Gone as after an etcd compaction; pod logs with tailLines, and follow=true
streaming lines as they are appended to `logs[pod]` until the pod has ended. Objects are not kept
apart by namespace. Errors are Status objects with the server's message, as the API server sends them.
Before these handlers runs the front in tests/support/kube_scope.py: RBAC (403s and
SelfSubjectAccessReviews from one rule table, tests/support/kube_rbac.py), namespaces that must exist,
cluster-scoped StorageClasses and ClusterTrainingRuntimes, and API discovery of the installed CRDs.
Trainer's real `torch-distributed` runtime is installed unless `trainer_runtimes=False`.
Every apply passes admission first (tests/support/kube_admission.py: Kubeflow Trainer v2.3's TrainJob
and TrainingRuntime webhooks, the API server's Job resource rules), a no-op apply included; `dryRun=All`
validates and admits as a real apply does but stores nothing, moves no resourceVersion and records no
write. GET /version reports `git_version`.

Workloads run by script: a Job gets one pod (`job-name` label); a JobSet gets, per replicated job,
`replicas` child Jobs of `parallelism` indexed pods; a TrainJob runs as a JobSet of its own name with
the runtime's one replicated job `node` of `spec.trainer.numNodes` pods. Pods carry the labels the
real controllers set (`job-name`, `batch.kubernetes.io/job-name`, `batch.kubernetes.io/job-completion-index`,
`jobset.sigs.k8s.io/jobset-name`, `jobset.sigs.k8s.io/replicatedjob-name`, `jobset.sigs.k8s.io/job-index`,
`trainer.kubeflow.org/trainjob-ancestor-step: trainer` on TrainJob nodes) plus the pod template's
labels (for a TrainJob, those of its runtimePatches for `node`). Each read of the object (GET, a
list that returns it, one tick of a watch on it) is one step; after `job_polls` steps it ends with
the outcome scripted per `app.kubernetes.io/component` label in `outcomes` (default Complete), with
the conditions each controller sets: Job Complete/Failed (BackoffLimitExceeded), JobSet
Completed/Failed (+ terminalState), TrainJob Complete/Failed; a failure fails pod index 0.

FakeDetermined (HTTP, or HTTPS given a Pki): GET /api/v1/master, POST /api/v1/auth/login (checks the SDK's salted
password hash), POST /api/v1/experiments (checks the config YAML and the v1File context), GET an
experiment and its checkpoints."""

from __future__ import annotations

import base64
import datetime
import functools
import itertools
import json
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

from k8s.determined_api import salt_and_hash
from tests.support import kube_admission
from tests.support.kube_scope import ClusterScope

# The CRDs deploy renders for, as vendored in k8s/crds/ from the upstream manifests (tests/deploy/
# test_engines.py holds them equal to the copies in ../shared/schemas where those are present).
CRD_DIR = Path(__file__).resolve().parents[2] / "k8s" / "crds"
# (group, version, plural) -> kind: what a Kubernetes 1.30 API server serves for the core kinds.
CORE_ROUTES = {
    ("", "v1", "persistentvolumeclaims"): "PersistentVolumeClaim",
    ("", "v1", "configmaps"): "ConfigMap",
    ("", "v1", "secrets"): "Secret",
    ("", "v1", "pods"): "Pod",
    ("", "v1", "services"): "Service",
    ("batch", "v1", "jobs"): "Job",
    ("", "v1", "events"): "Event",
}
WORKLOADS = ("Job", "JobSet", "TrainJob")
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
COMPONENT = "app.kubernetes.io/component"


@functools.cache
def crd_routes(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str, str], str]:
    """The namespaced custom resources the CRD files define: (group, version, plural) -> kind."""
    routes = {}
    for f in sorted(crd_dir.glob("*.json")):
        crd = json.loads(f.read_text())
        if crd["scope"] == "Namespaced":
            routes[(crd["group"], crd["version"], crd["plural"])] = crd["kind"]
    return routes


@dataclass
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(directory: Path, name: str = "neox-test") -> Pki:
    """A throwaway CA and a server certificate it signed for 127.0.0.1/localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pki


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path | None,
    token: str | None = None,
    user: dict | None = None,
    context: str = "stand-in",
    namespace: str = "tenant-finetune",
) -> Path:
    """A kubeconfig as kubectl writes it: one cluster (CA by path), one user, one context."""
    cluster = {"server": server, **({"certificate-authority": str(ca)} if ca else {})}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": context,
                "preferences": {},
                "clusters": [{"name": "stand-in", "cluster": cluster}],
                "users": [{"name": "tester", "user": user if user is not None else {"token": token}}],
                "contexts": [
                    {
                        "name": context,
                        "context": {"cluster": "stand-in", "user": "tester", "namespace": namespace},
                    }
                ],
            },
            sort_keys=False,
        )
    )
    return path


class Stream:
    """A streamed answer (chunked): the handler writes each piece as the generator yields it."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self.pieces = pieces


class _Server:
    def __init__(self, tls: Pki | None = None) -> None:
        handler = self._handler_class(tls is not None)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
            # The handshake runs in the connection's thread, so a client that refuses us blocks no one.
            self.httpd.socket = ctx.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.httpd.handle_error = lambda request, address: (
            None
        )  # clients hanging up, refusing our certificate
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, bytes]] = []  # (method, path, body)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _handler_class(self, tls: bool):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams for watches and followed logs
            timeout = 120

            def log_message(self, *args):
                pass

            def setup(self):
                if tls:
                    self.request.settimeout(30)
                    self.request.do_handshake()
                super().setup()

            def _dispatch(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server.lock:
                    server.requests.append((method, self.path, body))
                    status, payload, ctype = server.handle(method, urlparse(self.path), self.headers, body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                if isinstance(payload, Stream):
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for piece in payload.pieces:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                            self.wfile.flush()
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:  # the client stopped watching
                        self.close_connection = True
                    return
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_PATCH(self):
                self._dispatch("PATCH")

            def do_DELETE(self):
                self._dispatch("DELETE")

        return Handler

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, method, url, headers, body):
        raise NotImplementedError


def _status(code: int, message: str, reason: str = "", details: dict | None = None):
    reasons = {
        400: "BadRequest",
        401: "Unauthorized",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        410: "Expired",
        415: "UnsupportedMediaType",
        422: "Invalid",
    }
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or reasons.get(code, ""),
        "code": code,
    }
    if details:
        body["details"] = details
    return code, body, "application/json"


def _matches(labels: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(k) != v:
                return False
        elif term not in labels:
            return False
    return True


_MISSING = object()


def _at(obj, path: str):
    """The value at a managed-fields style path (.data.key), or _MISSING."""
    for part in filter(None, path.split(".")):
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def _set(obj: dict, path: str, value) -> None:
    *parents, last = [p for p in path.split(".") if p]
    for part in parents:
        obj = obj.setdefault(part, {})
    obj[last] = value


class FakeKube(ClusterScope, _Server):
    status = staticmethod(_status)  # how the front (kube_scope, kube_rbac) answers an error

    def __init__(
        self,
        token: str = "test-token",
        job_polls: int = 1,
        tls: Pki | None = None,
        tick: float = 0.02,
        trainer_runtimes: bool = True,
    ) -> None:
        super().__init__(tls)
        self.token = token
        self.tokens = {token}  # bearer tokens it accepts
        self.ca_file = tls.ca_file if tls else None
        self.job_polls = job_polls
        self.tick = tick  # seconds between the steps a watch or a followed log takes
        self.routes = {**CORE_ROUTES, **crd_routes()}
        self.objects: dict[tuple[str, str], dict] = {}  # (kind, name) -> live object
        self.applied: dict[tuple[str, str], dict] = {}  # what the field manager last applied
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name) for every change made
        self.outcomes: dict[str, tuple[str, str]] = {}  # component -> ("Complete"|"Failed", pod log)
        self.logs: dict[str, str] = {}
        self.conflicts: dict[tuple[str, str], dict[str, str]] = {}  # (kind, name) -> {field: other manager}
        self.expire_watches = 0  # answer this many watches from a resourceVersion with 410 Gone
        self.git_version = "v1.30.4"  # what GET /version reports
        self._rv = itertools.count(100)
        self._last_rv = 99
        self._born: dict[tuple[str, str], int] = {}
        self._polls: dict[tuple[str, str], int] = {}
        self.init_cluster_scope(set(crd_routes().values()))  # namespaces, RBAC, CRDs installed
        if trainer_runtimes:  # Kubeflow Trainer installed: its default torch runtime, as shipped
            self.put_cluster_object(kube_admission.torch_distributed())
        else:
            self.remove_cluster_object("ClusterTrainingRuntime", "torch-distributed")
        self._init_bad_day()

    # -- helpers tests use
    def edit(self, kind: str, name: str, path: str, value, manager: str = "kubectl-edit") -> None:
        """Another client changes a field (kubectl edit): it now owns it, and the object moves on."""
        with self.lock:
            _set(self.objects[(kind, name)], path, value)
            self.conflicts.setdefault((kind, name), {})[path] = manager
            self._bump(self.objects[(kind, name)])

    def admission_view(self) -> dict[tuple[str, str], dict]:
        """What the webhooks look objects up in: namespaced and cluster-scoped (a TrainJob's runtime is either)."""
        return {**self.objects, **self.cluster_objects}

    def secret_values(self) -> list[str]:
        return [
            base64.b64decode(v).decode()
            for (k, _), o in self.objects.items()
            if k == "Secret"
            for v in o.get("data", {}).values()
        ]

    def pods(self, selector: str = "") -> list[dict]:
        return [
            o
            for (k, _), o in self.objects.items()
            if k == "Pod" and _matches(o["metadata"]["labels"], selector)
        ]

    # -- routing
    def _bump(self, obj: dict) -> None:
        self._last_rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(self._last_rv)

    def handle(self, method, url, headers, body):
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:  # auth schemes are case-insensitive
            return _status(401, "Unauthorized")
        self._expire_ttls()
        if url.path == "/version":
            major, minor = self.git_version.lstrip("v").split(".")[:2]
            return 200, {"major": major, "minor": minor, "gitVersion": self.git_version}, "application/json"
        if (answer := self.front(method, url, body)) is not None:  # RBAC, namespaces, cluster scope
            return answer
        parts = url.path.strip("/").split("/")
        # api/v1/namespaces/NS/PLURAL[/NAME[/SUB]] or apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME[/SUB]]
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return _status(404, f"the server could not find the requested resource ({url.path})")
        kind = (
            self.routes.get((group, version, rest[2])) if len(rest) >= 3 and rest[0] == "namespaces" else None
        )
        if kind is None:
            return _status(404, f"the server could not find the requested resource ({url.path})")
        name = rest[3] if len(rest) > 3 else None
        sub = rest[4] if len(rest) > 4 else None
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        api_version = f"{group}/{version}" if group else version
        if name is None and method == "GET":
            return self._list(kind, api_version, query)
        if sub == "log" and kind == "Pod" and method == "GET":
            return self._log(name, query)
        if sub is not None:
            return _status(404, f"the server could not find the requested resource ({url.path})")
        plural = rest[2]
        if method == "GET":
            obj = self._read(kind, name)
            return (200, obj, "application/json") if obj else _status(404, f'{plural} "{name}" not found')
        if method == "DELETE":
            return self._delete(kind, name, plural)
        if method == "PATCH":
            return self._apply(kind, name, api_version, plural, query, headers, body)
        return _status(405, f"method {method} not allowed")

    def _read(self, kind, name):
        """One read of an object: a running workload takes a step."""
        obj = self.objects.get((kind, name))
        if obj is not None and kind in WORKLOADS:
            self._advance(kind, name)
        return obj

    def _selected(self, kind, query) -> list[dict]:
        fields = {}
        for term in filter(None, query.get("fieldSelector", "").split(",")):
            k, _, v = term.partition("=")
            if k not in ("metadata.name", "metadata.namespace") and not (
                kind == "Event" and k in ("involvedObject.name", "involvedObject.kind")
            ):
                raise ValueError(
                    f'"{k}" is not a known field selector: only "metadata.name", "metadata.namespace"'
                )
            fields[k] = v
        out = []
        for (k, n), o in list(self.objects.items()):
            if k != kind or fields.get("metadata.name", n) != n:
                continue
            if kind == "Event" and any(
                o["involvedObject"].get(f.split(".", 1)[1]) != v
                for f, v in fields.items()
                if f.startswith("involvedObject.")
            ):
                continue
            if _matches(o["metadata"].get("labels") or {}, query.get("labelSelector", "")):
                out.append(self._read(k, n))
        return out

    def _list(self, kind, api_version, query):
        try:
            items = self._selected(kind, query)
        except ValueError as exc:
            return _status(400, f"field label not supported: {exc}")
        if query.get("watch") in ("true", "1"):
            return 200, Stream(self._watch(kind, query)), "application/json"
        return (
            200,
            {
                "kind": f"{kind}List",
                "apiVersion": api_version,
                "items": items,
                "metadata": {"resourceVersion": str(self._last_rv)},
            },
            "application/json",
        )

    def _watch(self, kind, query):
        """Events after `resourceVersion`, one step of every watched workload per tick."""
        since = int(query.get("resourceVersion") or 0)
        if since and self.expire_watches > 0:
            self.expire_watches -= 1
            gone = _status(410, f"too old resource version: {since} ({self._last_rv})")[1]
            yield json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"
            return
        deadline = time.monotonic() + int(query.get("timeoutSeconds") or 1800)
        sent: dict[str, dict] = {}
        while time.monotonic() < deadline:
            events = []
            with self.lock:
                current = {o["metadata"]["name"]: o for o in self._selected(kind, query)}
                for n, o in current.items():
                    rv = int(o["metadata"]["resourceVersion"])
                    if rv > int(sent.get(n, {}).get("metadata", {}).get("resourceVersion", since)):
                        kind_of = "ADDED" if n not in sent and self._born[(kind, n)] > since else "MODIFIED"
                        events.append({"type": kind_of, "object": json.loads(json.dumps(o))})
                        sent[n] = events[-1]["object"]
                for n in [n for n in sent if n not in current]:
                    events.append({"type": "DELETED", "object": sent.pop(n)})
            for e in events:
                yield json.dumps(e).encode() + b"\n"
            if current and kind in WORKLOADS and all(self._finished(kind, o) for o in current.values()):
                return  # nothing more will happen to them; a server may end a watch at any time
            time.sleep(self.tick)

    def _log(self, pod, query):
        if ("Pod", pod) not in self.objects:
            return _status(404, f'pods "{pod}" not found')
        if (failure := self._log_failure(pod)) is not None:
            return failure
        lines = self.logs.get(pod, "").splitlines(keepends=True)
        start = max(0, len(lines) - int(query["tailLines"])) if "tailLines" in query else 0
        if query.get("follow") not in ("true", "1"):
            return 200, "".join(lines[start:]).encode(), "text/plain"
        return 200, Stream(self._follow(pod, start)), "text/plain"

    def _follow(self, pod, sent):
        while True:
            with self.lock:
                lines = self.logs.get(pod, "").splitlines(keepends=True)
                obj = self.objects.get(("Pod", pod))
                ended = obj is None or obj["status"].get("phase") in ("Succeeded", "Failed")
            if len(lines) > sent:
                yield "".join(lines[sent:]).encode()
                sent = len(lines)
            elif ended:
                return
            else:
                time.sleep(self.tick)

    def _delete(self, kind, name, plural):
        if self.objects.pop((kind, name), None) is None:
            return _status(404, f'{plural} "{name}" not found')
        self.applied.pop((kind, name), None)
        self.writes.append(("delete", kind, name))
        self._last_rv = next(self._rv)
        owner_label = {"Job": "job-name", "JobSet": JOBSET_NAME, "TrainJob": JOBSET_NAME}.get(kind)
        if owner_label:  # background propagation: the controllers' pods go too
            for key in [
                k
                for k, o in self.objects.items()
                if k[0] == "Pod" and o["metadata"]["labels"].get(owner_label) == name
            ]:
                del self.objects[key]
        return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, "application/json"

    def _apply(self, kind, name, api_version, plural, query, headers, body):
        if headers.get("Content-Type") != "application/apply-patch+yaml":
            return _status(
                415,
                f"the body of the request was in an unknown format ({headers.get('Content-Type')}); "
                "apply needs application/apply-patch+yaml",
            )
        if not query.get("fieldManager"):
            return _status(
                400,
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                "is required for apply patch",
            )
        obj = yaml.safe_load(body)
        if obj.get("apiVersion") != api_version:
            return _status(
                400,
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({api_version})",
            )
        if obj.get("kind") != kind or obj.get("metadata", {}).get("name") != name:
            return _status(400, "the name of the object (or its kind) does not match the URL")
        key = (kind, name)
        live_before = self.objects.get(key)
        force = query.get("force") == "true"
        clashes = [
            (f, m)
            for f, m in (self.conflicts.get(key) or {}).items()
            if m != query["fieldManager"]
            and _at(obj, f) is not _MISSING
            and live_before is not None
            and _at(obj, f) != _at(live_before, f)
        ]
        if clashes and not force:
            causes = [
                {
                    "type": "FieldManagerConflict",
                    "message": f'conflict with "{m}" using {api_version}',
                    "field": f,
                }
                for f, m in clashes
            ]
            msg = f"Apply failed with {len(clashes)} conflict{'s' if len(clashes) > 1 else ''}: " + "; ".join(
                f"{c['message']}: {c['field']}" for c in causes
            )
            return _status(
                409,
                msg,
                "Conflict",
                {"name": name, "group": api_version.rpartition("/")[0], "kind": plural, "causes": causes},
            )
        dry_run = query.get("dryRun")
        if dry_run not in (None, "All"):
            return _status(400, f'dryRun: Unsupported value: "{dry_run}": supported values: "All"')
        prev = self.applied.get(key)
        if prev is not None and kind == "Job" and prev["spec"]["template"] != obj["spec"]["template"]:
            return _status(
                422, f'Job.batch "{name}" is invalid: spec.template: Invalid value: field is immutable'
            )
        # Admission (webhooks, the API server's own pod rules) sees every create and update, a no-op
        # apply and a dry run included.
        if (denial := kube_admission.review(self.admission_view(), kind, obj, live_before)) is not None:
            return _status(denial.code, denial.message, denial.reason)
        if dry_run:  # validated and admitted; nothing stored, no resourceVersion moves, no write
            return self._dry_run_answer(obj, live_before, api_version, query)
        for f, _ in clashes:  # forced: the fields are ours now
            del self.conflicts[key][f]
        if prev == obj and not clashes:  # same intent from the same manager: nothing changes
            return 200, live_before, "application/json"
        live = json.loads(json.dumps(obj))
        meta = live["metadata"]
        self._bump(live)
        meta["uid"] = (live_before or {}).get("metadata", {}).get("uid") or f"uid-{meta['resourceVersion']}"
        meta["creationTimestamp"] = (
            (live_before or {}).get("metadata", {}).get("creationTimestamp")
            or f"2026-11-28T00:{int(meta['resourceVersion']) // 60 % 60:02d}:{int(meta['resourceVersion']) % 60:02d}Z"
        )
        meta["managedFields"] = [
            {
                "manager": query["fieldManager"],
                "operation": "Apply",
                "apiVersion": api_version,
                "fieldsType": "FieldsV1",
            }
        ]
        meta["managedFields"] += [
            {"manager": m, "operation": "Update", "apiVersion": api_version, "fieldsType": "FieldsV1"}
            for m in sorted(set((self.conflicts.get(key) or {}).values()))
        ]
        if live_before is not None and "status" in live_before:  # status belongs to the controllers
            live["status"] = live_before["status"]
        elif kind == "PersistentVolumeClaim":
            live["status"] = {"phase": self.pvc_phase}
        self.writes.append(("create" if live_before is None else "update", kind, name))
        self.objects[key] = live
        self.applied[key] = obj
        if live_before is None:
            self._born[key] = int(meta["resourceVersion"])
            if kind in WORKLOADS:
                self._start(kind, live)
        return (201 if live_before is None else 200), live, "application/json"

    @staticmethod
    def _dry_run_answer(obj, live_before, api_version, query):
        """What a dry-run apply answers: the object as it would be, the live one's resourceVersion."""
        live = json.loads(json.dumps(obj))
        before = (live_before or {}).get("metadata", {})
        for k in ("uid", "creationTimestamp", "resourceVersion"):
            if k in before:
                live["metadata"][k] = before[k]
        live["metadata"]["managedFields"] = [
            {"manager": query["fieldManager"], "operation": "Apply", "apiVersion": api_version}
        ]
        if live_before is not None and "status" in live_before:
            live["status"] = live_before["status"]
        return (201 if live_before is None else 200), live, "application/json"

    # -- the controllers
    def _pod(self, owner: dict, name: str, labels: dict, annotations: dict | None = None) -> None:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "status": {"phase": "Running"},
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": annotations or {},
                "creationTimestamp": owner["metadata"]["creationTimestamp"],
                "resourceVersion": str(next(self._rv)),
            },
        }
        self.objects[("Pod", name)] = pod
        self._born[("Pod", name)] = int(pod["metadata"]["resourceVersion"])
        self._pod_bad_day(owner, pod)

    def _groups(self, kind: str, obj: dict) -> list[tuple[str, int, int, dict]]:
        """(replicated job, replicas, pods per child Job, pod template labels) of a JobSet/TrainJob."""
        spec = obj.get("spec") or {}
        if kind == "JobSet":
            return [
                (
                    rj["name"],
                    rj.get("replicas", 1),
                    rj["template"]["spec"].get("parallelism", 1),
                    ((rj["template"]["spec"].get("template") or {}).get("metadata") or {}).get("labels")
                    or {},
                )
                for rj in spec.get("replicatedJobs") or []
            ]
        labels = {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
        for patch in spec.get("runtimePatches") or []:
            for rj in (
                ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
            ).get("replicatedJobs") or []:
                if rj.get("name") == "node":
                    tmpl = ((rj.get("template") or {}).get("spec") or {}).get("template") or {}
                    labels = {**((tmpl.get("metadata") or {}).get("labels") or {}), **labels}
        return [("node", 1, (spec.get("trainer") or {}).get("numNodes") or 1, labels)]

    def _start(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        self._polls[(kind, name)] = 0
        if kind in self.no_controller:  # the CRD is served, but nothing acts on the object
            return
        if kind == "Job" and self._component(obj) in self.pod_create_errors:  # a quota, a webhook on pods
            self.event("Job", name, "FailedCreate", self.pod_create_errors[self._component(obj)])
            return
        if kind == "Job":
            labels = {
                **((obj["spec"]["template"].get("metadata") or {}).get("labels") or {}),
                "job-name": name,
                "batch.kubernetes.io/job-name": name,
            }
            self._pod(obj, f"{name}-x1", labels)
            obj["status"] = {"active": 1}
            return
        children = []
        for rj, replicas, parallelism, tmpl_labels in self._groups(kind, obj):
            for j in range(replicas):
                child = f"{name}-{rj}-{j}"
                for i in range(parallelism):
                    labels = {
                        **tmpl_labels,
                        "job-name": child,
                        "batch.kubernetes.io/job-name": child,
                        "batch.kubernetes.io/job-completion-index": str(i),
                        JOBSET_NAME: name,
                        "jobset.sigs.k8s.io/replicatedjob-name": rj,
                        "jobset.sigs.k8s.io/job-index": str(j),
                        "jobset.sigs.k8s.io/replicatedjob-replicas": str(replicas),
                    }
                    self._pod(
                        obj,
                        f"{child}-{i}-p{j}{i}x",
                        labels,
                        {"batch.kubernetes.io/job-completion-index": str(i)},
                    )
            children.append(
                {
                    "name": rj,
                    "active": replicas,
                    "ready": replicas,
                    "succeeded": 0,
                    "failed": 0,
                    "suspended": 0,
                }
            )
        if kind == "JobSet":
            obj["status"] = {"replicatedJobsStatus": children, "restarts": 0}
        else:
            obj["status"] = {
                "jobsStatus": children,
                "conditions": [
                    {
                        "type": "Created",
                        "status": "True",
                        "reason": "JobsCreationSucceeded",
                        "message": "succeeded to create Jobs",
                    }
                ],
            }

    @staticmethod
    def _finished(kind: str, obj: dict) -> bool:
        done = {
            "Job": ("Complete", "Failed"),
            "JobSet": ("Completed", "Failed"),
            "TrainJob": ("Complete", "Failed"),
        }
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") in done[kind] and c.get("status") == "True" for c in conditions)

    def _advance(self, kind: str, name: str) -> None:
        obj = self.objects[(kind, name)]
        status = obj.setdefault("status", {})
        if self._finished(kind, obj):
            return
        key = (kind, name)
        if self._held(kind, obj):
            return
        self._polls[key] = self._polls.get(key, 0) + 1
        if self._polls[key] < self.job_polls:
            return
        component = (obj["metadata"].get("labels") or {}).get(COMPONENT, "")
        outcome, log = self.outcomes.get(component, ("Complete", f"{component}: done\n"))
        owner_label = "job-name" if kind == "Job" else JOBSET_NAME
        pods = sorted(
            (
                o
                for (k, _), o in self.objects.items()
                if k == "Pod" and o["metadata"]["labels"].get(owner_label) == name
            ),
            key=lambda p: (
                p["metadata"]["labels"].get("jobset.sigs.k8s.io/job-index", ""),
                int(p["metadata"]["labels"].get("batch.kubernetes.io/job-completion-index", 0)),
            ),
        )
        for i, pod in enumerate(pods):
            failed = outcome == "Failed" and i == 0
            self.logs[pod["metadata"]["name"]] = (
                log if failed or outcome == "Complete" else f"{component}: stopped\n"
            )
            pod["status"]["phase"] = "Failed" if failed else "Succeeded"
            self._terminated(pod, component, failed)
            self._bump(pod)
        ok = outcome == "Complete"
        self._finished_at[key] = self.clock
        if kind == "Job":
            obj["status"] = (
                {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
                if ok
                else {
                    "failed": 1,
                    "conditions": [
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit",
                        }
                    ],
                }
            )
        else:
            cond = (
                {
                    "type": "Completed" if kind == "JobSet" else "Complete",
                    "status": "True",
                    "reason": "AllJobsCompleted",
                    "message": "jobset completed successfully",
                }
                if ok
                else {
                    "type": "Failed",
                    "status": "True",
                    "reason": "FailedJobs",
                    "message": "jobset failed due to one or more job failures",
                }
            )
            jobs = status.get("replicatedJobsStatus" if kind == "JobSet" else "jobsStatus") or []
            for j in jobs:
                j.update(
                    active=0, ready=0, succeeded=j["succeeded"] + (0 if not ok else 1), failed=0 if ok else 1
                )
            status["conditions"] = [*(status.get("conditions") or []), cond]
            if kind == "JobSet":
                status["terminalState"] = "Completed" if ok else "Failed"
        self._bump(obj)

    # -- a bad day: what real clusters do that the happy path never shows. Each is scripted per
    # `app.kubernetes.io/component` (the stage) and off by default.
    def _init_bad_day(self) -> None:
        # component -> the scheduler's message: its pods stay Pending with PodScheduled=False
        self.unschedulable: dict[str, str] = {}
        # component -> (reason, message) of the container's waiting state (ErrImagePull, ImagePullBackOff)
        self.image_errors: dict[str, tuple[str, str]] = {}
        # component (or "*") -> the status pods/log answers with (500: the kubelet cannot serve it,
        # 403: the user may not read pods/log)
        self.log_failures: dict[str, int] = {}
        # component -> the container's termination message (what it wrote to /dev/termination-log)
        self.termination_messages: dict[str, str] = {}
        # component -> [(node index, reason, exit code), ...]: the JobSet's failure policy restarts every
        # node after each, status.restarts going up, before the scripted outcome
        self.restart_plan: dict[str, list[tuple[int, str, int]]] = {}
        self.restart_linger = 25  # steps a failed attempt's pods stay visible before they are recreated
        # the phase new PVCs get: "Pending" is a StorageClass that provisions nothing; pods using it
        # stay Pending with the scheduler's message about unbound claims
        self.pvc_phase = "Bound"
        # component -> why its Job's pods cannot be created (a ResourceQuota, a pod admission webhook):
        # the Job gets no status or pods, only a FailedCreate event
        self.pod_create_errors: dict[str, str] = {}
        # kinds whose CRD is served but no controller runs: objects never get a status or pods
        self.no_controller: set[str] = set()
        # the stand-in's clock (seconds) for Job TTLs; `advance_clock` moves it
        self.clock = 0.0
        self._finished_at: dict[tuple[str, str], float] = {}
        self._attempt: dict[tuple[str, str], dict] = {}

    def event(self, kind: str, name: str, reason: str, message: str, type_: str = "Warning") -> None:
        """An Event about kind/name, as a controller records it (kubectl describe shows these)."""
        with self.lock:
            rv = next(self._rv)
            ev = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{name}.{rv:x}", "resourceVersion": str(rv), "labels": {}},
                "involvedObject": {"kind": kind, "name": name},
                "reason": reason,
                "message": message,
                "type": type_,
                "count": 1,
            }
            self.objects[("Event", ev["metadata"]["name"])] = ev
            self._born[("Event", ev["metadata"]["name"])] = rv

    def advance_clock(self, seconds: float) -> None:
        """Time passes: finished Jobs whose ttlSecondsAfterFinished ran out are deleted (the TTL controller)."""
        with self.lock:
            self.clock += seconds
            self._expire_ttls()

    def _expire_ttls(self) -> None:
        for (kind, name), at in list(self._finished_at.items()):
            obj = self.objects.get((kind, name))
            if obj is None:
                del self._finished_at[(kind, name)]
                continue
            ttl = (obj.get("spec") or {}).get("ttlSecondsAfterFinished")
            if kind == "Job" and ttl is not None and self.clock >= at + ttl:
                del self._finished_at[(kind, name)]
                self._delete(kind, name, "jobs")

    def _component(self, obj: dict) -> str:
        return (obj["metadata"].get("labels") or {}).get(COMPONENT, "")

    def _pod_bad_day(self, owner: dict, pod: dict) -> None:
        """A new pod as the kubelet and scheduler leave it: owned by its Job, carrying its template's
        volumes, Pending with the scheduler's reason or an image pull error when scripted."""
        component = self._component(pod)
        if owner.get("kind") == "Job":
            pod["metadata"]["ownerReferences"] = [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"].get("uid", ""),
                    "controller": True,
                }
            ]
            tmpl = (owner["spec"].get("template") or {}).get("spec") or {}
            pod["spec"] = {"volumes": tmpl.get("volumes") or [], "containers": tmpl.get("containers") or []}
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in (pod.get("spec") or {}).get("volumes") or []
            if "persistentVolumeClaim" in v
        ]
        unbound = [
            c
            for c in claims
            if (self.objects.get(("PersistentVolumeClaim", c), {}).get("status") or {}).get("phase")
            != "Bound"
        ]
        message = self.unschedulable.get(component)
        if unbound and message is None:  # what the scheduler says of a claim not bound (or absent)
            message = (
                "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
                "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
            )
        if message is not None:
            pod["status"] = {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message,
                    }
                ],
            }
        elif component in self.image_errors:
            reason, message = self.image_errors[component]
            pod["status"] = {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": "main",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": reason, "message": message}},
                    }
                ],
            }

    def _held(self, kind: str, obj: dict) -> bool:
        """True while something keeps the workload from going on this step: a Pending pod, or a
        scripted JobSet restart in progress."""
        name = obj["metadata"]["name"]
        owner_label = "job-name" if kind == "Job" else JOBSET_NAME
        pods = [
            o
            for (k, _), o in self.objects.items()
            if k == "Pod" and o["metadata"]["labels"].get(owner_label) == name
        ]
        if any(p["status"].get("phase") == "Pending" for p in pods):
            return True
        if kind in self.no_controller or (kind == "Job" and self._component(obj) in self.pod_create_errors):
            return True
        if kind == "JobSet" and self.restart_plan.get(self._component(obj)):
            self._restart_step(obj, pods)
            return True
        return False

    def _restart_step(self, obj: dict, pods: list[dict]) -> None:
        """One step of a scripted restart: node i fails (its pod Failed with a reason, the child Job's
        failed count up), stays visible for `restart_linger` steps, then every pod is recreated and
        status.restarts goes up, as the JobSet controller's Recreate strategy does."""
        key = ("JobSet", obj["metadata"]["name"])
        plan = self.restart_plan[self._component(obj)]
        attempt = self._attempt.setdefault(key, {"steps": 0})
        attempt["steps"] += 1
        node, reason, code = plan[0]
        jobs = obj["status"].get("replicatedJobsStatus") or []
        if attempt["steps"] == 1:
            for pod in pods:
                if pod["metadata"]["labels"].get("batch.kubernetes.io/job-completion-index") == str(node):
                    pod["status"] = {
                        "phase": "Failed",
                        "containerStatuses": [
                            {
                                "name": "node",
                                "ready": False,
                                "restartCount": 0,
                                "state": {"terminated": {"exitCode": code, "reason": reason}},
                            }
                        ],
                    }
                    self._bump(pod)
            for j in jobs:
                j.update(active=0, ready=0, failed=1)
            self._bump(obj)
        elif attempt["steps"] > self.restart_linger:
            plan.pop(0)
            del self._attempt[key]
            for pod in pods:
                del self.objects[("Pod", pod["metadata"]["name"])]
            obj["status"]["restarts"] = obj["status"].get("restarts", 0) + 1
            restarts = obj["status"]["restarts"]
            for pod in pods:
                fresh = json.loads(json.dumps(pod))
                fresh["metadata"]["name"] = f"{pod['metadata']['name'].rsplit('-r', 1)[0]}-r{restarts}"
                fresh["status"] = {"phase": "Running"}
                self.objects[("Pod", fresh["metadata"]["name"])] = fresh
                self._bump(fresh)
                self._born[("Pod", fresh["metadata"]["name"])] = int(fresh["metadata"]["resourceVersion"])
            for j in jobs:
                j.update(active=j.get("active", 0) or 1, ready=1, failed=0)
            self._bump(obj)

    def _terminated(self, pod: dict, component: str, failed: bool) -> None:
        """The container's terminated state, with its termination message when scripted."""
        term = {"exitCode": 1 if failed else 0, "reason": "Error" if failed else "Completed"}
        if component in self.termination_messages:
            term["message"] = self.termination_messages[component]
        pod["status"]["containerStatuses"] = [
            {"name": "main", "ready": False, "restartCount": 0, "state": {"terminated": term}}
        ]

    def _log_failure(self, pod: str):
        component = self._component(self.objects[("Pod", pod)])
        status = self.log_failures.get(component, self.log_failures.get("*"))
        if status == 403:
            return _status(
                403,
                f'pods "{pod}" is forbidden: User "tester" cannot get resource "pods/log" in API group "" '
                f'in the namespace "tenant-finetune"',
                "Forbidden",
            )
        if status is not None:
            return _status(
                status,
                f'Get "https://10.0.0.7:10250/containerLogs/tenant-finetune/{pod}/main": '
                "remote error: tls: internal error",
                "InternalError",
            )
        return None


class FakeDetermined(_Server):
    def __init__(
        self, username: str = "determined", password: str = "det-pass-123", tls: Pki | None = None
    ) -> None:
        super().__init__(tls)
        self.username = username
        self.password = password
        self.token = "det-session-token"
        self.experiments: dict[int, dict] = {}
        self.checkpoints: dict[int, list[dict]] = {}
        self._ids = itertools.count(1)

    def handle(self, method, url, headers, body):
        path = url.path
        if path == "/api/v1/master" and method == "GET":
            return 200, {"version": "0.38.1", "clusterName": "stand-in"}, "application/json"
        if path == "/api/v1/auth/login" and method == "POST":
            req = json.loads(body)
            if (
                req.get("username") != self.username
                or not req.get("isHashed")
                or req.get("password") != salt_and_hash(self.password)
            ):
                return 401, {"message": "invalid credentials"}, "application/json"
            return 200, {"token": self.token, "user": {"username": self.username}}, "application/json"
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"message": "Unauthenticated"}, "application/json"
        if path == "/api/v1/experiments" and method == "POST":
            req = json.loads(body)
            config = yaml.safe_load(req["config"])
            files = req["modelDefinition"]
            if not isinstance(config, dict) or not all(
                {"path", "type", "content", "mode"} <= set(f) for f in files
            ):
                return 400, {"message": "bad request"}, "application/json"
            exp_id = next(self._ids)
            self.experiments[exp_id] = {
                "id": exp_id,
                "state": "STATE_ACTIVE",
                "config": config,
                "files": files,
                "activate": req.get("activate"),
            }
            return (
                200,
                {"experiment": {"id": exp_id, "state": "STATE_ACTIVE"}, "config": config},
                "application/json",
            )
        parts = path.strip("/").split("/")
        if len(parts) >= 4 and parts[:3] == ["api", "v1", "experiments"] and method == "GET":
            exp = self.experiments.get(int(parts[3]))
            if exp is None:
                return 404, {"message": "not found"}, "application/json"
            if len(parts) == 5 and parts[4] == "checkpoints":
                return 200, {"checkpoints": self.checkpoints.get(exp["id"], [])}, "application/json"
            return 200, {"experiment": {"id": exp["id"], "state": exp["state"]}}, "application/json"
        return 404, {"message": f"no route {path}"}, "application/json"

    def context_files(self, exp_id: int) -> dict[str, bytes]:
        return {
            f["path"]: base64.b64decode(f["content"])
            for f in self.experiments[exp_id]["files"]
            if f["type"] == ord("0")
        }
