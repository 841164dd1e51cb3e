"""Retries with exponential backoff and full jitter; the budget resets whenever bytes arrive."""

from __future__ import annotations

import random
import time


class TransientError(Exception):
    """A failure worth retrying: timeout, reset, 5xx, a short read."""


class RestartFile(Exception):
    """The server ignored a Range request (a 200 reply) or the file changed: restart it from zero."""


class SizeMismatch(Exception):
    """The sizes a source reports (HEAD or listing, Content-Range, Content-Length, bytes received)
    disagree. Retried a few times per file, on a budget that progress does not refill."""


class Backoff:
    attempts = 8  # consecutive failures without progress before giving up
    base = 0.5  # seconds; the n-th wait is uniform in [0, min(cap, base * 2**(n-1))]
    cap = 30.0

    def __init__(
        self, attempts: int | None = None, base: float | None = None, cap: float | None = None
    ) -> None:
        # Given values override the class's for this instance only (tests shorten the class's base).
        for name, value in (("attempts", attempts), ("base", base), ("cap", cap)):
            if value is not None:
                setattr(self, name, value)
        self.failures = 0

    def progressed(self) -> None:
        self.failures = 0

    def delay(self) -> float | None:
        """Count a failure; the seconds to wait before the next try, None when the budget is spent."""
        self.failures += 1
        if self.failures > self.attempts:
            return None
        return random.uniform(0, min(self.cap, self.base * 2 ** (self.failures - 1)))

    def wait(self, stop=None) -> bool:
        """Sleep before the next try; False when the budget is spent."""
        delay = self.delay()
        if delay is None:
            return False
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)
        return True
