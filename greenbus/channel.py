"""A greenlet-safe FIFO channel with a bounded buffer and overflow policies.

This is the queue every subscription owns.  It knows nothing of topics.

Design (see ``docs/ordering.md``):

* The buffer is a ``collections.deque``.  ``put`` on the fast path is one
  comparison, an append and one flag check: it never switches greenlets and
  never runs the consumer.  When a consumer is parked, ``put`` marks the
  channel ready in its hub's run queue (``greenbus._scheduler``); further
  puts before the consumer runs cost nothing more (the wake-up is batched, and the
  woken consumer drains everything queued without going back to the hub).
  The consumer runs when the putting greenlet parks: it switches straight to
  the ready consumer if it parks in a channel, otherwise the hub does it in a
  callback.
* Waiters (parked getters, and putters blocked on a full channel under
  ``overflow="block"``) wait in FIFO deques, are woken from the hub with
  their own waiter object as the switch value (any other value is an invalid
  switch and is reported), and are removed in ``finally`` if they leave early
  (timeout, kill).
* Putters are strictly FIFO: while one waits for room, later putters queue
  behind it, so a full channel never reorders.
* The hub never blocks: ``put`` on a full ``block`` channel raises
  :class:`ChannelFull` when called on the hub (from a loop callback) or by the
  channel's own consumer (which would wait for itself), instead of
  deadlocking.
* ``close()`` is idempotent: puts then raise :class:`ChannelClosed`, getters
  drain what is queued and then get :class:`EndOfChannel`; every parked waiter
  is woken.

The vocabulary follows trio's memory channels; the waiter discipline follows
``gevent.queue``.  Note that gevent's own ``gevent.queue.Channel`` is a
rendezvous (unbuffered) channel; this one is a buffer.
"""

from __future__ import annotations

import enum
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gevent import get_hub, with_timeout
from greenlet import getcurrent

from ._attrs import readonly
from ._options import check_timeout
from ._scheduler import Waiter, scheduler_for
from .exceptions import (
    ChannelClosed,
    ChannelEmpty,
    ChannelFull,
    EndOfChannel,
    InvalidOption,
    ReceiveTimeout,
)

__all__ = [
    "Channel",
    "ChannelStatistics",
    "Overflow",
    "DEFAULT_MAXSIZE",
    "Sink",
    "check_options",
    "put_each",
]

T = TypeVar("T")

#: What a timed get() finds when its time ran out (no item is ever this object).
_TIMED_OUT = object()

#: Default capacity of a subscription's channel (messages).
DEFAULT_MAXSIZE = 65536


class Overflow(str, enum.Enum):
    """What ``put`` does when the channel is full."""

    #: Wait cooperatively for room (lossless backpressure, like a full Go channel).
    BLOCK = "block"
    #: Drop the oldest queued item to make room; count it.
    DROP_OLDEST = "drop_oldest"
    #: Drop the item being put; count it.
    DROP_NEWEST = "drop_newest"
    #: Raise :class:`ChannelFull` to the putter.
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


_POLICIES = ", ".join(repr(p.value) for p in Overflow)


def _check_overflow(overflow: object) -> Overflow:
    try:
        return Overflow(overflow)
    except ValueError:
        raise InvalidOption("overflow", overflow, f"one of {_POLICIES}") from None


def _check_maxsize(maxsize: object) -> int | None:
    if maxsize is not None and (
        isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1
    ):
        raise InvalidOption("maxsize", maxsize, "a positive int, or None for unbounded")
    return maxsize


def check_options(maxsize: object, overflow: object) -> tuple[int | None, Overflow]:
    """Validate a channel's ``maxsize`` and ``overflow`` without making one.

    Returns:
        ``(maxsize, Overflow)``.

    Raises:
        InvalidOption: for a bad value.
    """
    return _check_maxsize(maxsize), _check_overflow(overflow)


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of a channel's counters (see :meth:`Channel.statistics`)."""

    #: Items queued now.
    pending: int
    #: Capacity, or None if unbounded.
    maxsize: int | None
    #: The overflow policy's name.
    overflow: str
    #: Items handed to a consumer so far.
    delivered: int
    #: Items dropped by ``drop_oldest``/``drop_newest``.
    dropped: int
    #: Items discarded by :meth:`Channel.discard` or refused to a putter that
    #: was waiting when the channel closed.
    discarded: int
    #: Puts refused with :class:`ChannelFull`.
    rejected: int
    #: The largest ``pending`` ever observed.
    high_water: int
    #: Greenlets parked in ``get``.
    waiting_getters: int
    #: Greenlets parked in ``put`` (``block`` policy, channel full).
    waiting_putters: int
    #: True once :meth:`Channel.close` was called.
    closed: bool


class Channel(Generic[T]):
    """A FIFO buffer between greenlets of one OS thread.

    Args:
        maxsize: capacity in items; ``None`` means unbounded.  Must be a
            positive int otherwise (there is no magic 0).
        overflow: an :class:`Overflow` policy or its name: ``"block"``
            (default), ``"drop_oldest"``, ``"drop_newest"`` or ``"error"``.
        on_overflow: called with the channel on the first drop of an
            overflow episode.  The episode ends once the consumer has brought
            ``pending`` down to half the capacity.

    Raises:
        InvalidOption: for a bad ``maxsize`` or ``overflow``.
    """

    __slots__ = (
        "_queue",
        "_maxsize",
        "_limit",
        "_overflow",
        "_room",
        "_wake_needed",
        "_closed",
        "_getters",
        "_putters",
        "_notify_scheduled",
        "_hub",
        "_run_callback",
        "_scheduler",
        "_spare",
        "_delivered",
        "_dropped",
        "_discarded",
        "_rejected",
        "_high_water",
        "_overflowing",
        "_on_overflow",
        "owner",
    )

    def __init__(
        self,
        maxsize: int | None = DEFAULT_MAXSIZE,
        overflow: Overflow | str = Overflow.BLOCK,
        *,
        on_overflow: Callable[[Channel[T]], None] | None = None,
    ) -> None:
        self._maxsize = _check_maxsize(maxsize)
        self._overflow = _check_overflow(overflow)
        if on_overflow is not None and not callable(on_overflow):
            raise InvalidOption("on_overflow", on_overflow, "a callable or None")
        self._limit = sys.maxsize if self._maxsize is None else self._maxsize
        self._queue: deque[T] = deque()
        # The fast path of put() appends while len(queue) < _room.  _room is
        # the capacity while the channel is open and no putter waits, else 0,
        # so one comparison covers "open", "not full" and "nobody ahead".
        self._room = self._limit
        # True when a getter is parked and no wake-up is scheduled yet.
        self._wake_needed = False
        self._closed = False
        self._getters: deque[Waiter] = deque()
        self._putters: deque[Waiter] = deque()
        self._notify_scheduled = False
        self._hub = get_hub()
        self._run_callback = self._hub.loop.run_callback
        self._scheduler = scheduler_for(self._hub)
        self._spare: Waiter | None = None
        self._delivered = 0
        self._dropped = 0
        self._discarded = 0
        self._rejected = 0
        self._high_water = 0
        self._overflowing = False
        self._on_overflow = on_overflow
        #: The greenlet that consumes this channel, if there is exactly one
        #: (a subscription's handler greenlet).  A full ``block`` put from it
        #: raises ChannelFull instead of waiting for itself forever.
        self.owner: object = None

    # -- introspection -----------------------------------------------------

    maxsize = readonly[int | None]("_maxsize")

    overflow = readonly[Overflow]("_overflow")

    closed = readonly[bool]("_closed")

    delivered = readonly[int](
        "_delivered", "Items handed to a consumer so far (see :meth:`discard_taken`)."
    )

    dropped = readonly[int]("_dropped", "Items dropped by ``drop_oldest``/``drop_newest``.")

    discarded = readonly[int](
        "_discarded", "Items discarded by :meth:`discard`, :meth:`discard_taken`, or a close."
    )

    def __len__(self) -> int:
        return len(self._queue)

    def statistics(self) -> ChannelStatistics:
        """Return a frozen snapshot of the counters."""
        pending = len(self._queue)
        return ChannelStatistics(
            pending=pending,
            maxsize=self._maxsize,
            overflow=self._overflow.value,
            delivered=self._delivered,
            dropped=self._dropped,
            discarded=self._discarded,
            rejected=self._rejected,
            high_water=max(self._high_water, pending),
            waiting_getters=sum(1 for w in self._getters if w.parked),
            waiting_putters=sum(1 for w in self._putters if w.parked),
            closed=self._closed,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        size = "unbounded" if self._maxsize is None else f"maxsize={self._maxsize}"
        return (
            f"<Channel {state} pending={len(self._queue)} {size} "
            f"overflow={self._overflow.value} getters={len(self._getters)} "
            f"putters={len(self._putters)} dropped={self._dropped}>"
        )

    # -- putting -----------------------------------------------------------

    def put(self, item: T) -> bool:
        """Queue ``item``; return True if it was queued, False if dropped.

        Never switches greenlets, except under ``overflow="block"`` when the
        channel is full: then it waits cooperatively for room (FIFO among
        waiting putters).

        Raises:
            ChannelClosed: the channel is closed (also if it is closed while
                this put waits).
            ChannelFull: ``overflow="error"`` and full; or ``"block"``, full,
                and the caller cannot wait (it is the gevent hub, or the
                channel's own consumer).
        """
        queue = self._queue
        if len(queue) < self._room:
            queue.append(item)
            if self._wake_needed:
                self._wake_needed = False
                self._notify_scheduled = True
                self._scheduler.schedule(self)
            return True
        return self._put_slow(item, True)

    def put_nowait(self, item: T) -> bool:
        """Like :meth:`put`, but a full ``block`` channel raises :class:`ChannelFull`."""
        if len(self._queue) < self._room:
            return self.put(item)
        return self._put_slow(item, False)

    def _put_slow(self, item: T, block: bool) -> bool:
        if self._closed:
            raise ChannelClosed()
        queue = self._queue
        if len(queue) < self._limit and not self._putters:
            queue.append(item)
            self._schedule_notify()
            return True
        policy = self._overflow
        if policy is Overflow.DROP_OLDEST:
            queue.popleft()
            queue.append(item)
            self._high_water = self._limit
            self._drop()
            return True
        if policy is Overflow.DROP_NEWEST:
            self._high_water = self._limit
            self._drop()
            return False
        if policy is Overflow.ERROR:
            self._rejected += 1
            raise ChannelFull(self._maxsize, "channel is full (overflow='error')")
        # Overflow.BLOCK
        current = getcurrent()
        if not block or current is self._hub or current is self.owner:
            self._rejected += 1
        if not block:
            raise ChannelFull(self._maxsize, "channel is full and put_nowait() cannot wait")
        if current is self._hub:
            raise ChannelFull(
                self._maxsize, "channel is full and the gevent hub (a loop callback) must not wait"
            )
        if current is self.owner:
            raise ChannelFull(
                self._maxsize, "channel is full and its own consumer cannot wait for itself"
            )
        return self._wait_for_room(current, item)

    def _wait_for_room(self, current: object, item: T) -> bool:
        waiter = Waiter(current, item)
        self._putters.append(waiter)
        self._room = 0
        waiter.parked = True
        try:
            token = self._scheduler.switch_out()
        finally:
            waiter.parked = False
            if not waiter.served:
                try:
                    self._putters.remove(waiter)
                except ValueError:
                    pass
                self._reset_fast()
        if token is not waiter:
            raise AssertionError(f"invalid switch into a putter waiting on {self!r}: {token!r}")
        if not waiter.served:
            # Woken by close(): the item was never queued.
            self._discarded += 1
            raise ChannelClosed()
        return True

    def _drop(self) -> None:
        self._dropped += 1
        if not self._overflowing:
            self._overflowing = True
            if self._on_overflow is not None:
                self._on_overflow(self)

    def _reset_fast(self) -> None:
        self._room = 0 if self._closed or self._putters else self._limit

    # -- getting -----------------------------------------------------------

    def get(self, timeout: float | None = None) -> T:
        """Return the oldest item, waiting for one if the channel is empty.

        Args:
            timeout: seconds to wait at most; ``None`` waits forever.

        Raises:
            EndOfChannel: the channel is closed and drained.
            ReceiveTimeout: nothing arrived within ``timeout``.
            ChannelEmpty: called on the gevent hub, which must never wait.
        """
        queue = self._queue
        if queue:
            n = len(queue)
            item = queue.popleft()
            self._delivered += 1
            if n > self._high_water:
                self._high_water = n
            if self._putters or self._overflowing:
                self._after_get(n - 1)
            return item
        return self._get_slow(timeout)

    def get_batch(self, max_items: int = 64, timeout: float | None = None) -> list[T]:
        """Wait for at least one item, then return up to ``max_items``, oldest first.

        One call per batch instead of one per item: what a consumer loop
        uses to drain a backlog cheaply.  Items taken count as delivered.

        Raises:
            EndOfChannel, ReceiveTimeout, ChannelEmpty: as :meth:`get`.
        """
        queue = self._queue
        if not queue:
            batch = [self._get_slow(timeout)]
            if not queue or max_items <= 1:
                return batch
        else:
            batch = []
        size = len(queue)
        if size > self._high_water:
            self._high_water = size
        first = len(batch)
        take = max_items - first
        if size <= 4 * take:
            # All of it, or most of it and the rest given back: in C, rather
            # than a popleft call per item in Python (a deque has no slices).
            batch += queue
            queue.clear()
            if size > take:
                queue.extend(batch[first + take :])
                del batch[first + take :]
            else:
                take = size
        else:
            popleft = queue.popleft
            batch += [popleft() for _ in range(take)]
        self._delivered += take
        if self._putters or self._overflowing:
            self._after_get(size - take)
        return batch

    def get_nowait(self) -> T:
        """Return the oldest item at once.

        Raises:
            ChannelEmpty: nothing is queued (and the channel is open).
            EndOfChannel: the channel is closed and drained.
        """
        if self._queue:
            return self.get()
        if self._closed:
            raise EndOfChannel()
        raise ChannelEmpty()

    def _get_slow(self, timeout: float | None) -> T:
        if timeout is not None:
            return self._get_timed(timeout)
        # Inlined park loop: this is half of every ping-pong round trip.
        current = getcurrent()
        queue = self._queue
        getters = self._getters
        while not queue:
            if self._closed:
                raise EndOfChannel()
            if current is self._hub:
                raise ChannelEmpty()
            # One waiter per greenlet is reused: a woken waiter has always
            # left the line, so it can stand in it again.
            waiter = self._spare
            if waiter is None or waiter.greenlet is not current:
                waiter = self._spare = Waiter(current)
            getters.append(waiter)
            if not self._notify_scheduled:
                self._wake_needed = True
            waiter.parked = True
            try:
                token = self._scheduler.switch_out()
            finally:
                if waiter.parked:
                    # Left early (a kill): take our place out of the line.
                    waiter.parked = False
                    try:
                        getters.remove(waiter)
                    except ValueError:
                        pass
            if token is not waiter:
                raise AssertionError(f"invalid switch into a getter waiting on {self!r}: {token!r}")
        # get()'s fast path, inlined.
        n = len(queue)
        item = queue.popleft()
        self._delivered += 1
        if n > self._high_water:
            self._high_water = n
        if self._putters or self._overflowing:
            self._after_get(n - 1)
        return item

    def _get_timed(self, timeout: float) -> T:
        check_timeout(timeout)
        if self._queue:
            return self.get()
        if self._closed:
            raise EndOfChannel()
        current = getcurrent()
        if current is self._hub:
            raise ChannelEmpty()
        if timeout == 0:
            raise ReceiveTimeout(timeout)
        item = with_timeout(timeout, self._get_slow, None, timeout_value=_TIMED_OUT)
        if item is _TIMED_OUT:
            raise ReceiveTimeout(timeout)
        return item  # type: ignore[no-any-return]

    def _after_get(self, pending: int) -> None:
        if self._overflowing and pending <= self._limit // 2:
            self._overflowing = False
        putters = self._putters
        if putters:
            queue = self._queue
            limit = self._limit
            while putters and len(queue) < limit:
                waiter = putters.popleft()
                if not waiter.parked:
                    continue
                queue.append(waiter.item)  # type: ignore[arg-type]
                waiter.served = True
                self._run_callback(waiter.wake)
            self._reset_fast()

    def __iter__(self) -> Iterator[T]:
        """Yield items until the channel is closed and drained."""
        while True:
            try:
                yield self.get()
            except EndOfChannel:
                return

    # -- waking ------------------------------------------------------------

    def _schedule_notify(self) -> None:
        if self._getters and not self._notify_scheduled:
            self._wake_needed = False
            self._notify_scheduled = True
            self._scheduler.schedule(self)

    def wake_getters(self) -> None:
        """Wake the parked getters while there is something for them (on the hub).

        For this hub's scheduler (:class:`~greenbus._scheduler.Scheduler`), which calls it for a
        channel it was told is ready.
        """
        self._notify_scheduled = False
        getters = self._getters
        queue = self._queue
        while getters and (queue or self._closed):
            getters.popleft().wake()
        self._wake_needed = bool(getters) and not self._notify_scheduled

    def take_ready_getter(self) -> Waiter | None:
        """The first parked getter, out of the line, if there is something for it.

        For this hub's scheduler, which switches straight to it (a direct
        hand-off); when more getters wait, the channel stays ready.
        """
        self._notify_scheduled = False
        getters = self._getters
        if self._queue or self._closed:
            while getters:
                candidate = getters.popleft()
                if candidate.parked:
                    if getters:
                        self._notify_scheduled = True
                        self._scheduler.ready.append(self)
                    return candidate
        self._wake_needed = bool(getters)
        return None

    # -- closing -----------------------------------------------------------

    def close(self) -> None:
        """Refuse further puts; let getters drain what is queued, then end.

        Idempotent.  Putters waiting for room are woken with
        :class:`ChannelClosed` (their items are counted as discarded);
        parked getters are woken and see :class:`EndOfChannel` once the
        buffer is empty.
        """
        if self._closed:
            return
        self._closed = True
        self._room = 0
        putters = self._putters
        while putters:
            waiter = putters.popleft()
            if waiter.parked:
                self._run_callback(waiter.wake)
        self._schedule_notify()

    def discard_taken(self, n: int) -> None:
        """Count ``n`` items a consumer took (a batch) but will not handle as discarded.

        They were counted as delivered when taken: a consumer that stops in
        the middle of a batch moves the rest to ``discarded``.
        """
        self._delivered -= n
        self._discarded += n

    def discard(self) -> int:
        """Drop everything queued now; return how many items that was.

        Discarded items are counted in ``statistics().discarded``.
        """
        n = len(self._queue)
        if n > self._high_water:
            self._high_water = n
        self._queue.clear()
        self._discarded += n
        self._overflowing = False
        if self._putters:
            self._after_get(0)
        return n


class Sink(Generic[T]):
    """A :func:`put_each` target that is a function, not a buffer.

    Calling it calls ``fn(item)``, which must not block and returns True if
    it took the item.  Each sink is a distinct object, even for one ``fn``.
    """

    __slots__ = ("fn",)
    # Nothing queued and no room: put_each always calls its _put_slow.
    _queue: tuple[()] = ()
    _room = 0

    def __init__(self, fn: Callable[[T], bool]) -> None:
        self.fn = fn

    def __call__(self, item: T) -> bool:
        return self.fn(item)

    def _put_slow(self, item: T, block: bool) -> bool:
        return self.fn(item)

    def __repr__(self) -> str:
        return f"<Sink {self.fn!r}>"


def put_each(
    targets: Sequence[Channel[Any] | Sink[Any]], item: object, name: Callable[[Any], str]
) -> int:
    """Put ``item`` into each target in order (a fan-out); return how many took it.

    A channel's :meth:`Channel.put` fast path runs here, not in a call per
    channel (a subclass's ``put`` is not called); a :class:`Sink` is called.
    Every target is offered the item: a full one is reported at the end, a
    closed one (it left while another made us wait) is skipped.

    Raises:
        ChannelFull: some were full; ``maxsize`` and ``reason`` are the first
            one's, ``delivered`` how many took it, ``full`` their ``name()``.
        whatever else a sink raises (the rest are then not offered the item).
    """
    n = 0
    full: list[tuple[Any, ChannelFull]] | None = None
    for target in targets:
        try:
            queue = target._queue  # Channel.put, inlined: keep the two in step
            if len(queue) < target._room:
                queue.append(item)  # type: ignore[union-attr]
                n += 1
                if target._wake_needed:  # type: ignore[union-attr]
                    target._wake_needed = False  # type: ignore[union-attr]
                    target._notify_scheduled = True  # type: ignore[union-attr]
                    target._scheduler.schedule(target)  # type: ignore[union-attr,arg-type]
            elif target._put_slow(item, True):
                n += 1
        except ChannelFull as exc:
            full = full or []
            full.append((target, exc))
        except ChannelClosed:
            pass
    if full is not None:
        first = full[0][1]
        names = tuple(name(target) for target, _ in full)
        raise ChannelFull(first.maxsize, first.reason, delivered=n, full=names) from first
    return n
