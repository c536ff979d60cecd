"""The in-process bus: routing, fan-out, request/reply and the error hook.

Data flows one way: ``emit`` looks the topic up in the :class:`TopicIndex`
(one dict lookup for a topic seen before) and appends one tuple to each
matching subscription's :class:`Channel`.  Each subscription with a handler
owns one greenlet that takes items from its channel in order and calls the
handler, one message at a time.  ``emit`` never runs a handler and never
switches greenlets, except when a ``block`` channel is full.

The ordering contract is stated in ``docs/ordering.md``.
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Protocol, TypeVar, overload

import gevent
from greenlet import getcurrent

from ._portal import HandOff, ThreadPortal, get_ident
from .channel import (
    DEFAULT_MAXSIZE,
    Channel,
    ChannelStatistics,
    Overflow,
    check_options,
    check_timeout,
)
from .exceptions import (
    BusClosed,
    ChannelClosed,
    ChannelFull,
    EndOfChannel,
    InvalidOption,
    NoReplyTo,
    NoResponders,
    ReceiveTimeout,
    RequestTimeout,
    SlowConsumer,
    WrongThread,
)
from .topics import TopicIndex, validate_pattern, validate_topic

__all__ = [
    "Bus",
    "BusState",
    "Forward",
    "Subscriber",
    "BusStatistics",
    "ErrorHook",
    "Handler",
    "Message",
    "Subscription",
    "SubscriptionStatistics",
]

logger = logging.getLogger("greenbus.bus")

_EMPTY_HEADERS: Mapping[str, Any] = MappingProxyType({})
_tuple_new = tuple.__new__

#: Yield to other greenlets after this many back-to-back deliveries, so one
#: subscriber with a deep backlog cannot starve the rest of the process.
_FAIR_BATCH = 64


class Message(tuple):
    """One delivered message.  Immutable, and shared by every subscriber.

    Attributes:
        topic: the concrete topic it was emitted on.
        data: the payload, passed by reference (not copied).
        headers: a read-only mapping, empty if none were given.
        reply_to: the inbox topic of a request, or None.
    """

    __slots__ = ()

    #: The bus ``reply()`` emits on.  Each bus delivers instances of its own
    #: subclass binding it, so a queued message is a plain 4-tuple of
    #: atoms that the garbage collector can stop tracking (see
    #: :func:`message_class`).
    _bus: Any = None

    def __new__(
        cls,
        topic: str,
        data: Any = None,
        headers: Mapping[str, Any] | None = None,
        reply_to: str | None = None,
        bus: Any = None,
    ) -> Message:
        if bus is not None:
            cls = bus._message_class
        return _tuple_new(cls, (topic, data, headers, reply_to))

    @property
    def topic(self) -> str:
        return self[0]  # type: ignore[no-any-return]

    @property
    def data(self) -> Any:
        return self[1]

    @property
    def headers(self) -> Mapping[str, Any]:
        headers = self[2]
        return _EMPTY_HEADERS if headers is None else MappingProxyType(headers)

    @property
    def reply_to(self) -> str | None:
        return self[3]  # type: ignore[no-any-return]

    def reply(self, data: Any = None, *, headers: Mapping[str, Any] | None = None) -> int:
        """Emit ``data`` to this request's ``reply_to`` topic on the same bus.

        Returns:
            how many subscriptions received the reply (0 if the requester
            has given up).

        Raises:
            NoReplyTo: this message is not a request.
        """
        reply_to = self[3]
        bus = self._bus
        if reply_to is None or bus is None:
            raise NoReplyTo(self[0])
        return bus.emit(reply_to, data, headers=headers)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        extra = f", reply_to={self[3]!r}" if self[3] is not None else ""
        if self[2]:
            extra += f", headers={self[2]!r}"
        return f"Message(topic={self[0]!r}, data={self[1]!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return tuple.__ne__(self, other)

    def __hash__(self) -> int:
        return hash((self[0], self[3]))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Message, (self[0], self[1], self[2], self[3]))


def message_class(owner: Any) -> type[Message]:
    """A :class:`Message` subclass whose ``reply()`` emits on ``owner``.

    Each bus (and remote client) makes one.  Delivering instances of it
    keeps queued items as 4-tuples without a reference to the bus.
    """
    return type(
        "Message",
        (Message,),
        {
            "__slots__": (),
            "_bus": owner,
            "__module__": Message.__module__,
            "__qualname__": "Message",
        },
    )


class Handler(Protocol):
    def __call__(self, msg: Message, /) -> object: ...


class ErrorHook(Protocol):
    def __call__(
        self, exc: BaseException, subscription: Subscription, message: Message | None, /
    ) -> object: ...


H = TypeVar("H", bound=Callable[[Message], object])


class BusState(enum.IntEnum):
    """A bus's life: OPEN -> CLOSING -> CLOSED."""

    OPEN = 0
    #: ``close()`` is draining subscriptions; emit/subscribe raise BusClosed.
    CLOSING = 1
    CLOSED = 2


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics(ChannelStatistics):
    """A snapshot of one subscription's counters: its channel's, plus these."""

    id: int
    pattern: str
    handler: str | None
    active: bool
    #: Handler calls that raised (each logged and passed to on_error).
    handler_errors: int
    #: Overflow episodes reported as SlowConsumer.
    slow_consumer_events: int


@dataclass(frozen=True, slots=True)
class BusStatistics:
    """A snapshot of a bus's counters (see :meth:`Bus.stats`)."""

    name: str
    state: str
    subscriptions: tuple[SubscriptionStatistics, ...]
    #: Messages handed in from other OS threads, and those still waiting.
    thread_emits: int
    thread_pending: int
    #: Errors from thread emits that could not be raised in their thread.
    thread_errors: int
    #: Thread emits lost because they raced close() or its timeout ran out.
    thread_lost: int

    @property
    def pending(self) -> int:
        return sum(s.pending for s in self.subscriptions)

    @property
    def delivered(self) -> int:
        return sum(s.delivered for s in self.subscriptions)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.subscriptions)


_sub_ids = itertools.count(1)


class Subscription:
    """Interest in a pattern, with its own FIFO channel.

    Made by :meth:`Bus.subscribe`.  With a handler, a greenlet of its own
    calls ``handler(msg)`` for each message, in order, one at a time.
    Without one, consume it with :meth:`get` or by iterating::

        with bus.subscribe("jobs.>") as sub:
            for msg in sub:
                ...

    Iteration ends when the subscription or its bus is closed (after the
    bus has delivered what was queued).  A context manager: leaving the
    ``with`` block closes it.
    """

    __slots__ = (
        "id",
        "pattern",
        "handler",
        "_bus",
        "_channel",
        "_put",
        "_greenlet",
        "_active",
        "_handler_errors",
        "_slow_events",
        "_message",
        "_in_hand",
        "_stopped",
        "_error",
        "__weakref__",
    )

    def __init__(
        self,
        bus: Any,
        pattern: str,
        handler: Callable[[Message], object] | None,
        maxsize: int | None,
        overflow: Overflow | str,
    ) -> None:
        # ``bus`` is a Bus, or the remote client: an owner with ``name``,
        # ``_remove(sub)``, ``_report_handler_error`` and ``_report_slow_consumer``.
        self.id = next(_sub_ids)
        self.pattern = pattern
        self.handler = handler
        self._bus = bus
        self._channel: Channel[tuple[Any, ...]] = Channel(
            maxsize, overflow, on_overflow=self._on_overflow
        )
        # The bound method is stored once: the topic index holds it, and
        # emit calls it without an attribute lookup per subscriber.
        self._put = self._channel.put
        self._greenlet: gevent.Greenlet | None = None
        self._active = True
        self._handler_errors = 0
        self._slow_events = 0
        self._message: type[Message] = bus._message_class
        self._in_hand = 0
        self._stopped = False
        self._error: BaseException | None = None
        if handler is not None:
            greenlet = gevent.Greenlet(self._run, handler)
            greenlet.name = f"greenbus:{bus.name}:{pattern}"
            self._greenlet = greenlet
            self._channel.owner = greenlet
            greenlet.start()

    # -- introspection -----------------------------------------------------

    @property
    def active(self) -> bool:
        """True until :meth:`close` (or the bus's close)."""
        return self._active

    @property
    def pending(self) -> int:
        """Messages queued and not yet handed to the handler (or returned by ``get``)."""
        return len(self._channel) + self._in_hand

    @property
    def delivered(self) -> int:
        """Messages handed to the consumer (handler calls started, or ``get`` returns)."""
        return self._channel._delivered - self._in_hand

    @property
    def dropped(self) -> int:
        """Messages dropped by the ``drop_oldest``/``drop_newest`` policies."""
        return self._channel._dropped

    @property
    def maxsize(self) -> int | None:
        return self._channel.maxsize

    @property
    def overflow(self) -> Overflow:
        return self._channel.overflow

    def statistics(self) -> SubscriptionStatistics:
        """A frozen snapshot of this subscription's counters."""
        channel = self._channel.statistics()
        counts = {f.name: getattr(channel, f.name) for f in fields(ChannelStatistics)}
        counts["pending"] = self.pending
        counts["delivered"] = self.delivered
        return SubscriptionStatistics(
            **counts,
            id=self.id,
            pattern=self.pattern,
            handler=_callable_name(self.handler) if self.handler is not None else None,
            active=self._active,
            handler_errors=self._handler_errors,
            slow_consumer_events=self._slow_events,
        )

    def __repr__(self) -> str:
        who = f" handler={_callable_name(self.handler)}" if self.handler is not None else ""
        state = "active" if self._active else "closed"
        return (
            f"<Subscription #{self.id} {self.pattern!r}{who} {state} "
            f"pending={self.pending} delivered={self.delivered} dropped={self.dropped}>"
        )

    # -- consuming ---------------------------------------------------------

    def get(self, timeout: float | None = None) -> Message:
        """Return the next message, waiting for one.

        Args:
            timeout: seconds to wait at most; None waits forever.

        Raises:
            ReceiveTimeout: nothing arrived in time.
            EndOfChannel: the subscription (or its bus) is closed and drained.
            InvalidOption: this subscription has a handler; its messages go there.
            GreenbusError: the error it ended with (see :meth:`fail`), once drained.
        """
        if self.handler is not None:
            raise InvalidOption("get()", self.pattern, "a subscription without a handler")
        try:
            item = self._channel.get(timeout)
        except EndOfChannel:
            if self._error is not None:
                raise self._error from None
            raise
        return _tuple_new(self._message, item)  # type: ignore[no-any-return]

    def get_nowait(self) -> Message:
        """Return the next message at once.

        Raises:
            ChannelEmpty: nothing is queued.
            EndOfChannel: closed and drained.
            GreenbusError: the error it ended with (see :meth:`fail`), once drained.
        """
        if self.handler is not None:
            raise InvalidOption("get_nowait()", self.pattern, "a subscription without a handler")
        try:
            item = self._channel.get_nowait()
        except EndOfChannel:
            if self._error is not None:
                raise self._error from None
            raise
        return _tuple_new(self._message, item)  # type: ignore[no-any-return]

    @property
    def error(self) -> BaseException | None:
        """The error this subscription ended with (see :meth:`fail`), or None."""
        return self._error

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until the subscription or its bus is closed.

        A subscription that ended with an error (see :meth:`fail`) raises
        it once the messages queued before it have been yielded.
        """
        get = self.get
        while True:
            try:
                yield get()
            except EndOfChannel:
                return

    def _run(self, handler: Callable[[Message], object]) -> None:
        # The handler greenlet: one at a time, in order, never overlapping.
        # ``handler`` is passed in, not read from self.handler, which once()
        # replaces with the user's function for display.
        # Items are taken in batches of up to _FAIR_BATCH (one channel call
        # per batch, not per message); after a full batch with more waiting,
        # it yields, so a deep backlog cannot starve other greenlets.
        channel = self._channel
        get_batch = channel.get_batch
        queue = channel._queue
        make = self._message
        report = self._bus._report_handler_error
        while True:
            try:
                batch = get_batch(_FAIR_BATCH)
            except EndOfChannel:
                return
            left = len(batch)
            for item in batch:
                if self._stopped:
                    # Subscription.close() ran (maybe in this very batch):
                    # deliver no more.  (Bus.close() drains instead.)
                    self._discard_in_hand()
                    return
                left -= 1
                # Taken from the channel but not yet handled: still pending.
                self._in_hand = left
                msg = _tuple_new(make, item)
                try:
                    handler(msg)
                except Exception as exc:
                    self._handler_errors += 1
                    report(exc, self, msg)
            if queue and len(batch) == _FAIR_BATCH:
                gevent.sleep(0)

    def _discard_in_hand(self) -> int:
        # Messages of the current batch that will not be handled: they were
        # counted as delivered when taken; count them as discarded instead.
        n = self._in_hand
        self._channel._delivered -= n
        self._channel._discarded += n
        self._in_hand = 0
        return n

    def _on_overflow(self, channel: Channel[Any]) -> None:
        self._slow_events += 1
        self._bus._report_slow_consumer(self)

    # -- closing -----------------------------------------------------------

    def close(self) -> None:
        """Stop delivery.  Idempotent.

        Nothing is delivered after it returns (a handler call already
        running finishes).  Queued messages are discarded and counted in
        ``statistics().discarded``.

        Raises:
            WrongThread: called from an OS thread other than the bus's.
        """
        if not self._active:
            return
        self._bus._remove(self)
        self._active = False
        self._stopped = True
        channel = self._channel
        channel.close()
        n = channel.discard()
        if n:
            logger.debug("%r closed with %d undelivered message(s) discarded", self, n)

    def fail(self, error: BaseException) -> None:
        """End this subscription because of ``error``, for its owner (the remote client).

        Like :meth:`close`, nothing more is queued to it and its owner
        forgets it; unlike ``close``, what is queued stays for the
        consumer, whose ``get`` (and iteration) then raises ``error``
        instead of ending cleanly.  A handler subscription's handler runs
        for what is queued, then stops.  A no-op once it is not active.
        """
        if not self._active:
            return
        self._error = error
        self._bus._remove(self)
        self._active = False
        self._channel.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_subscription(pattern: str, opts: Mapping[str, Any]) -> None:
    # What subscribe() would refuse, checked when a decorator is made.
    validate_pattern(pattern)
    check_options(opts.get("maxsize", DEFAULT_MAXSIZE), opts.get("overflow", Overflow.BLOCK))


def _callable_name(fn: object) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else repr(fn)


class Forward:
    """A subscription that hands messages to a sink instead of a channel.

    Made by :meth:`Bus.forward`, for transports: the hub forwards each
    matching message into a remote peer's outbound queue.  A context manager.
    """

    __slots__ = ("_active", "_bus", "_put", "id", "interest", "pattern", "sink")

    def __init__(
        self,
        bus: Bus,
        pattern: str,
        sink: Callable[[Message], bool],
        interest: bool = True,
        raw: bool = False,
    ) -> None:
        self.id = next(_sub_ids)
        self.interest = interest
        self.pattern = pattern
        self.sink = sink
        self._bus = bus
        self._active = True

        if raw:
            # A distinct callable per forward (the index and _by_put key on
            # it), calling the sink with the emit's own tuple.
            self._put: Callable[[tuple[Any, ...]], bool] = functools.partial(sink)
            return

        make = bus._message_class

        def put(item: tuple[Any, ...]) -> bool:
            return sink(_tuple_new(make, item))

        self._put = put

    @property
    def active(self) -> bool:
        return self._active

    def close(self) -> None:
        """Stop forwarding.  Idempotent."""
        if self._active:
            self._bus._remove_forward(self)
            self._active = False

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "active" if self._active else "closed"
        return f"<Forward #{self.id} {self.pattern!r} to {_callable_name(self.sink)} {state}>"


_bus_ids = itertools.count(1)


class Subscriber:
    """``on``/``once``/``off``, shared by :class:`Bus` and the remote client.

    Built on the subclass's ``subscribe(pattern, handler, **opts)`` and
    ``subscriptions(pattern)``.  Also reports its subscriptions' handler
    errors and slow consumers: logged, then passed to ``on_error`` if set.
    """

    name: str
    on_error: ErrorHook | None

    def subscribe(
        self, pattern: str, handler: Callable[[Message], object] | None = None, **opts: Any
    ) -> Subscription:
        raise NotImplementedError

    def subscriptions(self, pattern: str | None = None) -> list[Subscription]:
        raise NotImplementedError

    # -- errors (reported by its subscriptions' greenlets) --------------------

    def _report_handler_error(self, exc: Exception, sub: Subscription, msg: Message) -> None:
        logger.error(
            "%s: handler %s of subscription #%d %r raised on topic %r",
            self.name,
            _callable_name(sub.handler),
            sub.id,
            sub.pattern,
            msg.topic,
            exc_info=exc,
        )
        self._call_hook(exc, sub, msg)

    def _report_slow_consumer(self, sub: Subscription) -> None:
        channel = sub._channel
        exc = SlowConsumer(sub.pattern, channel.maxsize, channel.overflow.value, channel._dropped)
        logger.warning("%s: %s (subscription #%d)", self.name, exc, sub.id)
        self._call_hook(exc, sub, None)

    def _call_hook(self, exc: BaseException, sub: Subscription | None, msg: Message | None) -> None:
        hook = self.on_error
        if hook is None:
            return
        try:
            hook(exc, sub, msg)
        except Exception:
            logger.exception("%s: the on_error hook itself raised", self.name)

    @overload
    def on(self, pattern: str, handler: None = None, **opts: Any) -> Callable[[H], H]: ...

    @overload
    def on(self, pattern: str, handler: H, **opts: Any) -> H: ...

    def on(self, pattern: str, handler: H | None = None, **opts: Any) -> H | Callable[[H], H]:
        """Subscribe ``handler`` to ``pattern``; usable as a decorator.

        ``opts`` are those of :meth:`subscribe`.  Returns the handler itself
        (so a decorated function stays a function); undo with :meth:`off`.

        Raises:
            InvalidTopic, InvalidOption: at once, also in its decorator form
                (not only when the decorator is applied); and as :meth:`subscribe`.
        """
        if handler is None:
            _check_subscription(pattern, opts)

            def decorator(fn: H) -> H:
                self.subscribe(pattern, fn, **opts)
                return fn

            return decorator
        self.subscribe(pattern, handler, **opts)
        return handler

    @overload
    def once(self, pattern: str, handler: None = None, **opts: Any) -> Callable[[H], H]: ...

    @overload
    def once(self, pattern: str, handler: H, **opts: Any) -> H: ...

    def once(self, pattern: str, handler: H | None = None, **opts: Any) -> H | Callable[[H], H]:
        """Like :meth:`on`, but the handler runs for the first message only.

        The subscription closes itself before the handler runs, so later
        messages are not delivered to it even if they were already queued.
        """
        if handler is None:
            _check_subscription(pattern, opts)

            def decorator(fn: H) -> H:
                self.once(pattern, fn, **opts)
                return fn

            return decorator
        if not callable(handler):
            raise InvalidOption("handler", handler, "a callable taking one Message")
        holder: list[Subscription] = []

        def run_once(msg: Message) -> object:
            holder[0].close()
            return handler(msg)

        sub = self.subscribe(pattern, run_once, **opts)
        sub.handler = handler  # statistics, repr and off() see the user's function
        holder.append(sub)
        return handler

    def off(self, pattern: str, handler: Callable[[Message], object] | None = None) -> int:
        """Close the subscriptions on exactly ``pattern`` (with ``handler``, if given).

        Returns:
            how many were closed.
        """
        subs = [s for s in self.subscriptions(pattern) if handler is None or s.handler == handler]
        for sub in subs:
            sub.close()
        return len(subs)


class Bus(Subscriber):
    """An in-process publish/subscribe bus for greenlets.

    A bus belongs to the OS thread (and gevent hub) that creates it.  Its
    handlers run in greenlets of that thread.  ``emit`` and ``request`` may
    be called from any OS thread; everything else must be called from the
    owning thread.

    Args:
        name: shown in ``repr``, logs and statistics.
        on_error: the error hook, see :attr:`on_error`.
    """

    def __init__(self, name: str | None = None, *, on_error: ErrorHook | None = None) -> None:
        number = next(_bus_ids)
        self.name = name if name is not None else f"bus-{number}"
        #: Called as ``on_error(exc, subscription, message)`` when a handler
        #: raises (``message`` is the message it was handling) and with a
        #: :class:`SlowConsumer` (``message`` None) on the first drop of an
        #: overflow episode.  Both are logged on ``greenbus.bus`` as well.
        #: Replace it freely; if it raises, that is logged too.
        self.on_error: ErrorHook | None = on_error
        self._index: TopicIndex[Callable[[tuple[Any, ...]], bool]] = TopicIndex()
        self._routes = self._index.cache
        self._subs: dict[Subscription, None] = {}
        self._forwards: dict[Forward, None] = {}
        self._interest: dict[str, int] = {}
        self._interest_listeners: list[Callable[[str, bool], object]] = []
        self._close_listeners: list[Callable[[], object]] = []
        self._by_put: dict[Callable[[tuple[Any, ...]], bool], Subscription] = {}
        self._state = BusState.OPEN
        self._thread = get_ident()
        self._open_in = self._thread
        self._portal = ThreadPortal(self._emit_handoff, self._report_thread_error, self.name)
        self._thread_errors = 0
        self._message_class = message_class(self)
        # 128 random bits: nobody outside this bus can name its inboxes.
        self._inbox_prefix = f"_INBOX.{secrets.token_hex(16)}"
        self._inbox: Forward | None = None
        # Pending requests by inbox: a channel for a requester on the bus's
        # thread, a HandOff for one on another OS thread.
        self._requests: dict[str, Channel[Message] | HandOff] = {}

    def __repr__(self) -> str:
        return (
            f"<Bus {self.name!r} {self._state.name.lower()} "
            f"subscriptions={len(self._subs)} patterns={len(self._index.patterns())}>"
        )

    @property
    def state(self) -> BusState:
        return self._state

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun."""
        return self._state is not BusState.OPEN

    @property
    def inbox_prefix(self) -> str:
        """The prefix of every request inbox of this bus.  Read-only.

        The contract: every ``reply_to`` that :meth:`request` uses is
        ``inbox_prefix + "." + <one token>``; the prefix starts with
        ``_INBOX.`` and ends with 128 random bits (from :mod:`secrets`), and
        the token holds 64 more, new for each request.  So the prefix, and
        an inbox, cannot be guessed, and knowing one request's ``reply_to``
        does not give the next one.  A transport uses it to refuse remote
        peers' subscriptions to this bus's own inboxes.  Fixed for the
        bus's life.
        """
        return self._inbox_prefix

    # -- publishing --------------------------------------------------------

    def emit(
        self,
        topic: str,
        data: Any = None,
        *,
        headers: Mapping[str, Any] | None = None,
        reply_to: str | None = None,
    ) -> int:
        """Queue a message to every subscription whose pattern matches ``topic``.

        Never runs a handler and never switches greenlets, except when a
        matching subscription with ``overflow="block"`` is full: then it waits
        cooperatively for room, like a send on a full Go channel.

        From another OS thread, the message is handed to the bus's thread and
        routed there, in that thread's order; the return value is then the
        number of subscriptions matching at hand-off, and errors that happen
        on delivery (``ChannelFull``) cannot reach the caller: they are
        logged and counted in ``stats().thread_errors``.

        Args:
            topic: a concrete topic (no wildcards).
            data: any object; passed by reference.
            headers: optional mapping, copied.
            reply_to: optional inbox topic a responder should reply to.

        Returns:
            how many subscriptions the message was queued to.

        Raises:
            InvalidTopic: ``topic`` (or ``reply_to``) is malformed.
            BusClosed: the bus is closing or closed.
            ChannelFull: a matching subscription is full and its policy is
                ``"error"``, or it is ``"block"`` and the caller cannot wait
                (the gevent hub, or that subscription's own handler).  The
                message was still offered to every other subscription;
                ``exc.delivered`` says to how many.
        """
        # One comparison covers both rare cases: _open_in is the owning
        # thread's id while the bus is open, and 0 once it closes.
        if get_ident() != self._open_in:
            return self._emit_other(topic, data, headers, reply_to)
        try:
            route = self._routes[topic]
        except (KeyError, TypeError):
            route = None
        if route is None:
            # Outside the except block, so an InvalidTopic raised by the
            # validation in match() is not chained to the cache's KeyError.
            route = self._index.match(topic)
        if headers is not None or reply_to is not None:
            headers, reply_to = check_extras(headers, reply_to)
        item = (topic, data, headers, reply_to)
        n = 0
        try:
            for put in route:
                if put(item):
                    n += 1
        except (ChannelFull, ChannelClosed) as exc:
            return self._emit_rest(route, put, item, n, exc)
        return n

    def _emit_other(
        self,
        topic: str,
        data: Any,
        headers: Mapping[str, Any] | None,
        reply_to: str | None,
    ) -> int:
        # The bus is closed, or this is another OS thread: validate here,
        # hand the message to the bus's thread, report what matches now.
        if self._state is not BusState.OPEN:
            raise BusClosed(self.name)
        matched = len(self._index.match_uncached(topic))  # validates, thread-safe read
        if headers is not None or reply_to is not None:
            headers, reply_to = check_extras(headers, reply_to)
        if not self._portal.submit((topic, data, headers, reply_to)):
            raise BusClosed(self.name)  # it closed meanwhile (counted in thread_lost)
        return matched

    def _emit_rest(
        self,
        route: tuple[Callable[[tuple[Any, ...]], bool], ...],
        failed: Callable[[tuple[Any, ...]], bool],
        item: tuple[Any, ...],
        n: int,
        exc: ChannelFull | ChannelClosed,
    ) -> int:
        # Slow path of emit: a subscription refused the message.
        full: list[str] = []
        first = None
        if isinstance(exc, ChannelFull):
            first = exc
            full.append(self._pattern_of(failed))
        start = next(i for i, put in enumerate(route) if put is failed) + 1
        return self._offer(route[start:], item, n, full, first)

    def _offer(
        self,
        route: tuple[Callable[[tuple[Any, ...]], bool], ...],
        item: tuple[Any, ...],
        n: int = 0,
        full: list[str] | None = None,
        first: ChannelFull | None = None,
    ) -> int:
        # Offer the message to every subscription in route even if some are
        # full, then report all the full ones in a single ChannelFull.
        full = [] if full is None else full
        for put in route:
            try:
                if put(item):
                    n += 1
            except ChannelFull as error:
                first = first or error
                full.append(self._pattern_of(put))
            except ChannelClosed:
                pass  # closed while we waited on another subscription: it left
        if first is not None:
            raise ChannelFull(first.maxsize, first.reason, delivered=n, full=tuple(full))
        return n

    def _pattern_of(self, put: Callable[[tuple[Any, ...]], bool]) -> str:
        sub = self._by_put.get(put)
        return sub.pattern if sub is not None else "?"

    def _emit_handoff(self, item: tuple[Any, ...]) -> None:
        # On the bus's thread, in the portal's pump greenlet.  The bus may be
        # CLOSING (close() drains the portal before it closes the channels):
        # deliver, since the emit was accepted while the bus was open.
        reply_to = item[3]
        if (
            reply_to is not None
            and self._inbox is None
            and self._state is BusState.OPEN
            and reply_to in self._requests
        ):
            # A request made on another thread: its replies need the inbox.
            self._ensure_inbox()
        self._offer(self._index.match(item[0]), item)

    def _report_thread_error(self, exc: BaseException, item: tuple[Any, ...]) -> None:
        self._thread_errors += 1
        logger.error(
            "%s: emit on %r from another thread failed on delivery: %s", self.name, item[0], exc
        )

    # -- subscribing -------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Message], object] | None = None,
        *,
        maxsize: int | None = DEFAULT_MAXSIZE,
        overflow: Overflow | str = Overflow.BLOCK,
    ) -> Subscription:
        """Subscribe to every topic ``pattern`` matches.

        Args:
            pattern: a topic, or a pattern with ``*`` (one token) and ``>``
                (one or more trailing tokens).
            handler: called as ``handler(msg)`` in the subscription's own
                greenlet, once per message, in order.  Without one, consume
                the subscription with ``get()`` or iteration.
            maxsize: channel capacity in messages; None for unbounded.
            overflow: ``"block"`` (lossless backpressure), ``"drop_oldest"``,
                ``"drop_newest"`` or ``"error"``.

        Returns:
            the :class:`Subscription` (also a context manager).

        Raises:
            InvalidTopic: malformed pattern.
            InvalidOption: bad ``maxsize``, ``overflow`` or non-callable handler.
            BusClosed: the bus is closing or closed.
            WrongThread: called from another OS thread.
        """
        self._check_thread("subscribe()")
        if self._state is not BusState.OPEN:
            raise BusClosed(self.name)
        validate_pattern(pattern)
        if handler is not None and not callable(handler):
            raise InvalidOption("handler", handler, "a callable taking one Message, or None")
        sub = Subscription(self, pattern, handler, maxsize, overflow)
        self._index.add(pattern, sub._put)
        self._subs[sub] = None
        self._by_put[sub._put] = sub
        self._gain_interest(pattern)
        return sub

    def forward(
        self,
        pattern: str,
        sink: Callable[[Message], bool],
        *,
        interest: bool = True,
        raw: bool = False,
    ) -> Forward:
        """Call ``sink(msg)`` inside :meth:`emit` for each message matching ``pattern``.

        For transports, which forward messages into their own outbound
        queues: the sink runs in the emitter's greenlet, so it must only
        queue the message (never block, never run user code) and return
        True if it queued it (emit's return value counts it).  Exceptions
        it raises reach the emitter.  Ordering is the emitter's order, as
        for every subscription.

        Args:
            interest: whether this forward counts as interest in ``pattern``
                for :meth:`add_interest_listener` (a federation's own
                outbound forward on ``>`` must not, or it would ask for
                everything).
            raw: call ``sink`` with the emit's plain ``(topic, data,
                headers, reply_to)`` tuple instead of a :class:`Message`.
                It is the same object for every raw sink of one emit, and a
                new one per emit, so a sink may reuse work done for the same
                message (the hub encodes a message once for all its peers).

        Returns:
            a :class:`Forward`; close it to stop.

        Raises:
            InvalidTopic, InvalidOption, BusClosed, WrongThread: as :meth:`subscribe`.
        """
        self._check_thread("forward()")
        if self._state is not BusState.OPEN:
            raise BusClosed(self.name)
        validate_pattern(pattern)
        if not callable(sink):
            raise InvalidOption("sink", sink, "a callable taking one Message")
        fwd = Forward(self, pattern, sink, interest, raw)
        self._index.add(pattern, fwd._put)
        self._forwards[fwd] = None
        self._by_put[fwd._put] = fwd  # type: ignore[assignment]
        if interest:
            self._gain_interest(pattern)
        return fwd

    def forwards(self) -> list[Forward]:
        """The active forwarding subscriptions, oldest first."""
        return list(self._forwards)

    def _remove_forward(self, fwd: Forward) -> None:
        self._check_thread("Forward.close()")
        if self._forwards.pop(fwd, 0) is None:
            self._index.remove(fwd.pattern, fwd._put)
            self._by_put.pop(fwd._put, None)
            if fwd.interest:
                self._lose_interest(fwd.pattern)

    def _remove(self, sub: Subscription) -> None:
        self._check_thread("Subscription.close()")
        if self._subs.pop(sub, 0) is None:
            self._index.remove(sub.pattern, sub._put)
            self._by_put.pop(sub._put, None)
            self._lose_interest(sub.pattern)

    # -- interest (for federation) -------------------------------------------

    def add_interest_listener(self, listener: Callable[[str, bool], object]) -> None:
        """Call ``listener(pattern, True)`` when the first subscription to
        ``pattern`` appears and ``listener(pattern, False)`` when the last one
        goes (subscriptions, and forwards made with ``interest=True``).

        For federation: a node asks its broker only for what someone here
        wants.  Listeners run in the greenlet that (un)subscribed; they must
        not block.  Exceptions are logged.
        """
        self._interest_listeners.append(listener)

    def remove_interest_listener(self, listener: Callable[[str, bool], object]) -> None:
        """Stop calling ``listener``; a no-op if it was not added."""
        if listener in self._interest_listeners:
            self._interest_listeners.remove(listener)

    def interest(self) -> list[str]:
        """The patterns someone on this bus subscribes to now (what listeners were told)."""
        return list(self._interest)

    def _gain_interest(self, pattern: str) -> None:
        count = self._interest.get(pattern, 0)
        self._interest[pattern] = count + 1
        if count == 0:
            self._tell_interest(pattern, True)

    def _lose_interest(self, pattern: str) -> None:
        count = self._interest.get(pattern, 0) - 1
        if count > 0:
            self._interest[pattern] = count
            return
        self._interest.pop(pattern, None)
        self._tell_interest(pattern, False)

    def _tell_interest(self, pattern: str, present: bool) -> None:
        for listener in list(self._interest_listeners):
            try:
                listener(pattern, present)
            except Exception:
                logger.exception("%s: interest listener %r failed", self.name, listener)

    # -- closing (for federation) ----------------------------------------------

    def add_close_listener(self, listener: Callable[[], object]) -> None:
        """Call ``listener()`` once, when :meth:`close` has closed this bus.

        For what lives alongside a bus and holds resources for it (a
        federation's Redis connections), so that it can let them go when
        the bus goes, without waiting for its own ``stop()``.  Listeners run
        at the end of ``close()``, in its greenlet, with the bus already
        CLOSED (every subscription drained, every forward closed), in the
        order they were added.  They must not block.  Exceptions are logged.

        Raises:
            BusClosed: the bus is closing or closed (the listener would never run).
            WrongThread: called from another OS thread.
        """
        self._check_thread("add_close_listener()")
        if self._state is not BusState.OPEN:
            raise BusClosed(self.name)
        self._close_listeners.append(listener)

    def remove_close_listener(self, listener: Callable[[], object]) -> None:
        """Stop calling ``listener`` at close; a no-op if it was not added (or has run)."""
        if listener in self._close_listeners:
            self._close_listeners.remove(listener)

    # -- request/reply -----------------------------------------------------

    def request(
        self,
        topic: str,
        data: Any = None,
        *,
        timeout: float = 1.0,
        headers: Mapping[str, Any] | None = None,
    ) -> Message:
        """Emit a request and wait for the first reply.

        The request carries a private, unguessable inbox topic as
        ``reply_to`` (see :attr:`inbox_prefix`); responders answer with
        :meth:`Message.reply`.  Later replies are not queued (the reply's
        emit counts 0 for them).

        From another OS thread, the request is handed to the bus's thread as
        :meth:`emit` does, and the calling thread waits for the reply (in a
        greenlet of its own gevent hub, made if it has none).

        Args:
            timeout: seconds to wait for the reply (after the request was queued).

        Returns:
            the first reply.

        Raises:
            NoResponders: no subscription matched ``topic`` at send time.
            RequestTimeout: no reply within ``timeout`` (also a TimeoutError).
            InvalidTopic, InvalidOption: bad arguments (checked before anything is sent).
            BusClosed: the bus is closing or closed.
        """
        check_timeout(timeout, optional=False)
        # A random token, not a counter: a reply_to seen by a responder (or a
        # remote peer) must not tell anyone the next request's inbox.  With
        # 64 bits, two requests in flight at once never draw the same one.
        inbox = f"{self._inbox_prefix}.{secrets.token_hex(8)}"
        if get_ident() != self._thread:
            return self._request_from_thread(topic, data, timeout, headers, inbox)
        self._ensure_inbox()
        waiter: Channel[Message] = Channel(1, Overflow.DROP_NEWEST)
        self._requests[inbox] = waiter
        try:
            if self.emit(topic, data, headers=headers, reply_to=inbox) == 0:
                raise NoResponders(topic)
            try:
                return waiter.get(timeout=timeout)
            except ReceiveTimeout:
                raise RequestTimeout(topic, timeout) from None
        finally:
            del self._requests[inbox]

    def _ensure_inbox(self) -> None:
        # On the bus's thread.  One wildcard forward per bus serves every
        # request: a reply is handed to its waiter inside emit, with no
        # subscription made and closed per request.
        if self._inbox is None:
            self._inbox = self.forward(f"{self._inbox_prefix}.*", self._on_reply)

    def _request_from_thread(
        self,
        topic: str,
        data: Any,
        timeout: float,
        headers: Mapping[str, Any] | None,
        inbox: str,
    ) -> Message:
        # On another OS thread: the reply is handed over, not queued.  The
        # hand-off of the request itself makes the inbox forward if needed
        # (see _emit_handoff), before the request is routed.
        waiter = HandOff()
        self._requests[inbox] = waiter
        try:
            if self._emit_other(topic, data, headers, inbox) == 0:
                raise NoResponders(topic)
            reply = waiter.wait(timeout)
            if reply is None:
                raise RequestTimeout(topic, timeout)
            return reply  # type: ignore[no-any-return]
        finally:
            self._requests.pop(inbox, None)
            waiter.close()

    def _on_reply(self, msg: Message) -> bool:
        # The inbox forward's sink (inside emit): the first reply wakes the
        # requester; later ones, and replies after it gave up, are not queued.
        waiter = self._requests.get(msg[0])
        if waiter is None:
            return False
        if type(waiter) is HandOff:
            return waiter.offer(msg)  # a requester on another OS thread
        return waiter.put_nowait(msg)  # type: ignore[union-attr]

    # -- introspection -----------------------------------------------------

    def topics(self) -> list[str]:
        """The patterns subscribed to now, sorted (the bus's own request inbox left out)."""
        own = self._inbox_prefix + "."
        return sorted(p for p in self._index.patterns() if not p.startswith(own))

    def subscriptions(self, pattern: str | None = None) -> list[Subscription]:
        """The active subscriptions (on exactly ``pattern``, if given), oldest first."""
        if pattern is None:
            return list(self._subs)
        return [s for s in self._subs if s.pattern == pattern]

    def matching(self, topic: str) -> list[Subscription]:
        """The active subscriptions a message on ``topic`` would be queued to."""
        validate_topic(topic)
        return [self._by_put[put] for put in self._index.match(topic)]

    def stats(self) -> BusStatistics:
        """A frozen snapshot: per subscription, pending, delivered, dropped, high water…"""
        return BusStatistics(
            name=self.name,
            state=self._state.name.lower(),
            subscriptions=tuple(s.statistics() for s in self._subs),
            thread_emits=self._portal.submitted,
            thread_pending=self._portal.pending,
            thread_errors=self._thread_errors,
            thread_lost=self._portal.lost,
        )

    # -- closing -----------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued, then stop every subscription.  Idempotent.

        New emits and subscriptions raise :class:`BusClosed` from the moment
        this is called.  Messages handed in from other threads are routed
        first.  Handler greenlets finish their queues; subscriptions without
        a handler keep their queued messages for their consumers, whose
        iteration then ends.

        Then the close listeners run (see :meth:`add_close_listener`).

        Args:
            timeout: seconds to wait for handlers to drain; None waits for
                all.  Handlers still running after it are killed and their
                remaining messages discarded (counted, and logged).

        Raises:
            WrongThread: called from another OS thread.
            InvalidOption: ``timeout`` is not None or a number >= 0 (the
                bus is left as it was).
        """
        self._check_thread("close()")
        check_timeout(timeout)
        if self._state is not BusState.OPEN:
            return
        self._state = BusState.CLOSING
        self._open_in = 0
        # Route what other threads handed in first: those emits were accepted.
        self._portal.close(timeout)
        subs = list(self._subs)
        for sub in subs:
            sub._channel.close()
        current = getcurrent()
        greenlets = [
            s._greenlet for s in subs if s._greenlet is not None and s._greenlet is not current
        ]
        gevent.joinall(greenlets, timeout=timeout)
        for sub in subs:
            g = sub._greenlet
            if g is not None and g is not current and not g.dead:
                g.kill(block=True)
                n = sub._channel.discard() + sub._discard_in_hand()
                logger.warning(
                    "%s: subscription #%d %r did not drain within %s s; %d message(s) discarded",
                    self.name,
                    sub.id,
                    sub.pattern,
                    timeout,
                    n,
                )
            self._index.remove(sub.pattern, sub._put)
            self._by_put.pop(sub._put, None)
            self._lose_interest(sub.pattern)
            sub._active = False
        self._subs.clear()
        for fwd in list(self._forwards):
            fwd.close()
        self._state = BusState.CLOSED
        listeners, self._close_listeners = self._close_listeners, []
        for listener in listeners:
            try:
                listener()
            except Exception:
                logger.exception("%s: close listener %r failed", self.name, listener)

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_thread(self, what: str) -> None:
        if self._thread != get_ident():
            raise WrongThread(what)


def check_extras(
    headers: Mapping[str, Any] | None, reply_to: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """Validate and normalise the extras of an emit: ``(headers copy or None, reply_to)``.

    Raises:
        InvalidOption: ``headers`` is not a mapping (or None).
        InvalidTopic: ``reply_to`` is not a valid topic.
    """
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise InvalidOption("headers", headers, "a mapping or None")
        headers = dict(headers) if headers else None
    if reply_to is not None:
        validate_topic(reply_to)
    return headers, reply_to  # type: ignore[return-value]
