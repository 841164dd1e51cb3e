"""Ports on 127.0.0.1 for the servers tests start."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick; a test binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, what: str, timeout: float = 120.0) -> None:
    """Until something accepts connections on 127.0.0.1:port; a timeout names what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")
