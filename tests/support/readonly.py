"""A folder the job cannot write, even when the tests run as root (root ignores mode bits)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

NOBODY = 65534


@contextlib.contextmanager
def world_readable_tmp():
    """A temporary folder outside pytest's private (0700) tmp, so an unprivileged uid can reach it."""
    d = Path(tempfile.mkdtemp(prefix="readonly-test-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def unprivileged():
    """Run the body as uid nobody when the tests run as root; a no-op otherwise."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
