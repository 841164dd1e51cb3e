"""Questions about processes on this host."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True unless no process has this pid (one of another user, which we may not signal, is alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
