"""Deadlines for every connection of a gevent hub, on one libev timer.

A connection's keepalive and the deadline of its closing handshake are
entries in one heap per gevent hub (OS thread), served by one timer armed
for the earliest entry, instead of a ``Timeout`` (a timer and a pending
exception) or a ``spawn_later`` greenlet per connection.  An entry is
cheap to make and to cancel (it stays in the heap, without its callback,
until its time); its callback runs in the hub greenlet, so it must never
block: it may queue frames, spawn a greenlet, close a socket.

A connection whose deadline moves with every read (the keepalive) does not
move its entry: it notes the time of the read, and the callback, when it
runs, schedules the next entry from that time.  Things that park and wake
often (a connection's writer between bursts) go in a :class:`Lingering`
set instead: one entry sweeps them all.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import gevent

__all__ = ["Deadline", "Deadlines", "Lingering", "call_later", "deadlines"]

logger = logging.getLogger("greenbus.bridge.deadlines")


class Deadline:
    """A callback due at a time of ``time.monotonic()`` (see :class:`Deadlines`)."""

    __slots__ = ("_owner", "callback", "seq", "when")

    def __init__(
        self, owner: Deadlines, when: float, seq: int, callback: Callable[[], object]
    ) -> None:
        self._owner = owner
        #: When it is due (``time.monotonic()``), and its place among equals.
        self.when = when
        self.seq = seq
        #: What runs then, in the hub greenlet; None once run or cancelled.
        self.callback: Callable[[], object] | None = callback

    def __lt__(self, other: Deadline) -> bool:
        return self.when < other.when or (self.when == other.when and self.seq < other.seq)

    def __repr__(self) -> str:
        state = "pending" if self.callback is not None else "done"
        return f"<Deadline at {self.when:.3f} {state}>"

    def cancel(self) -> None:
        """Never run it.  Idempotent; a no-op once it ran."""
        if self.callback is not None:
            self.callback = None
            self._owner.cancelled()


class Deadlines:
    """The deadlines of every connection of one gevent hub, served by one libev timer.

    A heap of :class:`Deadline` entries; the timer is armed for the earliest.
    Callbacks run in the hub greenlet, so they must not block: they may
    queue frames, spawn, close a socket.  A cancelled entry keeps no
    reference to its callback; it leaves the heap when its time comes, or
    when the cancelled entries are over half the heap.  The timer does not
    keep the loop alive (``ref=False``).  See :func:`deadlines`.

    Args:
        loop: the gevent hub's loop.
    """

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        #: The clock of every ``when``: monotonic, as libev's timers are
        #: (``loop.now()`` follows the wall clock).
        self.now: Callable[[], float] = time.monotonic
        self._heap: list[Deadline] = []
        self._seq = itertools.count()
        self._timer: Any = None
        self._armed = math.inf
        self._firing = False
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def __repr__(self) -> str:
        return f"<Deadlines pending={len(self)} armed={self._armed:.3f}>"

    def call_at(self, when: float, callback: Callable[[], object]) -> Deadline:
        """Run ``callback()`` in the hub greenlet once ``now() >= when``."""
        entry = Deadline(self, when, next(self._seq), callback)
        heapq.heappush(self._heap, entry)
        if when < self._armed and not self._firing:
            self._arm(when)
        return entry

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Deadline:
        """Run ``callback()`` in the hub greenlet ``seconds`` from now."""
        return self.call_at(self.now() + seconds, callback)

    def cancelled(self) -> None:
        """Note an entry cancelled (:meth:`Deadline.cancel` calls it)."""
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > 64 and self._cancelled * 2 > len(heap) and not self._firing:
            heap[:] = [entry for entry in heap if entry.callback is not None]
            heapq.heapify(heap)
            self._cancelled = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.close()
        self._armed = when
        self._timer = self._loop.timer(max(0.0, when - self.now()), ref=False)
        self._timer.start(self._fire, update=True)

    def _fire(self) -> None:
        self._armed = math.inf
        heap = self._heap
        now = self.now()
        self._firing = True
        try:
            while heap and heap[0].when <= now:
                entry = heapq.heappop(heap)
                callback = entry.callback
                if callback is None:
                    self._cancelled -= 1
                    continue
                entry.callback = None
                try:
                    callback()
                except Exception:
                    logger.exception("deadline %r failed", callback)
        finally:
            self._firing = False
        if heap:
            self._arm(heap[0].when)


_deadlines: weakref.WeakKeyDictionary[object, Deadlines] = weakref.WeakKeyDictionary()


def deadlines() -> Deadlines:
    """The current gevent hub's :class:`Deadlines`, made on first use."""
    hub = gevent.get_hub()
    found = _deadlines.get(hub)
    if found is None:
        found = _deadlines[hub] = Deadlines(hub.loop)
    return found


def call_later(seconds: float, callback: Callable[[], object]) -> Deadline:
    """Run ``callback()`` in the hub greenlet after ``seconds``; cancel with ``.cancel()``.

    One libev timer per gevent hub serves every such call (and every
    connection's keepalive), so a per-connection deadline costs a small
    heap entry, not a greenlet and a timer.  ``callback`` must not block.
    """
    return deadlines().call_later(seconds, callback)


class Lingering:
    """Things parked since a time, the longest parked first; one sweep lets go of the old ones.

    :meth:`park` and :meth:`unpark` cost a dict insert and delete; one
    deadline at a time (at most four per ``linger`` seconds, however the
    parks spread) calls ``let_go(thing)`` for each thing parked ``linger``
    seconds or more, in the hub greenlet (it must not block).

    Args:
        linger: seconds parked before a thing is let go.
        let_go: what to do with it then.
    """

    def __init__(self, linger: float, let_go: Callable[[Any], object]) -> None:
        self._linger = linger
        self._let_go = let_go
        self._parked: OrderedDict[Hashable, float] = OrderedDict()
        self._sweep: Deadline | None = None

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, thing: Hashable) -> None:
        """``thing`` parks now (it must not be parked already)."""
        self._parked[thing] = time.monotonic()
        if self._sweep is None:
            self._sweep = deadlines().call_later(self._linger, self._run)

    def unpark(self, thing: Hashable) -> None:
        """``thing`` is no longer parked (a no-op if it was let go)."""
        self._parked.pop(thing, None)

    def _run(self) -> None:
        self._sweep = None
        now = time.monotonic()
        linger = self._linger
        parked = self._parked
        while parked:
            thing, since = next(iter(parked.items()))
            if now - since < linger:
                break
            del parked[thing]
            try:
                self._let_go(thing)
            except Exception:
                logger.exception("letting %r go failed", thing)
        if parked:
            oldest = next(iter(parked.values()))
            when = max(oldest + linger, now + linger / 4)
            self._sweep = deadlines().call_at(when, self._run)
