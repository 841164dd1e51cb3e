"""Corpus to indexed dataset: a reader thread parses documents into batches, the calling thread hands
each batch to the tokenizer's batch encoder (Rust, GIL released, Rayon threads), and a writer thread
turns ids into arrays and appends them. Batches flow in order through bounded queues, so the output is
the same for any worker count and memory stays bounded by a few batches."""

from __future__ import annotations

import glob
import os
import queue
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from jobs.cli import JobError, Progress, human_bytes, human_duration, write_json_atomic
from jobs.indexed_dataset import TEMP_MARK, IndexedDatasetWriter, data_path, dtype_for_vocab, index_path
from jobs.preprocess.fast_bpe import load_fast_bpe
from jobs.preprocess.sources import Source, expand_inputs, format_of, read_source
from jobs.procs import pid_alive

PROG = "preprocess"
BATCH_CHARS = 1 << 20  # ~1 MB of text a batch: enough work to spread over Rayon threads
BATCH_DOCS = 4096
QUEUE_BATCHES = 4
STALE_TEMP_SECONDS = 600
# auto: tiktoken's merger where it reproduces the tokenizer file exactly (fast_bpe.py), else tokenizers.
ENGINES = ("auto", "tokenizers", "tiktoken")


@dataclass
class Stats:
    documents: int = 0
    tokens: int = 0
    dropped_empty: int = 0
    bad_lines: int = 0
    bytes_read: int = 0
    inputs: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    workers: int = 0
    output_prefix: str = ""
    dtype: str = ""
    append_eod: bool = False
    engine: str = ""
    bad_line_samples: list[str] = field(default_factory=list)


@dataclass
class _Batch:
    texts: list[str]
    wheres: list[str]
    dropped: int  # empty documents seen while filling this batch
    bytes_read: int  # cumulative stored bytes read when the batch was cut


_DONE = object()


def set_workers(workers: int) -> None:
    """Tokenizers reads these when its Rayon pool starts, so they must be set before the first encode."""
    os.environ["RAYON_NUM_THREADS"] = str(workers)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if workers > 1 else "false"


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_tokenizer(path: str | os.PathLike):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(os.fspath(path))
    except Exception as exc:  # tokenizers raises plain Exception for both I/O and parse errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JobError(f"{path}: cannot load tokenizer: {reason}") from None


class _Stop(Exception):
    pass


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


class _Worker(threading.Thread):
    """A daemon thread whose first exception is kept for the main thread to re-raise."""

    def __init__(self, name: str, target, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self._stop_event = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except _Stop:
            pass
        except BaseException as exc:
            self.error = exc
            self._stop_event.set()


def _no_documents(where: str) -> JobError:
    return JobError(f"{where}: no documents (an empty or truncated input?); --allow-empty accepts that")


def _read_batches(
    sources: list[Source], key: str, skip_bad: bool, allow_empty: bool, stats: Stats, out: queue.Queue, stop
):
    done_bytes = 0

    def on_bad(where: str, reason: str) -> None:
        stats.bad_lines += 1
        if len(stats.bad_line_samples) < 20:
            stats.bad_line_samples.append(f"{where}: {reason}")

    texts: list[str] = []
    wheres: list[str] = []
    chars = dropped = 0
    for src in sources:
        counter, docs = read_source(src, key, skip_bad, on_bad)
        found = 0
        for doc in docs:
            if doc.text is None:
                dropped += 1
                continue
            found += 1
            texts.append(doc.text)
            wheres.append(doc.where)
            chars += len(doc.text)
            if chars >= BATCH_CHARS or len(texts) >= BATCH_DOCS:
                _put(out, _Batch(texts, wheres, dropped, done_bytes + counter.count), stop)
                texts, wheres, chars, dropped = [], [], 0, 0
        # A .txt file is one document, so an empty one is an empty document (dropped, as FORMATS.md
        # says); a .jsonl or .parquet input without a single document is a broken input.
        if not found and not allow_empty and format_of(src.name) != "txt":
            raise _no_documents(src.name)
        done_bytes += counter.count
    _put(out, _Batch(texts, wheres, dropped, done_bytes), stop)
    _put(out, _DONE, stop)


def _encode(tokenizer, fast, batch: _Batch) -> list:
    if not batch.texts:
        return []
    try:
        if fast is not None:
            return fast.encode_batch(batch.texts)
        return [e.ids for e in tokenizer.encode_batch_fast(batch.texts)]
    except Exception:
        # Find the document at fault (e.g. a lone surrogate from a JSON escape) to name it.
        for text, where in zip(batch.texts, batch.wheres, strict=True):
            try:
                tokenizer.encode(text)
            except Exception as exc:
                raise JobError(f"{where}: cannot tokenize: {exc}") from None
        raise


def _write_batches(writer: IndexedDatasetWriter, eod: int | None, stats: Stats, progress, inq, stop):
    last_bytes = 0
    while True:
        item = _get(inq, stop)
        if item is _DONE:
            return
        batch, ids = item
        stats.dropped_empty += batch.dropped
        for doc in ids:
            if len(doc) == 0:
                stats.dropped_empty += 1
                continue
            if eod is not None:
                doc = np.append(doc, eod)  # the document with its end token
            writer.add_document(np.asarray(doc, dtype=writer.dtype))
            stats.documents += 1
            stats.tokens += len(doc)
        progress.advance(batch.bytes_read - last_bytes)
        last_bytes = batch.bytes_read


def _remove_stale_temps(prefix: str) -> None:
    """A run killed outright (SIGKILL, node loss) leaves its per-process temp files. Remove those of
    dead processes on this host, and those of other hosts once untouched for a while."""
    now, host = time.time(), socket.gethostname()
    for final in (data_path(prefix), index_path(prefix)):
        for tmp in glob.glob(glob.escape(str(final)) + TEMP_MARK + "*"):
            # Only names the writer makes (PREFIX.bin.tmp.HOST.PID); any other file is the user's.
            if not re.fullmatch(r"[A-Za-z0-9_.-]+\.\d+", tmp[len(str(final)) + len(TEMP_MARK) :]):
                continue
            owner_host, _, pid = tmp[len(str(final)) + len(TEMP_MARK) :].rpartition(".")
            try:
                if owner_host == host and pid.isdigit():
                    if pid_alive(int(pid)):
                        continue
                elif now - os.path.getmtime(tmp) < STALE_TEMP_SECONDS:
                    continue
                os.unlink(tmp)
            except OSError:
                pass


def preprocess(
    inputs: list[str],
    tokenizer_path: str | os.PathLike,
    output_prefix: str | os.PathLike,
    *,
    jsonl_key: str = "text",
    append_eod: bool = False,
    workers: int | None = None,
    skip_bad_lines: bool = False,
    endpoint_url: str | None = None,
    engine: str = "auto",
    allow_empty: bool = False,
    redirect_hosts: tuple[str, ...] | list[str] = (),
) -> Stats:
    """Tokenize every document of `inputs`, in order, into OUTPUT_PREFIX_<key>_document.{bin,idx}.

    Zero documents (from an input, or from all of them) is an error unless `allow_empty`. An https:// input
    redirected to another host is an error unless that host is in `redirect_hosts` (* for any)."""
    workers = workers or default_workers()
    set_workers(workers)
    start = time.monotonic()
    tokenizer = load_tokenizer(tokenizer_path)
    eod = None
    if append_eod:
        eod = tokenizer.token_to_id("<|endoftext|>")
        if eod is None:
            raise JobError(f"{tokenizer_path}: tokenizer has no <|endoftext|> token for --append-eod")
    fast = None
    if engine not in ENGINES:
        raise JobError(f"unknown engine {engine!r} (expected one of {', '.join(ENGINES)})")
    if engine != "tokenizers":
        fast, why = load_fast_bpe(tokenizer_path, tokenizer, workers)
        if fast is None and engine == "tiktoken":
            raise JobError(f"{tokenizer_path}: the tiktoken engine cannot be used: {why}")
    dtype = dtype_for_vocab(tokenizer.get_vocab_size(with_added_tokens=True))
    sources = expand_inputs(inputs, endpoint_url, tuple(redirect_hosts))
    prefix = f"{os.fspath(output_prefix)}_{jsonl_key}_document"
    _remove_stale_temps(prefix)

    stats = Stats(
        inputs=len(sources),
        workers=workers,
        output_prefix=prefix,
        dtype=str(dtype),
        append_eod=append_eod,
        engine="tiktoken" if fast else "tokenizers",
    )
    total = sum(s.size for s in sources) if all(s.size is not None for s in sources) else None

    def describe(done: float, total_: float | None, _rate: float, eta: float | None) -> str:
        elapsed = max(time.monotonic() - start, 1e-9)
        line = f"{stats.documents:,} docs, {stats.tokens:,} tokens, {stats.tokens / elapsed:,.0f} tokens/s"
        line += f", {human_bytes(done)}" + (f" of {human_bytes(total_)}" if total_ else "")
        return line + (f", eta {human_duration(eta)}" if eta is not None else "")

    progress = Progress(PROG, describe, total=total)
    stop = threading.Event()
    batches: queue.Queue = queue.Queue(QUEUE_BATCHES)
    encoded: queue.Queue = queue.Queue(2)
    try:
        writer = IndexedDatasetWriter(prefix, dtype)
    except OSError as exc:  # a read-only output folder, a file where a folder should be, ...
        raise JobError(f"cannot write {exc.filename or prefix}: {exc.strerror}") from None
    reader_t = _Worker(
        "reader",
        lambda: _read_batches(sources, jsonl_key, skip_bad_lines, allow_empty, stats, batches, stop),
        stop,
    )
    writer_t = _Worker("writer", lambda: _write_batches(writer, eod, stats, progress, encoded, stop), stop)
    threads = (reader_t, writer_t)
    try:
        for t in threads:
            t.start()
        try:
            while True:
                batch = _get(batches, stop)
                if batch is _DONE:
                    break
                _put(encoded, (batch, _encode(tokenizer, fast, batch)), stop)
                stats.bytes_read = batch.bytes_read
            _put(encoded, _DONE, stop)
            writer_t.join()
        except _Stop:
            pass  # a worker failed; its error is raised below
        for t in threads:
            if t.error is not None:
                raise t.error
        if stats.documents == 0 and not allow_empty:
            raise _no_documents(sources[0].name if len(sources) == 1 else f"all {len(sources)} inputs")
        writer.finalize()
    except BaseException as exc:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join(timeout=10)
        writer.abort()
        if isinstance(exc, OSError):
            raise JobError(f"cannot write {exc.filename or prefix}: {exc.strerror}") from exc
        raise
    finally:
        progress.close()
    stats.seconds = round(time.monotonic() - start, 3)
    stats.tokens_per_second = round(stats.tokens / max(stats.seconds, 1e-9), 1)
    try:
        write_json_atomic(Path(f"{prefix}.stats.json"), asdict(stats))
    except OSError as exc:
        raise JobError(f"cannot write {prefix}.stats.json: {exc.strerror}") from None
    return stats
