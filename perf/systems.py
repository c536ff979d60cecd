"""The systems under test in one process, each a :class:`System` of shapes.

Every system builds the same shapes from its own primitives, so each metric
is written once and measures every system the same way.  A fan-out's
consumers append every payload to their own list: the cheapest handler that
still lets the suite check that every message arrived, once, in order.
Nothing is monkey-patched: greenlets live in the main thread, the
thread-based systems use real OS threads.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import blinker
import gevent
import gevent.event
import gevent.queue
import pyee
from pyee.executor import ExecutorEventEmitter

import greenbus
import greenbus.compat

from .procs import MeasurementError

__all__ = ["IN_PROCESS", "Echo", "Fanout", "System"]

#: The topic every fan-out publishes on (wildcard subscribers match it too).
TOPIC = "a.b"
#: Seconds any wait for deliveries may take before the sample is an error.
WAIT_TIMEOUT = 60.0
#: How often a thread polls for deliveries made by other OS threads: short,
#: but long enough that the poller does not steal the GIL from the workers.
THREAD_POLL = 1e-4
#: The classic scenario's poll interval, in both threads, in seconds.
CLASSIC_POLL = 0.01


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

    ``emit`` is the system's own publishing call with the topic bound (what
    the emit metrics time); ``wait(n)`` returns once every consumer handled
    ``n`` payloads, or raises MeasurementError after WAIT_TIMEOUT; a producer
    calls ``pause()`` every 100 emits (``gevent.sleep(0)`` for greenlets).
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


@dataclass(frozen=True)
class System:
    """One system under test and the shapes it builds (None: it has no natural way to).

    ``fanout(k, slow)``: ``k`` consumers, each sleeping ``slow`` s per
    message; ``echo()``; ``idle_consumers(n)``, ``queued_messages(n)``: what
    the memory probe weighs, and return a closer; ``classic(n)``: the
    classic scenario's (held, round trip) µs per message.  Across processes
    (hub.py), one sample's figures: ``ingest(M)``, ``broadcast(M, k)`` and
    ``relay(M, yield_every)`` msgs/s, ``one_way(M, gap)`` µs per message,
    ``replay(M, topics)`` ms, ``connections(n)`` KiB per connection.
    ``history(size)``: an empty message history keeping ``size`` messages
    per topic, as the hub's.
    """

    name: str
    fanout: Callable[[int, float], Fanout] | None = None
    echo: Callable[[], Echo] | None = None
    idle_consumers: Callable[[int], Callable[[], object]] | None = None
    queued_messages: Callable[[int], Callable[[], object]] | None = None
    classic: Callable[[int], tuple[list[float], list[float]]] | None = None
    ingest: Callable[[int], float] | None = None
    broadcast: Callable[[int, int], float] | None = None
    one_way: Callable[[int, float], list[float]] | None = None
    relay: Callable[[int, int], float] | None = None
    replay: Callable[[int, int], float] | None = None
    history: Callable[[int], Any] | None = None
    #: KiB of the hub's memory per idle subscribed connection, with ``n`` connections.
    connections: Callable[[int], float] | None = None
    #: Each consumer costs an OS thread (the memory probe builds fewer of them).
    thread_per_consumer: bool = False


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


def _roundtrip(send: Callable[[Any], object], get: Callable[[], Any]) -> Callable[[Any], Any]:
    def roundtrip(payload: Any) -> Any:
        send(payload)
        return get()

    return roundtrip


def _expect_queued(queued: int, n: int) -> None:
    if queued != n:
        raise MeasurementError(f"{n} messages put, {queued} queued")


# -- emitters with pyee's API: pyee, pyee-executor, greenbus-compat; and blinker ----


def _shut_down(emitter: Any) -> None:
    emitter.shutdown(wait=True)


def _emitter(
    name: str,
    make: Callable[[], Any],
    close: Callable[[Any], object] = _shut_down,
    sleep: Callable[[float], object] = time.sleep,
    echo: bool = True,
) -> System:
    """An emitter with ``on(event, f)`` and ``emit(event, *args)``; ``sleep``: a slow
    handler's (where the emitter runs its handlers)."""

    def fanout(k: int, slow: float) -> Fanout:
        emitter, received = make(), _lists(k)
        for r in received:
            emitter.on(TOPIC, _handler(r.append, slow, sleep))
        wait = _polling(received, partial(time.sleep, THREAD_POLL))
        return Fanout(partial(emitter.emit, TOPIC), received, wait, partial(close, emitter))

    def echo_() -> Echo:
        emitter = make()
        replies: queue.Queue[Any] = queue.Queue()
        emitter.on("ping", replies.put)
        return Echo(_roundtrip(partial(emitter.emit, "ping"), replies.get), partial(close, emitter))

    return System(name, fanout, echo_ if echo else None)


def _blinker_fanout(k: int, slow: float) -> Fanout:
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


@dataclass(frozen=True)
class _Queues:
    """One queue per consumer, and a consumer per queue: an OS thread or a greenlet.

    ``wait`` puts a mark behind the payloads in every queue and waits until
    each consumer reaches it: it returns when the last payload was handled,
    without polling.
    """

    start: Callable[..., Any]  # start(target, *args) -> what join_all takes
    join_all: Callable[[list[Any]], object]
    new_queue: Callable[[], Any]
    new_event: Callable[[], Any]
    sleep: Callable[[float], object]
    pause: Callable[[], object]

    def consumers(self, received: list[list[Any]], slow: float) -> tuple[list[Any], partial[None]]:
        """A queue and a consumer per list; the queues, and what stops the consumers."""
        queues = [self.new_queue() for _ in received]
        workers = [
            self.start(_consume, q.get, r.append, slow, self.sleep)
            for q, r in zip(queues, received, strict=True)
        ]
        return queues, partial(self.stop, queues, workers)

    def stop(self, queues: list[Any], workers: list[Any]) -> None:
        for q in queues:
            q.put(_STOP)
        self.join_all(workers)

    def fanout(self, k: int, slow: float) -> Fanout:
        received = _lists(k)
        queues, close = self.consumers(received, slow)
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
        return Echo(_roundtrip(requests.put, replies.get), partial(self.stop, [requests], [server]))

    def idle_consumers(self, n: int) -> Callable[[], object]:
        return self.consumers(_lists(n), 0.0)[1]

    def queued_messages(self, n: int) -> Callable[[], object]:
        q = self.new_queue()
        put = q.put
        for _ in range(n):
            put(None)
        _expect_queued(q.qsize(), n)
        return partial(_noop, q)

    def system(self, name: str, thread_per_consumer: bool = False) -> System:
        shapes = self.fanout, self.echo, self.idle_consumers, self.queued_messages
        return System(name, *shapes, thread_per_consumer=thread_per_consumer)


def _thread(target: Callable[..., None], *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def _join_threads(workers: list[threading.Thread]) -> None:
    for thread in workers:
        thread.join(WAIT_TIMEOUT)


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


def _bus_fanout(name: str, wildcards: bool, k: int, slow: float) -> Fanout:
    """``k`` subscribers of TOPIC, or with ``wildcards`` alternately of ``a.*`` and ``a.>``."""
    bus, received, pause = greenbus.Bus(name), _lists(k), partial(gevent.sleep, 0)
    for i, r in enumerate(received):
        bus.subscribe(("a.*", "a.>")[i % 2] if wildcards else TOPIC, _bus_handler(r.append, slow))
    return Fanout(partial(bus.emit, TOPIC), received, _polling(received, pause), bus.close, pause)


def _bus_echo() -> Echo:
    bus = greenbus.Bus("greenbus")
    emit = bus.emit
    bus.subscribe("ping", lambda msg: emit("pong", msg.data))
    get = bus.subscribe("pong").get

    def roundtrip(payload: Any) -> Any:
        emit("ping", payload)
        return get().data

    return Echo(roundtrip, bus.close)


def _bus_request() -> Echo:
    bus = greenbus.Bus("greenbus-request")
    bus.subscribe("ping", lambda msg: msg.reply(msg.data))
    request = partial(bus.request, "ping")
    return Echo(lambda payload: request(payload).data, bus.close)


def _bus_idle(n: int) -> Callable[[], object]:
    bus = greenbus.Bus("greenbus")
    for i in range(n):
        bus.subscribe(f"idle.{i}", _noop)
    gevent.sleep(0)  # let every handler greenlet start and park in its channel
    return bus.close


def _bus_queued(n: int) -> Callable[[], object]:
    bus = greenbus.Bus("greenbus")
    sub = bus.subscribe("queued", maxsize=None)
    emit = partial(bus.emit, "queued")
    for _ in range(n):
        emit(None)
    _expect_queued(sub.pending, n)
    return partial(_noop, sub, bus)


# -- the classic two-thread scenario ------------------------------------------------


def classic(n: int) -> tuple[list[float], list[float]]:
    """The two-thread pyee scenario of ``greenbus/demo/threads_pyee.py``: ``n`` messages, the µs
    each ``emit`` held the emitter and each round trip took.

    thread1 emits ``data`` every 10 ms and times how long each ``emit``
    holds it; thread2's ``data`` handler parks the item in a
    ``queue.Queue``; thread2's loop polls that queue every 10 ms and emits
    ``reply``, whose handler (run inline in thread2) records the round trip.
    Raises MeasurementError if a reply is missing.
    """
    ee, held = pyee.EventEmitter(), []
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
            held.append((time.perf_counter() - start) * 1e6)
            time.sleep(CLASSIC_POLL)
        all_replied.wait(WAIT_TIMEOUT)

    def thread2() -> None:
        while not stop.is_set():
            while not inbox.empty():
                ee.emit("reply", inbox.get_nowait())
            time.sleep(CLASSIC_POLL)

    threads = [threading.Thread(target=thread2), threading.Thread(target=thread1)]
    for thread in threads:
        thread.start()
    threads[1].join()
    stop.set()
    threads[0].join()
    if len(replied) != n:
        raise MeasurementError(f"{n - len(replied)} of {n} replies missing")
    return held, [replied[i] * 1e6 for i in range(n)]


THREADS = _Queues(_thread, _join_threads, queue.Queue, threading.Event, time.sleep, _noop)
GREENLETS = _Queues(
    gevent.spawn,
    partial(gevent.joinall, timeout=WAIT_TIMEOUT),
    gevent.queue.Queue,
    gevent.event.Event,
    gevent.sleep,
    partial(gevent.sleep, 0),
)
#: Every in-process system, in the order tables and charts list them.
IN_PROCESS: dict[str, System] = {
    s.name: s
    for s in (
        System("classic", classic=classic),
        # pyee runs handlers inline: there is no second party to echo.
        _emitter("pyee", pyee.EventEmitter, pyee.EventEmitter.remove_all_listeners, echo=False),
        System("blinker", fanout=_blinker_fanout),
        _emitter("pyee-executor", ExecutorEventEmitter),
        THREADS.system("threads+queue", thread_per_consumer=True),
        GREENLETS.system("gevent.queue"),
        System(
            "greenbus",
            partial(_bus_fanout, "greenbus", False),
            _bus_echo,
            _bus_idle,
            _bus_queued,
        ),
        System("greenbus-wildcard", fanout=partial(_bus_fanout, "greenbus-wildcard", True)),
        System("greenbus-request", echo=_bus_request),
        _emitter("greenbus-compat", greenbus.compat.EventEmitter, sleep=gevent.sleep),
    )
}
