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

What retrying cannot fix ends the client for good (:class:`ClientState`
CLOSED): a refused token, a close for a policy violation (1008) or for a
frame the hub could not read (1002, 1003, 1007), a TLS certificate that
does not verify, an HTTP refusal of the upgrade (4xx).  The cause goes to
``on_error`` and is logged, and every later call, and every subscription,
raises :class:`~greenbus.ClientClosed` carrying it.  See docs/transports.md.
"""

from __future__ import annotations

import enum
import itertools
import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
from gevent import Timeout
from gevent import ssl as gssl

from .._attrs import readonly
from .._options import check_int, check_seconds, check_timeout, check_type
from .._portal import get_ident
from ..bus import check_extras
from ..channel import DEFAULT_MAXSIZE, Channel, Overflow, check_options
from ..exceptions import (
    ChannelClosed,
    ChannelFull,
    ClientClosed,
    HubClosed,
    InvalidOption,
    LocalProtocolError,
    MessageTooBig,
    ReceiveTimeout,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    WrongThread,
)
from ..message import Message, message_class
from ..protocol import (
    MSG_SLACK,
    Ack,
    Error,
    Hello,
    Msg,
    Pub,
    Sub,
    Unsub,
    Welcome,
    encode,
    parse_server,
)
from ..subscription import HandlerMixin, Subscription
from ..topics import validate_pattern, validate_topic
from .backlog import Backlog
from .connection import Connection
from .dial import HandshakeFailed, Refused, check_url, dial

__all__ = ["ClientState", "ClientStatistics", "RemoteBus", "RemoteError", "connect"]

logger = logging.getLogger("greenbus.bridge.client")

#: Reconnect backoff: first delay (seconds).
FIRST_BACKOFF = 0.05


class ClientState(enum.IntEnum):
    """A client's life.  Transitions live in :class:`RemoteBus` only.

    CONNECTING -> OPEN -> RECONNECTING -> CONNECTING ...; any -> CLOSED (final).
    """

    #: A connection is being opened, or waits for the hub's welcome.
    CONNECTING = 0
    #: Welcomed: subscriptions are in place, emits go out at once.
    OPEN = 1
    #: The connection ended; the next attempt is scheduled.
    RECONNECTING = 2
    #: Final: close() was called, or the hub refused the client for good.
    CLOSED = 3


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    connected: bool
    state: str
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
    #: Emits still buffered when the client closed (or was refused), never sent.
    dropped_at_close: int
    #: Requests (and publishes) that ended unanswered while their pub was
    #: still unsent: taken back, never sent (the caller got its timeout).
    withdrawn: int
    dropped_on_receive: int
    hub_errors: int


class RemoteBus(HandlerMixin):
    """A connection to a greenbus hub.  Use :func:`connect` to make one.

    Belongs to the OS thread (and gevent hub) that made it, like a Bus:
    calls from other threads raise :class:`~greenbus.WrongThread`.

    Args:
        url: ``ws://host:port/`` or ``wss://host:port/``.
        token: sent in ``hello``; needed by a hub with a token or an ACL.
        name: this client's name on the hub (default: random).
        connect_timeout: seconds for one connection attempt (TCP, TLS, upgrade).
        max_backoff: the longest wait between attempts, in seconds.
        max_buffer: emits kept while disconnected, at most.
        max_message_size: the largest frame, in bytes, this client sends
            (a larger emit raises :class:`~greenbus.MessageTooBig`); keep it
            at the hub's ``max_message_size`` (1 MiB by default).  Frames
            from the hub may be :data:`~greenbus.protocol.MSG_SLACK` bigger.
        on_error: the error hook, ``on_error(exc, subscription, message)``.
        cafile: PEM file of the CA that signed a ``wss://`` hub's certificate
            (default: the system's trust store).

    Raises:
        InvalidOption: a bad argument (nothing is started then).
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
        self._uri = check_url(url)
        check_type("token", token, (str, type(None)), "a string or None")
        check_type("name", name, (str, type(None)), "a string or None")
        check_seconds("connect_timeout", connect_timeout)
        check_seconds("max_backoff", max_backoff)
        check_int("max_buffer", max_buffer)
        check_int("max_message_size", max_message_size, 64)
        if on_error is not None and not callable(on_error):
            raise InvalidOption("on_error", on_error, "a callable or None")
        check_type("cafile", cafile, (str, type(None)), "a path or None")
        self.url = url
        self.name = name or f"client-{uuid.uuid4().hex[:8]}"
        self.on_error = on_error
        self._token = token
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._max_message_size = max_message_size
        self._ssl: Any = None
        if self._uri.secure:
            # gevent's own SSLContext class (create_default_context would
            # return the stdlib's, whose sockets block the whole process).
            ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
            try:
                if cafile is not None:
                    ctx.load_verify_locations(cafile)
                else:
                    ctx.load_default_certs()
            except OSError as exc:
                raise InvalidOption("cafile", cafile, f"a readable PEM file ({exc})") from None
            self._ssl = ctx
        self._thread = get_ident()
        #: The :class:`Message` subclass this client delivers (``reply()`` emits here).
        self.message_class = message_class(self)
        self._sids = itertools.count(1)
        self._ids = itertools.count(1)
        self._subs: dict[int, Subscription] = {}
        self._sid_of: dict[Subscription, int] = {}
        #: Subscriptions whose sub the hub has not answered yet, by the sub's id.
        self._unconfirmed_subs: dict[str, int] = {}
        #: publish() calls waiting for their ack (or error), by the pub's id.
        self._confirms: dict[str, Channel[RemoteError | None]] = {}
        #: Encoded pub frames waiting for a connection, oldest first.
        self._backlog = Backlog(max_buffer, self.name)
        self._conn: Connection | None = None
        self._state = ClientState.CONNECTING
        self._open_event = gevent.event.Event()
        self._closed_event = gevent.event.Event()
        #: Why the client ended by itself (raised by every later call).
        self._fatal: ClientClosed | None = None
        self._refusal: BaseException | None = None
        self._reconnects = 0
        self._sent = 0
        self._received = 0
        self._dropped_disconnect = 0
        self._dropped_close = 0
        self._withdrawn = 0
        self._dropped_receive = 0
        self._hub_errors = 0
        self._runner = gevent.spawn(self._run)

    def __repr__(self) -> str:
        return (
            f"<RemoteBus {self.name} {self.url} {self._state.name.lower()} "
            f"subscriptions={len(self._subs)}>"
        )

    state = readonly[ClientState]("_state")

    @property
    def connected(self) -> bool:
        """True while the hub has welcomed this client (state OPEN)."""
        return self._state is ClientState.OPEN

    error = readonly[ClientClosed | None](
        "_fatal", "Why the client ended by itself (the hub refused it), or None."
    )

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the hub welcomed this client, or it closed; True if welcomed."""
        check_timeout(timeout)
        gevent.wait([self._open_event, self._closed_event], timeout=timeout, count=1)
        return self._state is ClientState.OPEN

    def statistics(self) -> ClientStatistics:
        conn = self._conn
        return ClientStatistics(
            connected=self.connected,
            state=self._state.name.lower(),
            reconnects=self._reconnects,
            sent=self._sent + (conn.outbox.written_messages if conn is not None else 0),
            received=self._received,
            buffered=len(self._backlog),
            dropped_while_disconnected=self._backlog.dropped,
            dropped_on_disconnect=self._dropped_disconnect,
            dropped_at_close=self._dropped_close,
            withdrawn=self._withdrawn + self._backlog.withdrawn,
            dropped_on_receive=self._dropped_receive,
            hub_errors=self._hub_errors,
        )

    def _check_open(self, what: str) -> None:
        if get_ident() != self._thread:
            raise WrongThread(what)
        if self._state is ClientState.CLOSED:
            raise self._fatal or ClientClosed(self.name)

    # -- publishing ---------------------------------------------------------------

    def emit(
        self,
        topic: str,
        data: Any = None,
        *,
        headers: Mapping[str, Any] | None = None,
        reply_to: str | None = None,
    ) -> int:
        """Publish to the hub.  Never blocks; never waits for the hub.

        Returns:
            1: the message was written to the connection's queue, or buffered
            while (re)connecting.  Whether subscribers got it, the client
            cannot know; :meth:`publish` waits for the hub's ack.

        Raises:
            InvalidTopic: malformed topic or reply_to.
            InvalidOption: headers that are not a mapping.
            LocalProtocolError: data or headers are not JSON (NaN, a lone
                surrogate, an object JSON cannot hold).
            MessageTooBig: the frame is over ``max_message_size``.
            ClientClosed: the client is closed (the cause, if it was refused).
            WrongThread: called from another OS thread.
        """
        self._send_pub(self._encode_pub(topic, data, headers, reply_to, None))
        return 1

    def publish(
        self,
        topic: str,
        data: Any = None,
        *,
        headers: Mapping[str, Any] | None = None,
        reply_to: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Publish and wait until the hub has taken the message (its ``ack``).

        Raises:
            RemoteError: the hub refused it (``forbidden``, say).
            ReceiveTimeout: no answer within ``timeout``: the message may
                still reach subscribers if it was written before.
            ClientClosed: the client is closed, or was refused meanwhile.
            InvalidTopic, InvalidOption, LocalProtocolError, MessageTooBig,
            WrongThread: as :meth:`emit`, before anything is sent.
        """
        check_timeout(timeout, optional=False)
        id_ = f"p{next(self._ids)}"
        frame = self._encode_pub(topic, data, headers, reply_to, id_)
        answer: Channel[RemoteError | None] = Channel(1)
        self._confirms[id_] = answer
        try:
            self._send_pub(frame)
            try:
                refusal = answer.get(timeout=timeout)
            except ReceiveTimeout:
                self._withdraw(frame)
                raise ReceiveTimeout(
                    timeout, f"no answer from the hub to a pub on {topic!r}"
                ) from None
        finally:
            self._confirms.pop(id_, None)
        if isinstance(refusal, BaseException):
            raise refusal

    def _encode_pub(
        self,
        topic: str,
        data: Any,
        headers: Mapping[str, Any] | None,
        reply_to: str | None,
        id_: str | None,
    ) -> bytes:
        # Everything checked before anything is queued, as the in-process
        # bus checks it: the same exceptions for the same mistakes.
        self._check_open("emit()")
        validate_topic(topic)
        extras, reply_to = check_extras(headers, reply_to)
        text = encode(Pub(topic, data, extras, reply_to, id_))
        try:
            frame = text.encode()
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(
                f"cannot encode pub on {topic!r}: a lone surrogate "
                f"{exc.object[exc.start : exc.end]!r} is not text UTF-8 can carry"
            ) from None
        if len(frame) > self._max_message_size:
            raise MessageTooBig(len(frame), self._max_message_size)
        return frame

    def _send_pub(self, frame: bytes) -> None:
        conn = self._conn
        if conn is None or not conn.open or not conn.outbox.put_message(frame, b""):
            self._backlog.append(frame)

    def _withdraw(self, frame: bytes) -> None:
        # A sender gave up on ``frame`` (a request that timed out): it must
        # never go out later, from the backlog or the connection's queue.
        if self._backlog.withdraw(frame):
            return
        conn = self._conn
        if conn is not None and conn.outbox.withdraw(frame):
            self._withdrawn += 1
        # Otherwise it was written already: it may reach subscribers.

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

        Returns at once.  If the hub refuses the subscription (``forbidden``,
        ``limit``), it ends: its ``get`` and iteration raise the
        :class:`RemoteError` once drained, and ``on_error`` is told.

        A full ``block`` subscription makes the client stop reading the
        socket until there is room, which the hub may treat as a slow
        consumer (close 1013, then this client reconnects).

        Raises:
            InvalidTopic, InvalidOption: bad arguments.
            ClientClosed: the client is closed.
            WrongThread: called from another OS thread.
        """
        self._check_open("subscribe()")
        validate_pattern(pattern)
        if handler is not None and not callable(handler):
            raise InvalidOption("handler", handler, "a callable taking one Message, or None")
        check_options(maxsize, overflow)
        sub = Subscription(self, pattern, handler, maxsize, overflow)
        sid = next(self._sids)
        self._subs[sid] = sub
        self._sid_of[sub] = sid
        conn = self._conn
        if conn is not None and conn.open:
            self._send_sub(conn, sid, pattern)
        return sub

    def _send_sub(self, conn: Connection, sid: int, pattern: str) -> None:
        id_ = f"s{sid}"
        self._unconfirmed_subs[id_] = sid
        conn.send(encode(Sub(sid, pattern, id_)))

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
        raises :class:`RequestTimeout`.  A request that ends without a reply
        is never sent later (if it was still waiting for a connection).

        Raises:
            RequestTimeout: no reply in time.
            ClientClosed: the client is closed, or was refused meanwhile.
            InvalidTopic, InvalidOption, LocalProtocolError, MessageTooBig,
            WrongThread: as :meth:`emit`, before anything is sent.
        """
        check_timeout(timeout, optional=False)
        # A fresh random name per request: a responder that saw one reply_to
        # cannot guess the next, and the hub gives it to this client only.
        inbox = f"_INBOX.{secrets.token_hex(16)}"
        frame = self._encode_pub(topic, data, headers, inbox, None)
        with self.subscribe(inbox, maxsize=None) as sub:
            self._send_pub(frame)
            try:
                return sub.get(timeout=timeout)
            except ReceiveTimeout:
                self._withdraw(frame)
                raise RequestTimeout(topic, timeout) from None

    # -- the owner protocol of Subscription -------------------------------------

    def remove_subscription(self, sub: Subscription) -> None:
        """Forget ``sub`` and unsubscribe on the hub; :meth:`Subscription.close` calls it.

        Raises:
            WrongThread: called from another OS thread.
        """
        if get_ident() != self._thread:
            raise WrongThread("Subscription.close()")
        sid = self._sid_of.pop(sub, None)
        if sid is None:
            return
        del self._subs[sid]
        conn = self._conn
        if conn is not None and conn.open:
            conn.send(encode(Unsub(sid)))

    # -- the connection ------------------------------------------------------------

    def _run(self) -> None:
        backoff = FIRST_BACKOFF
        while self._state is not ClientState.CLOSED:
            try:
                conn = self._open()
            except Refused as exc:
                self._give_up(exc.cause)
                return
            except (OSError, HandshakeFailed, Timeout) as exc:
                self._state = ClientState.RECONNECTING
                logger.info(
                    "%s: cannot reach %s (%s); retrying in %.2f s",
                    self.name,
                    self.url,
                    exc,
                    backoff,
                )
                gevent.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                self._state = ClientState.CONNECTING
                continue
            backoff = FIRST_BACKOFF
            conn.send(encode(Hello(token=self._token, name=self.name, id="hello")))
            self._unconfirmed_subs.clear()
            for sid, sub in self._subs.items():
                self._send_sub(conn, sid, sub.pattern)
            put = conn.outbox.put_message
            for frame in self._backlog.take_all():
                put(frame, b"")
            self._conn = conn
            conn.wait()
            self._conn = None
            self._open_event.clear()
            self._connection_ended(conn)
            if self.state is ClientState.CLOSED:  # close() may have run meanwhile
                return
            if self._refusal is not None:
                self._give_up(self._refusal)
                return
            self._state = ClientState.RECONNECTING
            self._reconnects += 1
            logger.info("%s: disconnected (code %s); reconnecting", self.name, conn.close_code)
            self._state = ClientState.CONNECTING

    def _connection_ended(self, conn: Connection) -> None:
        # Account for what the connection carried: written pubs are sent;
        # pubs it never took go back to the front of the buffer, in order
        # (never written, so no duplicate); a batch cut off mid-write is lost.
        self._sent += conn.outbox.written_messages
        unsent = [head for head, body in conn.unsent if body is not None]
        lost = conn.outbox.dropped
        if unsent and self._state is ClientState.CLOSED:
            self._dropped_close += len(unsent)  # close() stopped waiting for them
            logger.warning("%s: closed with %d unsent message(s)", self.name, len(unsent))
        elif unsent:
            self._backlog.requeue(unsent)
        if lost:
            self._dropped_disconnect += lost
            logger.warning(
                "%s: %d message(s) lost with the connection (cut off while being written)",
                self.name,
                lost,
            )
        self._report_close(conn)

    def _report_close(self, conn: Connection) -> None:
        # A close that says what was refused is reported, never silent.
        code = conn.close_code
        if code is None or self._state is ClientState.CLOSED:
            return
        closed: BaseException | None = None
        if conn.closed_by_peer and code in (1002, 1003, 1007, 1008, 1009):
            reason = conn.protocol.close_rcvd.reason if conn.protocol.close_rcvd else ""
            closed = HubClosed(code, reason)
            if closed.fatal and self._refusal is None:
                self._refusal = closed
        elif not conn.closed_by_peer and code == 1009:
            # Our protocol refused a frame from the hub: over max_message_size.
            limit = self._max_message_size + MSG_SLACK
            closed = MessageTooBig(
                getattr(conn.protocol.parser_exc, "size", None) or limit + 1, limit
            )
            logger.error(
                "%s: the hub sent a frame over %d bytes (max_message_size and the msg "
                "envelope's slack): closed with 1009, reconnecting; it is lost",
                self.name,
                limit,
            )
        if closed is not None:
            if isinstance(closed, HubClosed):
                logger.error("%s: %s", self.name, closed)
            self._call_hook(closed, None, None)

    def _open(self) -> Connection:
        conn = dial(
            self._uri,
            tls=self._ssl,
            timeout=self._connect_timeout,
            max_size=self._max_message_size + MSG_SLACK,  # a msg may exceed it by its envelope
            on_text=self._on_text,
            name=f"{self.name}->{self.url}",
        )
        return conn

    def _on_text(self, text: str) -> None:
        # The reader greenlet: route each msg to its subscription's channel.
        try:
            event = parse_server(text)
        except RemoteProtocolError as exc:
            logger.error("%s: the hub sent an invalid frame: %s", self.name, exc)
            self._call_hook(exc, None, None)
            return
        if isinstance(event, Msg):
            self._received += 1
            sub = self._subs.get(event.sid)  # type: ignore[arg-type]
            if sub is None:
                return  # unsubscribed while it was in flight
            item = (event.topic, event.data, event.headers, event.reply_to)
            try:
                sub.put(item)
            except ChannelFull:
                self._dropped_receive += 1
            except ChannelClosed:
                pass
        elif isinstance(event, Ack):
            self._answered(event.id, None)
        elif isinstance(event, Welcome):
            if self._state is ClientState.CONNECTING:
                self._state = ClientState.OPEN
                self._open_event.set()
                logger.info("%s: connected to %s as %s", self.name, self.url, event.peer)
        elif isinstance(event, Error):
            self._hub_errors += 1
            err = RemoteError(event.code, event.reason, event.id)
            logger.warning("%s: %s", self.name, err)
            if err.fatal:
                self._refusal = err  # the hub closes with 1008 next
            sub = self._answered(event.id, err)
            self._call_hook(err, sub, None)

    def _answered(self, id_: Any, refusal: RemoteError | None) -> Subscription | None:
        # The hub's answer to a frame of ours with an id: a publish() waiting
        # for it, or a sub (a refused one ends its subscription).
        if not isinstance(id_, str):
            return None
        confirm = self._confirms.get(id_)
        if confirm is not None:
            confirm.put_nowait(refusal)
            return None
        sid = self._unconfirmed_subs.pop(id_, None)
        if sid is None or refusal is None:
            return None
        sub = self._subs.pop(sid, None)
        if sub is not None:
            self._sid_of.pop(sub, None)
            sub.fail(refusal)
        return sub

    # -- closing -------------------------------------------------------------------

    def _give_up(self, cause: BaseException) -> None:
        # Retrying cannot help: end for good, and say why, once, everywhere.
        fatal = ClientClosed(self.name, cause)
        fatal.__cause__ = cause
        self._fatal = fatal
        logger.error("%s: giving up on %s: %s", self.name, self.url, cause)
        self._end(fatal)
        self._call_hook(fatal, None, None)

    def _end(self, error: ClientClosed) -> None:
        self._state = ClientState.CLOSED
        for sub in list(self._subs.values()):
            sub.fail(error)
        for confirm in self._confirms.values():
            confirm.put_nowait(error)  # type: ignore[arg-type]
        if self._backlog:
            left = self._backlog.take_all()
            self._dropped_close += len(left)
            logger.warning(
                "%s: closed with %d unsent message(s) buffered; dropped", self.name, len(left)
            )
        self._open_event.clear()
        self._closed_event.set()

    def close(self, timeout: float | None = 5.0) -> None:
        """Send what is queued, close the connection and the subscriptions.  Idempotent.

        Args:
            timeout: seconds to wait for the closing handshake; None waits.

        Raises:
            WrongThread: called from another OS thread (nothing is closed then).
            InvalidOption: a bad ``timeout`` (nothing is closed then).
        """
        if get_ident() != self._thread:
            raise WrongThread("close()")
        check_timeout(timeout)
        if self._state is ClientState.CLOSED:
            if self._runner is not None and not self._runner.dead:
                self._runner.kill(block=True, timeout=timeout)
            return
        for sub in list(self._subs.values()):
            sub.close()  # sends unsub while the connection is open
        conn = self._conn
        self._end(ClientClosed(self.name))
        if conn is not None:
            conn.close(1000, "client closing")
            conn.wait(timeout)
        self._runner.kill(block=True, timeout=timeout)

    def __enter__(self) -> RemoteBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    url: str,
    *,
    token: str | None = None,
    name: str | None = None,
    timeout: float | None = 5.0,
    **options: Any,
) -> RemoteBus:
    """Connect to a hub at ``url`` (``ws://host:port/``) and return a :class:`RemoteBus`.

    Waits up to ``timeout`` seconds for the hub's welcome (None: don't
    wait); if it does not come in time, the client keeps trying in the
    background (and says so in a warning).  ``options`` are those of
    :class:`RemoteBus`.

    Raises:
        InvalidOption: a bad argument; nothing is started.
        ClientClosed: the hub refused the client while this waited (a wrong
            token, a certificate that does not verify): ``exc.cause`` says why.
    """
    check_timeout(timeout)
    bus = RemoteBus(url, token=token, name=name, **options)
    if timeout is not None and not bus.wait_connected(timeout):
        if bus.error is not None:
            bus.close(timeout=1)
            raise bus.error
        logger.warning("%s: not connected to %s after %s s; still trying", bus.name, url, timeout)
    return bus
