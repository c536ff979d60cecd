"""The Python client of a greenbus hub: a bus whose other end is remote.

``greenbus.connect(url)`` returns a :class:`RemoteBus` with the vocabulary
of :class:`greenbus.Bus` (``emit``, ``subscribe``, ``on``, ``once``,
``request``, ``close``) and the same :class:`~greenbus.Message` and
:class:`~greenbus.Subscription` objects: each remote subscription has its
own local channel, and a handler runs in its own greenlet, in order.

It reconnects with capped exponential backoff and re-subscribes; while it is
disconnected, emits wait in a bounded buffer (``max_buffer``; the oldest are
dropped, counted and logged once per outage when it overflows).  Messages
still queued, never written, when a connection drops go back to the front of
that buffer and are sent on the next connection, in order; a batch cut off
in the middle of its write cannot be told apart from one the hub received,
so it is counted and logged as dropped, never as sent.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
from gevent import Timeout, socket
from gevent import ssl as gssl
from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.uri import parse_uri

from .._portal import get_ident
from ..bus import Message, Subscriber, Subscription, message_class
from ..channel import DEFAULT_MAXSIZE, Overflow
from ..exceptions import (
    BusClosed,
    ChannelClosed,
    ChannelFull,
    InvalidOption,
    ReceiveTimeout,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    WrongThread,
)
from ..protocol import (
    Error,
    ErrorCode,
    Hello,
    Msg,
    Pub,
    Sub,
    Unsub,
    encode,
    parse_server,
)
from ..topics import validate_pattern, validate_topic
from .connection import Connection, wire_logger

__all__ = ["ClientStatistics", "RemoteBus", "RemoteError", "connect"]

logger = logging.getLogger("greenbus.bridge.client")


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    connected: bool
    reconnects: int
    #: ``pub`` frames written to the socket (not proof the hub read them).
    sent: int
    received: int
    #: Emits waiting for a connection.
    buffered: int
    #: Emits dropped because the buffer was full while disconnected.
    dropped_while_disconnected: int
    #: Emits lost with a connection: cut off in the middle of their write.
    dropped_on_disconnect: int
    dropped_on_receive: int
    hub_errors: int


class RemoteBus(Subscriber):
    """A connection to a greenbus hub.  Use :func:`connect` to make one.

    Belongs to the OS thread (and gevent hub) that made it, like a Bus.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        name: str | None = None,
        connect_timeout: float = 5.0,
        max_backoff: float = 5.0,
        max_buffer: int = 10_000,
        max_message_size: int = 1 << 20,
        on_error: Any = None,
        cafile: str | None = None,
    ) -> None:
        self.url = url
        self._uri = parse_uri(url)
        self.name = name or f"client-{uuid.uuid4().hex[:8]}"
        self.on_error = on_error
        self._token = token
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        if max_buffer < 1:
            raise InvalidOption("max_buffer", max_buffer, "a positive int")
        self._max_buffer = max_buffer
        self._max_message_size = max_message_size
        self._ssl: Any = None
        if self._uri.secure:
            # gevent's SSL context, so TLS waits yield to other greenlets.
            # gevent's own SSLContext class (create_default_context would
            # return the stdlib's, whose sockets block the whole process).
            ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
            if cafile is not None:
                ctx.load_verify_locations(cafile)
            else:
                ctx.load_default_certs()
            self._ssl = ctx
        self._thread = get_ident()
        self._message_class = message_class(self)
        self._sids = itertools.count(1)
        self._subs: dict[int, Subscription] = {}
        self._sid_of: dict[Subscription, int] = {}
        #: Encoded pub frames waiting for a connection, oldest first.
        self._buffer: deque[bytes] = deque()
        self._conn: Connection | None = None
        self._connected = gevent.event.Event()
        self._closed = False
        self._inbox_prefix = f"_INBOX.{uuid.uuid4().hex}"
        self._inbox_seq = itertools.count(1)
        self._reconnects = 0
        self._sent = 0
        self._received = 0
        self._dropped_buffer = 0
        self._dropped_disconnect = 0
        self._dropped_receive = 0
        self._hub_errors = 0
        self._fatal: RemoteError | None = None
        self._runner = gevent.spawn(self._run)

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._closed else "connecting"
        return f"<RemoteBus {self.name} {self.url} {state} subscriptions={len(self._subs)}>"

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.open

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected to the hub; True if it is."""
        return self._connected.wait(timeout)

    def statistics(self) -> ClientStatistics:
        conn = self._conn
        return ClientStatistics(
            connected=self.connected,
            reconnects=self._reconnects,
            sent=self._sent + (conn.outbox.written_messages if conn is not None else 0),
            received=self._received,
            buffered=len(self._buffer),
            dropped_while_disconnected=self._dropped_buffer,
            dropped_on_disconnect=self._dropped_disconnect,
            dropped_on_receive=self._dropped_receive,
            hub_errors=self._hub_errors,
        )

    # -- publishing ---------------------------------------------------------------

    def emit(
        self,
        topic: str,
        data: Any = None,
        *,
        headers: Mapping[str, Any] | None = None,
        reply_to: str | None = None,
    ) -> int:
        """Publish to the hub.  Never blocks.

        Returns:
            1 if the message was sent (or buffered while reconnecting), 0 if
            the buffer was full and it had to drop (then the oldest buffered
            message was dropped instead, so 1 is returned; see statistics).

        Raises:
            InvalidTopic: malformed topic or reply_to.
            LocalProtocolError: data or headers are not JSON-serialisable.
            BusClosed: the client is closed.
        """
        if self._closed:
            raise BusClosed(self.name)
        validate_topic(topic)
        if reply_to is not None:
            validate_topic(reply_to)
        frame = encode(Pub(topic, data, dict(headers) if headers else None, reply_to)).encode()
        conn = self._conn
        if conn is None or not conn.open or not conn.outbox.put_message(frame, b""):
            self._buffer.append(frame)
            self._trim_buffer()
        return 1

    def _trim_buffer(self) -> None:
        # Keep at most max_buffer emits waiting; drop (and count) the oldest.
        buffer = self._buffer
        while len(buffer) > self._max_buffer:
            buffer.popleft()
            self._dropped_buffer += 1
            if self._dropped_buffer == 1 or self._dropped_buffer % 10_000 == 0:
                logger.warning(
                    "%s: disconnected and the buffer is full (%d); dropping the oldest "
                    "(%d dropped so far)",
                    self.name,
                    self._max_buffer,
                    self._dropped_buffer,
                )

    # -- subscribing -------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        handler: Any = None,
        *,
        maxsize: int | None = DEFAULT_MAXSIZE,
        overflow: Overflow | str = Overflow.BLOCK,
    ) -> Subscription:
        """Subscribe on the hub; as :meth:`greenbus.Bus.subscribe`.

        A full ``block`` subscription makes the client stop reading the
        socket until there is room, which the hub may treat as a slow
        consumer (close 1013, then this client reconnects).
        """
        if get_ident() != self._thread:
            raise WrongThread("subscribe()")
        if self._closed:
            raise BusClosed(self.name)
        validate_pattern(pattern)
        if handler is not None and not callable(handler):
            raise InvalidOption("handler", handler, "a callable taking one Message, or None")
        sub = Subscription(self, pattern, handler, maxsize, overflow)
        sid = next(self._sids)
        self._subs[sid] = sub
        self._sid_of[sub] = sid
        conn = self._conn
        if conn is not None:
            conn.send(encode(Sub(sid, pattern)))
        return sub

    def subscriptions(self, pattern: str | None = None) -> list[Subscription]:
        subs = list(self._subs.values())
        return subs if pattern is None else [s for s in subs if s.pattern == pattern]

    def request(
        self,
        topic: str,
        data: Any = None,
        *,
        timeout: float = 1.0,
        headers: Mapping[str, Any] | None = None,
    ) -> Message:
        """Publish a request through the hub and wait for the first reply.

        The hub processes this connection's frames in order, so the inbox
        subscription is in place before the request is routed.  Unlike the
        in-process bus, the client cannot know there are no responders: it
        raises :class:`RequestTimeout`.
        """
        # A fresh random name per request: a responder that saw one reply_to
        # cannot guess the next (exact inbox subscriptions are allowed to all).
        inbox = f"_INBOX.{secrets.token_hex(16)}"
        with self.subscribe(inbox, maxsize=None) as sub:
            self.emit(topic, data, headers=headers, reply_to=inbox)
            try:
                return sub.get(timeout=timeout)
            except ReceiveTimeout:
                raise RequestTimeout(topic, timeout) from None

    # -- the owner protocol of Subscription -------------------------------------

    def _remove(self, sub: Subscription) -> None:
        if get_ident() != self._thread:
            raise WrongThread("Subscription.close()")
        sid = self._sid_of.pop(sub, None)
        if sid is None:
            return
        del self._subs[sid]
        conn = self._conn
        if conn is not None:
            conn.send(encode(Unsub(sid)))

    # -- the connection ------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            try:
                conn = self._open()
            except (OSError, _HandshakeFailed, Timeout) as exc:
                if self._closed:
                    return
                logger.info(
                    "%s: cannot reach %s (%s); retrying in %.2f s",
                    self.name,
                    self.url,
                    exc,
                    backoff,
                )
                gevent.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            backoff = 0.05
            if self._token is not None or self.name:
                conn.send(encode(Hello(token=self._token, name=self.name)))
            for sid, sub in self._subs.items():
                conn.send(encode(Sub(sid, sub.pattern)))
            put = conn.outbox.put_message
            while self._buffer:
                put(self._buffer.popleft(), b"")
            self._conn = conn
            self._connected.set()
            logger.info("%s: connected to %s", self.name, self.url)
            conn.wait()
            self._conn = None
            self._connected.clear()
            self._connection_ended(conn)
            if self._fatal is not None:
                logger.error("%s: giving up: %s", self.name, self._fatal)
                return
            if not self._closed:
                self._reconnects += 1
                logger.info("%s: disconnected (code %s); reconnecting", self.name, conn.close_code)

    def _connection_ended(self, conn: Connection) -> None:
        # Account for what the connection carried: written pubs are sent;
        # pubs it never took go back to the front of the buffer, in order
        # (never written, so no duplicate); a batch cut off mid-write is lost.
        self._sent += conn.outbox.written_messages
        unsent = [head for head, body in conn.unsent if body is not None]
        lost = conn.outbox.dropped
        if self._closed:
            lost += len(unsent)  # close() gave up waiting for them
        elif unsent:
            self._buffer.extendleft(reversed(unsent))
            self._trim_buffer()
        if lost:
            self._dropped_disconnect += lost
            logger.warning(
                "%s: %d message(s) lost with the connection (cut off while being written)",
                self.name,
                lost,
            )

    def _open(self) -> Connection:
        uri = self._uri
        with Timeout(self._connect_timeout):
            sock = socket.create_connection((uri.host, uri.port))
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._ssl is not None:
                    sock = self._ssl.wrap_socket(sock, server_hostname=uri.host)
                protocol = ClientProtocol(
                    uri, max_size=self._max_message_size, logger=_CLIENT_WIRE_LOGGER
                )
                protocol.send_request(protocol.connect())
                sock.sendall(b"".join(protocol.data_to_send()))
                events: list[Any] = []
                while not events:
                    data = sock.recv(65536)
                    if data:
                        protocol.receive_data(data)
                    else:
                        protocol.receive_eof()
                    events = protocol.events_received()
                    if not data and not events:
                        raise _HandshakeFailed("connection closed during the handshake")
                response = events[0]
                if not isinstance(response, Response) or protocol.handshake_exc is not None:
                    raise _HandshakeFailed(str(protocol.handshake_exc or response))
            except BaseException:
                sock.close()
                raise
        conn = Connection(
            sock,
            protocol,
            on_text=self._on_text,
            on_close=lambda code: None,
            name=f"{self.name}->{self.url}",
            ping_interval=20.0,
            ping_timeout=20.0,
        )
        conn.start(initial_events=events[1:])
        return conn

    def _on_text(self, text: str) -> None:
        # The reader greenlet: route each msg to its subscription's channel.
        try:
            event = parse_server(text)
        except RemoteProtocolError as exc:
            logger.error("%s: the hub sent an invalid frame: %s", self.name, exc)
            return
        if isinstance(event, Msg):
            self._received += 1
            sub = self._subs.get(event.sid)  # type: ignore[arg-type]
            if sub is None:
                return  # unsubscribed while it was in flight
            item = (event.topic, event.data, event.headers, event.reply_to)
            try:
                sub._put(item)
            except ChannelFull:
                self._dropped_receive += 1
            except ChannelClosed:
                pass
        elif isinstance(event, Error):
            self._hub_errors += 1
            err = RemoteError(event.code, event.reason)
            logger.warning("%s: %s", self.name, err)
            if event.code == ErrorCode.UNAUTHORIZED:
                self._fatal = err
            self._call_hook(err, None, None)

    # -- closing -------------------------------------------------------------------

    def close(self, timeout: float | None = 5.0) -> None:
        """Send what is queued, close the connection and the subscriptions.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs.values()):
            sub.close()
        conn = self._conn
        if conn is not None:
            conn.close(1000, "client closing")
            conn.wait(timeout)
        self._runner.kill(block=True, timeout=timeout)
        if self._buffer:
            logger.warning(
                "%s: closed with %d unsent message(s) buffered", self.name, len(self._buffer)
            )

    def __enter__(self) -> RemoteBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_CLIENT_WIRE_LOGGER = wire_logger("websockets.client")


class _HandshakeFailed(Exception):
    pass


def connect(
    url: str,
    *,
    token: str | None = None,
    name: str | None = None,
    timeout: float | None = 5.0,
    **options: Any,
) -> RemoteBus:
    """Connect to a hub at ``url`` (``ws://host:port/``) and return a :class:`RemoteBus`.

    Waits up to ``timeout`` seconds for the first connection (None: don't
    wait); it keeps retrying in the background either way.
    """
    bus = RemoteBus(url, token=token, name=name, **options)
    if timeout is not None and not bus.wait_connected(timeout):
        logger.warning("%s: not connected to %s after %s s; still trying", bus.name, url, timeout)
    return bus
