"""One connection's outbound queue: frames waiting for the writer, with limits.

Everything a connection will write goes through its :class:`Outbox`, in FIFO
order: the hub's ``msg`` frames and its answers (``ack``, ``error``,
``pong``, ``welcome``) alike, so a client sees an ack after every message
routed before it.  The outbox owns the queue, both limits (frames and bytes),
the overflow policy and its reporting; the connection's writer only drains
it (:meth:`Outbox.take`, then :meth:`Outbox.done`).

No writer waits long on an idle outbox: the connection binds a hook
(:meth:`Outbox.bind_writer`) that the outbox calls, from the producer and
without switching, when work arrives and there is no writer.  A writer in
the hub drains the queue without waiting (``take(wait=False)`` returns None
once it is empty); a writer greenlet parks in :meth:`Outbox.take` for the
next frame, so a busy connection pays a wake-up per burst, not a new
greenlet (a spawn costs about ten times as much).  A writer parked for
``WRITER_LINGER`` seconds is let go (one sweep per gevent hub): ``take``
returns None and it ends, so an idle connection holds no writer greenlet.

Two kinds of entry, both already encoded as UTF-8:

* a **message**, ``(head, body)``: a ``msg`` frame split in two so that a
  fan-out shares one encoded body between every peer it goes to.  Under
  ``drop_oldest`` messages may be dropped.
* a **control frame**, ``(data, None)``: an answer.  Never dropped; when the
  queue is over a limit with no message left to drop, the peer is a slow
  consumer whatever the policy.

Every entry counts toward both limits: a peer that sends requests (pings,
pubs with an id, subs) and never reads the answers is held to the same
bounds as one that does not read its messages.  Frames the WebSocket
protocol produced by itself (pongs to WebSocket pings, the close reply) and
that wait outside the queue count too (:meth:`Outbox.note_unqueued`).

Nothing is lost silently: a message refused, dropped, discarded at close or
cut off in a failed write is counted in :attr:`Outbox.dropped` (and in the
hub's counters, when given one).

The outbox knows no routing and no JSON; it belongs to one gevent hub (OS
thread), like a :class:`~greenbus.channel.Channel`, and never blocks a
producer.
"""

from __future__ import annotations

import enum
import logging
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gevent import get_hub
from gevent.event import Event
from gevent.hub import Waiter

from .._attrs import readonly
from .._options import check_int
from ..exceptions import EndOfChannel, InvalidOption
from .deadlines import Lingering
from .metrics import HubCounters

__all__ = ["Entry", "Outbox", "OutboxLimits", "OutboxState", "OutboxStatistics", "SlowPolicy"]

logger = logging.getLogger("greenbus.bridge.outbox")

#: ``(head, body)`` for a message, ``(data, None)`` for a control frame.
Entry = tuple[bytes, "bytes | None"]

#: Seconds a writer stays parked with nothing to write before it ends.
WRITER_LINGER = 0.5


class SlowPolicy(str, enum.Enum):
    """What an outbox does when a frame would take it over a limit."""

    #: Report a slow consumer (the hub sends ``error slow_consumer`` and
    #: closes with 1013); the queued messages are dropped.
    CLOSE = "close"
    #: Drop the oldest queued messages until the new frame fits (never a
    #: control frame); a slow consumer only when no message is left to drop.
    DROP_OLDEST = "drop_oldest"

    def __str__(self) -> str:
        return self.value


class OutboxState(enum.IntEnum):
    """An outbox's life.  Transitions live in :class:`Outbox` only.

    OPEN -> SLOW (over a limit, the close is coming) -> CLOSING -> CLOSED;
    OPEN -> CLOSING -> CLOSED; any state -> CLOSED.
    """

    #: Takes messages and control frames.
    OPEN = 0
    #: Found to be a slow consumer: messages are refused (counted as
    #: dropped); control frames (the error that says so) still go in.
    SLOW = 1
    #: A close was requested: nothing more goes in; the writer sends what
    #: is queued, then the close frame.
    CLOSING = 2
    #: The connection is over: nothing goes in, the writer ends.
    CLOSED = 3


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Bounds on one outbox (see docs/limits.md).

    Attributes:
        max_frames: frames queued and not yet written, at most; None for
            no bound (the Python client's own outbox).
        max_bytes: bytes of those frames (UTF-8), at most; one frame alone
            may exceed it when nothing else is pending, or it could never
            be sent.  None for no bound.
        policy: what happens past either bound.
    """

    max_frames: int | None = None
    max_bytes: int | None = None
    policy: SlowPolicy = SlowPolicy.CLOSE

    def __post_init__(self) -> None:
        check_int("max_frames", self.max_frames, optional=True)
        check_int("max_bytes", self.max_bytes, optional=True)
        try:
            object.__setattr__(self, "policy", SlowPolicy(self.policy))
        except ValueError:
            choices = ", ".join(repr(p.value) for p in SlowPolicy)
            raise InvalidOption("slow_policy", self.policy, f"one of {choices}") from None


@dataclass(frozen=True, slots=True)
class OutboxStatistics:
    """A snapshot of an outbox's counters (see :meth:`Outbox.statistics`)."""

    state: str
    #: Frames not yet written, and their bytes (queued + in flight + the protocol's own).
    pending: int
    pending_bytes: int
    #: Of those, frames the writer has taken and is writing now.
    in_flight: int
    #: Messages never written: refused, dropped, or cut off.
    dropped: int
    #: Frames, and messages among them, written to the socket.
    written_frames: int
    written_messages: int
    #: The most frames ever pending at once.
    high_water: int


#: The unbounded outbox's limits.
UNBOUNDED = OutboxLimits()


class Outbox:
    """A FIFO of encoded frames for one connection's writer, bounded by ``limits``.

    Args:
        limits: the bounds and the policy; unbounded by default.
        on_slow: called once, with the reason (``"more than N frames
            pending"``), when the outbox turns SLOW.  The owner answers
            with its error frame (:meth:`put_control` still takes it) and
            :meth:`request_close`.  Without it, the outbox requests a close
            with 1013 itself.
        counters: the hub's counters: ``messages_out`` and ``dropped`` are
            added to as well as this outbox's own.
        name: for logs and ``repr``.
    """

    __slots__ = (
        "_bytes",
        "_close_request",
        "_counters",
        "_drained",
        "_flush",
        "_frames",
        "_front",
        "_hub",
        "_in_flight",
        "_in_flight_bytes",
        "_in_flight_messages",
        "_limits",
        "_max_bytes",
        "_max_frames",
        "_on_slow",
        "_overflowing",
        "_queue",
        "_start_writer",
        "_state",
        "_unqueued",
        "_unqueued_bytes",
        "_waiter",
        "_wake_scheduled",
        "_writers",
        "_writing",
        "dropped",
        "high_water",
        "name",
        "written_frames",
        "written_messages",
    )

    def __init__(
        self,
        limits: OutboxLimits = UNBOUNDED,
        *,
        on_slow: Callable[[str], object] | None = None,
        counters: HubCounters | None = None,
        name: str = "outbox",
    ) -> None:
        self._limits = limits
        self._max_frames = limits.max_frames
        self._max_bytes = limits.max_bytes
        self._on_slow = on_slow
        self._counters = counters
        self.name = name
        self._state = OutboxState.OPEN
        # Control frames that precede everything in _queue: drop_oldest
        # moves leading control frames here to reach the oldest message in
        # O(1), without reordering anything.  Made by drop_oldest only (an
        # empty deque holds half a KiB, per connection).
        self._front: deque[Entry] | None = None
        # The FIFO, made by the first put after an idle spell and let go
        # when the writer finds it empty: an idle peer holds no deque.
        self._queue: deque[Entry] | None = None
        # Frames and bytes pending: queued, plus taken by the writer and not
        # yet written (in flight), plus the protocol's own (unqueued).
        self._frames = 0
        self._bytes = 0
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._in_flight_messages = 0
        self._unqueued = 0
        self._unqueued_bytes = 0
        self._flush = False
        self._close_request: tuple[int, str] | None = None
        self._overflowing = False
        # Starts a writer (see bind_writer); True while one runs, is due,
        # or is parked in take() (then _waiter is set).
        self._start_writer: Callable[[], object] | None = None
        self._writing = False
        self._hub = get_hub()
        self._writers = _parked_writers(self._hub)
        self._waiter: Waiter | None = None
        self._wake_scheduled = False
        # Set when the writer finished a batch (or the outbox stopped
        # taking messages): wakes producers pacing themselves (wait_below).
        self._drained: Event | None = None
        #: Messages refused, dropped, discarded or cut off: never written.
        self.dropped = 0
        #: Frames and messages the writer has written to the socket.
        self.written_frames = 0
        self.written_messages = 0
        #: The most frames ever pending at once.
        self.high_water = 0

    def __repr__(self) -> str:
        return (
            f"<Outbox {self.name} {self._state.name.lower()} pending={self._frames} "
            f"bytes={self._bytes} dropped={self.dropped}>"
        )

    # -- introspection ---------------------------------------------------------

    state = readonly[OutboxState]("_state")

    limits = readonly[OutboxLimits]("_limits")

    @property
    def accepting(self) -> bool:
        """True while messages are taken (OPEN)."""
        return self._state is OutboxState.OPEN

    @property
    def pending_frames(self) -> int:
        """Frames not yet written: queued, in the writer's hands, and the protocol's own."""
        return self._frames + self._unqueued

    @property
    def pending_bytes(self) -> int:
        """UTF-8 bytes of the pending frames (their payloads, without WebSocket headers)."""
        return self._bytes + self._unqueued_bytes

    def statistics(self) -> OutboxStatistics:
        """A frozen snapshot of the counters."""
        return OutboxStatistics(
            state=self._state.name.lower(),
            pending=self.pending_frames,
            pending_bytes=self.pending_bytes,
            in_flight=self._in_flight,
            dropped=self.dropped,
            written_frames=self.written_frames,
            written_messages=self.written_messages,
            high_water=self.high_water,
        )

    # -- producers -------------------------------------------------------------

    def put_message(self, head: bytes, body: bytes) -> bool:
        """Queue the message ``head + body``; never blocks.

        Returns:
            True if it was queued.  False if it was not (the outbox is not
            OPEN, or it turned SLOW now); it is then counted as dropped.
        """
        if self._state is not OutboxState.OPEN:
            self._drop(1)
            return False
        size = len(head) + len(body)
        # _over(1, size), inlined: this runs once per peer per emit.
        frames = self._frames + self._unqueued + 1
        pending = self._bytes + self._unqueued_bytes
        if (self._max_frames is not None and frames > self._max_frames) or (
            self._max_bytes is not None and pending and pending + size > self._max_bytes
        ):
            if not self._make_room(1, size):
                self._drop(1)
                return False
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append((head, body))
        # Count it and notify the writer (_notify, inlined: once per peer per emit).
        frames = self._frames = self._frames + 1
        self._bytes += size
        if frames > self.high_water:
            self.high_water = frames
        if self._waiter is not None:
            if not self._wake_scheduled:
                self._wake_scheduled = True
                self._hub.loop.run_callback(self._wake)
        elif not self._writing and self._start_writer is not None:
            self._writing = True
            self._start_writer()
        return True

    def put_control(self, data: bytes) -> bool:
        """Queue a control frame (an answer); never blocks, never dropped once queued.

        Over a limit, queued messages are dropped to make room under
        ``drop_oldest``; with none left, or under ``close``, the outbox
        turns SLOW (and this frame is refused).  While SLOW, control frames
        are taken without a limit check: the owner's error frame must go
        out before the close.

        Returns:
            True if it was queued; False if the outbox is closing or
            closed, or turned SLOW now.
        """
        state = self._state
        if state is OutboxState.OPEN:
            if self._over(1, len(data)) and not self._make_room(1, len(data)):
                return False
        elif state is not OutboxState.SLOW:
            return False
        if self._queue is None:
            self._queue = deque()
        self._queue.append((data, None))
        self._frames += 1
        self._bytes += len(data)
        self.high_water = max(self.high_water, self._frames)
        self._notify()
        return True

    def note_unqueued(self, frames: int, nbytes: int) -> bool:
        """Count frames the protocol framed by itself and holds outside the queue.

        Pongs to WebSocket pings and the close reply wait in the protocol
        object until the writer flushes it; a peer that pings and never
        reads would grow them without bound.  The connection reports them
        after every read; the writer resets them by :meth:`done`.

        Returns:
            False if they took the outbox over a limit (it turned SLOW).
        """
        self._unqueued = frames
        self._unqueued_bytes = nbytes
        if self._state is not OutboxState.OPEN:
            return True
        return not self._over(0, 0) or self._make_room(0, 0)

    def bind_writer(self, start: Callable[[], object]) -> None:
        """Have ``start()`` called whenever work arrives and no writer is running.

        ``start`` must not block or switch (it runs inside ``put_*``, maybe
        within ``bus.emit``): it schedules a writer (``gevent.spawn``),
        which calls :meth:`take` until it returns None, then ends.  Called
        at once if work is already waiting.  Until it is bound, frames only
        queue up.
        """
        self._start_writer = start
        if self._front or self._queue or self._flush or self._close_request is not None:
            self._notify()

    def request_flush(self) -> None:
        """Have the writer flush the protocol's own frames (pong, close reply, ping)."""
        if self._state is not OutboxState.CLOSED:
            self._flush = True
            self._notify()

    def request_close(self, code: int, reason: str = "") -> bool:
        """Queue a close: the writer sends what is queued, then the close frame.

        Nothing is taken after it (a message put later is counted as
        dropped).  Returns False if a close was requested already or the
        outbox is closed.
        """
        if self._state >= OutboxState.CLOSING:
            return False
        self._state = OutboxState.CLOSING
        self._close_request = (code, reason)
        self._notify()
        self._wake_pacers()
        return True

    def close(self) -> list[Entry]:
        """End: nothing goes in, the writer's next :meth:`take` raises EndOfChannel.

        Idempotent.  Returns the entries the writer never took (oldest
        first) so the owner can resend or count them; the first call only.
        Messages among them are *not* counted as dropped here: the owner
        decides (the hub counts them, the Python client sends them again).
        """
        if self._state is OutboxState.CLOSED:
            return []
        self._state = OutboxState.CLOSED
        # No more reports and no more writers: also breaks the owner <->
        # outbox reference cycles, so a finished connection is freed
        # without the garbage collector.  A writer still running sees
        # EndOfChannel at its next take().
        self._on_slow = None
        self._start_writer = None
        left = [*(self._front or ()), *(self._queue or ())]
        self._front = self._queue = None
        self._frames = self._in_flight
        self._bytes = self._in_flight_bytes
        self._notify()  # a parked writer wakes to EndOfChannel
        self._wake_pacers()
        return left

    def withdraw(self, head: bytes) -> bool:
        """Take back a queued message the writer has not taken, by identity of ``head``.

        For a sender that gave up on it (a request that timed out): it is
        not written, and not counted as dropped.  Returns True if it was
        still queued.
        """
        for queue in filter(None, (self._front, self._queue)):
            for i, entry in enumerate(queue):
                if entry[0] is head and entry[1] is not None:
                    del queue[i]
                    self._frames -= 1
                    self._bytes -= len(head) + len(entry[1])
                    return True
        return False

    def count_dropped(self, n: int) -> None:
        """Count ``n`` messages the owner gave up on (e.g. left by :meth:`close`)."""
        self._drop(n)

    # -- the writer ------------------------------------------------------------

    def take(self, max_frames: int, max_bytes: int, wait: bool = True) -> list[Entry] | None:
        """Wait for work; take up to ``max_frames`` entries (or about ``max_bytes``).

        The batch stays counted as pending (in flight) until :meth:`done`.
        Returns an empty list when only a flush or the close is due (see
        :meth:`close_due`, which the writer asks after every batch).  Only
        the writer greenlet may call it.

        Returns None when the writer must end: it was let go after
        ``WRITER_LINGER`` seconds parked (:meth:`release_writer`), or none
        was started by the hook (an outbox without one never blocks), or
        nothing is due and ``wait`` is false (a writer in the hub, which
        must not block).  The next frame then starts a new writer.

        Raises:
            EndOfChannel: the outbox is closed.
        """
        while True:
            if self._state is OutboxState.CLOSED:
                raise EndOfChannel()
            if self._front or self._queue or self._flush or self._close_request is not None:
                break
            if not wait:
                self._writing = False
                self._queue = None  # an idle outbox holds no deque either
            if not self._writing:
                return None
            waiter: Waiter = Waiter()
            self._waiter = waiter
            writers = self._writers
            writers.park(self)
            try:
                waiter.get()
            finally:
                self._waiter = None
                writers.unpark(self)
        front, queue = self._front, self._queue
        self._flush = False
        batch: list[Entry] = []
        nbytes = 0
        messages = 0
        while len(batch) < max_frames and nbytes < max_bytes:
            if front:
                entry = front.popleft()
            elif queue:
                entry = queue.popleft()
            else:
                break
            batch.append(entry)
            head, body = entry
            if body is None:
                nbytes += len(head)
            else:
                nbytes += len(head) + len(body)
                messages += 1
        self._in_flight = len(batch)
        self._in_flight_bytes = nbytes
        self._in_flight_messages = messages
        return batch

    def close_due(self) -> tuple[int, str] | None:
        """The requested close ``(code, reason)``, once everything before it was taken.

        Returned once: the writer sends it, and it is not due again.
        """
        close = self._close_request
        if close is not None and not self._front and not self._queue:
            self._close_request = None
            return close
        return None

    def done(self, written: bool) -> None:
        """The writer finished its batch: written to the socket, or not (write failed).

        A batch that could not be written is lost: its messages are counted
        as dropped (a failed ``sendall`` may have written part of it, so
        they cannot be sent again without risking duplicates).
        """
        frames, messages = self._in_flight, self._in_flight_messages
        self._frames -= frames
        self._bytes -= self._in_flight_bytes
        self._in_flight = self._in_flight_bytes = self._in_flight_messages = 0
        self._unqueued = self._unqueued_bytes = 0
        if written:
            self.written_frames += frames
            self.written_messages += messages
            if self._counters is not None:
                self._counters.messages_out += messages
        elif messages:
            self._drop(messages)
        if self._overflowing and self._below_half():
            self._overflowing = False
        self._wake_pacers()

    @property
    def half_empty(self) -> bool:
        """True while at most half of each limit is used (always, when unbounded)."""
        return self._below_half()

    def wait_half_empty(self) -> bool:
        """Park the calling greenlet until at most half of each limit is used.

        For a producer that paces itself (a replay of missed messages) so
        that it never takes the outbox over its limits.  Not for the writer.

        Returns:
            True once there is room; False if the outbox stopped taking
            messages meanwhile (slow consumer, closing, closed).
        """
        while self._state is OutboxState.OPEN and not self._below_half():
            event = self._drained
            if event is None:
                event = self._drained = Event()
            event.wait()
        return self._state is OutboxState.OPEN

    # -- internals -------------------------------------------------------------

    def _wake_pacers(self) -> None:
        event = self._drained
        if event is not None:
            self._drained = None
            event.set()

    def release_writer(self) -> None:
        """Let the parked writer go if nothing is due: its :meth:`take` returns None.

        For the hub's sweep of idle writers (the writer ends at once; the
        next frame starts another).  Must run in the hub greenlet.
        """
        waiter = self._waiter
        if waiter is None or self._front or self._queue or self._flush:
            return
        if self._close_request is not None or self._state is OutboxState.CLOSED:
            return
        self._writing = False
        self._queue = None  # an idle outbox holds no deque either
        waiter.switch(None)

    def _notify(self) -> None:
        # Wake the parked writer from the hub, or start one if there is
        # none: once per burst of puts.  Either is only scheduled, so the
        # producer never switches (it may be inside bus.emit).
        if self._waiter is not None:
            if not self._wake_scheduled:
                self._wake_scheduled = True
                self._hub.loop.run_callback(self._wake)
        elif not self._writing and self._start_writer is not None:
            self._writing = True
            self._start_writer()

    def _wake(self) -> None:
        self._wake_scheduled = False
        waiter = self._waiter
        if waiter is not None:
            waiter.switch(None)

    def _over(self, frames: int, size: int) -> bool:
        # Would ``frames`` more frames of ``size`` bytes take it over a limit?
        # A lone frame may exceed max_bytes (pending == 0), or it could
        # never be sent.
        pending = self._bytes + self._unqueued_bytes
        return (
            self._max_frames is not None
            and self._frames + self._unqueued + frames > self._max_frames
        ) or (self._max_bytes is not None and pending > 0 and pending + size > self._max_bytes)

    def _make_room(self, frames: int, size: int) -> bool:
        # Over a limit with ``frames`` more frames of ``size`` bytes: drop
        # the oldest messages under drop_oldest, else (or if that is not
        # enough) turn SLOW.  Returns True if there is room now.
        if self._limits.policy is SlowPolicy.DROP_OLDEST:
            dropped = 0
            queue = self._queue
            while queue and self._over(frames, size):
                while queue and queue[0][1] is None:
                    if self._front is None:
                        self._front = deque()
                    self._front.append(queue.popleft())  # control frames: kept, in order
                if not queue:
                    break
                head, body = queue.popleft()
                self._frames -= 1
                self._bytes -= len(head) + len(body)  # type: ignore[arg-type]
                dropped += 1
            if dropped:
                self._drop(dropped)
                if not self._overflowing:
                    # Once per episode; it ends when the writer has brought
                    # the queue down to half the limits.
                    self._overflowing = True
                    logger.warning(
                        "%s: slow consumer, dropping the oldest messages (%d dropped so far)",
                        self.name,
                        self.dropped,
                    )
            if not self._over(frames, size):
                return True
        self._turn_slow(frames)
        return False

    def _turn_slow(self, frames: int) -> None:
        limits = self._limits
        if limits.max_frames is not None and (
            self._frames + self._unqueued + frames > limits.max_frames
        ):
            why = f"more than {limits.max_frames} frames pending"
        else:
            why = f"more than {limits.max_bytes} bytes pending"
        self._state = OutboxState.SLOW
        # The messages queued will never be written now: drop them (the
        # control frames stay, and go out before the close).
        kept: deque[Entry] = deque()
        lost = 0
        for entry in self._queue or ():
            head, body = entry
            if body is None:
                kept.append(entry)
            else:
                self._frames -= 1
                self._bytes -= len(head) + len(body)
                lost += 1
        self._queue = kept
        self._drop(lost)
        self._wake_pacers()
        if self._on_slow is not None:
            self._on_slow(why)
        else:
            self.request_close(1013, "slow consumer")

    def _below_half(self) -> bool:
        frames, limit = self._frames + self._unqueued, self._max_frames
        nbytes, blimit = self._bytes + self._unqueued_bytes, self._max_bytes
        return (limit is None or frames <= limit // 2) and (blimit is None or nbytes <= blimit // 2)

    def _drop(self, n: int) -> None:
        if n:
            self.dropped += n
            if self._counters is not None:
                self._counters.dropped += n


_writers_by_hub: weakref.WeakKeyDictionary[object, Lingering] = weakref.WeakKeyDictionary()


def _parked_writers(hub: object) -> Lingering:
    # The outboxes of one gevent hub whose writer is parked (see WRITER_LINGER).
    found = _writers_by_hub.get(hub)
    if found is None:
        found = _writers_by_hub[hub] = Lingering(WRITER_LINGER, Outbox.release_writer)
    return found
