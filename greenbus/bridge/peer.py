"""One remote peer attached to a bus: protocol events in, bus calls out.

The glue between a :class:`~greenbus.bridge.connection.Connection` (bytes
and frames) and a :class:`~greenbus.Bus` (routing), driven by the sans-I/O
:class:`~greenbus.session.HubSession`.  A remote ``pub`` is emitted on the
bus.  A remote ``sub`` becomes a :class:`~greenbus.bridge.feed.Route` of the
hub's :class:`~greenbus.bridge.feed.Feed`, whose sink appends the message,
encoded once per emit however many peers it goes to, to the peer's
:class:`~greenbus.bridge.outbox.Outbox`: the emitter never waits for the
peer, and every frame to one peer, whatever its sid, leaves in emit order.
A ``sub`` with ``since`` first gets the missed messages from the hub's
history (:class:`PeerSub` paces a long replay and holds the live messages
until it is over).  The peer's answers (``ack``, ``error``, ``pong``,
``welcome``) go through the same outbox and count toward the same limits
(:class:`PeerLimits`).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent

from .._attrs import readonly
from .._logging import LogLimiter
from .._options import check_int, check_seconds
from ..acl import InboxOwners
from ..bus import Bus
from ..exceptions import BusClosed, ChannelFull, InvalidOption, InvalidTopic
from ..history import Position, Publishers
from ..protocol import (
    MSG_SLACK,
    CloseCode,
    ErrorCode,
    Id,
    Pub,
    Sub,
    Unsub,
    msg_prefix,
)
from ..session import HubSession, SessionLimits, SessionState
from ..topics import is_wildcard
from .connection import Connection
from .deadlines import Deadline, call_later
from .feed import Feed, FeedUnavailable, Route
from .metrics import HubCounters
from .outbox import Outbox, OutboxLimits, SlowPolicy

__all__ = ["Peer", "PeerLimits", "PeerStatistics", "PeerSub"]

logger = logging.getLogger("greenbus.bridge.peer")

_peer_ids = itertools.count(1)

#: Refusals logged at WARNING (someone tried what they may not); the rest at INFO.
_SECURITY_CODES = frozenset({ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN})

#: Slow-consumer policies for a peer's outbound queue.
SLOW_POLICIES = tuple(p.value for p in SlowPolicy)


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """Per-peer limits on the hub (see docs/limits.md).

    Raises:
        InvalidOption: a value out of range (on construction).
    """

    #: Frames queued to the peer and not yet written, at most: messages and
    #: the hub's answers alike.
    max_pending: int = 10_000
    #: UTF-8 bytes of those frames, at most (one frame alone may exceed it;
    #: the writer holds up to 256 KiB more in flight).
    max_pending_bytes: int = 8 << 20
    #: What happens past either limit: "close" (error slow_consumer, close
    #: 1013) or "drop_oldest" (drop the oldest messages, and count them;
    #: close 1013 too when only answers are queued).
    slow_policy: str = "close"
    #: Seconds a peer has to send hello when a token is required.
    hello_timeout: float = 5.0
    session: SessionLimits = field(default_factory=SessionLimits)

    def __post_init__(self) -> None:
        if self.slow_policy not in SLOW_POLICIES:
            raise InvalidOption("slow_policy", self.slow_policy, f"one of {SLOW_POLICIES}")
        check_int("max_pending", self.max_pending)
        check_int("max_pending_bytes", self.max_pending_bytes)
        check_seconds("hello_timeout", self.hello_timeout)

    @property
    def outbox(self) -> OutboxLimits:
        """The limits of a peer's :class:`~greenbus.bridge.outbox.Outbox`."""
        return OutboxLimits(self.max_pending, self.max_pending_bytes, SlowPolicy(self.slow_policy))


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    id: str
    name: str | None
    address: str
    subscriptions: tuple[str, ...]
    #: Frames queued and not yet written, and their bytes.
    pending: int
    pending_bytes: int
    received: int
    #: Frames written to the socket.
    sent: int
    #: Messages never written (dropped, refused, cut off).
    dropped: int
    errors: int


class PeerSub:
    """One subscription of a peer: the sink of its feed route.

    Queues each message's frame (with ``pos`` when the peer speaks protocol
    2) on the peer's outbox, or, while a replay of missed messages is being
    paced out (:attr:`held` is a list), holds it until the replay is over.
    """

    __slots__ = ("closed", "held", "pattern", "peer", "prefix", "route", "versioned")

    def __init__(self, peer: Peer, sid: Id, pattern: str, versioned: bool) -> None:
        self.peer = peer
        self.pattern = pattern
        self.prefix = msg_prefix(sid).encode()
        #: The peer speaks protocol 2: its frames carry ``pos``.
        self.versioned = versioned
        #: Live messages held back during a paced replay (frame bodies).
        self.held: list[tuple[str, bytes]] | None = None
        self.route: Route | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"<PeerSub {self.peer.id} {self.pattern!r}>"

    def __call__(self, topic: str, body: bytes, posbody: bytes) -> bool:
        # The route's sink: runs inside bus.emit, in the emitter's greenlet.
        # Only queue; never block, never switch.
        if self.versioned:
            body = posbody
        held = self.held
        if held is None:
            peer = self.peer
            prefix = self.prefix
            if len(prefix) + len(body) <= peer.max_frame:  # Peer.deliver, inlined
                return peer.outbox.put_message(prefix, body)
            return peer.deliver(prefix, topic, body)
        if len(held) >= self.peer.limits.max_pending:
            self.peer.held_overflow(self)
            return False
        held.append((topic, body))
        return True

    def close(self) -> None:
        """Leave the feed; what is held is dropped (and counted)."""
        self.closed = True
        if self.route is not None:
            self.route.close()
            self.route = None
        if self.held:
            self.peer.outbox.count_dropped(len(self.held))
        self.held = None


class Peer:
    """A remote peer of the hub.  Made by the server per WebSocket connection.

    Args:
        bus: the hub's bus.
        server_name: sent in ``welcome``.
        address: the peer's address, for logs.
        limits: the per-peer limits.
        authenticate: the hub's token check (see :class:`HubSession`).
        on_gone: called with the peer once its connection is over.
        counters: the hub's counters.
        feed: the hub's :class:`~greenbus.bridge.feed.Feed`.
        publishers: the hub's :class:`~greenbus.history.Publishers` (see
            :class:`~greenbus.session.HubSession`).
        inboxes: the hub's :class:`~greenbus.acl.InboxOwners`.
        max_message_size: the hub's limit: no ``msg`` frame over it (plus
            :data:`~greenbus.protocol.MSG_SLACK`) is sent, since a client
            with the same limit would refuse it.
        log: the hub's rate-limited log for refusals and failures, so a peer
            that floods them cannot fill the disk.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        server_name: str,
        address: str,
        limits: PeerLimits,
        authenticate: Callable[[str | None], Any] | None,
        on_gone: Callable[[Peer], None],
        counters: HubCounters,
        feed: Feed,
        publishers: Publishers | None = None,
        inboxes: InboxOwners | None = None,
        max_message_size: int = 1 << 20,
        log: LogLimiter | None = None,
    ) -> None:
        self.id = f"p{next(_peer_ids)}"
        self.address = address
        self.bus = bus
        self.limits = limits
        self.session = HubSession(
            server=server_name,
            peer=self.id,
            authenticate=authenticate,
            limits=limits.session,
            error_counts=counters.errors,
            inboxes=inboxes,
            on_error=self._refused,
            publishers=publishers,
        )
        self.outbox = Outbox(
            limits.outbox, on_slow=self._slow_consumer, counters=counters, name=self.id
        )
        self.connection: Connection | None = None
        self.feed = feed
        self.subs: dict[Id, PeerSub] = {}
        #: Paced replays running (made on the first: most peers have none).
        self._replays: set[gevent.Greenlet] | None = None
        self._closing = False
        self._gone = False
        self._on_gone = on_gone
        self._counters = counters
        #: The largest ``msg`` frame sent: ``max_message_size`` + :data:`MSG_SLACK`.
        self.max_frame = max_message_size + MSG_SLACK
        self._log = log if log is not None else LogLimiter(logger)
        self._hello_timer: Deadline | None = None

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.session.name or ''} {self.address} subs={len(self.subs)}>"

    name = readonly[str | None]("session.name")

    dropped = readonly[int]("outbox.dropped", "Messages to this peer that were never written.")

    pending_bytes = readonly[int](
        "outbox.pending_bytes", "UTF-8 bytes of the frames queued to this peer and not yet written."
    )

    def attach(self, connection: Connection) -> None:
        """Bind the connection (made with this peer's callbacks and outbox)."""
        self.connection = connection
        if self.session.state is SessionState.AWAITING_HELLO:
            self._hello_timer = call_later(self.limits.hello_timeout, self._hello_deadline)

    def statistics(self) -> PeerStatistics:
        conn = self.connection
        outbox = self.outbox
        return PeerStatistics(
            id=self.id,
            name=self.session.name,
            address=self.address,
            subscriptions=tuple(sub.pattern for sub in self.subs.values()),
            pending=outbox.pending_frames,
            pending_bytes=outbox.pending_bytes,
            received=conn.received if conn is not None else 0,
            sent=outbox.written_frames,
            dropped=outbox.dropped,
            errors=self.session.errors,
        )

    # -- from the peer -------------------------------------------------------

    def on_text(self, text: str) -> None:
        """Apply one message from the peer (reader greenlet)."""
        session = self.session
        event = session.receive(text)
        if event is not None:
            try:
                self._apply(event)
            except BusClosed:
                session.close(CloseCode.GOING_AWAY, "hub shutting down")
            except Exception:
                # Our fault, not the peer's: say so, and close with 1011.
                logger.exception("%s: internal error applying %r", self.id, event)
                self._counters.internal_errors += 1
                session.error(ErrorCode.INTERNAL, "internal error; see the hub's log", event.id)
                session.close(CloseCode.INTERNAL_ERROR, "internal error")
        if session.outbox or session.close_code is not None:
            self.on_text_done()

    def _apply(self, event: Sub | Unsub | Pub) -> None:
        session = self.session
        if isinstance(event, Pub):
            self._counters.messages_in += 1
            if self.feed.remote is not None:
                self._publish_durable(event)
                return
            try:
                self.bus.emit(
                    event.topic, event.data, headers=event.headers, reply_to=event.reply_to
                )
            except ChannelFull as exc:
                # A local subscriber with overflow="error" refused it; the
                # others got it.  The publisher is not at fault.
                logger.info("%s: pub on %r: %s", self.id, event.topic, exc)
            session.ack(event)
        elif isinstance(event, Sub):
            self._subscribe(event)
        else:
            sub = self.subs.pop(event.sid, None)
            if sub is not None:
                sub.close()
            session.ack(event)

    def _publish_durable(self, event: Pub) -> None:
        # With a history in Redis, a pub reaches everyone (this hub's bus
        # too) through Redis, and is acknowledged once it is there.
        session = self.session
        number = event.id if session.client_session is not None and type(event.id) is int else None
        remote = self.feed.remote
        assert remote is not None
        remote.publish_durable(
            (event.topic, event.data, event.headers, event.reply_to),
            session.client_session if number is not None else None,
            number,
            functools.partial(self._published, event),
        )

    def _published(self, event: Pub, refusal: str | None) -> None:
        # The federation's writer: the pub is in Redis (or was refused).
        if self._gone:
            return
        if refusal is None:
            self.session.ack(event)
        else:
            reason = f"pub on {event.topic!r}: {refusal}"
            self.session.error(ErrorCode.UNAVAILABLE, reason, event.id)
        self.on_text_done()

    def _subscribe(self, event: Sub) -> None:
        # The route, its start and its replay are taken together: the live
        # messages follow the replay with no gap and no duplicate.
        session = self.session
        sub = PeerSub(self, event.sid, event.topic, versioned=session.version >= 2)
        self.subs[event.sid] = sub
        since = None if event.since is None else Position.parse(event.since)
        try:
            # A wildcard never receives request inboxes: replies reach only
            # an exact subscription to the inbox, which its owner holds.
            opened = self.feed.open(event.topic, sub, public=is_wildcard(event.topic), since=since)
        except FeedUnavailable as exc:
            self.subs.pop(event.sid, None)
            self._unavailable(str(exc))
            return
        except InvalidTopic as exc:
            # A pattern the history in Redis cannot serve (over a cluster).
            self.subs.pop(event.sid, None)
            self.session.error(ErrorCode.BAD_TOPIC, exc.problem, event.id)
            self.on_text_done()
            return
        if sub.closed:  # the peer left while Redis answered
            opened.route.close()
            return
        sub.route = opened.route
        session.ack(event, pos=opened.head, recovered=opened.recovered)
        if opened.recovered is False:
            self._counters.recoveries_failed += 1
            logger.info(
                "%s: cannot replay %r since %s: not in the history",
                self.id,
                event.topic,
                event.since,
            )
        elif opened.recovered:
            self._counters.recoveries += 1
        if opened.replay:
            self.on_text_done()  # the ack goes before the replay
            self._replay(sub, opened.replay)
        opened.route.release()

    def _unavailable(self, why: str) -> None:
        # The history in Redis cannot be reached: the client should come
        # back later (1013) rather than go on without its replay.
        self._counters.unavailable += 1
        logger.warning("%s %s: %s; closing with 1013", self.id, self.address, why)
        self.session.error(ErrorCode.UNAVAILABLE, f"{why}; try again later")
        self.session.close(CloseCode.TRY_AGAIN_LATER, "history unavailable")
        self.on_text_done()

    def _replay(self, sub: PeerSub, replay: list[tuple[str, bytes]]) -> None:
        # What fits now is queued at once; a longer replay is paced by a
        # greenlet (the outbox's limits hold), and the live messages wait.
        outbox = self.outbox
        limit = self.limits.max_pending // 2 - outbox.pending_frames
        self._counters.replayed += len(replay)
        if len(replay) <= limit:
            for topic, body in replay:
                self.deliver(sub.prefix, topic, body)
            return
        sub.held = []
        runner = gevent.spawn(self._paced_replay, sub, replay)
        if self._replays is None:
            self._replays = set()
        self._replays.add(runner)
        runner.link(self._replays.discard)

    def _paced_replay(self, sub: PeerSub, replay: list[tuple[str, bytes]]) -> None:
        outbox = self.outbox
        for index, (topic, body) in enumerate(replay):
            if not outbox.half_empty and not outbox.wait_half_empty():
                outbox.count_dropped(len(replay) - index)  # closing: never sent
                return
            if sub.held is None:
                return  # unsubscribed meanwhile
            self.deliver(sub.prefix, topic, body)
        held, sub.held = sub.held, None
        for topic, frame in held or ():
            self.deliver(sub.prefix, topic, frame)

    def _hello_deadline(self) -> None:
        if self.session.state is SessionState.AWAITING_HELLO and self.connection is not None:
            self._counters.timed_out("hello")
            logger.info(
                "%s %s: no hello within %s s", self.id, self.address, self.limits.hello_timeout
            )
            self.session.error(ErrorCode.UNAUTHORIZED, "no hello with a token in time")
            self.session.close(CloseCode.POLICY, "unauthorized")
            self.on_text_done()

    def on_text_done(self) -> None:
        """Queue what the session answered; carry out its decision to close (once)."""
        put = self.outbox.put_control
        for frame in self.session.take_outbox():
            put(frame.encode())
        code = self.session.close_code
        if code is not None and not self._closing and self.connection is not None:
            self._closing = True
            logger.info(
                "%s %s: closing with %d (%s)",
                self.id,
                self.address,
                code,
                self.session.close_reason,
            )
            self.connection.close(int(code), self.session.close_reason)

    # -- to the peer ---------------------------------------------------------

    def deliver(self, prefix: bytes, topic: str, body: bytes) -> bool:
        """Queue the ``msg`` frame ``prefix + body`` on ``topic``; never blocks.

        A frame over ``max_message_size`` (and its slack) is not sent:
        counted and logged.  Returns True if it was queued.
        """
        if len(prefix) + len(body) <= self.max_frame:
            return self.outbox.put_message(prefix, body)
        return self._too_big(topic, len(prefix) + len(body))

    def held_overflow(self, sub: PeerSub) -> None:
        """``sub`` holds ``max_pending`` live messages during its replay: a slow consumer."""
        self.outbox.count_dropped(len(sub.held or ()) + 1)
        sub.held = None
        self._slow_consumer(f"more than {self.limits.max_pending} messages arrived during a replay")

    def _too_big(self, topic: str, size: int) -> bool:
        # A client with the hub's limit would close with 1009 and lose what
        # follows too: the frame is not sent, and that is counted and logged.
        self.outbox.count_dropped(1)
        self._counters.too_big += 1
        self._log.log(
            logging.ERROR,
            "%s: message on %r not sent: its frame is %d bytes, over max_message_size (%d) "
            "and its envelope slack",
            self.id,
            topic,
            size,
            self.max_frame - MSG_SLACK,
        )
        return False

    def _refused(self, code: ErrorCode, reason: str) -> None:
        # Every error frame the session sends is a refusal: log it (rate
        # limited: a flood of bad frames must not fill the disk).
        level = logging.WARNING if code in _SECURITY_CODES else logging.INFO
        self._log.log(
            level,
            "%s %s (%s): refused with %s: %s",
            self.id,
            self.address,
            self.session.name or self.session.permissions.user,
            code.value,
            reason,
        )

    def _slow_consumer(self, why: str) -> None:
        # The outbox's on_slow: it is over a limit and has dropped what was
        # queued.  Say why, then close with 1013 (the answers queued before
        # go out first).
        self._counters.slow_consumers += 1
        logger.warning(
            "%s %s: slow consumer (%s); closing with 1013, %d message(s) dropped so far",
            self.id,
            self.address,
            why,
            self.outbox.dropped,
        )
        session = self.session
        session.error(ErrorCode.SLOW_CONSUMER, f"{why}; closing")
        session.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
        self.on_text_done()

    # -- the end -------------------------------------------------------------

    def on_close(self, code: int) -> None:
        """The connection is over: leave nothing behind."""
        if self._gone:
            return
        self._gone = True
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        for runner in list(self._replays or ()):
            runner.kill(block=False)
        for sub in self.subs.values():
            try:
                sub.close()
            except Exception:  # the bus may be closing on another path
                logger.debug("%s: closing %r failed", self.id, sub, exc_info=True)
        self.subs.clear()
        self.session.end()
        counters = self._counters
        conn = self.connection
        if conn is not None:
            # Messages queued that the writer never took are lost with the
            # connection: counted, never silent.
            unsent = sum(1 for _, body in conn.unsent if body is not None)
            self.outbox.count_dropped(unsent)
            if conn.timed_out is not None:
                counters.timed_out(conn.timed_out)
        counters.closed(int(code))
        logger.info("%s %s disconnected (code %s)", self.id, self.address, code)
        self._on_gone(self)
