"""HTTP(S) sources: a single file, or a directory listing crawled below the given path (like
`wget -r --no-parent`, index pages never saved); ranged reads over one pooled Session per thread.

Redirects are followed here, not by requests: one to another host is refused unless allowed, and
credentials (Authorization, cookies) go with the first request only, never with a redirect.
Every reply's sizes (Content-Range's total, Content-Length) are checked against the listed size."""

from __future__ import annotations

import http.cookiejar
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import requests

from jobs.cli import JobError
from jobs.remote import range_headers, transient_status
from jobs.retry import Backoff, RestartFile, SizeMismatch, TransientError

from .plan import RemoteFile, safe_relpath
from .staging import MIN_CHUNK

BLOCK = 1 << 20
TIMEOUT = (15, 60)  # connect, read (between bytes)
FATAL = {401: "unauthorized", 403: "forbidden", 404: "not found", 410: "gone"}
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10
CREDENTIALS = ("authorization", "proxy-authorization", "cookie")
ANY_HOST = "*"


def check_url(url: str) -> None:
    """One clear line for a URL requests would reject with a traceback."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise JobError(f"{url!r}: malformed URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise JobError(f"{url!r}: not an http:// or https:// URL")
    if not parts.hostname:
        raise JobError(f"{url!r}: malformed URL (no host)")
    if any(c in url for c in "\x00\r\n"):
        raise JobError(f"{url!r}: malformed URL (control character)")


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _check_total(content_range: str, size: int | None) -> None:
    """The total after the slash of a Content-Range against the listed size."""
    total = content_range.rsplit("/", 1)[-1].strip() if "/" in content_range else ""
    if size is not None and total.isdigit() and int(total) != size:
        raise SizeMismatch(f"the listing says {size} bytes, Content-Range {total}")


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie, request) -> bool:
        return False


def new_session() -> requests.Session:
    s = requests.Session()
    s.cookies.set_policy(_NoCookies())  # a cookie set by one host is a credential for it
    return s


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def request_following(
    session: requests.Session, method: str, url: str, headers: dict[str, str], redirect_hosts, **kw
) -> requests.Response:
    """One request, following redirects by hand: same host or one of `redirect_hosts` (* for any), and
    no credentials after the first hop (Authorization and cookie headers dropped, user:password@ taken
    out of the target). Raises requests' connection errors (callers retry them), JobError otherwise."""
    allowed = {h.lower() for h in redirect_hosts}
    hdrs = dict(headers)
    home = host_of(url)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            r = session.request(method, url, headers=hdrs, allow_redirects=False, **kw)
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidHeader,
            requests.exceptions.TooManyRedirects,
            UnicodeError,
        ) as exc:
            raise JobError(f"{_without_userinfo(url)!r}: malformed URL ({exc})") from None
        if r.status_code not in REDIRECTS or not r.headers.get("Location"):
            return r
        target = _without_userinfo(urljoin(url, r.headers["Location"]))
        r.close()
        check_url(target)
        host = host_of(target)
        if host != home and host not in allowed and ANY_HOST not in allowed:
            shown = urlsplit(target)._replace(query="", fragment="").geturl()  # a signed query is a secret
            raise JobError(
                f"{_without_userinfo(url)}: redirects to another host ({shown}); pass "
                f"--allow-redirect-host {host} to follow it"
            )
        if r.status_code == 303 and method != "HEAD":
            method = "GET"
        url = target
        hdrs = {k: v for k, v in hdrs.items() if k.lower() not in CREDENTIALS}
    raise JobError(f"{_without_userinfo(url)}: more than {MAX_REDIRECTS} redirects")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def _check(r: requests.Response, url: str) -> None:
    """Map an HTTP status to fatal (JobError naming the URL) or transient (retry)."""
    if r.status_code in FATAL:
        raise JobError(f"{url}: HTTP {r.status_code} ({FATAL[r.status_code]})")
    if transient_status(r.status_code):
        raise TransientError(f"{url}: HTTP {r.status_code}")
    if r.status_code >= 400:
        raise JobError(f"{url}: HTTP {r.status_code}")


class HttpSource:
    def __init__(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        connections: int = 16,
        if_range: bool = True,
        redirect_hosts: tuple[str, ...] = (),
    ) -> None:
        self.url = url
        self.if_range = if_range  # off where identity is not an HTTP validator (hub blob ids)
        self.description = url
        self.headers = dict(headers or {})  # sent with first requests only (they may hold credentials)
        self.redirect_hosts = {h.lower() for h in redirect_hosts}  # other hosts a redirect may lead to
        self.connections = connections
        self._local = threading.local()
        self._lock = threading.Lock()
        self._kept: dict[
            str, requests.Response
        ] = {}  # a probe's whole-file 200 reply, kept to be the download
        self.retries = 0

    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = new_session()
        return s

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None, **kw
    ) -> requests.Response:
        """One request, redirects followed by `request_following` (the first request only gets the
        source's headers, which may hold credentials)."""
        return request_following(
            self.session(), method, url, {**self.headers, **(headers or {})}, self.redirect_hosts, **kw
        )

    def _retrying(self, what: str, fn):
        """Listing and HEAD requests: retried like transfers, counted in `retries`."""
        backoff = Backoff()
        while True:
            try:
                return fn()
            except (requests.ConnectionError, requests.Timeout) as exc:
                err: Exception = TransientError(f"{what}: {type(exc).__name__}")
            except TransientError as exc:
                err = exc
            with self._lock:
                self.retries += 1
            if not backoff.wait():
                raise JobError(f"giving up after {backoff.attempts} tries: {err}")

    # --- listing -------------------------------------------------------------------------------
    def list_files(self) -> list[RemoteFile]:
        first = self._retrying(self.url, lambda: self._get_page(self.url))
        if first is None:  # not a listing: a single file
            name = unquote(urlsplit(self.url).path.rstrip("/").rsplit("/", 1)[-1])
            urls = {safe_relpath(name, self.url): self.url}
        else:
            urls = self._crawl(*first)
            if not urls:
                raise JobError(f"{self.url}: the listing has no files")
        with ThreadPoolExecutor(self.connections) as pool:
            return list(pool.map(lambda kv: self._head(kv[1], kv[0]), sorted(urls.items())))

    def _get_page(self, url: str) -> tuple[str, str] | None:
        """(final URL, HTML) when `url` is a directory listing, None when it is a file."""
        r = self.request("HEAD", url, timeout=TIMEOUT)
        if r.status_code not in (405, 501):  # servers without HEAD: decide on the GET below
            _check(r, url)
            if not (r.url.endswith("/") and "html" in r.headers.get("Content-Type", "")):
                return None
        with self.request("GET", url, stream=True, timeout=TIMEOUT) as r:
            _check(r, url)
            if not (r.url.endswith("/") and "html" in r.headers.get("Content-Type", "")):
                return None
            return r.url, r.text

    def _crawl(self, base: str, html: str) -> dict[str, str]:
        files: dict[str, str] = {}
        seen = {base}
        todo = [(base, html)]
        while todo:
            page, text = todo.pop()
            parser = _Links()
            parser.feed(text)
            for href in parser.hrefs:
                link = urldefrag(urljoin(page, href))[0]
                if "?" in link or not link.startswith(base) or link in seen:
                    continue  # sort links, parents and other hosts: like --no-parent
                seen.add(link)
                rel = unquote(link[len(base) :])
                if link.endswith("/"):
                    sub = self._retrying(link, lambda u=link: self._get_page(u))
                    if sub is not None:
                        todo.append(sub)
                else:
                    files[safe_relpath(rel, link)] = link
        return files

    def _head(self, url: str, rel: str) -> RemoteFile:
        def once():
            r = self.request("HEAD", url, timeout=TIMEOUT, headers={"Accept-Encoding": "identity"})
            if r.status_code in (405, 501):  # no HEAD: ask for one byte instead
                r = self._first_byte(url)
                r.close()
            _check(r, url)
            return r

        r = self._retrying(url, once)
        size = None
        if r.status_code == 206 and "/" in r.headers.get("Content-Range", ""):
            tail = r.headers["Content-Range"].rsplit("/", 1)[1]
            size = int(tail) if tail.isdigit() else None
        elif r.headers.get("Content-Length", "").isdigit():
            size = int(r.headers["Content-Length"])
        etag = r.headers.get("ETag")
        identity = etag if etag and not etag.startswith("W/") else r.headers.get("Last-Modified")
        accept = r.headers.get("Accept-Ranges", "").lower()
        ranges = r.status_code == 206 or accept == "bytes"
        if not ranges and accept != "none" and size is not None and size > MIN_CHUNK:
            # S3 presigned URLs and some CDNs leave Accept-Ranges out of HEAD replies and honour Range
            # all the same: ask for one byte before settling for one stream.
            ranges = self._retrying(url, lambda: self._probe_ranges(url, size))
        return RemoteFile(rel, url, size, identity, ranges)

    def _first_byte(self, url: str):
        """A streamed GET of bytes=0-0: the HEAD stand-in and the range probe both ask this."""
        return self.request(
            "GET",
            url,
            timeout=TIMEOUT,
            stream=True,
            headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"},
        )

    def _probe_ranges(self, url: str, size: int) -> bool:
        """Whether a GET of bytes=0-0 comes back as that byte of a file of `size` (206). A 200 means
        Range is ignored: that reply is the whole file, so it is kept, unread, as the file's one stream
        (closing it would waste what the server already pushed into the connection)."""
        r = self._first_byte(url)
        if r.status_code == 200 and "Content-Encoding" not in r.headers:
            with self._lock:
                old, self._kept[url] = self._kept.get(url), r
            if old is not None:  # a retried probe
                old.close()
            return False
        try:
            if r.status_code == 416:
                return False
            _check(r, url)
            cr = r.headers.get("Content-Range", "")
            return (
                r.status_code == 206
                and _CONTENT_RANGE.fullmatch(cr.strip()) is not None
                and cr.rsplit("/", 1)[-1].strip() == str(size)
            )
        finally:
            r.close()

    def close(self) -> None:
        """Close kept probe replies that no download used (files already up to date, a failed run)."""
        with self._lock:
            kept, self._kept = self._kept, {}
        for r in kept.values():
            r.close()

    # --- reading -------------------------------------------------------------------------------
    def read(self, file: RemoteFile, start: int, end: int | None) -> tuple[int, Iterator[bytes]]:
        headers = {"Accept-Encoding": "identity"}
        if start > 0 or (end is not None and file.size is not None and end < file.size):
            # with If-Range a changed file answers 200: restart it
            headers.update(range_headers(start, end, file.identity if self.if_range else None))
        with self._lock:
            r = self._kept.pop(file.url, None) if "Range" not in headers else None
        try:
            if r is None:
                r = self.request("GET", file.url, headers=headers, stream=True, timeout=TIMEOUT)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"{file.url}: {type(exc).__name__}") from None
        try:
            if r.status_code == 416:  # the file shrank or changed under us
                _check_total(r.headers.get("Content-Range", ""), file.size)
                raise RestartFile(f"{file.url}: HTTP 416 for {headers.get('Range')}")
            _check(r, file.url)
            real, length = 0, file.size
            if r.status_code == 206:
                cr = r.headers.get("Content-Range", "")
                m = _CONTENT_RANGE.fullmatch(cr.strip())
                if not m:
                    raise TransientError(f"{file.url}: bad Content-Range {cr!r}")
                real, length = int(m[1]), int(m[2]) - int(m[1]) + 1
                _check_total(cr, file.size)
            cl = r.headers.get("Content-Length", "")
            if cl.isdigit() and length is not None and int(cl) != length:
                raise SizeMismatch(
                    f"{'Content-Range' if r.status_code == 206 else 'the listing'} says "
                    f"{length} bytes, Content-Length {cl}"
                )
        except BaseException:
            r.close()
            raise
        return real, self._blocks(r, file.url)

    @staticmethod
    def _blocks(r: requests.Response, url: str) -> Iterator[bytes]:
        try:
            yield from r.iter_content(BLOCK)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientError(f"{url}: {type(exc).__name__} mid-transfer") from None
        finally:
            r.close()
