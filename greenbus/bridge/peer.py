"""One remote peer attached to a bus: protocol events in, bus calls out.

The glue between a :class:`~greenbus.bridge.connection.Connection` (bytes
and frames) and a :class:`~greenbus.Bus` (routing), driven by the sans-I/O
:class:`~greenbus.protocol.HubSession`.  A remote ``sub`` becomes a
:meth:`Bus.forward` whose sink encodes the message (once per emit, however
many peers it goes to) and appends it to the peer's outbound queue: the
emitter never waits for the peer, and every message to one peer, whatever
its sid, leaves in emit order.  The queue is bounded in messages and in
bytes (:class:`PeerLimits`).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent

from ..acl import INBOX_PREFIX
from ..bus import Bus, Forward
from ..exceptions import BusClosed, ChannelFull
from ..protocol import (
    CloseCode,
    ErrorCode,
    HubSession,
    Id,
    LocalProtocolError,
    Pub,
    SessionLimits,
    SessionState,
    Sub,
    Unsub,
    encode_msg_body,
    msg_prefix,
)
from ..topics import is_wildcard
from .connection import Connection

__all__ = ["Peer", "PeerLimits", "PeerStatistics"]

logger = logging.getLogger("greenbus.bridge.peer")

_peer_ids = itertools.count(1)

#: Slow-consumer policies for a peer's outbound queue.
SLOW_POLICIES = ("close", "drop_oldest")


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """Per-peer limits on the hub (see docs/limits.md)."""

    #: Messages queued to the peer and not yet written, at most.
    max_pending: int = 10_000
    #: Bytes of encoded messages queued to the peer, at most (one message
    #: alone may exceed it; the writer holds up to 256 KiB more in flight).
    #: Counted as characters of the JSON text: bytes for ASCII, fewer than
    #: the UTF-8 bytes for other text.
    max_pending_bytes: int = 8 << 20
    #: What happens past either limit: "close" (error slow_consumer, close
    #: 1013) or "drop_oldest" (drop and count).
    slow_policy: str = "close"
    #: Seconds a peer has to send hello when a token is required.
    hello_timeout: float = 5.0
    session: SessionLimits = field(default_factory=SessionLimits)

    def __post_init__(self) -> None:
        if self.slow_policy not in SLOW_POLICIES:
            raise ValueError(
                f"slow_policy must be one of {SLOW_POLICIES}, not {self.slow_policy!r}"
            )
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, not {self.max_pending!r}")
        if self.max_pending_bytes < 1:
            raise ValueError(f"max_pending_bytes must be >= 1, not {self.max_pending_bytes!r}")


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    id: str
    name: str | None
    address: str
    subscriptions: tuple[str, ...]
    pending: int
    pending_bytes: int
    received: int
    sent: int
    dropped: int
    errors: int


class Peer:
    """A remote peer of the hub.  Made by the server per WebSocket connection."""

    def __init__(
        self,
        bus: Bus,
        *,
        server_name: str,
        address: str,
        limits: PeerLimits,
        authenticate: Callable[[str | None], Any] | None,
        on_gone: Callable[[Peer], None],
        counters: dict[str, int],
        error_counts: dict[str, int] | None = None,
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
            error_counts=error_counts if error_counts is not None else {},
        )
        self.connection: Connection | None = None
        self.forwards: dict[Id, Forward] = {}
        self.dropped = 0
        self.encode_errors = 0
        #: Bytes of the messages in the outbound queue (not yet serialized).
        self.pending_bytes = 0
        self._slow = False
        self._closing = False
        self._gone = False
        self._on_gone = on_gone
        self._counters = counters
        self._hello_timer: gevent.Greenlet | None = None

    def __repr__(self) -> str:
        return (
            f"<Peer {self.id} {self.session.name or ''} {self.address} subs={len(self.forwards)}>"
        )

    @property
    def name(self) -> str | None:
        return self.session.name

    def attach(self, connection: Connection) -> None:
        """Bind the connection (made with this peer's callbacks)."""
        self.connection = connection
        if self.session.state is SessionState.AWAITING_HELLO:
            self._hello_timer = gevent.spawn_later(self.limits.hello_timeout, self._hello_deadline)

    def statistics(self) -> PeerStatistics:
        conn = self.connection
        return PeerStatistics(
            id=self.id,
            name=self.session.name,
            address=self.address,
            subscriptions=tuple(f.pattern for f in self.forwards.values()),
            pending=conn.pending if conn is not None else 0,
            pending_bytes=self.pending_bytes,
            received=conn.received if conn is not None else 0,
            sent=conn.sent if conn is not None else 0,
            dropped=self.dropped,
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
                _count(self._counters, "internal_errors")
                session.error(ErrorCode.INTERNAL, "internal error; see the hub's log", event.id)
                session.close(CloseCode.INTERNAL_ERROR, "internal error")
        if session.outbox or session.close_code is not None:
            self.on_text_done()

    def _apply(self, event: Sub | Unsub | Pub) -> None:
        session = self.session
        if isinstance(event, Pub):
            self._counters["messages_in"] += 1
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
            # A wildcard never receives other peers' request inboxes: replies
            # reach only an exact subscription to the (unguessable) inbox.
            deliver = self._deliver_public if is_wildcard(event.topic) else self._deliver
            sink = functools.partial(deliver, msg_prefix(event.sid))
            self.forwards[event.sid] = self.bus.forward(event.topic, sink, raw=True)
            session.ack(event)
        else:
            forward = self.forwards.pop(event.sid, None)
            if forward is not None:
                forward.close()
            session.ack(event)

    def _hello_deadline(self) -> None:
        if self.session.state is SessionState.AWAITING_HELLO and self.connection is not None:
            _count(self._counters, "timeouts_hello")
            logger.info(
                "%s %s: no hello within %s s", self.id, self.address, self.limits.hello_timeout
            )
            self.session.error(ErrorCode.UNAUTHORIZED, "no hello with a token in time")
            self.session.close(CloseCode.POLICY, "unauthorized")
            self.on_text_done()

    def on_text_done(self) -> None:
        """Send what the session queued; carry out its decision to close (once)."""
        for frame in self.session.take_outbox():
            self._send_control(frame)
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

    def _send_control(self, frame: str) -> None:
        # Acks, errors and pongs share the FIFO with messages, so a client
        # sees its ack after every message routed before it.
        conn = self.connection
        if conn is not None:
            conn.send(frame)

    # -- to the peer ---------------------------------------------------------

    def _deliver_public(self, prefix: str, item: tuple[Any, ...]) -> bool:
        if item[0].startswith(INBOX_PREFIX):
            return False
        return self._deliver(prefix, item)

    def _deliver(self, prefix: str, item: tuple[Any, ...]) -> bool:
        # The Forward sink: runs inside bus.emit, in the emitter's greenlet,
        # with the emit's (topic, data, headers, reply_to).  Only encode and
        # queue; never block, never switch.
        conn = self.connection
        if conn is None or self._gone:
            return False
        if self._slow:
            # Closing as a slow consumer: it matched, and will never be
            # written.  Counted, so delivered + dropped == routed to this peer.
            self.dropped += 1
            self._counters["dropped"] += 1
            return False
        body = _encoded_body(item)
        if type(body) is not str:
            exc = body
            self.encode_errors += 1
            self._counters["encode_errors"] += 1
            if self.encode_errors == 1 or self.encode_errors % 10_000 == 0:
                logger.error("%s: message on %r not sent: %s", self.id, item[0], exc)
            return False
        size = len(prefix) + len(body)
        limits = self.limits
        if conn.pending >= limits.max_pending or (
            self.pending_bytes and self.pending_bytes + size > limits.max_pending_bytes
        ):
            if limits.slow_policy == "drop_oldest":
                self._make_room(conn, size)
            else:
                self._slow_consumer()
                return False
        if conn.send((prefix, body)):
            self.pending_bytes += size
            return True
        return False

    def _make_room(self, conn: Connection, size: int) -> None:
        # drop_oldest: drop queued messages until this one fits both limits
        # (never acks, errors or pongs; those are few and must arrive).
        limits = self.limits
        while conn.pending >= limits.max_pending or (
            self.pending_bytes and self.pending_bytes + size > limits.max_pending_bytes
        ):
            old = conn.drop_oldest()
            if old is None:
                return
            self.pending_bytes -= len(old[0]) + len(old[1])
            self._drop()

    def _drop(self) -> None:
        self.dropped += 1
        self._counters["dropped"] += 1
        if self.dropped == 1 or self.dropped % 10_000 == 0:
            logger.warning(
                "%s %s: slow consumer, dropping oldest (%d dropped so far)",
                self.id,
                self.address,
                self.dropped,
            )

    def _slow_consumer(self) -> None:
        self._slow = True
        conn = self.connection
        assert conn is not None
        limits = self.limits
        if conn.pending >= limits.max_pending:
            why = f"more than {limits.max_pending} messages pending"
        else:
            why = f"more than {limits.max_pending_bytes} bytes pending"
        # The messages queued, and the one that did not fit (acks and
        # errors already queued stay, and go out before the close).
        lost = conn.discard_messages() + 1
        self.pending_bytes = 0
        self.dropped += lost
        self._counters["dropped"] += lost
        self._counters["slow_consumers"] += 1
        logger.warning(
            "%s %s: slow consumer (%s); closing with 1013, %d dropped",
            self.id,
            self.address,
            why,
            lost,
        )
        self.session.error(ErrorCode.SLOW_CONSUMER, f"{why}; closing")
        for frame in self.session.take_outbox():
            self._send_control(frame)
        conn.close(int(CloseCode.TRY_AGAIN_LATER), "slow consumer")

    def serialize(self, item: tuple[str, str]) -> str:
        """The text of a queued message (the connection's writer calls it)."""
        prefix, body = item
        self.pending_bytes -= len(prefix) + len(body)
        self._counters["messages_out"] += 1
        return prefix + body

    # -- the end -------------------------------------------------------------

    def on_close(self, code: int) -> None:
        """The connection is over: leave nothing behind."""
        if self._gone:
            return
        self._gone = True
        if self._hello_timer is not None:
            self._hello_timer.kill(block=False)
        for forward in self.forwards.values():
            try:
                forward.close()
            except Exception:  # the bus may be closing on another path
                logger.debug("%s: closing %r failed", self.id, forward, exc_info=True)
        self.forwards.clear()
        _count(self._counters, f"closed_{int(code)}")
        conn = self.connection
        if conn is not None and conn.timed_out is not None:
            _count(self._counters, f"timeouts_{conn.timed_out}")
        logger.info("%s %s disconnected (code %s)", self.id, self.address, code)
        self._on_gone(self)


def _count(counters: dict[str, int], key: str) -> None:
    counters[key] = counters.get(key, 0) + 1


# The message encoded last, by the identity of the emit's tuple (forwards are
# raw: every peer of one emit gets the same tuple), so a fan-out to N peers
# encodes once (or fails once).  Holding the tuple keeps its id from being
# reused.
_last_item: tuple[Any, ...] | None = None
_last_body: str | LocalProtocolError = ""


def _encoded_body(item: tuple[Any, ...]) -> str | LocalProtocolError:
    # The body of the msg frame for item, or why it cannot be encoded.
    global _last_item, _last_body
    if item is not _last_item:
        try:
            body: str | LocalProtocolError = encode_msg_body(
                item[0], item[1], item[2] or None, item[3]
            )
        except LocalProtocolError as exc:
            body = exc
        _last_item, _last_body = item, body
    return _last_body
