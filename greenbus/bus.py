"""The in-process bus: routing, fan-out, request/reply and the error hook.

Data flows one way: ``emit`` looks the topic up in the :class:`TopicIndex`
(one dict lookup for a topic seen before), builds one :class:`Message` and
appends that same object to each matching subscription's
:class:`~greenbus.channel.Channel` in one loop (:func:`~greenbus.channel.put_each`;
a forward is a :class:`~greenbus.channel.Sink` there).  A lone subscriber
is queued the plain fields instead, and its greenlet makes the Message: one
either way, and emit holds the emitter no longer than it must.  Each
subscription with a handler owns one greenlet that takes messages from its
channel in order and calls the handler, one message at a time (see
:mod:`greenbus.subscription`).  ``emit`` never runs a handler and never
switches greenlets, except when a ``block`` channel is full.

The ordering contract is stated in ``docs/ordering.md``.
"""

from __future__ import annotations

import enum
import itertools
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gevent
from greenlet import getcurrent

from ._attrs import readonly
from ._options import check_timeout
from ._portal import HandOff, ThreadPortal, get_ident
from .channel import DEFAULT_MAXSIZE, Channel, Overflow, Sink, put_each
from .exceptions import (
    BusClosed,
    ChannelClosed,
    ChannelFull,
    InvalidOption,
    NoResponders,
    ReceiveTimeout,
    RequestTimeout,
    WrongThread,
)
from .interest import Interest, InterestListener
from .message import Message, message_class
from .subscription import (
    ErrorHook,
    Forward,
    HandlerMixin,
    Subscription,
    SubscriptionStatistics,
)
from .topics import TopicIndex, validate_pattern, validate_topic

__all__ = ["Bus", "BusState", "BusStatistics", "check_extras"]

logger = logging.getLogger("greenbus.bus")


class BusState(enum.IntEnum):
    """A bus's life: OPEN -> CLOSING -> CLOSED."""

    OPEN = 0
    #: ``close()`` is draining subscriptions; emit/subscribe raise BusClosed.
    CLOSING = 1
    CLOSED = 2


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


_bus_ids = itertools.count(1)
_tuple_new = tuple.__new__

#: What a route holds for each subscription: its channel, or a forward's put.
Target = Channel[tuple[Any, ...]] | Sink[Message]


class Bus(HandlerMixin):
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
        # A route's targets: a subscription's channel, or a forward's put.
        self._index: TopicIndex[Target] = TopicIndex()
        self._routes = self._index.cache
        self._subs: dict[Subscription, None] = {}
        self._forwards: dict[Forward, None] = {}
        self._interest = Interest(self.name)
        self._close_listeners: list[Callable[[], object]] = []
        # Each subscription's channel (and forward's put), to find it from a route.
        self._by_target: dict[Target, Subscription | Forward] = {}
        # Bound once: emit passes it to put_each, to name the full ones.
        self._name_target = self._pattern_of
        self._state = BusState.OPEN
        self._thread = get_ident()
        self._open_in = self._thread
        self._portal = ThreadPortal(self._emit_handoff, self._report_thread_error, self.name)
        self._thread_errors = 0
        #: The :class:`Message` subclass this bus delivers (its ``reply()``
        #: emits here).
        self.message_class = message_class(self)
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

    state = readonly[BusState]("_state")

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
        count = len(route)
        if count == 1:
            # A lone subscriber (the common case): no fan-out loop to set up.
            target = route[0]
            try:
                if type(target) is Channel:
                    # The plain fields: its greenlet makes the one Message,
                    # so that emit holds the emitter no longer than it must.
                    took = target.put(item)
                else:
                    took = target.fn(_tuple_new(self.message_class, item))  # type: ignore[union-attr]
            except ChannelFull as exc:
                pattern = self._pattern_of(target)
                raise ChannelFull(exc.maxsize, exc.reason, delivered=0, full=(pattern,)) from exc
            except ChannelClosed:
                return 0  # closed while it waited for room: it left
            return 1 if took else 0
        if not count:
            return 0
        # One message, made once and shared by every subscriber.
        return put_each(route, _tuple_new(self.message_class, item), self._name_target)

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

    def _pattern_of(self, target: Target) -> str:
        sub = self._by_target.get(target)
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
        msg = _tuple_new(self.message_class, item)
        put_each(self._index.match(item[0]), msg, self._name_target)

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
        self._index.add(pattern, sub.channel)
        self._subs[sub] = None
        self._by_target[sub.channel] = sub
        self._interest.hold(pattern)
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
            raw: accepted for compatibility; it changes nothing.  Every
                sink gets the emit's one :class:`Message` (a ``(topic,
                data, headers, reply_to)`` tuple), the same object for every
                subscriber and forward of one emit and a new one per emit,
                so a sink may reuse work done for the same message (the hub
                encodes a message once for all its peers).

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
        self._index.add(pattern, fwd.put)
        self._forwards[fwd] = None
        self._by_target[fwd.put] = fwd
        if interest:
            self._interest.hold(pattern)
        return fwd

    def forwards(self) -> list[Forward]:
        """The active forwarding subscriptions, oldest first."""
        return list(self._forwards)

    def remove_forward(self, fwd: Forward) -> None:
        """Forget ``fwd``; :meth:`Forward.close` calls it.

        Raises:
            WrongThread: called from another OS thread.
        """
        self._check_thread("Forward.close()")
        if self._forwards.pop(fwd, 0) is None:
            self._unroute(fwd.pattern, fwd.put, fwd.interest)

    def remove_subscription(self, sub: Subscription) -> None:
        """Forget ``sub``; :meth:`Subscription.close` calls it.

        Raises:
            WrongThread: called from another OS thread.
        """
        self._check_thread("Subscription.close()")
        if self._subs.pop(sub, 0) is None:
            self._unroute(sub.pattern, sub.channel, True)

    def _unroute(self, pattern: str, target: Target, interest: bool) -> None:
        # Nothing more is routed to ``target``; the interest it held goes.
        self._index.remove(pattern, target)
        self._by_target.pop(target, None)
        if interest:
            self._interest.release(pattern)

    # -- interest (for federation) -------------------------------------------

    def add_interest_listener(self, listener: InterestListener) -> None:
        """Call ``listener(pattern, True)`` when the first subscription to
        ``pattern`` appears and ``listener(pattern, False)`` when the last one
        goes (subscriptions, forwards made with ``interest=True``, and
        :meth:`hold_interest`).

        For federation: a node asks its broker only for what someone here
        wants.  Listeners run in the greenlet that (un)subscribed; they must
        not block.  Exceptions are logged.
        """
        self._interest.add_listener(listener)

    def remove_interest_listener(self, listener: InterestListener) -> None:
        """Stop calling ``listener``; a no-op if it was not added."""
        self._interest.remove_listener(listener)

    def interest(self) -> list[str]:
        """The patterns someone on this bus subscribes to now (what listeners were told)."""
        return self._interest.patterns()

    def hold_interest(self, pattern: str) -> None:
        """Count as interest in ``pattern`` until :meth:`release_interest`.

        For a transport that routes messages to its peers by itself from one
        forward on ``>`` (a hub): its peers' patterns must still reach the
        interest listeners, so a federation asks its broker for them.

        Raises:
            InvalidTopic: malformed pattern.
            WrongThread: called from another OS thread.
        """
        self._check_thread("hold_interest()")
        validate_pattern(pattern)
        self._interest.hold(pattern)

    def release_interest(self, pattern: str) -> None:
        """Undo one :meth:`hold_interest` of ``pattern`` (a no-op if none is held).

        Raises:
            WrongThread: called from another OS thread.
        """
        self._check_thread("release_interest()")
        self._interest.release(pattern)

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

    def matching(self, topic: str) -> list[Subscription | Forward]:
        """The active subscriptions (and forwards) a message on ``topic`` would go to."""
        validate_topic(topic)
        return [self._by_target[target] for target in self._index.match(topic)]

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
        current = getcurrent()
        greenlets = [g for g in (sub.drain() for sub in subs) if g is not None and g is not current]
        gevent.joinall(greenlets, timeout=timeout)
        for sub in subs:
            self._unroute(sub.pattern, sub.channel, True)
            n = sub.finish()
            if n:
                logger.warning(
                    "%s: subscription #%d %r did not drain within %s s; %d message(s) discarded",
                    self.name,
                    sub.id,
                    sub.pattern,
                    timeout,
                    n,
                )
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
) -> tuple[Mapping[str, Any] | None, str | None]:
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
    return headers, reply_to
