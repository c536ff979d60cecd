"""Subscriptions: interest in a pattern, each with its own FIFO channel.

A :class:`Subscription` owns a :class:`~greenbus.channel.Channel` and, with a
handler, one greenlet that takes messages from it in order and calls the
handler one at a time.  A :class:`Forward` hands messages to a sink instead
(a transport's outbound queue).  Both belong to an owner, a
:class:`~greenbus.Bus` or the remote client, reached through the small
protocols below; :class:`HandlerMixin` gives owners ``on``/``once``/``off``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from operator import length_hint
from time import perf_counter
from typing import Any, Protocol, TypeVar, overload

import gevent
from gevent import getswitchinterval
from greenlet import getcurrent

from ._attrs import readonly
from .channel import (
    DEFAULT_MAXSIZE,
    Channel,
    ChannelStatistics,
    Overflow,
    Sink,
    check_options,
)
from .exceptions import EndOfChannel, InvalidOption, SlowConsumer
from .message import Message
from .topics import validate_pattern

__all__ = [
    "ErrorHook",
    "Forward",
    "ForwardOwner",
    "Handler",
    "HandlerMixin",
    "Subscription",
    "SubscriptionOwner",
    "SubscriptionStatistics",
]

logger = logging.getLogger("greenbus.bus")

_tuple_new: Callable[..., Any] = tuple.__new__  # (cls, fields): a tuple subclass instance

#: A handler greenlet takes up to this many messages per channel call (one
#: call per batch, not per message); it also bounds how many it holds taken
#: but not yet handled, beyond its channel's maxsize.
_BATCH = 128

# Before a subscription's first batch: nothing taken, nothing left to handle
# (shared, never changed; an idle subscription costs no list of its own).
_NO_BATCH: list[Any] = []
_NONE_LEFT: Iterator[Any] = iter(())


class Handler(Protocol):
    def __call__(self, msg: Message, /) -> object: ...


class ErrorHook(Protocol):
    """``on_error(exc, subscription, message)``; either may be None where none applies."""

    def __call__(
        self, exc: BaseException, subscription: Subscription | None, message: Message | None, /
    ) -> object: ...


H = TypeVar("H", bound=Callable[[Message], object])


class SubscriptionOwner(Protocol):
    """What a :class:`Subscription` needs of the bus (or client) that made it."""

    #: Shown in its greenlet's name.
    name: str
    #: The :class:`Message` subclass it delivers (see ``message_class()``).
    message_class: type[Message]

    def remove_subscription(self, sub: Subscription) -> None:
        """Forget ``sub``: route nothing more to it (its ``close()`` calls this)."""

    def report_handler_error(self, exc: Exception, sub: Subscription, msg: Message) -> None:
        """A handler of ``sub`` raised ``exc`` on ``msg``."""

    def report_slow_consumer(self, sub: Subscription) -> None:
        """``sub`` dropped a message: the first drop of an overflow episode."""


class ForwardOwner(Protocol):
    """What a :class:`Forward` needs of the bus that made it."""

    def remove_forward(self, fwd: Forward) -> None:
        """Forget ``fwd`` (its ``close()`` calls this)."""


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
        "_owner",
        "_channel",
        "_greenlet",
        "_active",
        "_handler_errors",
        "_slow_events",
        "_message",
        "_batch",
        "_unhandled",
        "_error",
        "__weakref__",
    )

    def __init__(
        self,
        owner: SubscriptionOwner,
        pattern: str,
        handler: Callable[[Message], object] | None,
        maxsize: int | None,
        overflow: Overflow | str,
    ) -> None:
        self.id = next(_sub_ids)
        self.pattern = pattern
        self.handler = handler
        self._owner = owner
        # It holds Messages of the owner's message_class, shared with the
        # other subscribers of the same emit, or plain ``(topic, data,
        # headers, reply_to)`` tuples (a lone subscriber's, or the remote
        # client's) that become Messages as they are delivered.
        self._channel: Channel[tuple[Any, ...]] = Channel(
            maxsize, overflow, on_overflow=self._on_overflow
        )
        self._greenlet: gevent.Greenlet | None = None
        self._active = True
        self._handler_errors = 0
        self._slow_events = 0
        self._message: type[Message] = owner.message_class
        # The handler's current batch, taken from the channel, and the
        # handler loop's iterator over it: what the iterator has not yet
        # yielded is taken but not handed to the handler (still pending).
        # close() empties the batch, which ends the loop's pass over it.
        # (Items: Messages, or plain tuples not yet made Messages.)
        self._batch: list[Any] = _NO_BATCH
        self._unhandled: Iterator[Any] = _NONE_LEFT
        self._error: BaseException | None = None
        if handler is not None:
            greenlet = gevent.Greenlet(self._run, handler)
            greenlet.name = f"greenbus:{owner.name}:{pattern}"
            self._greenlet = greenlet
            self._channel.owner = greenlet
            greenlet.start()

    # -- introspection -----------------------------------------------------

    active = readonly[bool]("_active", "True until :meth:`close` (or the bus's close).")

    channel = readonly[Channel[tuple[Any, ...]]](
        "_channel",
        "Its channel, for the owner's router: it puts there each emit's one "
        ":class:`Message` of its ``message_class``, shared by the emit's subscribers "
        "(see :func:`~greenbus.channel.put_each`), or a plain ``(topic, data, headers, "
        "reply_to)`` tuple, which is made a Message on delivery.  Consume through the "
        "subscription, not the channel.",
    )

    @property
    def pending(self) -> int:
        """Messages queued and not yet handed to the handler (or returned by ``get``)."""
        return len(self._channel) + length_hint(self._unhandled)

    @property
    def delivered(self) -> int:
        """Messages handed to the consumer (handler calls started, or ``get`` returns)."""
        return self._channel.delivered - length_hint(self._unhandled)

    dropped = readonly[int](
        "_channel.dropped", "Messages dropped by the ``drop_oldest``/``drop_newest`` policies."
    )

    maxsize = readonly[int | None]("_channel.maxsize")

    overflow = readonly[Overflow]("_channel.overflow")

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

    # -- queueing ----------------------------------------------------------

    def put(self, item: tuple[Any, ...]) -> bool:
        """Queue a ``(topic, data, headers, reply_to)`` tuple, delivered as a :class:`Message`.

        For an owner that builds messages from plain fields (the remote
        client, from a frame): as :meth:`Channel.put`; the message of the
        owner's ``message_class`` is made when it is delivered.

        Returns:
            True if it was queued, False if the overflow policy dropped it.

        Raises:
            ChannelClosed, ChannelFull: as :meth:`Channel.put`.
        """
        return self._channel.put(item)

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
        make = self._message
        return item if type(item) is make else _tuple_new(make, item)

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
        make = self._message
        return item if type(item) is make else _tuple_new(make, item)

    error = readonly[BaseException | None](
        "_error", "The error this subscription ended with (see :meth:`fail`), or None."
    )

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
        # Messages are taken in batches of up to _BATCH.  So that a deep
        # backlog cannot starve other greenlets, it yields once it has been
        # handling full batches back to back for gevent's switch interval
        # (5 ms by default: the bound gevent's own loop puts on running
        # callbacks), or after one full batch that took longer.  The clock
        # is read only around full batches, never per message, and a flood
        # it keeps up with costs no yield at all.
        # A message shared by several subscribers was made once, by emit;
        # a lone subscriber's plain tuple is made a Message here.  No
        # per-message bookkeeping: the list iterator knows how many it has
        # not yet yielded (its length hint), which is what is taken but not
        # handled, still pending.  Subscription.close() empties the batch,
        # which ends this pass over it, maybe in the middle (Bus.close()
        # drains instead).
        channel = self._channel
        get_batch = channel.get_batch
        report = self._owner.report_handler_error
        make = self._message
        busy_since = 0.0  # when it took the first of these back-to-back full batches
        msg: Any = None
        while True:
            try:
                batch = get_batch(_BATCH)
            except EndOfChannel:
                return
            full = len(batch) == _BATCH
            if full and not busy_since:
                busy_since = perf_counter()
            self._batch = batch
            self._unhandled = unhandled = iter(batch)
            for msg in unhandled:
                if type(msg) is not make:
                    msg = _tuple_new(make, msg)
                try:
                    handler(msg)
                except Exception as exc:
                    self._handler_errors += 1
                    report(exc, self, msg)
            # Handled: let the messages (and their data) go now, not when
            # the next batch comes, maybe much later.
            batch.clear()
            msg = None
            if not full or not len(channel):
                busy_since = 0.0  # it caught up
            elif perf_counter() - busy_since >= getswitchinterval():
                busy_since = 0.0
                gevent.sleep(0)

    def _discard_in_hand(self) -> int:
        # Messages of the current batch that will not be handled: they were
        # counted as delivered when taken; count them as discarded instead.
        # Emptying the batch also ends the handler loop's pass over it.
        n = length_hint(self._unhandled)
        if n:
            self._channel.discard_taken(n)
            self._batch.clear()
        return n

    def _on_overflow(self, channel: Channel[Any]) -> None:
        self._slow_events += 1
        self._owner.report_slow_consumer(self)

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
        self._owner.remove_subscription(self)
        self._active = False
        channel = self._channel
        channel.close()
        n = channel.discard() + self._discard_in_hand()
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
        self._owner.remove_subscription(self)
        self._active = False
        self._channel.close()

    def drain(self) -> gevent.Greenlet | None:
        """Take nothing more; the handler may finish what is queued.  For the owner's close.

        Returns:
            the handler's greenlet, for the owner to wait for (None without
            a handler: the consumer keeps what is queued).
        """
        self._channel.close()
        return self._greenlet

    def finish(self) -> int:
        """End after :meth:`drain`: stop a handler still running, discard what it left.

        For the owner's close, once it has waited for the handler; the
        owner has already forgotten the subscription.  A handler that
        calls its own bus's close() is not stopped (it is the caller).

        Returns:
            how many messages were discarded (counted in ``discarded``).
        """
        self._active = False
        greenlet = self._greenlet
        if greenlet is None or greenlet.dead or greenlet is getcurrent():
            return 0
        greenlet.kill(block=True)
        return self._channel.discard() + self._discard_in_hand()

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

    __slots__ = ("_active", "_bus", "id", "interest", "pattern", "put", "sink")

    def __init__(
        self,
        bus: ForwardOwner,
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

        #: What the owner's router puts each emit's :class:`Message` into
        #: (the one shared by every subscriber, a tuple): a
        #: :class:`~greenbus.channel.Sink` calling ``sink``, distinct per
        #: forward (the index keys on it).  ``raw`` sinks get that same
        #: object too: a message is built once per emit, so skipping it
        #: would save nothing (``raw`` is accepted for compatibility and
        #: changes nothing).
        self.put: Sink[Message] = Sink(sink)

    active = readonly[bool]("_active")

    def close(self) -> None:
        """Stop forwarding.  Idempotent."""
        if self._active:
            self._bus.remove_forward(self)
            self._active = False

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "active" if self._active else "closed"
        return f"<Forward #{self.id} {self.pattern!r} to {_callable_name(self.sink)} {state}>"


class HandlerMixin:
    """``on``/``once``/``off``, and what a :class:`Subscription` reports to its owner.

    Shared by :class:`~greenbus.Bus` and the remote client, built on the
    subclass's ``subscribe(pattern, handler, **opts)`` and
    ``subscriptions(pattern)``.  Its subscriptions' handler errors and slow
    consumers are logged, then passed to ``on_error`` if set.  The subclass
    provides the rest of :class:`SubscriptionOwner` (``message_class`` and
    ``remove_subscription``).
    """

    name: str
    on_error: ErrorHook | None
    message_class: type[Message]
    #: The subclass's ``subscribe(pattern, handler=None, *, maxsize, overflow)``.
    subscribe: Callable[..., Subscription]
    #: The subclass's ``subscriptions(pattern=None)``, oldest first.
    subscriptions: Callable[..., list[Subscription]]

    # -- errors (reported by its subscriptions' greenlets) --------------------

    def report_handler_error(self, exc: Exception, sub: Subscription, msg: Message) -> None:
        """A handler of ``sub`` raised ``exc`` on ``msg``: log it, tell ``on_error``."""
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

    def report_slow_consumer(self, sub: Subscription) -> None:
        """``sub`` started dropping (an overflow episode): log it once, tell ``on_error``."""
        exc = SlowConsumer(sub.pattern, sub.maxsize, sub.overflow.value, sub.dropped)
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
            return self._decorator(self.on, pattern, opts)
        self.subscribe(pattern, handler, **opts)
        return handler

    def _decorator(
        self, register: Callable[..., object], pattern: str, opts: dict[str, Any]
    ) -> Callable[[H], H]:
        # on()/once() without a handler: check now what subscribe() would
        # refuse, and register the function the decorator is applied to.
        _check_subscription(pattern, opts)

        def decorator(fn: H) -> H:
            register(pattern, fn, **opts)
            return fn

        return decorator

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
            return self._decorator(self.once, pattern, opts)
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
