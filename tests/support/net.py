"""Ports on 127.0.0.1 for the servers tests start."""

from __future__ import annotations

import random
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


_TAKEN: set[int] = set()


def rendezvous_port() -> int:
    """A free port below Linux's ephemeral range (32768+), so that the outgoing connections of
    concurrent runs cannot take it between this check and the rendezvous binding it; never the
    same one twice in this process."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        if port in _TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port
