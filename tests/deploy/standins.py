"""Local HTTP stand-ins for the two APIs deploy talks to. No Kubernetes API server or Determined
master can run here, so these speak exactly the subset k8s/cluster.py and k8s/determined_api.py use,
on 127.0.0.1, and record what they received so tests can assert on it.

FakeKube: bearer-token auth, GET /version, server-side apply (PATCH with
`application/apply-patch+yaml` and a fieldManager; resourceVersion moves only when the applied
content changes; a Job's pod template is immutable, as in Kubernetes), GET/DELETE/list by label
selector for PVCs, ConfigMaps, Secrets, Jobs and Pods, and pod logs with tailLines. A created Job
gets one Pod and finishes after `job_polls` status reads with the outcome scripted per component.

FakeDetermined: GET /api/v1/master, POST /api/v1/auth/login (checks the SDK's salted password
hash), POST /api/v1/experiments (checks the config YAML and the v1File context), GET an experiment
and its checkpoints."""

from __future__ import annotations

import base64
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml

from k8s.determined_api import salt_and_hash

PLURALS = {"persistentvolumeclaims": "PersistentVolumeClaim", "configmaps": "ConfigMap", "secrets": "Secret",
           "jobs": "Job", "pods": "Pod"}


class _Server:
    def __init__(self) -> None:
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, bytes]] = []  # (method, path, body)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _dispatch(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server.lock:
                    server.requests.append((method, self.path, body))
                    status, payload, ctype = server.handle(method, urlparse(self.path), self.headers, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
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


def _status(code: int, message: str):
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}, \
        "application/json"


def _matches(labels: dict, selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


class FakeKube(_Server):
    def __init__(self, token: str = "test-token", job_polls: int = 1) -> None:
        super().__init__()
        self.token = token
        self.job_polls = job_polls
        self.objects: dict[tuple[str, str], dict] = {}  # (kind, name) -> live object
        self.applied: dict[tuple[str, str], dict] = {}  # what the field manager last applied
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name) for every change made
        self.outcomes: dict[str, tuple[str, str]] = {}  # component -> ("Complete"|"Failed", pod log)
        self.logs: dict[str, str] = {}
        self._rv = itertools.count(100)
        self._polls: dict[str, int] = {}

    def handle(self, method, url, headers, body):
        if headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized")
        if url.path == "/version":
            return 200, {"major": "1", "minor": "30", "gitVersion": "v1.30.4"}, "application/json"
        parts = url.path.strip("/").split("/")
        # api/v1/namespaces/NS/PLURAL[/NAME[/log]] or apis/batch/v1/namespaces/NS/PLURAL...
        if parts[0] == "apis":
            parts = parts[2:]
        else:
            parts = parts[1:]
        if len(parts) < 4 or parts[1] != "namespaces" or parts[3] not in PLURALS:
            return _status(404, f"no route {url.path}")
        kind = PLURALS[parts[3]]
        name = parts[4] if len(parts) > 4 else None
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if name is None and method == "GET":
            items = [o for (k, _), o in self.objects.items()
                     if k == kind and _matches(o["metadata"].get("labels", {}), query.get("labelSelector", ""))]
            return 200, {"kind": f"{kind}List", "items": items}, "application/json"
        if len(parts) > 5 and parts[5] == "log" and kind == "Pod":
            if (kind, name) not in self.objects:
                return _status(404, f"pods {name} not found")
            lines = self.logs.get(name, "").splitlines(keepends=True)
            tail = int(query.get("tailLines", len(lines) or 1))
            return 200, "".join(lines[-tail:]).encode(), "text/plain"
        if method == "GET":
            obj = self.objects.get((kind, name))
            if obj is None:
                return _status(404, f"{parts[3]} {name} not found")
            if kind == "Job":
                self._advance(name)
            return 200, obj, "application/json"
        if method == "DELETE":
            if self.objects.pop((kind, name), None) is None:
                return _status(404, f"{parts[3]} {name} not found")
            self.applied.pop((kind, name), None)
            self.writes.append(("delete", kind, name))
            if kind == "Job":
                for key in [k for k, o in self.objects.items()
                            if k[0] == "Pod" and o["metadata"]["labels"].get("job-name") == name]:
                    del self.objects[key]
            return 200, {"kind": "Status", "status": "Success"}, "application/json"
        if method == "PATCH":
            return self._apply(kind, name, query, headers, body)
        return _status(405, "method not allowed")

    def _apply(self, kind, name, query, headers, body):
        if headers.get("Content-Type") != "application/apply-patch+yaml":
            return _status(415, "server-side apply needs Content-Type application/apply-patch+yaml")
        if not query.get("fieldManager"):
            return _status(400, "fieldManager is required for apply patch")
        obj = yaml.safe_load(body)
        if obj.get("kind") != kind or obj.get("metadata", {}).get("name") != name:
            return _status(400, "the name of the object does not match the URL")
        key = (kind, name)
        prev = self.applied.get(key)
        if prev == obj:  # same intent from the same manager: nothing changes
            return 200, self.objects[key], "application/json"
        if prev is not None and kind == "Job" and prev["spec"]["template"] != obj["spec"]["template"]:
            return _status(422, f"Job.batch \"{name}\" is invalid: spec.template: field is immutable")
        live = json.loads(json.dumps(obj))
        meta = live["metadata"]
        meta["resourceVersion"] = str(next(self._rv))
        meta["uid"] = self.objects.get(key, {}).get("metadata", {}).get("uid") or f"uid-{meta['resourceVersion']}"
        meta["creationTimestamp"] = f"2026-11-28T00:00:{int(meta['resourceVersion']) % 60:02d}Z"
        if kind == "Job":
            live["status"] = self.objects.get(key, {}).get("status", {"active": 1})
        if kind == "PersistentVolumeClaim":
            live["status"] = {"phase": "Bound"}
        self.writes.append(("create" if prev is None else "update", kind, name))
        self.objects[key] = live
        self.applied[key] = obj
        if kind == "Job" and prev is None:
            self._start_job(live)
        return (201 if prev is None else 200), live, "application/json"

    def _start_job(self, job):
        name = job["metadata"]["name"]
        labels = {**job["spec"]["template"]["metadata"].get("labels", {}), "job-name": name}
        pod = {"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Running"},
               "metadata": {"name": f"{name}-x1", "labels": labels,
                            "creationTimestamp": job["metadata"]["creationTimestamp"]}}
        self.objects[("Pod", pod["metadata"]["name"])] = pod
        self._polls[name] = 0

    def _advance(self, name):
        job = self.objects[("Job", name)]
        if job["status"].get("conditions"):
            return
        self._polls[name] = self._polls.get(name, 0) + 1
        if self._polls[name] < self.job_polls:
            return
        component = job["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
        outcome, log = self.outcomes.get(component, ("Complete", f"{component}: done\n"))
        pod = f"{name}-x1"
        self.logs[pod] = log
        if ("Pod", pod) in self.objects:
            self.objects[("Pod", pod)]["status"]["phase"] = "Succeeded" if outcome == "Complete" else "Failed"
        if outcome == "Complete":
            job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        else:
            job["status"] = {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                                           "reason": "BackoffLimitExceeded"}]}

    def secret_values(self) -> list[str]:
        return [base64.b64decode(v).decode() for (k, _), o in self.objects.items() if k == "Secret"
                for v in o.get("data", {}).values()]


class FakeDetermined(_Server):
    def __init__(self, username: str = "determined", password: str = "det-pass-123") -> None:
        super().__init__()
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
            if (req.get("username") != self.username or not req.get("isHashed")
                    or req.get("password") != salt_and_hash(self.password)):
                return 401, {"message": "invalid credentials"}, "application/json"
            return 200, {"token": self.token, "user": {"username": self.username}}, "application/json"
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"message": "Unauthenticated"}, "application/json"
        if path == "/api/v1/experiments" and method == "POST":
            req = json.loads(body)
            config = yaml.safe_load(req["config"])
            files = req["modelDefinition"]
            if not isinstance(config, dict) or not all({"path", "type", "content", "mode"} <= set(f) for f in files):
                return 400, {"message": "bad request"}, "application/json"
            exp_id = next(self._ids)
            self.experiments[exp_id] = {"id": exp_id, "state": "STATE_ACTIVE", "config": config, "files": files,
                                        "activate": req.get("activate")}
            return 200, {"experiment": {"id": exp_id, "state": "STATE_ACTIVE"}, "config": config}, "application/json"
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
        return {f["path"]: base64.b64decode(f["content"]) for f in self.experiments[exp_id]["files"]
                if f["type"] == ord("0")}
