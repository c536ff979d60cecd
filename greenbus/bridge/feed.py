"""The hub's way to its peers: each message encoded, positioned and routed once.

One :class:`Feed` per hub.  One raw forward on ``>`` sees every message the
hub's bus carries (published by a peer, emitted by local code, or arriving
from a federation), and for each, inside that emit:

1. encodes it once: the ``msg`` frame body every peer shares;
2. records it in the hub's :class:`~greenbus.history.History`, if history
   is on, which gives it its position (``pos``).  A message no peer wants
   now is kept as emitted, and encoded only if a replay ever needs it;
3. hands it to the :class:`Route` of every peer subscription whose pattern
   matches, in the order they were made.

Positioning and routing are one step, so every peer receives messages in
position order, and a replay (:meth:`Feed.replay`) taken in the same
greenlet step as a new route is followed by exactly the live messages after
it: no gap, no duplicate.

A route holds the bus's interest in its pattern (:meth:`Bus.hold_interest
<greenbus.Bus.hold_interest>`), so a federation asks its broker for what the
hub's peers want.  The feed knows no connections: a route's sink (a peer's)
queues the frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .._logging import LogLimiter
from ..acl import INBOX_PREFIX
from ..bus import Bus
from ..exceptions import BusClosed, LocalProtocolError
from ..history import History, Position
from ..protocol import encode_msg_body, msg_with_pos
from ..subscription import Forward
from ..topics import TopicIndex
from .metrics import HubCounters

__all__ = ["Feed", "Route", "Sink"]

logger = logging.getLogger("greenbus.bridge.feed")

#: A route's sink: ``sink(topic, body, posbody)`` with the message's topic,
#: its ``msg`` body (UTF-8, after the sid), and the same body with ``"pos"``
#: (``body`` itself without a position).  Runs inside the emit: it must only
#: queue.  True if it queued the message.
Sink = Callable[[str, bytes, bytes], bool]


class Route:
    """One peer subscription's place in the feed.  Made by :meth:`Feed.route`."""

    __slots__ = ("_feed", "closed", "pattern", "public", "sink")

    def __init__(self, feed: Feed, pattern: str, sink: Sink, public: bool) -> None:
        self._feed = feed
        self.pattern = pattern
        self.sink = sink
        #: A wildcard route: request inboxes never reach it (only their owner's
        #: exact subscription does).
        self.public = public
        self.closed = False

    def __repr__(self) -> str:
        return f"<Route {self.pattern!r}{' closed' if self.closed else ''}>"

    def close(self) -> None:
        """Route nothing more here and release the interest.  Idempotent."""
        if not self.closed:
            self.closed = True
            self._feed.remove(self)


class Feed:
    """Every message of ``bus``, encoded and positioned once, to the routes that want it.

    Args:
        bus: the hub's bus.
        history: the hub's history (None: history is off, no positions).
        counters: the hub's counters (``encode_errors``).
        log: the hub's rate-limited log.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        history: History[bytes | tuple[Any, ...]] | None,
        counters: HubCounters,
        log: LogLimiter | None = None,
    ) -> None:
        self.bus = bus
        self.history: History[bytes | tuple[Any, ...]] | None = history
        self._counters = counters
        self._log = log if log is not None else LogLimiter(logger)
        self._index: TopicIndex[Route] = TopicIndex()
        self._forward: Forward | None = None

    def __repr__(self) -> str:
        return f"<Feed {self.bus.name} routes={len(self._index)} history={self.history!r}>"

    def start(self) -> None:
        """Take every message of the bus from now on.  Idempotent.

        Made before any peer's route, so a peer's messages and the
        history's positions follow the bus's order.
        """
        if self._forward is None:
            # interest=False: the feed's own catch-all must not ask a
            # federation for everything; each route holds its own pattern.
            self._forward = self.bus.forward(">", self._on_emit, interest=False, raw=True)

    def stop(self) -> None:
        """Take nothing more.  Idempotent; safe after the bus closed."""
        forward, self._forward = self._forward, None
        if forward is not None:
            try:
                forward.close()
            except BusClosed:
                pass

    # -- routes --------------------------------------------------------------------

    def route(self, pattern: str, sink: Sink, *, public: bool) -> Route:
        """Send every message matching ``pattern`` to ``sink`` from now on.

        Raises:
            InvalidTopic: malformed pattern.
        """
        route = Route(self, pattern, sink, public)
        self._index.add(pattern, route)
        try:
            self.bus.hold_interest(pattern)
        except BusClosed:
            pass
        return route

    def remove(self, route: Route) -> None:
        """Forget ``route``; :meth:`Route.close` calls it."""
        self._index.remove(route.pattern, route)
        try:
            self.bus.release_interest(route.pattern)
        except BusClosed:
            pass

    def __len__(self) -> int:
        return len(self._index)

    # -- positions -----------------------------------------------------------------

    def head(self) -> str | None:
        """The position a route made now starts after (None: history is off)."""
        return None if self.history is None else str(self.history.head())

    def replay(self, pattern: str, since: Position) -> list[tuple[str, bytes]] | None:
        """The kept messages matching ``pattern`` after ``since``: ``(topic, msg
        body with pos)`` in position order, as :meth:`History.replay` (None
        when it cannot cover the gap, or history is off).

        Call it in the same greenlet step as :meth:`route` (no switch in
        between), and the route's live messages follow the replay exactly.
        A kept message that cannot be encoded is left out and counted (as it
        was for the live peers).
        """
        if self.history is None:
            return None
        replay = self.history.replay(pattern, since)
        if replay is None:
            return None
        out = []
        for position, value in replay:
            if isinstance(value, bytes):
                body: bytes | None = value
                topic = pattern  # for logs: the body has it already
            else:
                body = self._encode(value)
                topic = value[0]
            if body is not None:
                out.append((topic, msg_with_pos(body, str(position))))
        return out

    # -- every message -------------------------------------------------------------

    def _on_emit(self, item: tuple[Any, ...]) -> bool:
        # The forward's sink, inside bus.emit: never blocks, never switches.
        topic = item[0]
        routes = self._index.match(topic)
        history = self.history
        if not routes:
            if history is not None:
                history.record(topic, item)  # encoded if a replay needs it
            return False
        body = self._encode(item)
        if body is None:
            return False
        posbody = body
        if history is not None:
            seq = history.record(topic, body)
            if seq:
                posbody = msg_with_pos(body, history.position_text(seq))
        queued = False
        if topic.startswith(INBOX_PREFIX):
            # A reply: only its owner's exact subscription may see it.
            for route in routes:
                if not route.public and route.sink(topic, body, posbody):
                    queued = True
        else:
            for route in routes:
                if route.sink(topic, body, posbody):
                    queued = True
        return queued

    def _encode(self, item: tuple[Any, ...]) -> bytes | None:
        # The msg body of ``item``; None (counted, logged) if it is not JSON.
        try:
            return encode_msg_body(item[0], item[1], item[2] or None, item[3]).encode()
        except (LocalProtocolError, UnicodeEncodeError) as exc:
            self._counters.encode_errors += 1
            self._log.log(logging.ERROR, "message on %r not sent to peers: %s", item[0], exc)
            return None
