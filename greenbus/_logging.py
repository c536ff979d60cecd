"""Log lines that a flood cannot multiply: a token bucket per kind of event.

Internal.  Every refusal, drop and failure is logged (docs/limits.md), but a
peer that sends a million forbidden frames must not write a million lines:
a :class:`LogLimiter` lets ``burst`` lines through at once and then
``rate`` per second, and the next line it lets through says how many it held
back, so the log stays truthful.  The counters (``/metrics``) count every
event whatever the log shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LogLimiter"]


class LogLimiter:
    """Let ``burst`` log lines through, then ``rate`` per second; count the rest.

    Args:
        logger: where the lines go.
        rate: lines per second, on average, once the burst is spent.
        burst: lines let through at once.
        clock: seconds, monotonic (tests pass their own).
    """

    __slots__ = ("_burst", "_clock", "_last", "_logger", "_rate", "_tokens", "held_back")

    def __init__(
        self,
        logger: logging.Logger,
        rate: float = 10.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        #: Lines held back since the last one let through.
        self.held_back = 0

    def log(self, level: int, message: str, *args: Any) -> bool:
        """Log ``message % args`` at ``level`` if the bucket allows; True if it did.

        A line let through after some were held back ends with how many.
        Costs nothing more than a clock read when the level is disabled.
        """
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            self.held_back += 1
            return False
        self._tokens -= 1.0
        if self.held_back:
            message += " (%d similar line(s) held back)"
            args = (*args, self.held_back)
            self.held_back = 0
        self._logger.log(level, message, *args)
        return True
