"""Real servers on 127.0.0.1 for the fetcher's tests and benchmark: nginx (Debian) from a config
written into a temporary folder, and small Python HTTP servers that serve files with Range
support and inject faults (5xx replies, connection resets) on real sockets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.support.net import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

NGINX_CONF = """\
daemon off;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    log_format fetch '$status $request_method $uri "$http_range" $body_bytes_sent';
    access_log {d}/access.log fetch;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
        location /slow/ {{ alias {root}/; autoindex on; limit_rate {rate}; }}
        location /norange/ {{ alias {root}/; autoindex on; max_ranges 0; }}
        location /deny/ {{ return 403; }}
    }}
}}
"""


class Nginx:
    """nginx serving `root` at /, rate-limited per connection at /slow/, without ranges at /norange/."""

    def __init__(self, root: Path, workdir: Path, rate: str = "2m") -> None:
        self.root, self.dir, self.rate = Path(root), Path(workdir), rate
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        # As root, nginx workers would drop to `nobody`, which cannot read a private tmp folder.
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = self.dir / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(d=self.dir, user=user, port=self.port, root=self.root, rate=self.rate)
        )
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(self.dir), "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> list[tuple[int, str, str, str, int]]:
        """(status, method, uri, range, body bytes sent) per request so far."""
        out = []
        for line in (self.dir / "access.log").read_text().splitlines():
            m = re.match(r'(\d+) (\S+) (\S+) "([^"]*)" (\d+)', line)
            if m:
                out.append((int(m[1]), m[2], m[3], m[4], int(m[5])))
        return out

    def bytes_sent(self, prefix: str = "/") -> int:
        return sum(b for _, _, uri, _, b in self.log() if uri.startswith(prefix))


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    if not m:
        return None
    start = int(m[1])
    end = min(int(m[2]) + 1 if m[2] else size, size)
    return (start, end) if start < size else None


class FileHandler(BaseHTTPRequestHandler):
    """Serve files with Range support; the server's `faults` decide what goes wrong."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def send_file(self, path: Path, extra: dict[str, str] | None = None, head: bool = False) -> None:
        srv = self.server
        data = path.read_bytes()
        rng = _parse_range(self.headers.get("Range"), len(data)) if srv.ranges else None
        if_range = self.headers.get("If-Range")
        if rng and if_range and if_range != srv.etag(path):
            rng = None
        start, end = rng or (0, len(data))
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(end - start + (srv.head_lie if head else 0)))
        if srv.ranges and (srv.head_ranges or not head):
            self.send_header("Accept-Ranges", "bytes")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if srv.validators:
            self.send_header("ETag", srv.etag(path))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        body = data[start:end]
        if srv.take_fault(self.path, "cut") and len(body) > 1:
            # Send part of the body, then close cleanly (FIN): what the client read stays read.
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        fault = srv.take_fault(self.path, "reset")
        if fault and len(body) > 1:
            # Send part of the body, then reset the connection (RST, not a clean close).
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if srv.rate:  # bytes per second per response, in 64 KiB steps
            t0 = time.monotonic()
            for off in range(0, len(body), 1 << 16):
                self.wfile.write(body[off : off + (1 << 16)])
                if (ahead := (off + (1 << 16)) / srv.rate - (time.monotonic() - t0)) > 0:
                    time.sleep(ahead)
        else:
            self.wfile.write(body)
        with srv.lock:
            srv.sent += len(body)

    def fail_if_asked(self) -> bool:
        if self.server.take_fault(self.path, "503"):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def resolve(self) -> Path | None:
        p = (self.server.root / unquote(urlsplit(self.path).path).lstrip("/")).resolve()
        return p if p.is_file() and self.server.root in p.parents else None

    def do_HEAD(self):
        self.handle_request(head=True)

    def do_GET(self):
        self.handle_request(head=False)

    def handle_request(self, head: bool) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, self.headers.get("Range")))
            self.server.seen_headers.append((self.path, dict(self.headers)))
        if self.fail_if_asked():
            return
        if page := self.server.pages.get(urlsplit(self.path).path):
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        if target := self.server.redirects.get(urlsplit(self.path).path):
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        p = self.resolve()
        if p is None:
            self.send_error(404)
            return
        self.send_file(p, head=head)


class FileServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 serving `root`. `faults` maps a kind ("503", "reset", "cut") to
    how many requests to spoil, optionally only those whose path contains `fault_match`.
    `head_lie` bytes are added to HEAD's Content-Length; `validators=False` sends no ETag (and, like
    it, no Last-Modified); `redirects` maps a path to the Location of a 302 reply; `head_ranges=False`
    leaves Accept-Ranges out of HEAD replies while GETs still honour Range (as S3 presigned URLs and some
    CDNs answer); `rate` limits each response to that many bytes per second."""

    daemon_threads = True
    handler = FileHandler

    def __init__(self, root: Path, ranges: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), self.handler)
        self.root = Path(root).resolve()
        self.ranges = ranges
        self.lock = threading.Lock()
        self.faults: dict[str, int] = {}
        self.fault_match = ""
        self.requests: list[tuple[str, str, str | None]] = []
        self.seen_headers: list[tuple[str, dict[str, str]]] = []  # (path, request headers)
        self.head_lie = 0
        self.validators = True
        self.redirects: dict[str, str] = {}
        self.pages: dict[str, str] = {}  # path (ending in /) -> HTML of a directory listing
        self.head_ranges = True
        self.rate: int | None = None
        self.sent = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def etag(self, path: Path) -> str:
        st = path.stat()
        return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'

    def take_fault(self, path: str, kind: str) -> bool:
        with self.lock:
            if self.faults.get(kind, 0) > 0 and self.fault_match in path:
                self.faults[kind] -= 1
                return True
        return False

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class HubHandler(FileHandler):
    """Stands in for the Hugging Face Hub: answers the model-info API (with files metadata) and
    `/<repo>/resolve/<rev>/<file>` with the headers huggingface_hub checks (ETag, X-Repo-Commit,
    X-Linked-Etag, X-Linked-Size)."""

    def handle_request(self, head: bool) -> None:
        srv = self.server
        with srv.lock:
            srv.requests.append((self.command, self.path, self.headers.get("Range")))
        if srv.token and self.headers.get("Authorization") != f"Bearer {srv.token}":
            self.send_json(401, {"error": "Invalid credentials"}, {"X-Error-Code": "RepoNotFound"})
            return
        path = unquote(urlsplit(self.path).path)
        kind = "datasets" if srv.repo_type == "dataset" else "models"
        if m := re.fullmatch(rf"/api/{kind}/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            repo, rev = m[1], m[2] or "main"
            if repo != srv.repo:
                self.send_json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            elif rev not in ("main", srv.commit):
                self.send_json(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
            else:
                self.send_json(200, srv.model_info())
            return
        prefix = "/datasets" if srv.repo_type == "dataset" else ""
        if m := re.fullmatch(rf"{prefix}/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo, rev, name = m[1], m[2], m[3]
            if repo != srv.repo or rev not in ("main", srv.commit):
                self.send_json(404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound"})
                return
            if self.fail_if_asked():
                return
            f = (srv.root / name).resolve()
            if not f.is_file() or srv.root not in f.parents:
                self.send_json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                return
            meta = srv.meta[name]
            extra = {
                "X-Repo-Commit": srv.commit,
                "X-Linked-Size": str(meta["size"]),
                "X-Linked-Etag": f'"{meta["etag"]}"',
            }
            self.send_file(f, extra, head=head)
            return
        self.send_json(404, {"error": "not found"})

    def send_json(self, status: int, body: dict, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class HubServer(FileServer):
    """A local stand-in for the Hugging Face Hub serving one repository (a model's or, with
    repo_type="dataset", a dataset's: API and resolve paths under /datasets) from a folder.
    Files of at least `lfs_threshold` bytes are "LFS" files (sha256 published); others are plain
    git blobs (git sha1 published)."""

    handler = HubHandler

    def __init__(
        self,
        root: Path,
        repo: str,
        lfs_threshold: int = 1 << 16,
        token: str | None = None,
        repo_type: str = "model",
    ) -> None:
        super().__init__(root)
        self.repo, self.token, self.repo_type = repo, token, repo_type
        self.commit = hashlib.sha1(repo.encode()).hexdigest()
        self.meta: dict[str, dict] = {}
        for p in sorted(self.root.rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                rel = p.relative_to(self.root).as_posix()
                blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                sha = hashlib.sha256(data).hexdigest()
                lfs = len(data) >= lfs_threshold
                self.meta[rel] = {
                    "size": len(data),
                    "blob": blob,
                    "sha256": sha if lfs else None,
                    "etag": sha if lfs else blob,
                }
        # Files can be corrupted after listing to test verification; the published hashes stay.

    def etag(self, path: Path) -> str:
        return f'"{self.meta[path.relative_to(self.root).as_posix()]["etag"]}"'

    def model_info(self) -> dict:
        siblings = []
        for rel, m in self.meta.items():
            s = {"rfilename": rel, "size": m["size"], "blobId": m["blob"]}
            if m["sha256"]:
                s["lfs"] = {"size": m["size"], "sha256": m["sha256"], "pointerSize": 134}
            siblings.append(s)
        return {
            "_id": "x",
            "id": self.repo,
            "modelId": self.repo,
            "sha": self.commit,
            "private": False,
            "siblings": siblings,
            "tags": [],
            "downloads": 0,
            "likes": 0,
        }
