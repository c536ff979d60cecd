"""The systems under test in one process: one adapter per system.

Every adapter builds the same shapes from its own system's primitives, so
each metric is written once and measures every system the same way:

* :meth:`System.fanout`: a :class:`Fanout`, one publisher wired to ``k``
  consumers, each appending every payload to its own list (the cheapest
  handler that still lets the suite check that every message arrived, once,
  in order).  ``Fanout.emit`` is the system's own publishing call with the
  topic bound: what the emit metrics time.
* :meth:`System.echo`: an :class:`Echo`; ``roundtrip(x)`` sends ``x`` and
  returns the other party's reply.
* :meth:`System.idle_consumers`, :meth:`System.queued_messages`: objects for
  the memory probe to weigh; each returns a closer.

:class:`Classic` runs the two-thread pyee scenario, a whole program.
Nothing is monkey-patched: greenlets live in the main thread, the
thread-based systems use real OS threads.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import blinker
import gevent
import gevent.event
import gevent.queue
import pyee
from pyee.executor import ExecutorEventEmitter

import greenbus
import greenbus.compat

from .procs import MeasurementError

__all__ = ["IN_PROCESS", "Classic", "Echo", "Fanout", "System", "Unsupported"]

#: The topic every fan-out publishes on (wildcard subscribers match it too).
TOPIC = "a.b"
#: Seconds any wait for deliveries may take before the sample is an error.
WAIT_TIMEOUT = 60.0
#: How often a thread polls for deliveries made by other OS threads: short,
#: but long enough that the poller does not steal the GIL from the workers.
THREAD_POLL = 1e-4


class Unsupported(Exception):
    """The system has no natural way to build this shape."""


def _noop(*_: object) -> None:
    """Do nothing: a thread-based producer's pause; a closer that keeps its arguments alive."""


class _Closing:
    close: Callable[[], object]

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class Fanout(_Closing):
    """One publisher wired to ``len(received)`` consumers.

    ``wait(n)`` returns once every consumer handled ``n`` payloads (all
    emitted so far), or raises MeasurementError after WAIT_TIMEOUT; a
    producer calls ``pause()`` every 100 emits (``gevent.sleep(0)`` for
    greenlet systems); ``close()`` joins threads and ends greenlets.
    """

    emit: Callable[[Any], object]
    received: list[list[Any]]
    wait: Callable[[int], None]
    close: Callable[[], object]
    pause: Callable[[], object] = _noop

    def take(self, expected: int) -> list[list[Any]]:
        """Every consumer's payloads (their lists emptied); raises unless each has ``expected``."""
        if (counts := {len(r) for r in self.received}) != {expected}:
            raise MeasurementError(f"expected {expected} deliveries per consumer, got {counts}")
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


def _handler(
    append: Callable[[Any], object], slow: float, sleep: Callable[[float], object]
) -> Callable[[Any], object]:
    """Record the payload, first sleeping ``slow`` seconds if it is not zero."""
    if not slow:
        return append

    def handler(payload: Any) -> None:
        sleep(slow)
        append(payload)

    return handler


class System:
    """One system under test; subclasses override the shapes they support.

    ``summary`` says what it is and where its consumers run;
    ``thread_per_consumer``: each consumer costs an OS thread (the memory
    probe builds fewer of them).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    thread_per_consumer: ClassVar[bool] = False

    def fanout(self, k: int, slow: float = 0.0) -> Fanout:
        """One publisher and ``k`` consumers, each sleeping ``slow`` s per message."""
        raise Unsupported(f"{self.name} has no fan-out")

    def echo(self) -> Echo:
        raise Unsupported(f"{self.name} has no request/reply")

    def idle_consumers(self, n: int) -> Callable[[], object]:
        raise Unsupported(f"{self.name} has no memory probe")

    def queued_messages(self, n: int) -> Callable[[], object]:
        """Queue ``n`` messages to one consumer that is not consuming."""
        raise Unsupported(f"{self.name} has no memory probe")

    def __repr__(self) -> str:
        return f"<System {self.name}>"


# -- emitters with pyee's API: pyee, pyee-executor, greenbus-compat; and blinker ----


class _Emitter(System):
    """An emitter with ``on(event, f)`` and ``emit(event, *args)``; ``make()`` builds one."""

    make: ClassVar[staticmethod[[], Any]]
    #: How a slow handler sleeps (where the system runs its handlers).
    sleep: ClassVar[staticmethod[[float], object]] = staticmethod(time.sleep)

    def shutdown(self, emitter: Any) -> None:
        emitter.remove_all_listeners()

    def fanout(self, k: int, slow: float = 0.0) -> Fanout:
        emitter, received = self.make(), _lists(k)
        for r in received:
            emitter.on(TOPIC, _handler(r.append, slow, self.sleep))
        wait = _polling(received, partial(time.sleep, THREAD_POLL))
        return Fanout(partial(emitter.emit, TOPIC), received, wait, partial(self.shutdown, emitter))

    def echo(self) -> Echo:
        emitter = self.make()
        replies: queue.Queue[Any] = queue.Queue()
        emitter.on("ping", replies.put)
        emit, get = partial(emitter.emit, "ping"), replies.get

        def roundtrip(payload: Any) -> Any:
            emit(payload)
            return get()

        return Echo(roundtrip, partial(self.shutdown, emitter))


class Pyee(_Emitter):
    name = "pyee"
    summary = "pyee.EventEmitter: emit runs every handler inline, in the emitting thread"
    make = staticmethod(pyee.EventEmitter)

    def echo(self) -> Echo:
        raise Unsupported("pyee runs handlers inline: there is no second party")


class PyeeExecutor(_Emitter):
    name = "pyee-executor"
    summary = (
        "pyee.ExecutorEventEmitter: emit submits each handler call to a ThreadPoolExecutor "
        "(default size, min(32, cpus + 4) threads)"
    )
    make = staticmethod(ExecutorEventEmitter)

    def shutdown(self, emitter: Any) -> None:
        emitter.shutdown(wait=True)


class GreenbusCompat(_Emitter):
    name = "greenbus-compat"
    summary = (
        "greenbus.compat.EventEmitter (the pyee drop-in), emitting from the main thread; "
        "unpatched, so its listeners run in greenlets of greenbus's shared hub thread"
    )
    sleep = staticmethod(gevent.sleep)
    make = staticmethod(greenbus.compat.EventEmitter)
    shutdown = PyeeExecutor.shutdown


class Blinker(System):
    name = "blinker"
    summary = "blinker.Signal.send: receivers run inline, in the sending thread"

    def fanout(self, k: int, slow: float = 0.0) -> Fanout:
        signal, received = blinker.Signal(), _lists(k)
        for r in received:
            # send(payload) calls receiver(payload): the payload is the sender.
            signal.connect(_handler(r.append, slow, time.sleep), weak=False)
        # Receivers ran inline, so a wait finds everything already there.
        return Fanout(signal.send, received, _polling(received, _noop), _noop)


# -- a queue and a consumer per subscriber: threads+queue, gevent.queue -------------


class _Mark:
    """Queued behind the payloads: the consumer sets ``event``; with None, it stops."""

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
    while (item := get()) is not _STOP:
        put(item)


def _expect_queued(queued: int, n: int) -> None:
    if queued != n:
        raise MeasurementError(f"{n} messages put, {queued} queued")


class _Queues(System):
    """One queue per consumer, and a consumer (thread or greenlet) per queue.

    ``wait`` puts a mark behind the payloads in every queue and waits until
    each consumer reaches it: it returns when the last payload was handled,
    without polling.
    """

    sleep: ClassVar[staticmethod[[float], object]]
    pause: ClassVar[staticmethod[[], object]]
    new_queue: ClassVar[staticmethod[[], Any]]
    new_event: ClassVar[staticmethod[[], Any]]

    def start(self, target: Callable[..., None], *args: Any) -> Any:
        """Run ``target(*args)`` concurrently; return what :meth:`join_all` takes."""
        raise NotImplementedError

    def join_all(self, workers: list[Any]) -> None:
        raise NotImplementedError

    def _consumers(
        self, received: list[list[Any]], slow: float
    ) -> tuple[list[Any], Callable[[], None]]:
        """A queue and a consumer per list; the queues, and what stops the consumers."""
        queues = [self.new_queue() for _ in received]
        workers = [
            self.start(_consume, q.get, r.append, slow, self.sleep)
            for q, r in zip(queues, received, strict=True)
        ]
        return queues, partial(self._stop, queues, workers)

    def _stop(self, queues: list[Any], workers: list[Any]) -> None:
        for q in queues:
            q.put(_STOP)
        self.join_all(workers)

    def fanout(self, k: int, slow: float = 0.0) -> Fanout:
        received = _lists(k)
        queues, close = self._consumers(received, slow)
        puts = [q.put for q in queues]

        def emit(payload: Any) -> None:
            for put in puts:
                put(payload)

        def wait(expected: int) -> None:
            marks = [_Mark(self.new_event()) for _ in queues]
            for q, mark in zip(queues, marks, strict=True):
                q.put(mark)
            if not all(mark.event.wait(WAIT_TIMEOUT) for mark in marks):
                raise MeasurementError("timed out waiting for a consumer to drain")

        return Fanout(puts[0] if k == 1 else emit, received, wait, close, self.pause)

    def echo(self) -> Echo:
        requests, replies = self.new_queue(), self.new_queue()
        server = self.start(_serve_echo, requests.get, replies.put)
        put, get = requests.put, replies.get

        def roundtrip(payload: Any) -> Any:
            put(payload)
            return get()

        return Echo(roundtrip, partial(self._stop, [requests], [server]))

    def idle_consumers(self, n: int) -> Callable[[], object]:
        return self._consumers(_lists(n), 0.0)[1]

    def queued_messages(self, n: int) -> Callable[[], object]:
        q = self.new_queue()
        put = q.put
        for _ in range(n):
            put(None)
        _expect_queued(q.qsize(), n)
        return partial(_noop, q)


class ThreadsQueue(_Queues):
    name = "threads+queue"
    summary = "OS threads, one queue.Queue per consumer thread, which blocks in get()"
    thread_per_consumer = True
    sleep = staticmethod(time.sleep)
    pause = staticmethod(_noop)
    new_queue: ClassVar[staticmethod[[], queue.Queue[Any]]] = staticmethod(queue.Queue)
    new_event = staticmethod(threading.Event)

    def start(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        return thread

    def join_all(self, workers: list[threading.Thread]) -> None:
        for thread in workers:
            thread.join(WAIT_TIMEOUT)


class GeventQueue(_Queues):
    name = "gevent.queue"
    summary = "greenlets, one gevent.queue.Queue per consumer greenlet"
    sleep = staticmethod(gevent.sleep)
    pause = staticmethod(partial(gevent.sleep, 0))
    new_queue = staticmethod(gevent.queue.Queue)
    new_event = staticmethod(gevent.event.Event)

    def start(self, target: Callable[..., None], *args: Any) -> gevent.Greenlet:
        return gevent.spawn(target, *args)

    def join_all(self, workers: list[gevent.Greenlet]) -> None:
        gevent.joinall(workers, timeout=WAIT_TIMEOUT)


# -- greenbus ---------------------------------------------------------------------


def _bus_handler(append: Callable[[Any], object], slow: float) -> Callable[[Any], None]:
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
        bus, received, pause = greenbus.Bus(self.name), _lists(k), partial(gevent.sleep, 0)
        for pattern, r in zip(self.patterns(k), received, strict=True):
            bus.subscribe(pattern, _bus_handler(r.append, slow))
        wait = _polling(received, pause)
        return Fanout(partial(bus.emit, TOPIC), received, wait, bus.close, pause)

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
            bus.subscribe(f"idle.{i}", _noop)
        gevent.sleep(0)  # let every handler greenlet start and park in its channel
        return bus.close

    def queued_messages(self, n: int) -> Callable[[], object]:
        bus = greenbus.Bus(self.name)
        sub = bus.subscribe("queued", maxsize=None)
        emit = partial(bus.emit, "queued")
        for _ in range(n):
            emit(None)
        _expect_queued(sub.pending, n)
        return partial(_noop, sub, bus)


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
        return Echo(lambda payload: request(payload).data, bus.close)


# -- the classic two-thread scenario ------------------------------------------------


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
    """

    name = "classic"
    summary = (
        "two OS threads sharing a pyee.EventEmitter, thread2 polling its queue every 10 ms "
        "(as in examples/threads_pyee.py)"
    )
    #: The poll interval of both threads, in seconds.
    POLL = 0.01

    def run(self, n: int) -> ClassicRun:
        """Send ``n`` messages 10 ms apart; raises MeasurementError if a reply is missing."""
        ee, result = pyee.EventEmitter(), ClassicRun()
        inbox: queue.Queue[int] = queue.Queue()
        sent: dict[int, float] = {}
        replied: dict[int, float] = {}
        all_replied, stop = threading.Event(), threading.Event()

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
        *(Classic(), Pyee(), Blinker(), PyeeExecutor(), ThreadsQueue(), GeventQueue()),
        *(Greenbus(), GreenbusWildcard(), GreenbusRequest(), GreenbusCompat()),
    )
}
