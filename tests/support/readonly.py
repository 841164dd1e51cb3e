"""A folder the job cannot write, even when the tests run as root (root ignores mode bits): the writer runs as
a subprocess without root's capabilities (`unprivileged_cmd`), never the pytest process under another uid."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def world_readable_tmp():
    """A temporary folder outside pytest's private (0700) tmp, so an unprivileged uid can reach it."""
    d = Path(tempfile.mkdtemp(prefix="readonly-test-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def unprivileged_cmd(cmd: list[str]) -> list[str]:
    """`cmd` as a process without the power to ignore file modes. As root: every capability dropped
    (util-linux's setpriv, bounding set emptied, so the exec gains none), so uid 0 obeys mode bits like any
    user while still reaching the interpreter, the checkout and the tokenizer wherever root keeps them (a
    uid nobody cannot even start a python that lives under root's 0700 home). Not root: `cmd` as it is."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        import pytest

        pytest.skip("setpriv (util-linux) is needed to run the writer without root's capabilities")
    return [
        "setpriv",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--no-new-privs",
        *cmd,
    ]
