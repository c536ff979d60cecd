"""What the Python client keeps to resume after a cut: its pubs and its positions.

Internal, no I/O.  Two records, one per direction (docs/recovery.md):

* :class:`Unconfirmed`: every ``pub`` the hub has not acknowledged yet,
  numbered 1, 2, 3, ... for the client's publisher session.  On each new
  connection the client sends them all again, oldest first; the hub drops
  those it had applied already (by session and number) and acknowledges
  them again.  The hub's ``ack`` is cumulative: ack ``n`` confirms every
  pub up to ``n``.
* :class:`Positions`: the last ``pos`` each subscription received (or its
  ``sub`` ack's starting position).  On each new connection the client
  subscribes again with ``since`` set to it, and judges the hub's answer:
  replayed (``recovered: true``), or a gap to report.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .._logging import LogLimiter
from ..exceptions import RecoveryFailed
from ..history import is_kept

__all__ = ["Positions", "Resubscribed", "Unconfirmed"]

logger = logging.getLogger("greenbus.bridge.client")


class Unconfirmed:
    """Pubs the hub has not acknowledged, by number, oldest first.

    While the client is connected they are unbounded, like its outgoing
    queue (the hub's acks keep up, or the hub is a slow reader and TCP pushes
    back).  While it is disconnected, :meth:`trim` keeps at most ``limit``:
    past that the oldest are dropped (never sent), counted and logged.

    Args:
        limit: pubs kept at most while disconnected (``max_buffer``).
        name: the client's name, for the log.
    """

    __slots__ = (
        "_frames",
        "_handed",
        "_limit",
        "_log",
        "_next",
        "dropped",
        "name",
        "too_big",
        "withdrawn",
    )

    def __init__(self, limit: int, name: str) -> None:
        self._frames: OrderedDict[int, bytes] = OrderedDict()
        self._limit = limit
        self._log = LogLimiter(logger)
        self._next = 0
        # The highest number handed to a connection so far.
        self._handed = 0
        self.name = name
        #: Pubs dropped, never sent, because ``limit`` were waiting.
        self.dropped = 0
        #: Pubs taken back by a sender that gave up on them (a request's).
        self.withdrawn = 0
        #: Pubs the hub refused as over its ``max_message_size``.
        self.too_big = 0

    def __len__(self) -> int:
        return len(self._frames)

    def number(self) -> int:
        """The next pub's number: 1, 2, 3, ... for the session's life."""
        self._next += 1
        return self._next

    def add(self, number: int, frame: bytes) -> None:
        """Keep ``frame``, pub ``number``, until it is confirmed."""
        self._frames[number] = frame

    def handed(self, number: int) -> None:
        """Pub ``number`` (and every one before it) was given to a connection."""
        self._handed = number

    def confirm(self, upto: int) -> int:
        """The hub acknowledged every pub up to ``upto``; how many that confirmed."""
        frames = self._frames
        confirmed = 0
        while frames:
            number = next(iter(frames))
            if number > upto:
                break
            del frames[number]
            confirmed += 1
        return confirmed

    def refuse(self, number: int) -> bool:
        """The hub refused pub ``number`` (an ``error``): never send it again."""
        return self._frames.pop(number, None) is not None

    def over(self, limit: int) -> list[tuple[int, int]]:
        """The hub refuses frames over ``limit`` bytes: drop every such pub (never
        sent again); their numbers and sizes, oldest first."""
        refused = [(number, len(f)) for number, f in self._frames.items() if len(f) > limit]
        for number, _ in refused:
            del self._frames[number]
        self.too_big += len(refused)
        return refused

    def withdraw(self, frame: bytes) -> bool:
        """Take ``frame`` back by identity (its sender gave up); True if it was here."""
        for number, waiting in self._frames.items():
            if waiting is frame:
                del self._frames[number]
                self.withdrawn += 1
                return True
        return False

    def resend(self) -> tuple[list[bytes], int]:
        """Every pub, oldest first, handed to a new connection; and how many of
        them a connection had before (sent again: the hub drops those it applied)."""
        frames = self._frames
        handed = self._handed
        again = sum(1 for number in frames if number <= handed)
        if frames:
            self._handed = next(reversed(frames))
        return list(frames.values()), again

    def trim(self) -> int:
        """While disconnected: drop the oldest beyond ``limit``; how many were dropped."""
        frames = self._frames
        dropped = 0
        while len(frames) > self._limit:
            frames.popitem(last=False)
            dropped += 1
        if dropped:
            self.dropped += dropped
            self._log.log(
                logging.WARNING,
                "%s: disconnected with %d unconfirmed message(s) waiting (max_buffer); "
                "dropping the oldest (%d dropped so far)",
                self.name,
                self._limit,
                self.dropped,
            )
        return dropped

    def take_all(self) -> list[bytes]:
        """Everything, oldest first; empty after it (the client is closing)."""
        frames = list(self._frames.values())
        self._frames.clear()
        return frames


@dataclass(frozen=True, slots=True)
class Resubscribed:
    """How a ``sub`` sent on a new connection went: what to report, if anything."""

    #: The hub replayed what the subscription missed.
    recovered: bool
    #: Messages may be missing: report it (None: nothing to report).
    failure: RecoveryFailed | None


class Positions:
    """Where each subscription stands: the last ``pos`` it received, by sid."""

    __slots__ = ("_asked", "_lost", "_pos", "_subscribed", "received")

    def __init__(self) -> None:
        self._pos: dict[int, str] = {}
        #: ``received(sid, pos)``: a message with ``pos`` arrived on ``sid``
        #: (once per message: the dict's own setter, no Python call).
        self.received: Callable[[int, str], None] = self._pos.__setitem__
        # Why the positions were dropped, by sid, until each resumes.
        self._lost: dict[int, str] = {}
        # Subscriptions a hub has answered before: the next sub is a resume.
        self._subscribed: set[int] = set()
        # What each sub in flight asked: sid -> since.
        self._asked: dict[int, str | None] = {}

    def __len__(self) -> int:
        return len(self._pos)

    def get(self, sid: int) -> str | None:
        """The position subscription ``sid`` has reached, or None."""
        return self._pos.get(sid)

    def start(self, sid: int, since: str) -> None:
        """Resume ``sid`` from ``since`` on its first ``sub`` (a position the user kept)."""
        self._pos[sid] = since
        self._subscribed.add(sid)

    def since(self, sid: int, pattern: str) -> str | None:
        """What the ``sub`` for ``sid`` sent now asks for (``since``); remembered for its ack.

        None for a first subscription, and for patterns a hub never keeps
        (``$`` topics, request inboxes).
        """
        since = self._pos.get(sid) if is_kept(pattern) else None
        self._asked[sid] = since
        return since

    def acked(
        self, sid: int, pattern: str, pos: str | None, recovered: bool | None
    ) -> Resubscribed:
        """The hub acknowledged the ``sub`` of ``sid``: record where it stands.

        A resumed subscription (one a hub had answered before) that was not
        replayed is a failure to report: the hub could not cover the gap, or
        it keeps no history, or no position was known.
        """
        since = self._asked.pop(sid, None)
        lost = self._lost.pop(sid, None)
        resumed = sid in self._subscribed
        self._subscribed.add(sid)
        if recovered:
            # Not the ack's position: the replay follows the ack, and a cut
            # before it ends must resume from the last message received.
            return Resubscribed(True, None)
        if pos is not None:
            self._pos[sid] = pos
        if not resumed or not is_kept(pattern):
            return Resubscribed(False, None)
        if lost is not None:
            why = lost
        elif since is None:
            why = "no position to resume from: the hub kept no history"
        elif recovered is False:
            why = "the hub's history does not cover the gap (too old, trimmed, or another epoch)"
        else:
            why = "the hub keeps no history"
        return Resubscribed(False, RecoveryFailed(pattern, since, why))

    def lose(self, reason: str) -> None:
        """Drop every position: each subscription starts afresh on its next
        ``sub``, and reports ``reason`` as its gap."""
        for sid in self._subscribed:
            self._lost[sid] = reason
        self._pos.clear()

    def forget(self, sid: int) -> None:
        """``sid`` was unsubscribed."""
        self._pos.pop(sid, None)
        self._subscribed.discard(sid)
        self._asked.pop(sid, None)
        self._lost.pop(sid, None)
