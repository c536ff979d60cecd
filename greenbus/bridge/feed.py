"""The hub's way to its peers: each message encoded, positioned and routed once.

One :class:`Feed` per hub.  Each message for the hub's peers is encoded once
(the ``msg`` body every peer shares), given its position, and handed to the
:class:`Route` of every peer subscription whose pattern matches, in the
order the routes were made.  Where positions come from:

* **The hub's own history** (:class:`~greenbus.history.History`, in
  memory; the default).  One raw forward on ``>`` sees every message the
  hub's bus carries (published by a peer, emitted by local code, or
  arriving from a federation without history) and records it, inside that
  emit, then routes it.  A message no peer wants now is kept as emitted,
  and encoded only if a replay ever needs it.
* **A federation with history** (a :class:`RemoteLog`: one history in
  Redis for every hub).  The federation's reader hands the feed every
  message with the position Redis gave it, the hub's own included
  (:meth:`Feed.deliver`); the bus's forward then only brings the hub's own
  ``$`` topics.
* **None** (history off): messages are routed without positions.

Positioning and routing are one step, so every peer receives messages in
position order.  :meth:`Feed.open` makes a route and takes its starting
position and, for a resuming subscription, its replay, such that the
route's live messages follow the replay exactly: no gap, no duplicate.  With
the local history that is one greenlet step; with a remote log the route
holds its live messages while Redis answers (:meth:`Route.release`).

A route holds the bus's interest in its pattern (:meth:`Bus.hold_interest
<greenbus.Bus.hold_interest>`), so a federation asks its broker for what the
hub's peers want.  The feed knows no connections: a route's sink (a peer's)
queues the frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from .._logging import LogLimiter
from ..acl import INBOX_PREFIX
from ..bus import Bus
from ..exceptions import BusClosed, InvalidTopic, LocalProtocolError
from ..history import History, Position, is_kept
from ..protocol import encode_msg_body_utf8, msg_with_pos
from ..subscription import Forward
from ..topics import TopicIndex
from .metrics import HubCounters

__all__ = ["Feed", "FeedUnavailable", "Opened", "RemoteLog", "Route", "Sink"]

logger = logging.getLogger("greenbus.bridge.feed")

#: A route's sink: ``sink(topic, body, posbody)`` with the message's topic,
#: its ``msg`` body (UTF-8, after the sid), and the same body with ``"pos"``
#: (``body`` itself without a position).  Runs inside the emit (or the
#: federation's reader): it must only queue.  True if it queued the message.
Sink = Callable[[str, bytes, bytes], bool]

#: Live messages a route holds at most while it opens (Redis answering).
MAX_HELD = 100_000


class RemoteLog(Protocol):
    """A history shared by several hubs: a federation with history.

    :class:`~greenbus.federation.Federation` is one.
    """

    def snapshot(
        self, pattern: str, since: Position | None, timeout: float
    ) -> tuple[str, list[tuple[tuple[Any, ...], str]] | None]:
        """The head position, and the messages matching ``pattern`` after
        ``since`` up to it (None: the gap cannot be covered).  May wait."""
        ...

    def publish_durable(
        self,
        item: tuple[Any, ...],
        session: str | None,
        number: int | None,
        done: Callable[[str | None], None],
    ) -> None:
        """Publish ``item``; ``done(None)`` once it is in the history
        (``done(reason)`` if it was refused).  Never blocks."""
        ...

    def add_feed_listener(self, deliver: Callable[[tuple[Any, ...], str | None], object]) -> None:
        """Call ``deliver(item, pos)`` for every message, in the history's order."""
        ...

    def add_lost_listener(self, lost: Callable[[], object]) -> None:
        """Call ``lost()`` when messages may have missed the feed (Redis was away)."""
        ...


class FeedUnavailable(Exception):
    """The remote log could not answer a snapshot in time (Redis is away)."""


class Route:
    """One peer subscription's place in the feed.  Made by :meth:`Feed.open`."""

    __slots__ = ("_feed", "after", "closed", "held", "pattern", "public", "sink")

    def __init__(self, feed: Feed, pattern: str, sink: Sink, public: bool) -> None:
        self._feed = feed
        self.pattern = pattern
        self.sink = sink
        #: A wildcard route: request inboxes never reach it (only their owner's
        #: exact subscription does).
        self.public = public
        self.closed = False
        #: Until the caller sent the ack and the replay: the live messages,
        #: ``(seq, topic, body, posbody)`` (seq -1: no position).
        self.held: list[tuple[int, str, bytes, bytes]] | None = None
        #: The route's head: messages at or before it were replayed (or
        #: came before the route), and are never sent live.
        self.after = 0

    def __repr__(self) -> str:
        return f"<Route {self.pattern!r}{' closed' if self.closed else ''}>"

    def release(self) -> None:
        """Send the live messages held while the route opened (those after its head)."""
        held, self.held = self.held, None
        for seq, topic, body, posbody in held or ():
            if not 0 < seq <= self.after:
                self.sink(topic, body, posbody)

    def close(self) -> None:
        """Route nothing more here and release the interest.  Idempotent."""
        if not self.closed:
            self.closed = True
            self.held = None
            self._feed.remove(self)


@dataclass(frozen=True, slots=True)
class Opened:
    """A route just made, where it starts, and what it replays first."""

    route: Route
    #: The position the route starts after (None: no positions).
    head: str | None
    #: For a resuming subscription: whether the gap is replayed (None for a new one).
    recovered: bool | None
    #: ``(topic, msg body with pos)`` in position order, to send before the live ones.
    replay: list[tuple[str, bytes]]


class Feed:
    """Every message for the hub's peers, encoded and positioned once, to the routes.

    Args:
        bus: the hub's bus.
        history: the hub's own history (None: none, or a remote one).
        remote: a history shared with other hubs (a federation's); takes
            precedence over ``history``.
        counters: the hub's counters (``encode_errors``).
        log: the hub's rate-limited log.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        history: History[bytes | tuple[Any, ...]] | None,
        remote: RemoteLog | None = None,
        counters: HubCounters,
        log: LogLimiter | None = None,
    ) -> None:
        self.bus = bus
        self.history = None if remote is not None else history
        self.remote = remote
        self._counters = counters
        self._log = log if log is not None else LogLimiter(logger)
        self._index: TopicIndex[Route] = TopicIndex()
        self._forward: Forward | None = None
        if remote is not None:
            remote.add_feed_listener(self.deliver)

    def __repr__(self) -> str:
        source = "remote" if self.remote is not None else f"history={self.history!r}"
        return f"<Feed {self.bus.name} routes={len(self._index)} {source}>"

    def __len__(self) -> int:
        return len(self._index)

    def start(self) -> None:
        """Take the bus's messages from now on.  Idempotent.

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
            with suppress(BusClosed):
                forward.close()

    # -- routes --------------------------------------------------------------------

    def open(
        self,
        pattern: str,
        sink: Sink,
        *,
        public: bool,
        since: Position | None = None,
        timeout: float = 5.0,
    ) -> Opened:
        """Route every message matching ``pattern`` to ``sink`` from now on;
        where that starts, and, with ``since``, what came after it.

        The route holds its live messages until :meth:`Route.release`: send
        the ack and the replay first.  With the hub's own history the head
        and the replay are taken with the route, in one greenlet step; with
        a remote log this waits (up to ``timeout``) for Redis.

        Raises:
            InvalidTopic: malformed pattern.
            FeedUnavailable: the remote log did not answer in time.
            InvalidTopic: the remote log cannot serve ``pattern`` (over a
                Redis Cluster, a pattern whose first token is a wildcard).
        """
        # The route holds its live messages from the start: holding the bus's
        # interest may switch greenlets (a federation subscribing), and so
        # does waiting for Redis; the caller sends the ack and the replay
        # first, then releases what came meanwhile (only what came after
        # the head: the rest is in the replay).
        route = Route(self, pattern, sink, public)
        route.held = []
        self._index.add(pattern, route)
        remote = self.remote
        history = self.history
        head: str | None = None
        entries: list[tuple[Any, str]] | None = []
        if remote is None and history is not None:
            # The head and the replay in the same greenlet step as the route.
            position = history.head()
            head, route.after = str(position), position.seq
            if since is not None:
                found = history.replay(pattern, since)
                entries = None if found is None else [(value, str(p)) for p, value in found]
        with suppress(BusClosed):
            self.bus.hold_interest(pattern)
        if remote is not None and is_kept(pattern):
            try:
                head, got = remote.snapshot(pattern, since, timeout)
            except InvalidTopic:
                route.close()
                raise  # a pattern the remote log cannot serve (over a cluster)
            except Exception as exc:
                route.close()
                raise FeedUnavailable(f"no snapshot of {pattern!r} from Redis: {exc}") from exc
            route.after = Position.parse(head).seq
            entries = None if got is None else list(got)
        elif head is None or not is_kept(pattern):
            # No positions here: history off, or $ topics and inboxes.
            return Opened(route, head, None if since is None else False, [])
        if since is None:
            return Opened(route, head, None, [])
        if entries is None:
            return Opened(route, head, False, [])
        return Opened(route, head, True, self._encoded(entries))

    def remove(self, route: Route) -> None:
        """Forget ``route``; :meth:`Route.close` calls it."""
        self._index.remove(route.pattern, route)
        with suppress(BusClosed):
            self.bus.release_interest(route.pattern)

    def head(self) -> str | None:
        """The position of the last message of the hub's own history (None: no positions here)."""
        return None if self.history is None else str(self.history.head())

    def _encoded(self, entries: list[tuple[Any, str]]) -> list[tuple[str, bytes]]:
        # A replay's (value, pos) as (topic, msg body with pos).  A value is
        # a body (bytes) or an item kept as emitted; one that cannot be
        # encoded is left out and counted, as it was for the live peers.
        out = []
        for value, pos in entries:
            if isinstance(value, bytes):
                body: bytes | None = value
                topic = "(replay)"  # for logs: the body has it already
            else:
                body = self._encode(value)
                topic = value[0]
            if body is not None:
                out.append((topic, msg_with_pos(body, pos)))
        return out

    # -- every message -------------------------------------------------------------

    def _on_emit(self, item: tuple[Any, ...]) -> bool:
        # The forward's sink, inside bus.emit: never blocks, never switches.
        topic = item[0]
        if self.remote is not None and topic[0] != "$":
            return False  # it reaches the peers through Redis, positioned
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
        seq = -1
        if history is not None:
            seq = history.record(topic, body) or -1
            if seq > 0:
                posbody = msg_with_pos(body, history.position_text(seq))
        return self._route(routes, topic, body, posbody, seq)

    def deliver(self, item: tuple[Any, ...], pos: str | None) -> None:
        """A message from the remote log, with its position (None: not kept).

        The federation's reader calls it for every message, in Redis's
        order, this hub's own included.
        """
        topic = item[0]
        routes = self._index.match(topic)
        if not routes:
            return
        body = self._encode(item)
        if body is None:
            return
        if pos is None:
            self._route(routes, topic, body, body, -1)
        else:
            seq = int(pos.split(":", 2)[1])
            self._route(routes, topic, body, msg_with_pos(body, pos), seq)

    def _route(
        self, routes: tuple[Route, ...], topic: str, body: bytes, posbody: bytes, seq: int
    ) -> bool:
        queued = False
        # A reply: only its owner's exact subscription may see it.
        inbox = topic.startswith(INBOX_PREFIX)
        for route in routes:
            if (inbox and route.public) or 0 < seq <= route.after:
                # A reply is not for a wildcard; a message at or before the
                # route's head was in its replay (the federation's reader may
                # still bring it, being behind Redis's head).
                continue
            held = route.held
            if held is None:
                if route.sink(topic, body, posbody):
                    queued = True
            elif len(held) < MAX_HELD:
                held.append((seq, topic, body, posbody))
                queued = True
            else:
                self._counters.dropped += 1
                self._log.log(
                    logging.WARNING,
                    "route %r held %d messages waiting for Redis; dropping",
                    route.pattern,
                    MAX_HELD,
                )
        return queued

    def _encode(self, item: tuple[Any, ...]) -> bytes | None:
        # The msg body of ``item``, as bytes; None (counted, logged) if it is not JSON.
        try:
            return encode_msg_body_utf8(item[0], item[1], item[2] or None, item[3])
        except LocalProtocolError as exc:
            self._counters.encode_errors += 1
            self._log.log(logging.ERROR, "message on %r not sent to peers: %s", item[0], exc)
            return None
