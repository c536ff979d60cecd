"""The Python client's backlog: publishes waiting for a connection, bounded.

Internal.  While the client is not connected, each emit's encoded ``pub``
frame waits here, oldest first, at most ``limit`` of them: past that the
oldest is dropped, counted, and logged through a rate-limited log.  A
request that gives up takes its frame back (:meth:`Backlog.withdraw`); what
a dead connection never wrote comes back to the front, in order
(:meth:`Backlog.requeue`); a new connection takes everything
(:meth:`Backlog.take_all`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

from .._logging import LogLimiter

__all__ = ["Backlog"]

logger = logging.getLogger("greenbus.bridge.client")


class Backlog:
    """At most ``limit`` encoded frames, oldest first.

    Args:
        limit: frames kept at most; the oldest is dropped past it.
        name: the client's name, for the log.
    """

    __slots__ = ("_frames", "_limit", "_log", "dropped", "name", "withdrawn")

    def __init__(self, limit: int, name: str) -> None:
        self._frames: deque[bytes] = deque()
        self._limit = limit
        self._log = LogLimiter(logger)
        self.name = name
        #: Frames dropped because the backlog was full.
        self.dropped = 0
        #: Frames taken back by the sender that gave up on them.
        self.withdrawn = 0

    def __len__(self) -> int:
        return len(self._frames)

    def append(self, frame: bytes) -> None:
        """Keep ``frame`` for the next connection, dropping the oldest past the limit."""
        self._frames.append(frame)
        self._trim()

    def requeue(self, frames: Iterable[bytes]) -> None:
        """Put ``frames`` (oldest first) back in front: they were never written."""
        self._frames.extendleft(reversed(list(frames)))
        self._trim()

    def withdraw(self, frame: bytes) -> bool:
        """Take ``frame`` back (its sender gave up on it); True if it was waiting here."""
        for i, waiting in enumerate(self._frames):
            if waiting is frame:
                del self._frames[i]
                self.withdrawn += 1
                return True
        return False

    def take_all(self) -> list[bytes]:
        """Everything waiting, oldest first; the backlog is empty after it."""
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def _trim(self) -> None:
        frames = self._frames
        while len(frames) > self._limit:
            frames.popleft()
            self.dropped += 1
            self._log.log(
                logging.WARNING,
                "%s: disconnected and the backlog is full (%d); dropping the oldest "
                "(%d dropped so far)",
                self.name,
                self._limit,
                self.dropped,
            )
