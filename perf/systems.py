"""The systems under test: one adapter per system.

Every adapter builds the same few shapes out of its own system's
primitives, so each metric is written once and measures every system the
same way:

* :meth:`System.fanout` returns a :class:`Fanout`: one publisher wired to
  ``k`` consumers.  Every consumer appends each payload it receives to its
  own list -- the cheapest handler that still lets the suite verify that
  every message arrived, once, and in which order.  ``Fanout.emit`` is the
  system's own publishing call with the topic bound; it is what the emit
  metrics time.
* :meth:`System.echo` returns an :class:`Echo`: two parties, where
  ``roundtrip(x)`` sends ``x`` and returns the other party's reply.
* :meth:`System.idle_consumers` and :meth:`System.queued_messages` build
  objects for the memory probe to weigh.

The classic two-thread pyee scenario is a whole program rather than a
primitive; :class:`Classic` runs it and returns its per-message figures.

Everything runs in one process without monkey-patching: greenlets live in
the main thread, the thread-based systems use real OS threads.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, TypeVar

import blinker
import gevent
import gevent.event
import gevent.queue
import pyee
from pyee.executor import ExecutorEventEmitter

import greenbus
import greenbus.compat

__all__ = [
    "IN_PROCESS",
    "Classic",
    "ClassicRun",
    "Echo",
    "Fanout",
    "MeasurementError",
    "System",
    "Unsupported",
]

#: The topic every fan-out publishes on (wildcard subscribers match it too).
TOPIC = "a.b"

#: Seconds any wait for deliveries may take before the sample is an error.
WAIT_TIMEOUT = 60.0

#: How often a thread polls for deliveries made by other OS threads.  Short,
#: but long enough that the poller does not steal the GIL from the workers.
_THREAD_POLL = 1e-4


class MeasurementError(Exception):
    """A sample that is not a number: messages lost or duplicated, or a wait timed out."""


class Unsupported(Exception):
    """The system has no natural way to build this shape."""


def _noop() -> None:
    """Do nothing (the producer's pause for thread-based systems)."""


_C = TypeVar("_C", bound="_Closing")


class _Closing:
    """Context-manager plumbing for things with a ``close`` callable."""

    close: Callable[[], object]

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class Fanout(_Closing):
    """One publisher wired to ``len(received)`` consumers.

    Attributes:
        emit: publish one payload to every consumer (the system's own call).
        received: one list per consumer, payloads in arrival order.
        wait: ``wait(n)`` returns once every consumer has handled ``n``
            payloads -- everything emitted so far (it raises
            :class:`MeasurementError` after :data:`WAIT_TIMEOUT`); check
            the counts with :meth:`take`.
        close: tear everything down (threads joined, greenlets ended).
        pause: what a producer calls every 100 emits: ``gevent.sleep(0)``
            for greenlet systems, nothing for thread-based ones.
    """

    emit: Callable[[Any], object]
    received: list[list[Any]]
    wait: Callable[[int], None]
    close: Callable[[], object]
    pause: Callable[[], object] = _noop

    def take(self, expected: int) -> list[list[Any]]:
        """Check that every consumer got exactly ``expected`` payloads; hand them over.

        The consumers' lists are emptied in place, ready for the next batch.

        Raises:
            MeasurementError: a consumer got fewer or more.
        """
        counts = [len(r) for r in self.received]
        if any(c != expected for c in counts):
            raise MeasurementError(
                f"expected {expected} deliveries per consumer, got {sorted(set(counts))}"
            )
        taken = [list(r) for r in self.received]
        for r in self.received:
            r.clear()
        return taken


@dataclass
class Echo(_Closing):
    """Two parties: ``roundtrip(x)`` sends ``x`` and returns the reply."""

    roundtrip: Callable[[Any], Any]
    close: Callable[[], object]


def _lists(k: int) -> list[list[Any]]:
    return [[] for _ in range(k)]


def _polling(received: list[list[Any]], idle: Callable[[], object]) -> Callable[[int], None]:
    """A ``wait`` that polls the consumers' lists, calling ``idle()`` between looks."""

    def wait(expected: int) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while any(len(r) < expected for r in received):
            if time.monotonic() > deadline:
                got = sorted({len(r) for r in received})
                raise MeasurementError(f"timed out waiting for {expected} deliveries, got {got}")
            idle()

    return wait


def _with_work(
    append: Callable[[Any], object], slow: float, sleep: Callable[[float], object]
) -> Callable[[Any], object]:
    """A handler that records its payload, first sleeping ``slow`` seconds if non-zero."""
    if not slow:
        return append

    def handler(payload: Any) -> None:
        sleep(slow)
        append(payload)

    return handler


class System:
    """One system under test.  Subclasses override the shapes they support.

    Attributes:
        name: the name used in results, tables and charts.
        summary: one line saying what the system is and where its consumers run.
        thread_per_consumer: each consumer costs an OS thread (the memory
            probe builds fewer of them).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    thread_per_consumer: ClassVar[bool] = False

    def fanout(self, k: int, slow: float = 0.0) -> Fanout:
        """One publisher and ``k`` consumers, each sleeping ``slow`` s per message."""
        raise Unsupported(f"{self.name} has no fan-out")

    def echo(self) -> Echo:
        """A requester and a responder that returns what it receives."""
        raise Unsupported(f"{self.name} has no request/reply")

    def idle_consumers(self, n: int) -> Callable[[], object]:
        """Start ``n`` consumers that wait for messages; return their closer."""
        raise Unsupported(f"{self.name} has no memory probe")

    def queued_messages(self, n: int) -> Callable[[], object]:
        """Queue ``n`` messages to one consumer that is not consuming; return a closer."""
        raise Unsupported(f"{self.name} has no memory probe")

    def __repr__(self) -> str:
        return f"<System {self.name}>"


# -- emitters that run or hand off handlers: pyee, pyee-executor, compat, blinker


class _EmitterSystem(System):
    """An emitter with ``on(event, f)`` / ``emit(event, *args)`` (pyee's API).

    Subclasses say how to make and shut down the emitter, how a slow
    handler sleeps, and how the measuring thread waits for deliveries.
    """

    #: How a slow handler sleeps (it runs wherever the system runs handlers).
    sleep: ClassVar[Callable[[float], object]] = staticmethod(time.sleep)
    #: What the measuring thread does between looks at the consumers' lists.
    idle: ClassVar[Callable[[], object]] = staticmethod(partial(time.sleep, _THREAD_POLL))

    def make(self) -> Any:
        raise NotImplementedError

    def shutdown(self, emitter: Any) -> None:
        emitter.remove_all_listeners()

    def fanout(self, k: int, slow: float = 0.0) -> Fanout:
        emitter = self.make()
        received = _lists(k)
        for r in received:
            emitter.on(TOPIC, _with_work(r.append, slow, self.sleep))
        return Fanout(
            emit=partial(emitter.emit, TOPIC),
            received=received,
            wait=_polling(received, self.idle),
            close=partial(self.shutdown, emitter),
        )

    def echo(self) -> Echo:
        emitter = self.make()
        replies: queue.Queue[Any] = queue.Queue()
        emitter.on("ping", replies.put)
        emit = partial(emitter.emit, "ping")
        get = replies.get

        def roundtrip(payload: Any) -> Any:
            emit(payload)
            return get()

        return Echo(roundtrip, partial(self.shutdown, emitter))


class Pyee(_EmitterSystem):
    name = "pyee"
    summary = "pyee.EventEmitter: emit runs every handler inline, in the emitting thread"

    def make(self) -> pyee.EventEmitter:
        return pyee.EventEmitter()

    def echo(self) -> Echo:
        raise Unsupported("pyee runs handlers inline: there is no second party")


class PyeeExecutor(_EmitterSystem):
    name = "pyee-executor"
    summary = (
        "pyee.ExecutorEventEmitter: emit submits each handler call to a ThreadPoolExecutor "
        "(default size, min(32, cpus + 4) threads)"
    )

    def make(self) -> ExecutorEventEmitter:
        return ExecutorEventEmitter()

    def shutdown(self, emitter: ExecutorEventEmitter) -> None:
        emitter.shutdown(wait=True)


class GreenbusCompat(_EmitterSystem):
    name = "greenbus-compat"
    summary = (
        "greenbus.compat.EventEmitter (the pyee drop-in), emitting from the main thread; "
        "unpatched, so its listeners run in greenlets of greenbus's shared hub thread"
    )
    sleep = staticmethod(gevent.sleep)

    def make(self) -> greenbus.compat.EventEmitter:
        return greenbus.compat.EventEmitter()

    def shutdown(self, emitter: greenbus.compat.EventEmitter) -> None:
        emitter.shutdown(wait=True)


class Blinker(System):
    name = "blinker"
    summary = "blinker.Signal.send: receivers run inline, in the sending thread"

    def fanout(self, k: int, slow: float = 0.0) -> Fanout:
        signal = blinker.Signal()
        received = _lists(k)
        for r in received:
            # send(payload) calls receiver(payload): the payload is the sender.
            signal.connect(_with_work(r.append, slow, time.sleep), weak=False)
        # Receivers ran inline, so a wait finds everything already there.
        return Fanout(signal.send, received, _polling(received, _noop), close=_noop)


# -- queues with one consumer each: threads+queue, gevent.queue ----------------


class _Mark:
    """Queued behind the payloads: the consumer sets ``event`` on reaching it.

    A mark whose event is None tells the consumer to stop.
    """

    __slots__ = ("event",)

    def __init__(self, event: Any) -> None:
        self.event = event


_STOP = _Mark(None)


def _consume(
    get: Callable[[], Any],
    append: Callable[[Any], object],
    slow: float,
    sleep: Callable[[float], object],
) -> None:
    """A consumer's loop: take, (sleep,) record; answer marks; end at the stop mark."""
    while True:
        item = get()
        if item.__class__ is _Mark:
            if item.event is None:
                return
            item.event.set()
            continue
        if slow:
            sleep(slow)
        append(item)


def _serve_echo(get: Callable[[], Any], put: Callable[[Any], object]) -> None:
    """The responder's loop: send back what arrives, until the stop mark."""
    while True:
        item = get()
        if item is _STOP:
            return
        put(item)


def _publisher(puts: list[Callable[[Any], object]]) -> Callable[[Any], object]:
    """Publish to every queue.  A single queue's ``put`` is used as it is."""
    if len(puts) == 1:
        return puts[0]

    def emit(payload: Any) -> None:
        for put in puts:
            put(payload)

    return emit


class _QueueSystem(System):
    """One queue per consumer, a consumer per queue (a thread or a greenlet).

    ``wait`` puts a mark behind the payloads in every queue and waits until
    each consumer has reached it, so it returns the moment the last payload
    was handled, without polling.
    """

    sleep: ClassVar[Callable[[float], object]]
    pause: ClassVar[Callable[[], object]]

    def new_queue(self) -> Any:
        raise NotImplementedError

    def new_event(self) -> Any:
        raise NotImplementedError

    def start(self, target: Callable[..., None], *args: Any) -> Any:
        """Run ``target(*args)`` concurrently; return something :meth:`join_all` takes."""
        raise NotImplementedError

    def join_all(self, workers: list[Any]) -> None:
        raise NotImplementedError

    def _stopper(self, queues: list[Any], workers: list[Any]) -> Callable[[], None]:
        def close() -> None:
            for q in queues:
                q.put(_STOP)
            self.join_all(workers)

        return close

    def _consumers(
        self, received: list[list[Any]], slow: float
    ) -> tuple[list[Any], Callable[[], None]]:
        queues = [self.new_queue() for _ in received]
        workers = [
            self.start(_consume, q.get, r.append, slow, self.sleep)
            for q, r in zip(queues, received, strict=True)
        ]
        return queues, self._stopper(queues, workers)

    def fanout(self, k: int, slow: float = 0.0) -> Fanout:
        received = _lists(k)
        queues, close = self._consumers(received, slow)

        def wait(expected: int) -> None:
            marks = [_Mark(self.new_event()) for _ in queues]
            for q, mark in zip(queues, marks, strict=True):
                q.put(mark)
            for mark in marks:
                if not mark.event.wait(WAIT_TIMEOUT):
                    raise MeasurementError("timed out waiting for a consumer to drain")

        return Fanout(
            emit=_publisher([q.put for q in queues]),
            received=received,
            wait=wait,
            close=close,
            pause=self.pause,
        )

    def echo(self) -> Echo:
        requests, replies = self.new_queue(), self.new_queue()
        server = self.start(_serve_echo, requests.get, replies.put)
        put, get = requests.put, replies.get

        def roundtrip(payload: Any) -> Any:
            put(payload)
            return get()

        return Echo(roundtrip, self._stopper([requests], [server]))

    def idle_consumers(self, n: int) -> Callable[[], object]:
        _, close = self._consumers(_lists(n), 0.0)
        return close

    def queued_messages(self, n: int) -> Callable[[], object]:
        q = self.new_queue()
        put = q.put
        for _ in range(n):
            put(None)
        _expect_queued(q.qsize(), n)
        return partial(_keep, q)


def _keep(*objects: object) -> None:
    """A closer that only keeps ``objects`` alive until it is called."""


def _expect_queued(queued: int, n: int) -> None:
    if queued != n:
        raise MeasurementError(f"{n} messages put, {queued} queued")


class ThreadsQueue(_QueueSystem):
    name = "threads+queue"
    summary = "OS threads, one queue.Queue per consumer thread, which blocks in get()"
    thread_per_consumer = True
    sleep = staticmethod(time.sleep)
    pause = staticmethod(_noop)

    def new_queue(self) -> queue.Queue[Any]:
        return queue.Queue()

    def new_event(self) -> threading.Event:
        return threading.Event()

    def start(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        return thread

    def join_all(self, workers: list[threading.Thread]) -> None:
        for thread in workers:
            thread.join(WAIT_TIMEOUT)


class GeventQueue(_QueueSystem):
    name = "gevent.queue"
    summary = "greenlets, one gevent.queue.Queue per consumer greenlet"
    sleep = staticmethod(gevent.sleep)
    pause = staticmethod(partial(gevent.sleep, 0))

    def new_queue(self) -> gevent.queue.Queue[Any]:
        return gevent.queue.Queue()

    def new_event(self) -> gevent.event.Event:
        return gevent.event.Event()

    def start(self, target: Callable[..., None], *args: Any) -> gevent.Greenlet:
        return gevent.spawn(target, *args)

    def join_all(self, workers: list[gevent.Greenlet]) -> None:
        gevent.joinall(workers, timeout=WAIT_TIMEOUT)


# -- greenbus ------------------------------------------------------------------


def _bus_handler(
    append: Callable[[Any], object], slow: float
) -> Callable[[greenbus.Message], None]:
    if slow:

        def handler(msg: greenbus.Message) -> None:
            gevent.sleep(slow)
            append(msg.data)

    else:

        def handler(msg: greenbus.Message) -> None:
            append(msg.data)

    return handler


class Greenbus(System):
    name = "greenbus"
    summary = (
        "greenbus.Bus: each subscription owns a channel and a handler greenlet; "
        "every subscriber subscribes the exact topic"
    )

    def patterns(self, k: int) -> list[str]:
        """What the ``k`` subscribers subscribe to."""
        return [TOPIC] * k

    def fanout(self, k: int, slow: float = 0.0) -> Fanout:
        bus = greenbus.Bus(self.name)
        received = _lists(k)
        for pattern, r in zip(self.patterns(k), received, strict=True):
            bus.subscribe(pattern, _bus_handler(r.append, slow))
        return Fanout(
            emit=partial(bus.emit, TOPIC),
            received=received,
            wait=_polling(received, partial(gevent.sleep, 0)),
            close=bus.close,
            pause=partial(gevent.sleep, 0),
        )

    def echo(self) -> Echo:
        bus = greenbus.Bus(self.name)
        emit = bus.emit
        bus.subscribe("ping", lambda msg: emit("pong", msg.data))
        get = bus.subscribe("pong").get

        def roundtrip(payload: Any) -> Any:
            emit("ping", payload)
            return get().data

        return Echo(roundtrip, bus.close)

    def idle_consumers(self, n: int) -> Callable[[], object]:
        bus = greenbus.Bus(self.name)
        for i in range(n):
            bus.subscribe(f"idle.{i}", _keep)
        gevent.sleep(0)  # let every handler greenlet start and park in its channel
        return bus.close

    def queued_messages(self, n: int) -> Callable[[], object]:
        bus = greenbus.Bus(self.name)
        sub = bus.subscribe("queued", maxsize=None)
        emit = partial(bus.emit, "queued")
        for _ in range(n):
            emit(None)
        _expect_queued(sub.pending, n)
        return partial(_keep, sub, bus)


class GreenbusWildcard(Greenbus):
    name = "greenbus-wildcard"
    summary = "greenbus.Bus, subscribers alternate 'a.*' and 'a.>'; emits go to 'a.b'"

    def patterns(self, k: int) -> list[str]:
        return [("a.*", "a.>")[i % 2] for i in range(k)]


class GreenbusRequest(Greenbus):
    name = "greenbus-request"
    summary = "greenbus.Bus.request: a private inbox per request; the responder calls msg.reply"

    def echo(self) -> Echo:
        bus = greenbus.Bus(self.name)
        bus.subscribe("ping", lambda msg: msg.reply(msg.data))
        request = partial(bus.request, "ping")

        def roundtrip(payload: Any) -> Any:
            return request(payload).data

        return Echo(roundtrip, bus.close)


# -- the classic two-thread scenario ---------------------------------------------


@dataclass
class ClassicRun:
    """One run of the classic scenario, per message, in µs."""

    held_us: list[float] = field(default_factory=list)
    roundtrip_us: list[float] = field(default_factory=list)


class Classic(System):
    """The two-thread pyee scenario of ``examples/threads_pyee.py``.

    thread1 emits ``data`` every 10 ms and times how long each ``emit``
    holds it; thread2's ``data`` handler parks the item in a
    ``queue.Queue``; thread2's loop polls that queue every 10 ms and emits
    ``reply``, whose handler (run inline in thread2) records the round trip.
    Slow by design, so it is measured with few messages.
    """

    name = "classic"
    summary = (
        "two OS threads sharing a pyee.EventEmitter, thread2 polling its queue every 10 ms "
        "(as in examples/threads_pyee.py)"
    )
    #: The poll interval of both threads, in seconds.
    POLL = 0.01

    def run(self, n: int) -> ClassicRun:
        """Send ``n`` messages 10 ms apart; return per-message figures.

        Raises:
            MeasurementError: a reply did not arrive.
        """
        ee = pyee.EventEmitter()
        result = ClassicRun()
        sent: dict[int, float] = {}
        replied: dict[int, float] = {}
        inbox: queue.Queue[int] = queue.Queue()
        all_replied = threading.Event()
        stop = threading.Event()

        def on_reply(i: int) -> None:
            replied[i] = time.perf_counter() - sent[i]
            if len(replied) == n:
                all_replied.set()

        ee.on("data", inbox.put)
        ee.on("reply", on_reply)

        def thread1() -> None:
            for i in range(n):
                sent[i] = start = time.perf_counter()
                ee.emit("data", i)
                result.held_us.append((time.perf_counter() - start) * 1e6)
                time.sleep(self.POLL)
            all_replied.wait(WAIT_TIMEOUT)

        def thread2() -> None:
            while not stop.is_set():
                while not inbox.empty():
                    ee.emit("reply", inbox.get_nowait())
                time.sleep(self.POLL)

        threads = [threading.Thread(target=thread2), threading.Thread(target=thread1)]
        for thread in threads:
            thread.start()
        threads[1].join()
        stop.set()
        threads[0].join()
        if len(replied) != n:
            raise MeasurementError(f"{n - len(replied)} of {n} replies missing")
        result.roundtrip_us = [replied[i] * 1e6 for i in range(n)]
        return result


#: Every in-process system, in the order tables and charts list them.
IN_PROCESS: dict[str, System] = {
    s.name: s
    for s in (
        Classic(),
        Pyee(),
        Blinker(),
        PyeeExecutor(),
        ThreadsQueue(),
        GeventQueue(),
        Greenbus(),
        GreenbusWildcard(),
        GreenbusRequest(),
        GreenbusCompat(),
    )
}
