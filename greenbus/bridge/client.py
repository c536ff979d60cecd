"""The Python client of a greenbus hub: a bus whose other end is remote.

``greenbus.connect(url)`` returns a :class:`RemoteBus` with the vocabulary
of :class:`greenbus.Bus` (``emit``, ``subscribe``, ``on``, ``once``,
``request``, ``close``) and the same :class:`~greenbus.Message` and
:class:`~greenbus.Subscription` objects: each remote subscription has its
own local channel, and a handler runs in its own greenlet, in order.

It reconnects with capped exponential backoff and resumes (protocol 2, see
docs/recovery.md): every subscription subscribes again from the last
position it received, and the hub replays what it missed, or says it cannot
(reported as :class:`~greenbus.RecoveryFailed`: a counter, the error hook,
a log line); every pub the hub has not acknowledged is sent again, and the
hub drops those it had applied.  While disconnected, emits wait with the
unconfirmed ones, at most ``max_buffer`` (the oldest are dropped, counted
and logged once per outage).

What retrying cannot fix (a refused token, say: see
:mod:`greenbus.bridge.reconnect`) ends the client for good: the cause goes
to ``on_error`` and is logged, and every later call, and every
subscription, raises :class:`~greenbus.ClientClosed` carrying it.  See
docs/transports.md.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import _codec
from .._codec import MsgFrame
from .._options import check_int, check_timeout, check_type
from .._portal import get_ident
from ..bus import check_extras
from ..channel import DEFAULT_MAXSIZE, Channel, Overflow, check_options
from ..exceptions import (
    ChannelClosed,
    ChannelFull,
    ClientClosed,
    GreenbusError,
    InvalidOption,
    LocalProtocolError,
    MessageTooBig,
    ReceiveTimeout,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    WrongThread,
)
from ..history import Position
from ..message import Message, message_class
from ..protocol import (
    DEFAULT_MAX_DEPTH,
    Ack,
    Error,
    Hello,
    Msg,
    Pub,
    ServerEvent,
    Sub,
    Unsub,
    Welcome,
    encode,
    parse_server,
)
from ..subscription import Subscription
from ..topics import validate_cached, validate_pattern
from .connection import Connection
from .reconnect import ClientState, Reconnecting
from .resume import Positions, Unconfirmed

__all__ = ["ClientState", "ClientStatistics", "RemoteBus", "RemoteError", "connect"]

logger = logging.getLogger("greenbus.bridge.client")

#: What the hub sends most (``msg``, ``ack``) decoded in C, and a ``pub``
#: frame written in C (:mod:`greenbus._codec`); None with
#: ``GREENBUS_PURE_PYTHON=1``: the pure codec alone.  Tests swap them.
_fast_frame = None if _codec.PURE_PYTHON else _codec.client_decoder(Ack)
_fast_pub = None if _codec.PURE_PYTHON else _codec.pub_frame


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    connected: bool
    state: str
    reconnects: int
    #: ``pub`` frames written to the socket, resends included (not proof
    #: the hub read them: its ack is).
    sent: int
    received: int
    #: Emits the hub has not acknowledged yet: in flight, or waiting for a
    #: connection.  Sent again on each new connection.
    unconfirmed: int
    #: Emits sent again on a new connection because the hub had not
    #: acknowledged them (it drops those it had applied).
    resent: int
    #: Emits dropped, never sent, because ``max_buffer`` unconfirmed ones
    #: were waiting while disconnected.
    dropped_while_disconnected: int
    #: Emits still unconfirmed when the client closed (or was refused).
    dropped_at_close: int
    #: Emits the hub refused as over its ``max_message_size`` (it closed
    #: with 1009): dropped, never sent again, each reported as MessageTooBig.
    too_big: int
    #: Requests (and publishes) that ended unanswered while their pub was
    #: still unsent: taken back, never sent (the caller got its timeout).
    withdrawn: int
    dropped_on_receive: int
    hub_errors: int
    #: Subscriptions resumed after a cut with every missed message replayed,
    #: and those resumed with a gap (each told to ``on_error`` as a
    #: :class:`~greenbus.RecoveryFailed`).
    recovered: int
    recoveries_failed: int


class RemoteBus(Reconnecting):
    """A connection to a greenbus hub.  Use :func:`connect` to make one.

    Belongs to the OS thread (and gevent hub) that made it, like a Bus:
    calls from other threads raise :class:`~greenbus.WrongThread`.

    Args:
        url: ``ws://host:port/`` or ``wss://host:port/``; or several (a
            federation's hubs): after a failed attempt the next is tried,
            and the client resumes there.
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
        url: str | Sequence[str],
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
        super().__init__(
            url,
            name=name,
            connect_timeout=connect_timeout,
            max_backoff=max_backoff,
            max_message_size=max_message_size,
            cafile=cafile,
        )
        check_type("token", token, (str, type(None)), "a string or None")
        check_int("max_buffer", max_buffer)
        if on_error is not None and not callable(on_error):
            raise InvalidOption("on_error", on_error, "a callable or None")
        self.on_error = on_error
        self._token = token
        self._thread = get_ident()
        #: The :class:`Message` subclass this client delivers (``reply()`` emits here).
        self.message_class = message_class(self)
        self._sids = itertools.count(1)
        self._subs: dict[int, Subscription] = {}
        self._sid_of: dict[Subscription, int] = {}
        #: Subscriptions whose sub the hub has not answered yet, by the sub's id.
        self._unconfirmed_subs: dict[str, int] = {}
        #: Where each subscription stands (what its next sub asks to resume from).
        self._positions = Positions()
        #: This client's publisher session: the hub knows its pubs by it and
        #: their numbers, across reconnects (a resent pub is applied once).
        self.session = secrets.token_hex(16)
        #: Every pub the hub has not acknowledged, by number (sent again on
        #: each new connection).
        self._unconfirmed = Unconfirmed(max_buffer, self.name)
        #: publish() calls waiting for their ack (or error), by the pub's number.
        self._confirms: dict[int, Channel[Exception | None]] = {}
        #: The largest pub sent: ``max_message_size``, or the hub's if lower
        #: (learned from its 1009 close); and the size of the last hello.
        self._send_limit = max_message_size
        self._hello_size = 0
        self._sent = 0
        self._resent = 0
        self._received = 0
        self._dropped_close = 0
        self._withdrawn = 0
        self._dropped_receive = 0
        self._hub_errors = 0
        self._recovered = 0
        self._recoveries_failed = 0
        self._start()

    def __repr__(self) -> str:
        return (
            f"<RemoteBus {self.name} {self.url} {self._state.name.lower()} "
            f"subscriptions={len(self._subs)}>"
        )

    def statistics(self) -> ClientStatistics:
        conn = self._conn
        return ClientStatistics(
            connected=self.connected,
            state=self._state.name.lower(),
            reconnects=self._reconnects,
            sent=self._sent + (conn.outbox.written_messages if conn is not None else 0),
            received=self._received,
            unconfirmed=len(self._unconfirmed),
            resent=self._resent,
            dropped_while_disconnected=self._unconfirmed.dropped,
            dropped_at_close=self._dropped_close,
            too_big=self._unconfirmed.too_big,
            withdrawn=self._withdrawn + self._unconfirmed.withdrawn,
            dropped_on_receive=self._dropped_receive,
            hub_errors=self._hub_errors,
            recovered=self._recovered,
            recoveries_failed=self._recoveries_failed,
        )

    def position(self, subscription: Subscription) -> str | None:
        """The position ``subscription`` has reached: the ``pos`` of the last
        message it received (or where it started), None if it has none yet.

        Opaque text; give it to :meth:`subscribe` as ``since`` to resume
        from there later, in another process even (see docs/recovery.md).
        """
        sid = self._sid_of.get(subscription)
        return None if sid is None else self._positions.get(sid)

    def _check_open(self, what: str) -> None:
        if get_ident() != self._thread:
            raise WrongThread(what, "client", "statistics()")
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
            1: the message was queued on the connection, or kept for the
            next one while (re)connecting.  It is sent again after a cut
            until the hub acknowledges it (and applied once); :meth:`publish`
            waits for that ack.

        Raises:
            InvalidTopic: malformed topic or reply_to.
            InvalidOption: headers that are not a mapping.
            LocalProtocolError: data or headers are not JSON (NaN, a lone
                surrogate, an object JSON cannot hold).
            MessageTooBig: the frame is over ``max_message_size`` (or the
                hub's, once it refused a larger one).
            ClientClosed: the client is closed (the cause, if it was refused).
            WrongThread: called from another OS thread.
        """
        self._send_pub(*self._encode_pub(topic, data, headers, reply_to))
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
            MessageTooBig: the hub refused it as over its own ``max_message_size``.
            ReceiveTimeout: no answer within ``timeout``: the message is
                not sent again, but may still reach subscribers if it was
                written before.
            ClientClosed: the client is closed, or was refused meanwhile.
            InvalidTopic, InvalidOption, LocalProtocolError, MessageTooBig,
            WrongThread: as :meth:`emit`, before anything is sent.
        """
        self._check_open("publish()")
        check_timeout(timeout, optional=False)
        number, frame = self._encode_pub(topic, data, headers, reply_to)
        answer: Channel[Exception | None] = Channel(1)
        self._confirms[number] = answer
        try:
            self._send_pub(number, frame)
            try:
                refusal = answer.get(timeout=timeout)
            except ReceiveTimeout:
                self._withdraw(frame)
                raise ReceiveTimeout(
                    timeout, f"no answer from the hub to a pub on {topic!r}"
                ) from None
        finally:
            self._confirms.pop(number, None)
        if isinstance(refusal, BaseException):
            raise refusal

    def _encode_pub(
        self,
        topic: str,
        data: Any,
        headers: Mapping[str, Any] | None,
        reply_to: str | None,
    ) -> tuple[int, bytes]:
        # Everything checked before anything is queued, as the in-process
        # bus checks it: the same exceptions for the same mistakes.  Each pub
        # carries its number in the session as its id.
        self._check_open("emit()")
        validate_cached(topic)  # the same refusals as validate_topic's; successes remembered
        extras, reply_to = check_extras(headers, reply_to)
        number = self._unconfirmed.number()
        frame = None if _fast_pub is None else _fast_pub(topic, data, extras, reply_to, number)
        if frame is None:
            text = encode(Pub(topic, data, extras, reply_to, number))
            try:
                frame = text.encode()
            except UnicodeEncodeError as exc:
                raise LocalProtocolError(
                    f"cannot encode pub on {topic!r}: a lone surrogate "
                    f"{exc.object[exc.start : exc.end]!r} is not text UTF-8 can carry"
                ) from None
        if len(frame) > self._send_limit:
            raise MessageTooBig(len(frame), self._send_limit)
        return number, frame

    def _send_pub(self, number: int, frame: bytes) -> None:
        unconfirmed = self._unconfirmed
        unconfirmed.add(number, frame)
        conn = self._conn
        if conn is None:
            unconfirmed.trim()  # disconnected: at most max_buffer wait
        elif conn.open and conn.outbox.put_message(frame, b""):
            unconfirmed.handed(number)

    def _withdraw(self, frame: bytes) -> None:
        # A sender gave up on ``frame`` (a request that timed out): it must
        # never go out later, from the connection's queue or after a cut.
        if not self._unconfirmed.withdraw(frame):
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
        since: str | None = None,
    ) -> Subscription:
        """Subscribe on the hub; as :meth:`greenbus.Bus.subscribe`.

        Returns at once.  If the hub refuses the subscription (``forbidden``,
        ``limit``), it ends: its ``get`` and iteration raise the
        :class:`RemoteError` once drained, and ``on_error`` is told.

        After a cut the subscription resumes by itself from the last
        message it received (docs/recovery.md).  ``since`` resumes it from
        a position kept earlier (:meth:`position`), by another client or
        process even: the hub first replays what was published after it,
        or, if its history cannot, a :class:`~greenbus.RecoveryFailed` is
        reported.

        A full ``block`` subscription makes the client stop reading the
        socket until there is room, which the hub may treat as a slow
        consumer (close 1013, then this client reconnects).

        Raises:
            InvalidTopic, InvalidOption: bad arguments (a ``since`` that is
                not a position).
            ClientClosed: the client is closed.
            WrongThread: called from another OS thread.
        """
        self._check_open("subscribe()")
        validate_pattern(pattern)
        if handler is not None and not callable(handler):
            raise InvalidOption("handler", handler, "a callable taking one Message, or None")
        check_options(maxsize, overflow)
        if since is not None:
            try:
                Position.parse(since)
            except ValueError:
                raise InvalidOption("since", since, "a position (RemoteBus.position)") from None
        sub = Subscription(self, pattern, handler, maxsize, overflow)
        sid = next(self._sids)
        self._subs[sid] = sub
        self._sid_of[sub] = sid
        if since is not None:
            self._positions.start(sid, since)
        conn = self._conn
        if conn is not None and conn.open:
            self._send_sub(conn, sid, pattern)
        return sub

    def _send_sub(self, conn: Connection, sid: int, pattern: str) -> None:
        id_ = f"s{sid}"
        self._unconfirmed_subs[id_] = sid
        since = self._positions.since(sid, pattern)
        conn.send(encode(Sub(sid, pattern, id_, since)))

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
        self._check_open("request()")
        check_timeout(timeout, optional=False)
        # A fresh random name per request: a responder that saw one reply_to
        # cannot guess the next, and the hub gives it to this client only.
        inbox = f"_INBOX.{secrets.token_hex(16)}"
        number, frame = self._encode_pub(topic, data, headers, inbox)
        with self.subscribe(inbox, maxsize=None) as sub:
            self._send_pub(number, frame)
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
            raise WrongThread("Subscription.close()", "client", "statistics()")
        sid = self._sid_of.pop(sub, None)
        if sid is None:
            return
        del self._subs[sid]
        self._positions.forget(sid)
        conn = self._conn
        if conn is not None and conn.open:
            conn.send(encode(Unsub(sid)))

    # -- the connection (Reconnecting's hooks) ----------------------------------------

    def _connected(self, conn: Connection) -> None:
        # hello, every subscription (resuming from its position), and every
        # pub the hub has not acknowledged, again, in order.
        hello = encode(Hello(token=self._token, name=self.name, id="hello", session=self.session))
        self._hello_size = len(hello.encode())
        conn.send(hello)
        self._unconfirmed_subs.clear()
        for sid, sub in self._subs.items():
            self._send_sub(conn, sid, sub.pattern)
        frames, again = self._unconfirmed.resend()
        self._resent += again
        put = conn.outbox.put_message
        for frame in frames:
            put(frame, b"")

    def _disconnected(self, conn: Connection) -> None:
        # Written or not, cut off mid-write or not, every pub the hub did not
        # acknowledge stays unconfirmed and goes again on the next connection
        # (the hub drops those it applied): nothing is lost with a connection.
        self._sent += conn.outbox.written_messages
        if self._state is not ClientState.CLOSED:
            self._unconfirmed.trim()  # disconnected: at most max_buffer wait
        if not conn.closed_by_peer and conn.close_code == 1009:
            # A message too big for this client: resuming from before it
            # would bring it back.  Start afresh; each resume reports it.
            self._positions.lose("a message was over this client's max_message_size")

    def _refused_as_too_big(self, limit: int) -> bool:
        # The hub closed with 1009 (docs/transports.md, "Sizes"): the first
        # frame over ``limit`` it read was ours.  A hello over it can never
        # connect; pubs over it are refused, never sent again (the next
        # connection would only be closed for them again).
        if self._hello_size > limit:
            self._refusal = refusal = MessageTooBig(self._hello_size, limit)
            refusal.args = (
                f"the hub's max_message_size ({limit} bytes) is below the hello "
                f"({refusal.size} bytes): no connection can open",
            )
            return True
        refused = self._unconfirmed.over(limit)
        self._send_limit = min(self._send_limit, limit)
        if not refused:
            return False
        logger.error(
            "%s: the hub refused %d message(s) over its max_message_size (%d bytes) and "
            "closed with 1009: dropped; larger emits now raise MessageTooBig",
            self.name,
            len(refused),
            limit,
        )
        for number, size in refused:
            too_big = MessageTooBig(size, limit)
            self._refused(number, too_big)  # a publish() waiting for it raises it
            self._call_hook(too_big, None, None)
        return True

    def _on_text(self, text: str) -> None:
        # The reader greenlet: route each msg to its subscription's channel.
        event: ServerEvent | MsgFrame | None = None
        if _fast_frame is not None:
            event = _fast_frame(text, DEFAULT_MAX_DEPTH)
        if event is None:
            try:
                event = parse_server(text)
            except RemoteProtocolError as exc:
                logger.error("%s: the hub sent an invalid frame: %s", self.name, exc)
                self._call_hook(exc, None, None)
                return
        if isinstance(event, (MsgFrame, Msg)):
            self._received += 1
            sid: Any = event.sid
            sub = self._subs.get(sid)
            if sub is None:
                return  # unsubscribed while it was in flight
            pos = event.pos
            if pos is not None:
                self._positions.received(sid, pos)
            try:
                sub.put((event.topic, event.data, event.headers, event.reply_to))
            except ChannelFull:
                self._dropped_receive += 1
            except ChannelClosed:
                pass
        elif isinstance(event, Ack):
            if type(event.id) is int:
                self._confirmed(event.id)
            else:
                self._subscribed(event)
        elif isinstance(event, Welcome):
            self._welcomed(event.peer)
        elif isinstance(event, Error):
            self._hub_errors += 1
            err = RemoteError(event.code, event.reason, event.id)
            logger.warning("%s: %s", self.name, err)
            if err.fatal:
                self._refused_for_good(err)
            sub = self._refused(event.id, err)
            self._call_hook(err, sub, None)

    def _confirmed(self, upto: int) -> None:
        # A cumulative ack: every pub up to ``upto`` was applied.
        self._unconfirmed.confirm(upto)
        confirms = self._confirms
        if confirms:
            for number in [n for n in confirms if n <= upto]:
                confirms.pop(number).put_nowait(None)

    def _subscribed(self, ack: Ack) -> None:
        # The hub's answer to a sub: where the subscription starts, and, for
        # a resumed one, whether what it missed was replayed.
        sid = self._unconfirmed_subs.pop(ack.id, None)  # type: ignore[arg-type]
        sub = self._subs.get(sid) if sid is not None else None
        if sid is None or sub is None:
            return
        outcome = self._positions.acked(sid, sub.pattern, ack.pos, ack.recovered)
        if outcome.recovered:
            self._recovered += 1
        elif outcome.failure is not None:
            self._recoveries_failed += 1
            logger.warning("%s: %s", self.name, outcome.failure)
            self._call_hook(outcome.failure, sub, None)

    def _refused(self, id_: Any, refusal: GreenbusError) -> Subscription | None:
        # The hub refused a frame of ours with an id: a pub (never sent
        # again; a publish() waiting for it raises), or a sub (it ends).
        if type(id_) is int:
            self._unconfirmed.refuse(id_)
            confirm = self._confirms.pop(id_, None)
            if confirm is not None:
                confirm.put_nowait(refusal)
            return None
        sid = self._unconfirmed_subs.pop(id_, None) if isinstance(id_, str) else None
        if sid is None:
            return None
        sub = self._subs.pop(sid, None)
        if sub is not None:
            self._sid_of.pop(sub, None)
            self._positions.forget(sid)
            sub.fail(refusal)
        return sub

    # -- closing -------------------------------------------------------------------

    def _end(self, error: ClientClosed) -> None:
        self._state = ClientState.CLOSED
        for sub in list(self._subs.values()):
            sub.fail(error)
        for confirm in self._confirms.values():
            confirm.put_nowait(error)
        left = self._unconfirmed.take_all()
        if left:
            self._dropped_close += len(left)
            logger.warning(
                "%s: closed with %d message(s) the hub had not acknowledged; they may "
                "not have reached it",
                self.name,
                len(left),
            )
        self._open_event.clear()
        self._closed_event.set()

    def close(self, timeout: float | None = 5.0) -> None:
        """Send what is queued, close the connection and the subscriptions.  Idempotent.

        Waits (up to ``timeout``) for the closing handshake, and so for the
        hub's acks of what was sent before; emits the hub has still not
        acknowledged then are counted in ``dropped_at_close`` and logged.

        Args:
            timeout: seconds to wait for the closing handshake; None waits.

        Raises:
            WrongThread: called from another OS thread (nothing is closed then).
            InvalidOption: a bad ``timeout`` (nothing is closed then).
        """
        if get_ident() != self._thread:
            raise WrongThread("close()", "client", "statistics()")
        check_timeout(timeout)
        if self._state is ClientState.CLOSED:
            if self._runner is not None and not self._runner.dead:
                self._runner.kill(block=True, timeout=timeout)
            return
        for sub in list(self._subs.values()):
            sub.close()  # sends unsub while the connection is open
        conn = self._conn
        # CLOSED first: no new call is taken and the runner will not
        # reconnect, while the hub's last acks still come in.
        self._state = ClientState.CLOSED
        if conn is not None:
            conn.close(1000, "client closing")
            conn.wait(timeout)
        self._end(ClientClosed(self.name))
        if self._runner is not None:
            self._runner.kill(block=True, timeout=timeout)

    def __enter__(self) -> RemoteBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    url: str | Sequence[str],
    *,
    token: str | None = None,
    name: str | None = None,
    timeout: float | None = 5.0,
    **options: Any,
) -> RemoteBus:
    """Connect to a hub at ``url`` (``ws://host:port/``, or several to try
    in turn) and return a :class:`RemoteBus`.

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
