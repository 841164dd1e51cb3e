"""What every job shares: its one domain exception, the single place that maps errors to exit
codes, and progress reporting (a live bar on a terminal, a plain log line every few seconds
otherwise, as Kubernetes logs want)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class JobError(Exception):
    """A failure the user can act on: its message is the one line printed, naming the thing at fault."""


def run_main(prog: str, body: Callable[[], int | None], sigterm_unwinds: bool = False) -> int:
    """Run a job's body; turn JobError and Ctrl-C into one line on stderr and an exit code.

    With `sigterm_unwinds`, SIGTERM (how Kubernetes stops a pod) unwinds like Ctrl-C, so the job's
    cleanup (temporary files, resume sidecars) runs before it exits."""
    previous = signal.signal(signal.SIGTERM, _interrupt) if sigterm_unwinds else None
    try:
        return body() or EXIT_OK
    except JobError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if sigterm_unwinds:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def write_json_atomic(path: str | os.PathLike, payload: dict) -> None:
    """Write JSON to a temporary name beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other users of the volume (uid 1000 pods) read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary name beside `out`; on success it takes `out`'s place, on error it
    goes. With replace=False an existing `out` that holds anything is refused up front (one line), so a
    folder the user named is never deleted; an empty one is taken. While it is written the temporary
    folder holds an owner file (pid, host), so the leftovers of a killed run can be told apart from
    anyone else's (`stale_temporaries`)."""
    out = Path(out)
    if not replace and out.is_dir() and any(out.iterdir()):
        raise JobError(f"{out}: exists and is not empty; name a new folder (nothing in it was touched)")
    if not replace and out.exists() and not out.is_dir():
        raise JobError(f"{out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        yield tmp
        (tmp / OWNER).unlink()
        if out.exists() and replace:
            shutil.rmtree(out)
        elif out.is_dir():
            try:
                out.rmdir()  # only an empty folder: one filled meanwhile stays as it is
            except OSError:
                raise JobError(f"{out}: folder was filled while writing; nothing replaced") from None
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


OWNER = ".atomic-dir-owner.json"  # in atomic_dir's temporary folder while it is being written


def stale_temporaries(out: str | os.PathLike) -> list[tuple[Path, int]]:
    """atomic_dir's temporary folders beside `out` left by runs that were killed: (folder, pid) of those
    whose owner file names this host and a pid that is not running. Anything else (another host's, a live
    run's, a folder without the file) is not provably ours and stays."""
    from jobs.procs import pid_alive

    out = Path(out)
    found = []
    for d in out.parent.glob(f".{out.name}.*") if out.parent.is_dir() else []:
        try:
            owner = json.loads((d / OWNER).read_text())
            pid = int(owner["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner.get("host") == socket.gethostname() and pid != os.getpid() and not pid_alive(pid):
            found.append((d, pid))
    return found


def remove_temporary(tmp: Path) -> None:
    """The owner file goes last, so a removal cut short is finished by the next run."""
    for p in tmp.iterdir():
        if p.name != OWNER:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    (tmp / OWNER).unlink(missing_ok=True)
    tmp.rmdir()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of a job toward an optional total.

    On a terminal the line is redrawn in place at most `tty_interval` apart; otherwise one plain
    line is logged every `log_interval` seconds. `describe(done, total, rate, eta)` formats the
    body of the line, so each job chooses its own units.
    """

    def __init__(
        self,
        prog: str,
        describe: Callable[[float, float | None, float, float | None], str],
        total: float | None = None,
        stream: TextIO | None = None,
        log_interval: float = 5.0,
        tty_interval: float = 0.2,
    ) -> None:
        self.prog = prog
        self.describe = describe
        self.total = total
        self.done = 0.0
        self.stream = stream or sys.stderr
        self.is_tty = self.stream.isatty()
        self.interval = tty_interval if self.is_tty else log_interval
        self.start = time.monotonic()
        self._last = self.start

    def advance(self, amount: float) -> None:
        self.done += amount
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now)

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if self.total and rate > 0 else None
        return self.describe(self.done, self.total, rate, eta)

    def _emit(self, now: float) -> None:
        line = self._line(now)
        if self.is_tty:
            self.stream.write(f"\r\x1b[2K{self.prog}: {line}")
        else:
            self.stream.write(f"{self.prog}: {line}\n")
        self.stream.flush()

    def close(self) -> None:
        """Finish the live line (a terminal needs its newline); the caller prints the summary."""
        if self.is_tty:
            self._emit(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
