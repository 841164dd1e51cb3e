"""Where documents come from: expanding inputs (files, directories, globs, s3://, https://) into an
ordered list of sources, opening each as a byte stream (remote ones resume after a dropped
connection: `remote.py`), and parsing each format into documents.

Every document carries its location (FILE:LINE, FILE:ROW or FILE) so bad input is reported precisely.
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlsplit

from jobs.cli import JobError
from jobs.remote import s3_client

from .remote import open_http, open_s3

# Longest suffix first so `.jsonl.zst` is not taken for something else.
FORMATS = {
    ".jsonl.zst": "jsonl",
    ".jsonl.gz": "jsonl",
    ".jsonl": "jsonl",
    ".txt": "txt",
    ".parquet": "parquet",
}
CHUNK = 1 << 20


def format_of(name: str) -> str | None:
    lower = name.lower()
    for suffix, fmt in FORMATS.items():
        if lower.endswith(suffix):
            return fmt
    return None


@dataclass(frozen=True)
class Source:
    name: str  # as shown in messages: a path or URL
    size: int | None  # bytes as stored, when known up front
    open: Callable[[], io.RawIOBase | io.BufferedIOBase]  # the stored bytes, possibly compressed


def _require_format(name: str) -> None:
    if format_of(name) is None:
        known = ", ".join(FORMATS)
        raise JobError(f"{name}: unknown file type (expected one of {known})")


def _local(path: str) -> Source:
    _require_format(path)
    return Source(path, os.path.getsize(path), lambda: open(path, "rb", buffering=0))


def _expand_local(spec: str) -> list[Source]:
    if glob.has_magic(spec):
        matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not matches:
            raise JobError(f"{spec}: no files match")
        return [_local(p) for p in matches]
    if os.path.isdir(spec):
        found = sorted(
            str(p)
            for p in Path(spec).rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(spec).parts)
        )
        if not found:
            raise JobError(f"{spec}: directory holds no input files")
        return [_local(p) for p in found]
    if not os.path.exists(spec):
        raise JobError(f"{spec}: no such file or directory")
    return [_local(spec)]


def _expand_s3(spec: str, endpoint_url: str | None) -> list[Source]:
    from botocore.exceptions import BotoCoreError, ClientError

    url = urlparse(spec)
    bucket, key = url.netloc, url.path.lstrip("/")
    client = s3_client(endpoint_url)

    def source(k: str, size: int) -> Source:
        name = f"s3://{bucket}/{k}"
        _require_format(name)
        return Source(name, size, lambda: open_s3(client, bucket, k))

    magic = glob.has_magic(key)
    prefix = key[: min((key.find(c) for c in "*?[" if c in key), default=len(key))] if magic else key
    try:
        if key and not magic and not key.endswith("/"):
            try:
                head = client.head_object(Bucket=bucket, Key=key)
                return [source(key, head["ContentLength"])]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
                prefix = key + "/"  # not an object: treat it as a folder
        found = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if k.endswith("/") or (magic and not fnmatch.fnmatchcase(k, key)):
                    continue
                found.append((k, obj["Size"]))
    except (ClientError, BotoCoreError) as exc:
        raise JobError(f"{spec}: {exc}") from exc
    if not found:
        raise JobError(f"{spec}: no objects found")
    return [source(k, size) for k, size in sorted(found)]


def _expand_http(spec: str, redirect_hosts: tuple[str, ...]) -> list[Source]:
    name = urlparse(spec).path
    _require_format(name)
    return [Source(spec, None, lambda: open_http(spec, redirect_hosts))]


URL_FORMS = {"s3": "s3://bucket/key", "http": "http://host/path", "https": "https://host/path"}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def _check_spec(spec: str) -> str:
    """One clear line for an input that is empty or a malformed URL; returns its scheme ('' for paths)."""
    if not spec.strip():
        raise JobError("--input: an empty path")
    if "\x00" in spec:
        raise JobError(f"--input {spec!r}: holds a NUL character")
    m = _SCHEME.match(spec)
    scheme = m[1].lower() if m else ""
    if scheme not in URL_FORMS:
        return ""
    if not spec[m.end() :].startswith("//"):
        raise JobError(f"{spec}: malformed URL (expected {URL_FORMS[scheme]})")
    try:
        url = urlsplit(spec)
        url.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise JobError(f"{spec}: malformed URL ({exc})") from None
    if not url.netloc or (scheme != "s3" and not url.hostname) or any(c in spec for c in " \r\n\t"):
        raise JobError(f"{spec}: malformed URL (expected {URL_FORMS[scheme]})")
    return scheme


def expand_inputs(
    specs: list[str], endpoint_url: str | None = None, redirect_hosts: tuple[str, ...] = ()
) -> list[Source]:
    """Each spec in the order given; within a directory, glob or prefix, sorted by name. https:// inputs
    may be redirected to `redirect_hosts` (other hosts: refused)."""
    sources: list[Source] = []
    for spec in specs:
        scheme = _check_spec(spec)
        if scheme == "s3":
            sources += _expand_s3(spec, endpoint_url)
        elif scheme in ("http", "https"):
            sources += _expand_http(spec, tuple(redirect_hosts))
        else:
            sources += _expand_local(spec)
    return sources


class CountingReader(io.RawIOBase):
    """Counts the stored bytes read from any stream with read(n) (files, S3 bodies, HTTP)."""

    def __init__(self, raw) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.count += n
        return n

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


@dataclass
class Doc:
    text: str | None  # None: an empty or null document, counted and dropped
    where: str


class BadLine(Exception):
    """A line that is not valid JSON; `--skip-bad-lines` counts these instead of failing."""


class Truncated(EOFError):
    """A compressed input ends inside a frame (zstd) or member (gzip): the file was cut short."""


class ZstdFrames(io.RawIOBase):
    """Every zstd frame of a stream, in order; ending inside a frame is an error, not the end.

    zstandard's stream_reader stops quietly where the input stops, even mid-frame, so a file cut at
    a block boundary would read as a complete, shorter corpus. Here each frame must reach its end."""

    def __init__(self, raw) -> None:
        import zstandard

        self._raw = raw
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._obj = None  # the frame being decoded; None between frames
        self._out = b""
        self._at = 0  # bytes of _out already passed on
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._at == len(self._out) and not self._eof:
            self._out, self._at = b"", 0
            data = self._raw.read(CHUNK)
            if not data:
                self._eof = True
                if self._obj is not None:
                    raise Truncated("the zstd stream ends inside a frame")
                break
            while data:
                if self._obj is None:
                    self._obj = self._new()
                self._out += self._obj.decompress(data)
                if not self._obj.eof:
                    break
                data, self._obj = self._obj.unused_data, None  # the next frame starts here
        n = min(len(b), len(self._out) - self._at)
        b[:n] = self._out[self._at : self._at + n]
        self._at += n
        return n


def _decompressed(name: str, stream: io.BufferedReader) -> io.BufferedIOBase:
    lower = name.lower()
    if lower.endswith(".gz"):  # gzip itself raises EOFError when a member ends early
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if lower.endswith(".zst"):
        return io.BufferedReader(ZstdFrames(stream), buffer_size=CHUNK)
    return stream


def _utf8_error(where: str, exc: UnicodeDecodeError) -> JobError:
    return JobError(f"{where}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})")


def read_jsonl(
    name: str, stream, key: str, skip_bad: bool, on_bad: Callable[[str, str], None]
) -> Iterator[Doc]:
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            text = line.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _utf8_error(where, exc) from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if skip_bad:
                on_bad(where, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            raise JobError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            if skip_bad:
                on_bad(where, "not a JSON object")
                continue
            raise JobError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if key not in obj:
            raise JobError(f"{where}: no key {key!r} (keys: {', '.join(sorted(obj)) or 'none'})")
        value = obj[key]
        if value is None:
            yield Doc(None, where)
        elif not isinstance(value, str):
            raise JobError(f"{where}: key {key!r} holds {type(value).__name__}, not a string")
        else:
            yield Doc(value or None, where)


def read_txt(name: str, stream) -> Iterator[Doc]:
    data = stream.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _utf8_error(name, exc) from None
    yield Doc(text or None, name)


def read_parquet(name: str, raw, key: str) -> Iterator[Doc]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Parquet needs random access: remote objects are spooled to a temporary file first.
    spool = None
    try:
        if isinstance(raw, io.FileIO):
            source = raw
        else:
            spool = tempfile.TemporaryFile()
            shutil.copyfileobj(raw, spool, CHUNK)
            spool.seek(0)
            source = spool
        try:
            pf = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as exc:
            raise JobError(f"{name}: not a readable Parquet file: {exc}") from None
        if key not in pf.schema_arrow.names:
            raise JobError(f"{name}: no column {key!r} (columns: {', '.join(pf.schema_arrow.names)})")
        field = pf.schema_arrow.field(key)
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            raise JobError(f"{name}: column {key!r} is {field.type}, not a string column")
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=[key]):
            for value in batch.column(0).to_pylist():
                yield Doc(value or None, f"{name}:row {row}")
                row += 1
    finally:
        if spool is not None:
            spool.close()


def read_source(
    src: Source, key: str, skip_bad: bool, on_bad: Callable[[str, str], None]
) -> tuple[CountingReader, Iterator[Doc]]:
    """Open a source; returns its byte counter and its documents in order."""
    fmt = format_of(src.name)
    try:
        raw = src.open()
    except JobError:
        raise
    except Exception as exc:  # boto3/OS errors at open: name the input
        raise JobError(f"{src.name}: cannot open: {exc}") from exc
    counter = CountingReader(raw)

    def docs() -> Iterator[Doc]:
        with counter:
            try:
                if fmt == "parquet":
                    inner = raw if isinstance(raw, io.FileIO) else counter
                    yield from read_parquet(src.name, inner, key)
                    if inner is raw:
                        counter.count = src.size or 0
                    return
                stream = _decompressed(src.name, io.BufferedReader(counter, buffer_size=CHUNK))
                if fmt == "jsonl":
                    yield from read_jsonl(src.name, stream, key, skip_bad, on_bad)
                else:
                    yield from read_txt(src.name, stream)
            except (Truncated, EOFError) as exc:
                raise JobError(f"{src.name}: cannot read: the file is truncated ({exc})") from exc
            except OSError as exc:
                raise JobError(f"{src.name}: cannot read: {exc}") from exc
            except Exception as exc:
                if type(exc).__module__.startswith("zstandard") or "Zstd" in type(exc).__name__:
                    raise JobError(f"{src.name}: cannot decompress: {exc}") from exc
                raise

    return counter, docs()
