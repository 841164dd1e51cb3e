"""The transfer engine: a pool of worker threads pulling (file, chunk) tasks, writing ranges into
staged partial files, hashing each file's contiguous prefix as it grows, and renaming a file into
place only when it is complete and verified.

A connection left without a task splits the largest chunk still in flight and takes its second half
(the owner stops at the new end), so all connections stay busy to the last bytes instead of idling
while a few finish long chunks. Each chunk's bytes are handed to the kernel's writeback as they come
(sync_file_range, from one thread of its own), so the disk works while the network does and the fsync
before the rename finds little left to write."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from jobs.cli import JobError
from jobs.retry import Backoff, RestartFile, SizeMismatch, TransientError

from .plan import RemoteFile, Source
from .staging import Chunk, PartState, part_paths, plan_chunks, staging_dir
from .verify import Hashers, mismatch

FLUSH_S = 0.2  # sidecar refresh interval: bounds what a kill -9 makes us fetch twice
HASH_READ = 8 << 20
BLOCK_MAX = 1 << 20  # the most one read hands over (sources read in blocks of at most this)
STEAL_MIN = 1 << 20  # each half of a split chunk has at least this much left
IDLE_POLL_S = 0.05  # how often an idle connection looks for a chunk to split
WRITEBACK = 16 << 20  # start writeback of each chunk's bytes in steps of this much
# Per-file budgets that progress never refills: a file that keeps restarting from zero or keeps
# disagreeing about its size fails by name instead of being fetched forever.
MAX_RESTARTS = 4
MAX_MISMATCHES = 3


def _sync_file_range():
    """Linux's sync_file_range(2) (start writeback of a range, do not wait), or None elsewhere."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


class Writeback:
    """One thread that starts the kernel's writeback of ranges handed to it, so that a busy disk stalls
    this thread, never a connection. Each file gives it a descriptor of its own, which it closes when told
    (after the ranges queued before), so a descriptor is never used after it is closed."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="fetch-writeback", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            fd, off, n = item
            if n < 0:
                os.close(fd)
            else:  # best effort: a failure only leaves more for the final fsync
                _SYNC_FILE_RANGE(fd, off, n, _SYNC_FILE_RANGE_WRITE)

    def start(self, fd: int, off: int, n: int) -> None:
        self.q.put((fd, off, n))

    def release(self, fd: int) -> None:
        self.q.put((fd, 0, -1))

    def stop(self) -> None:
        self.q.put(None)
        self.thread.join()


@dataclass
class Stats:
    bytes_moved: int = 0  # bytes received from the source in this run
    bytes_resumed: int = 0  # bytes already staged by an earlier run and kept
    retries: int = 0
    restarts: int = 0  # files restarted from zero (Range ignored, or the file changed)
    splits: int = 0  # chunks in flight split for an idle connection
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


@dataclass
class Done:
    file: RemoteFile
    sha256: str
    size: int


class FileJob:
    """One file being staged: its partial file, its sidecar and its running hash."""

    def __init__(self, file: RemoteFile, dest: Path, connections: int) -> None:
        self.file = file
        self.dest = dest
        self.finishing = False
        self.part, self.sidecar = part_paths(dest, file.path)
        self.final = dest / file.path
        self.lock = threading.Lock()
        self.flush_lock = threading.Lock()
        self.generation = 0
        self.fd: int | None = None
        self.restarts = 0
        # Bytes from two requests may only be joined when something proves they are of one version:
        # a validator (ETag, Last-Modified, blob id: If-Range/IfMatch) or a checksum checked at the end.
        # Without either the file is one stream from zero, and a broken stream starts over.
        self.resumable = bool(file.identity or file.expected)
        ranges = file.ranges and self.resumable
        state = PartState.load(self.sidecar)
        if (
            state
            and self.resumable
            and not state.sha256
            and state.matches(file.url, file.size, file.identity)
            and self._part_covers(state)
        ):
            self.state = state
        else:
            self.state = PartState(
                file.url, file.size, file.identity, ranges, plan_chunks(file.size, ranges, connections)
            )
            self.part.unlink(missing_ok=True)
        self.resumed = sum(c.done for c in self.state.chunks)
        self._reset_hash()
        self.last_flush = 0.0
        self.writeback: Writeback | None = None  # set by the engine where sync_file_range exists
        self.wb_fd: int | None = None

    def _part_covers(self, state: PartState) -> bool:
        try:
            have = self.part.stat().st_size
        except OSError:
            return False
        return all(c.start + c.done <= have for c in state.chunks if c.done)

    def _reset_hash(self) -> None:
        self.hashers = Hashers(self.file.expected, self.file.size)
        self.hashed = 0
        self.hash_idx = 0
        self.hashing = False

    def remaining(self) -> int:
        if self.file.size is None:
            return 0
        return self.file.size - sum(c.done for c in self.state.chunks)

    def allocated(self) -> int:
        try:
            return self.part.stat().st_blocks * 512
        except OSError:
            return 0

    def open(self) -> None:
        with self.lock:
            if self.fd is None:
                self.part.parent.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
                if self.writeback is not None:
                    self.wb_fd = os.dup(self.fd)  # the writeback thread's own, closed by it

    def _frontier(self) -> int:
        """End of the contiguous bytes written from offset 0 (caller holds the lock)."""
        chunks = self.state.chunks
        while self.hash_idx < len(chunks) and chunks[self.hash_idx].complete():
            self.hash_idx += 1
        if self.hash_idx == len(chunks):
            return chunks[-1].end
        c = chunks[self.hash_idx]
        return c.start + c.done

    def write(self, c: Chunk, gen: int, pos: int, block: bytes) -> int:
        """Write a received block of chunk `c` at `pos`, cut at the chunk's end (which a split may have
        moved closer); returns the bytes written, -1 when the file was restarted under us (drop the task).
        A split never moves an end below the owner's position + BLOCK_MAX and pieces are at most
        BLOCK_MAX, so what is written never overlaps bytes of the new chunk."""
        if len(block) <= BLOCK_MAX:
            return self._write_piece(c, gen, pos, block)
        view, total = memoryview(block), 0
        for off in range(0, len(block), BLOCK_MAX):
            n = self._write_piece(c, gen, pos + off, view[off : off + BLOCK_MAX])
            if n < 0:
                return n
            total += n
            if n < min(BLOCK_MAX, len(block) - off):
                break
        return total

    def _write_piece(self, c: Chunk, gen: int, pos: int, block) -> int:
        with self.lock:
            if gen != self.generation:
                return -1
            end = c.end
        if end >= 0 and len(block) > end - pos:
            block = block[: max(0, end - pos)]
        if not block:
            return 0
        view = memoryview(block)
        off = pos
        while view:
            n = os.pwrite(self.fd, view, off)
            view, off = view[n:], off + n
        with self.lock:
            if gen != self.generation:
                return -1
            before = c.done
            c.done += len(block)
            inline = not self.hashing and pos == self.hashed
            wb_fd = self.wb_fd
            if inline:
                self.hashing = True
        if wb_fd is not None:  # writeback of each chunk's bytes as they come, every WRITEBACK and at its end
            a, b = before // WRITEBACK * WRITEBACK, c.done // WRITEBACK * WRITEBACK
            if c.complete():
                b = c.end - c.start
            if b > a:
                self.writeback.start(wb_fd, c.start + a, b - a)
        if inline:  # the block is in memory and next in line: hash it without reading it back
            try:
                self.hashers.update(block)
            finally:
                with self.lock:
                    self.hashed += len(block)
                    self.hashing = False
        else:
            self.catch_up(once=True)
        self.maybe_flush()
        return len(block)

    def _release_wb_fd(self) -> None:
        with self.lock:
            fd, self.wb_fd = self.wb_fd, None
        if fd is not None:
            self.writeback.release(fd)

    def split_largest(self) -> tuple[Chunk, int] | None:
        """Cut the chunk in flight with the most bytes left in two; returns the new second half (now part
        of the plan) and the generation, or None when no chunk has enough left to be worth a request."""
        with self.lock:
            if self.finishing or not self.state.ranges:
                return None
            best, left = -1, 2 * STEAL_MIN - 1
            for i in range(self.hash_idx, len(self.state.chunks)):
                c = self.state.chunks[i]
                rest = c.end - (c.start + c.done) - BLOCK_MAX  # what the owner lacks beyond its next block
                if c.end >= 0 and rest > left:
                    best, left = i, rest
            if best < 0:
                return None
            c = self.state.chunks[best]
            mid = c.end - left // 2
            new = Chunk(mid, c.end)
            c.end = mid
            self.state.chunks.insert(best + 1, new)  # kept in offset order: the hash frontier walks it
            return new, self.generation

    def catch_up(self, once: bool = False) -> None:
        """Hash written bytes beyond the hashed prefix by reading them back (they are in page cache)."""
        while True:
            with self.lock:
                if self.hashing:
                    return
                a, b = self.hashed, self._frontier()
                if a >= b:
                    return
                b = min(b, a + HASH_READ)
                self.hashing = True
                gen = self.generation
            try:
                data = os.pread(self.fd, b - a, a)
                if len(data) != b - a:
                    raise JobError(f"staged file {self.part} is shorter than its sidecar says")
                self.hashers.update(data)
            finally:
                with self.lock:
                    if gen == self.generation:
                        self.hashed = b
                    self.hashing = False
            if once:
                return

    def maybe_flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_flush < FLUSH_S:
            return
        if not self.flush_lock.acquire(blocking=force):
            return
        try:
            if self.fd is None:  # finished (or never opened): the sidecar is final
                return
            self.last_flush = now
            with self.lock:
                snap = PartState(
                    self.state.url,
                    self.state.size,
                    self.state.identity,
                    self.state.ranges,
                    [replace(c) for c in self.state.chunks],
                )
            snap.save(self.sidecar)
        finally:
            self.flush_lock.release()

    def restart(self, gen: int) -> int | None:
        """Start the file over as one stream from zero; returns the new generation (None if already done)."""
        with self.lock:
            if gen != self.generation:
                return None
            self.generation += 1
            self.restarts += 1
            self.state.ranges = False
            self.state.chunks = plan_chunks(self.file.size, False, 1)
            self._reset_hash()
            os.ftruncate(self.fd, 0)
            return self.generation

    def task(self, gen: int | None = None) -> list[tuple]:
        """(job, chunk, generation) for every chunk of the plan."""
        with self.lock:
            return [(self, c, self.generation if gen is None else gen) for c in self.state.chunks]

    def all_complete(self) -> bool:
        with self.lock:
            return all(c.complete() for c in self.state.chunks)

    def finish(self) -> Done:
        """Hash what is left, check size and checksums, then rename into place (or discard)."""
        while True:
            self.catch_up()
            with self.lock:
                if not self.hashing and self.hashed >= self._frontier():
                    break
            time.sleep(0.005)
        self._release_wb_fd()
        os.fsync(self.fd)
        size = os.fstat(self.fd).st_size
        os.close(self.fd)
        self.fd = None
        f = self.file
        if f.size is not None and size != f.size:
            self._discard()
            raise JobError(f"{f.url}: got {size} bytes, expected {f.size}")
        digests = self.hashers.hexdigests()
        if bad := mismatch(f.expected, digests):
            self._discard()
            raise VerifyError(
                f"checksum mismatch for {f.path} ({bad}; expected value from "
                f"{f.expected_from}); not moved into place, partial data discarded"
            )
        self.final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part, self.final)
        # The sidecar stays, marked done, so a kill before the manifest is saved loses nothing.
        done = PartState(f.url, size, f.identity, self.state.ranges, [], digests["sha256"])
        with self.flush_lock:  # after any in-flight progress flush, never before
            done.save(self.sidecar)
        return Done(f, digests["sha256"], size)

    def _discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):  # disk full: the previous sidecar is still valid, only older
                self.maybe_flush(force=True)
            self._release_wb_fd()
            os.close(self.fd)
            self.fd = None


class VerifyError(JobError):
    """A file arrived but its checksum disagrees; the others still complete."""


class Engine:
    def __init__(
        self,
        source: Source,
        jobs: list[FileJob],
        connections: int,
        stats: Stats,
        on_bytes: Callable[[int], None],
        on_done: Callable[[Done], None],
    ) -> None:
        self.source = source
        self.jobs = jobs
        self.connections = max(1, connections)
        self.stats = stats
        self.on_bytes = on_bytes
        self.on_done = on_done
        self.q: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.pending = len(jobs)
        self.all_done = threading.Event()
        self.fatal: BaseException | None = None
        self.verify_errors: list[str] = []
        self.finishers = ThreadPoolExecutor(2, thread_name_prefix="fetch-finish")
        self.writeback = Writeback() if _SYNC_FILE_RANGE is not None and jobs else None
        for job in jobs:
            job.writeback = self.writeback

    def run(self) -> None:
        # Biggest files first so that the many small ones fill the tail.
        for job in sorted(self.jobs, key=lambda j: -(j.file.size or 0)):
            for task in job.task(0):
                self.q.put(task)
        if not self.jobs:
            return
        # Every connection when a chunk can be split for it; else one per task is enough.
        splittable = any(j.state.ranges and j.remaining() > 2 * STEAL_MIN + BLOCK_MAX for j in self.jobs)
        n = self.connections if splittable else min(self.connections, self.q.qsize())
        workers = [threading.Thread(target=self._worker, name=f"fetch-{i}", daemon=True) for i in range(n)]
        for w in workers:
            w.start()
        try:
            while not self.all_done.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.stop.set()
            raise
        finally:
            self.stop.set()
            for _ in workers:
                self.q.put(None)
            for w in workers:
                w.join()
            self.finishers.shutdown(wait=True)
            for job in self.jobs:
                job.close()
            if self.writeback is not None:
                self.writeback.stop()
        if self.fatal:
            raise self.fatal
        if self.verify_errors:
            more = f" (and {len(self.verify_errors) - 1} more)" if len(self.verify_errors) > 1 else ""
            raise JobError(self.verify_errors[0] + more)

    def _fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.fatal is None:
                self.fatal = exc
        self.stop.set()
        self.all_done.set()

    def _next(self) -> tuple | None:
        """A queued task, else the second half of the largest chunk in flight; None when stopping."""
        while not self.stop.is_set():
            try:
                return self.q.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                pass
            for job in sorted(self.jobs, key=lambda j: -j.remaining()):
                if job.remaining() <= 2 * STEAL_MIN + BLOCK_MAX:
                    break  # this and the rest have too little left to split
                split = job.split_largest()
                if split is not None:
                    self.stats.add(splits=1)
                    return (job, *split)
        return None

    def _worker(self) -> None:
        while not self.stop.is_set():
            task = self._next()
            if task is None:
                return
            job, chunk, gen = task
            with self._guard(job):
                job.open()
                if self._run_chunk(job, chunk, gen) and job.all_complete():
                    with job.lock:  # exactly one thread finishes a file
                        if job.finishing:
                            continue
                        job.finishing = True
                    # Hash catch-up, fsync and rename off the connection's path: it goes back to fetching.
                    self.finishers.submit(self._finish, job)

    @contextlib.contextmanager
    def _guard(self, job: FileJob):
        """Turn any failure in a worker into the run's one error and stop the others."""
        try:
            yield
        except JobError as exc:
            self._fail(exc)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._fail(
                    JobError(
                        f"out of disk space writing {job.part}; what was fetched is kept in "
                        f"{staging_dir(job.dest)} for the next run to resume"
                    )
                )
            else:
                self._fail(JobError(f"cannot write {job.part}: {exc.strerror}"))
        except BaseException as exc:  # a bug: stop everything rather than hang
            self._fail(exc)

    def _finish(self, job: FileJob) -> None:
        with self._guard(job):
            try:
                self.on_done(job.finish())
            except VerifyError as exc:
                with self.lock:
                    self.verify_errors.append(str(exc))
            with self.lock:
                self.pending -= 1
                if self.pending == 0:
                    self.all_done.set()

    def _run_chunk(self, job: FileJob, c: Chunk, gen: int) -> bool:
        """Fetch one chunk to its end (which a split may move closer); True when it is complete (False:
        dropped or stopped)."""
        backoff = Backoff()
        mismatches = 0
        while not self.stop.is_set():
            with job.lock:
                if gen != job.generation:
                    return False
                start, end, done = c.start, c.end, c.done
            pos = start + done
            if end >= 0 and pos >= end:
                return True
            try:
                if pos > 0 and not job.resumable:
                    raise RestartFile(f"{job.file.url}: no ETag, Last-Modified or checksum to resume by")
                real, blocks = self.source.read(job.file, pos, end if end >= 0 else None)
                try:
                    if real != pos:
                        raise RestartFile(f"{job.file.url}: server ignored the Range request")
                    for block in blocks:
                        if self.stop.is_set():
                            return False
                        if end >= 0 and len(block) > end - pos and end == job.file.size:
                            raise SizeMismatch(f"the server sent more than the {end} bytes listed")
                        n = job.write(c, gen, pos, block)
                        if n < 0:
                            return False
                        pos += n
                        if n:
                            self.stats.add(bytes_moved=n)
                            self.on_bytes(n)
                            backoff.progressed()
                        end = c.end  # a split may have moved it closer: stop there, the rest is another's
                        if not block or (end >= 0 and pos >= end):
                            break
                finally:
                    getattr(blocks, "close", lambda: None)()  # release the connection early
                if end < 0:  # unknown size: the stream's end is the file's end
                    with job.lock:
                        c.end = pos
                    return True
                if pos < end:
                    raise TransientError(f"{job.file.url}: connection closed at byte {pos} of {end}")
                return True
            except RestartFile as exc:
                new = job.restart(gen)
                if new is not None:
                    if job.restarts > MAX_RESTARTS:
                        raise JobError(
                            f"{job.file.url}: giving up after restarting it from zero "
                            f"{MAX_RESTARTS} times ({exc})"
                        ) from None
                    self.stats.add(restarts=1)
                    for task in job.task(new):
                        self.q.put(task)
                return False
            except SizeMismatch as exc:
                mismatches += 1  # never reset by progress: bytes of a file of the wrong size are no progress
                if mismatches > MAX_MISMATCHES:
                    raise JobError(
                        f"{job.file.url}: its size disagrees ({exc}) after {MAX_MISMATCHES} retries; "
                        "if the file is changing on the server, run again to fetch its current "
                        "version"
                    ) from None
                self.stats.add(retries=1)
                backoff.wait(self.stop)
            except TransientError as exc:
                self.stats.add(retries=1)
                if not backoff.wait(self.stop):
                    raise JobError(
                        f"giving up after {backoff.attempts} tries without progress: {exc}"
                    ) from None
        return False
