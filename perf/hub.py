"""The systems across processes (the greenbus hub, Redis pub/sub, the federation
through Redis, raw TCP), and their helper processes.

Every sample starts its own processes (:class:`~perf.procs.Processes`) and
stops them all before it returns, whatever happened.  The parties other
than the benchmark's own client run as ``python -m perf.hub COMMAND
OPTIONS`` (see :func:`~perf.procs.run_worker`):

===============================  ============  ===============  =============  ============
role                             greenbus hub  Redis            federation     raw TCP
===============================  ============  ===============  =============  ============
server                           ``hub``       redis-server     redis-server   ``tcp-echo``
echo peer: "ping" -> "pong"      ``hub-echo``  ``redis-echo``                  (the server)
subscriber: counts M arrivals    ``hub-sub``   ``redis-sub``    ``fed-sub``
publisher: sends M, pre-made     ``hub-pub``   ``redis-pub``
publisher: M stamped, GAP apart                ``redis-probe``  ``fed-probe``
publisher: M via its client      ``hub-send``  ``redis-send``   ``fed-send``
===============================  ============  ===============  =============  ============

A federation's parties are nodes: a ``greenbus.Bus`` federated through
redis-server.  Every flood carries ``0 .. M-1``, checked on arrival by a
:class:`~perf.procs.Tally`.  A *stamped* payload also carries
``time.monotonic_ns()`` read just before the publishing call (``[i, ns]``
on a bus, ``b"i ns"`` in raw Redis); a ``stamped`` subscriber reads the
same clock first thing on arrival.  A hub with ``redis_port`` keeps its history
in that redis-server (``greenbus serve --redis``).  Set ``PERF_HUB_PROFILE=DIR`` to run
every hub process and federated node under cProfile, writing
``DIR/<command>-<time_ns>.prof`` when it stops (on SIGTERM, cleanly).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import redis
from redis.client import PubSub
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect

import greenbus
from greenbus import Bus, Federation, ReceiveTimeout, RemoteBus
from greenbus.federation import redis_glob
from greenbus.history import DEFAULT_HISTORY_TTL, History
from greenbus.protocol import Pub, encode

from .connections import kib_per_connection
from .procs import HOST, Child, MeasurementError, Processes, Tally, check_stream, run_worker, say
from .systems import Echo, System

__all__ = ["NETWORK", "federation", "hub_redis", "redis_pubsub", "unstamp"]

#: Seconds a helper process has to say it is ready; a flood's results may take.
READY_TIMEOUT, RESULT_TIMEOUT = 20.0, 120.0
#: How long a round trip may take; a helper's subscriber waits for the next message.
REPLY_TIMEOUT = IDLE_TIMEOUT = 10.0
#: A hub peer's outbound queue limit: a subscriber slower than the publisher is
#: never cut off as slow (redis-server runs with no pubsub output limit either).
HUB_MAX_PENDING = 10_000_000
#: The environment variable naming a directory for profiles, and the commands profiled.
PROFILE_ENV, PROFILED = "PERF_HUB_PROFILE", ("hub", "fed-sub", "fed-probe", "fed-send")
INGEST_TOPIC, FANOUT_TOPIC, RELAY_TOPIC, ONE_WAY_TOPIC = "ingest", "fanout", "relay", "oneway"
#: The replay's topics are ``replay.<i>``; its hub keeps every message this long (seconds).
REPLAY_TOPIC, REPLAY_TTL = "replay", 3600.0
#: The topic the echo peers listen on, and the one they answer on.
PING, PONG = "ping", "pong"
#: PUBLISH commands per redis-py pipeline in Redis's relay: the federation's
#: default batch (``Federation(batch=1000)``), so both send alike.
REDIS_BATCH = 1000
#: The raw TCP echo's 8 bytes; bytes written per ``sendall`` by the pre-made floods.
PACK, CHUNK = struct.Struct("!q"), 1 << 16
#: A federated node emits here to open its publishing connection before the clock starts.
WARM_TOPIC = "perf.warm"
#: How often a federated node polls its statistics while the federation publishes.
DRAIN_POLL = 0.001

clock, clock_ns = time.monotonic, time.monotonic_ns
Server = Callable[[Processes], dict[str, Any]]
Requester = Callable[[Processes, dict[str, Any]], Callable[[int], Any]]


class Idle(Exception):
    """Nothing arrived within the idle timeout."""


def rate(messages: int, start: float, end: float) -> float:
    """Messages delivered per second between two CLOCK_MONOTONIC times."""
    if end <= start:
        raise MeasurementError(f"the flood ended ({end}) before it started ({start})")
    return messages / (end - start)


def unstamp(payload: object, now_ns: int, latencies: list[float]) -> int:
    """The index of a stamped payload; its one-way latency (µs) goes to ``latencies``."""
    if isinstance(payload, bytes):
        index, sent = (int(part) for part in payload.split())
    else:
        index, sent = payload  # type: ignore[misc]
    latencies.append((now_ns - sent) / 1000)
    return index


def await_routing(client: RemoteBus) -> None:
    """Return once the hub has applied every frame ``client`` sent so far.

    The hub applies one connection's frames in order, so a message that
    comes back on a fresh topic proves the earlier ``sub`` frames are in
    place (``RemoteBus.subscribe`` does not wait for its ack).
    """
    topic = f"perf.ready.{uuid.uuid4().hex}"
    with client.subscribe(topic, maxsize=None) as sub:
        client.emit(topic)
        sub.get(timeout=IDLE_TIMEOUT)


def next_message(pubsub: PubSub, timeout: float, kind: str = "message") -> Any:
    """The data of the next ``kind`` message from Redis; raises Idle after ``timeout``."""
    deadline = clock() + timeout
    while (left := deadline - clock()) > 0:
        msg = pubsub.get_message(timeout=left)
        if msg is not None and msg["type"] == kind:
            return msg["data"]
    raise Idle(f"no {kind} within {timeout} s")


def subscribe_confirmed(pubsub: PubSub, channel: str) -> None:
    """SUBSCRIBE and wait for Redis's confirmation, after which publishes reach us."""
    pubsub.subscribe(channel)
    next_message(pubsub, IDLE_TIMEOUT, "subscribe")


# -- the benchmark's end: the shapes ------------------------------------------------------


def _start(processes: Processes, command: str, *, name: str = "", **options: Any) -> Child:
    """Start ``python -m perf.hub COMMAND OPTIONS`` (maybe under cProfile)."""
    args = ["-m", "perf.hub", command, json.dumps(options)]
    if command in PROFILED and (directory := os.environ.get(PROFILE_ENV)):
        Path(directory).mkdir(parents=True, exist_ok=True)
        profile = Path(directory) / f"{command}-{time.time_ns()}.prof"
        return processes.python(name or command, "cProfile", "-o", profile, *args)
    return processes.python(name or command, *args[1:])


def _subscribers(processes: Processes, worker: str, k: int, **options: Any) -> list[Child]:
    """Start ``k`` ``{worker}-sub`` processes; return once each is subscribed."""
    command = f"{worker}-sub"
    subs = [
        _start(processes, command, name=f"{command} {i + 1}/{k}" if k > 1 else "", **options)
        for i in range(k)
    ]
    for sub in subs:
        sub.expect("ready", READY_TIMEOUT)
    return subs


def _last(child: Child, messages: int) -> float:
    """The last arrival time of a subscriber's flood, checked to be ``0 .. messages-1``."""
    return check_stream(child.expect("result", RESULT_TIMEOUT), messages, child.name)


def _run(processes: Processes, command: str, **options: Any) -> Any:
    """Run a publisher to its end: its result."""
    return _start(processes, command, **options).expect("result", RESULT_TIMEOUT)


def _echo(start: Callable[[Processes], Callable[[int], Any]]) -> Callable[[], Echo]:
    """``echo()``: ``start`` starts the parties and returns the benchmark's ``roundtrip``."""

    def echo() -> Echo:
        processes = Processes()
        try:
            return Echo(start(processes), processes.close)
        except BaseException:
            processes.close()
            raise

    return echo


def _broker_echo(server: Server, worker: str, requester: Requester) -> Callable[[], Echo]:
    """A server, a ``{worker}-echo`` process, and the benchmark's requester."""

    def start(processes: Processes) -> Callable[[int], Any]:
        at = server(processes)
        _start(processes, f"{worker}-echo", **at).expect("ready", READY_TIMEOUT)
        return requester(processes, at)

    return _echo(start)


def _broadcast(server: Server, worker: str, messages: int, k: int) -> float:
    with Processes() as processes:
        options = {**server(processes), "topic": FANOUT_TOPIC, "messages": messages}
        subs = _subscribers(processes, worker, k, **options)
        start = _run(processes, f"{worker}-pub", **options)["start"]
        return rate(k * messages, start, max(_last(sub, messages) for sub in subs))


def _one_way(server: Server, worker: str, messages: int, gap: float) -> list[float]:
    """The subscriber starts first and says when the server has its subscription; then
    ``{worker}-probe`` runs to its end; then the subscriber reports each latency."""
    with Processes() as processes:
        options = {**server(processes), "topic": ONE_WAY_TOPIC, "messages": messages}
        [sub] = _subscribers(processes, worker, 1, **options, stamped=True)
        _run(processes, f"{worker}-probe", **options, gap=gap)
        result = sub.expect("result", RESULT_TIMEOUT)
        check_stream(result, messages, sub.name)
        latencies: list[float] = result["latencies_us"]
        if len(latencies) != messages:
            raise MeasurementError(f"{sub.name} timed {len(latencies)} of {messages} messages")
        return latencies


def _relay(server: Server, worker: str, send: str, messages: int, every: int) -> float:
    """As :func:`_one_way`, with ``{worker}-send`` flooding; its option ``send`` is ``every``
    (pipelined batches for Redis, pauses for a node)."""
    with Processes() as processes:
        options = {**server(processes), "topic": RELAY_TOPIC, "messages": messages}
        [sub] = _subscribers(processes, worker, 1, **options)
        start = _run(processes, f"{worker}-send", **options, **{send: every})["start"]
        return rate(messages, start, _last(sub, messages))


def _tcp_echo(processes: Processes) -> Callable[[int], Any]:
    port = _start(processes, "tcp-echo", name="tcp-echo server").expect("ready", READY_TIMEOUT)
    sock = socket.create_connection((HOST, port))
    processes.callback(sock.close)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(REPLY_TIMEOUT)

    def roundtrip(payload: int) -> int:
        sock.sendall(PACK.pack(payload))
        reply = b""
        while len(reply) < PACK.size:
            if not (chunk := sock.recv(PACK.size - len(reply))):
                raise MeasurementError("the echo server closed the connection")
            reply += chunk
        value: int = PACK.unpack(reply)[0]
        return value

    return roundtrip


def _hub(processes: Processes, **options: Any) -> tuple[Child, dict[str, Any]]:
    hub = _start(processes, "hub", **{"max_pending": HUB_MAX_PENDING, **options})
    return hub, {"url": hub.expect("ready", READY_TIMEOUT)}


def _hub_requester(processes: Processes, at: dict[str, Any]) -> Callable[[int], Any]:
    """The benchmark's ``roundtrip``: emit on "ping", wait for it on "pong"."""
    client = greenbus.connect(at["url"], name="perf-requester")
    processes.callback(partial(client.close, timeout=5))
    if not client.connected:
        raise MeasurementError(f"cannot connect to the hub at {at['url']}")
    get = client.subscribe(PONG, maxsize=None).get
    await_routing(client)
    emit = partial(client.emit, PING)

    def roundtrip(payload: int) -> Any:
        emit(payload)
        return get(timeout=REPLY_TIMEOUT).data

    return roundtrip


def _hub_ingest(messages: int, **options: Any) -> float:
    """The flood ends at the last arrival in the hub's own local subscription."""
    with Processes() as processes:
        hub, at = _hub(processes, count_topic=INGEST_TOPIC, count=messages, **options)
        start = _run(processes, "hub-pub", **at, topic=INGEST_TOPIC, messages=messages)["start"]
        return rate(messages, start, _last(hub, messages))


def _hub_replay(executable: str | None, messages: int, topics: int) -> float:
    """ms from a ``sub`` with ``since`` to the last of ``messages`` missed messages replayed.

    The hub keeps them all (``history=messages``, an hour), with the default
    peer limits; with ``executable``, in a fresh redis-server (``--redis``).
    """
    options: dict[str, Any] = {"max_pending": None, "history": messages, "history_ttl": REPLAY_TTL}
    pattern = f"{REPLAY_TOPIC}.>"
    with Processes() as processes:
        if executable is not None:
            port = processes.redis(executable, "greenbus-hub-redis", READY_TIMEOUT)
            options["redis_port"] = port
        url = _hub(processes, **options)[1]["url"]
        with _connected(url, "perf-gone") as gone:
            kept = gone.subscribe(pattern)
            await_routing(gone)  # the hub acked the sub first
            if (since := gone.position(kept)) is None:
                raise MeasurementError(f"the ack of {pattern!r} brought no position")
        _run(processes, "hub-send", url=url, topic=REPLAY_TOPIC, messages=messages, topics=topics)
        client = processes.enter_context(_connected(url, "perf-replay"))
        got: list[greenbus.Message] = []
        start = clock()
        sub = client.subscribe(pattern, maxsize=None, since=since)
        try:
            for _ in range(messages):
                got.append(sub.get(timeout=IDLE_TIMEOUT))
        except ReceiveTimeout:
            pass
        elapsed = clock() - start
        if sub.pending:
            raise MeasurementError(f"{sub.pending} messages more than the {messages} published")
        tally = Tally()
        for msg in got:
            tally.add(msg.data, 0.0)
            if msg.topic != f"{REPLAY_TOPIC}.{msg.data % topics}":
                raise MeasurementError(f"payload {msg.data} replayed on {msg.topic!r}")
        check_stream(tally.result(), messages, "the replay")
        if (stats := client.statistics()).recovered != 1 or stats.recoveries_failed:
            raise MeasurementError(f"the replay's ack: {stats}")
        return elapsed * 1000


def _redis_requester(processes: Processes, at: dict[str, Any]) -> Callable[[int], Any]:
    """The benchmark's ``roundtrip``: PUBLISH on "ping", wait for it on "pong"."""
    client = redis.Redis(host=HOST, port=at["port"])
    processes.callback(client.close)
    pubsub = client.pubsub()
    processes.callback(pubsub.close)
    subscribe_confirmed(pubsub, PONG)
    publish = partial(client.publish, PING)

    def roundtrip(payload: int) -> Any:
        if publish(payload) != 1:
            raise MeasurementError(f"no echo process subscribed to {PING!r}")
        return int(next_message(pubsub, REPLY_TIMEOUT))

    return roundtrip


def _redis_ingest(server: Server, messages: int) -> float:
    """Ends at the last PUBLISH reply; a subscriber process only verifies, untimed."""
    with Processes() as processes:
        options = {**server(processes), "topic": INGEST_TOPIC, "messages": messages}
        [check] = _subscribers(processes, "redis", 1, **options)
        sent = _run(processes, "redis-pub", **options)
        _last(check, messages)
        return rate(messages, sent["start"], sent["end"])


def _redis_server(executable: str, system: str, processes: Processes) -> dict[str, Any]:
    return {"port": processes.redis(executable, system, READY_TIMEOUT)}


def redis_pubsub(executable: str = "redis-server") -> System:
    """Redis pub/sub: a fresh ``executable`` per sample (if it is not installed, every
    sample is an error that says so), redis-py clients."""
    server = partial(_redis_server, executable, "redis-pubsub")
    return System(
        "redis-pubsub",
        echo=_broker_echo(server, "redis", _redis_requester),
        ingest=partial(_redis_ingest, server),
        broadcast=partial(_broadcast, server, "redis"),
        one_way=partial(_one_way, server, "redis"),
        # One blocking process: nothing to yield to; it sends as the federation does.
        relay=lambda messages, every: _relay(server, "redis", "batch", messages, REDIS_BATCH),
    )


def hub_redis(executable: str = "redis-server") -> System:
    """The hub, its history in a fresh ``executable`` per sample (``greenbus serve --redis``)."""
    return System("greenbus-hub-redis", replay=partial(_hub_replay, executable))


def federation(executable: str = "redis-server") -> System:
    """Two greenbus nodes federated through a fresh ``executable`` per sample."""
    server = partial(_redis_server, executable, "greenbus-federation")
    return System(
        "greenbus-federation",
        one_way=partial(_one_way, server, "fed"),
        relay=partial(_relay, server, "fed", "yield_every"),
    )


#: The systems across processes, in the order tables and charts list them.
NETWORK: dict[str, System] = {
    s.name: s
    for s in (
        System("tcp-echo", echo=_echo(_tcp_echo)),
        redis_pubsub(),
        System(
            "greenbus-hub-nohistory",
            echo=_broker_echo(lambda p: _hub(p, history=0)[1], "hub", _hub_requester),
            ingest=partial(_hub_ingest, history=0),
        ),
        System(
            "greenbus-hub",
            echo=_broker_echo(lambda processes: _hub(processes)[1], "hub", _hub_requester),
            ingest=_hub_ingest,
            broadcast=partial(_broadcast, lambda processes: _hub(processes)[1], "hub"),
            replay=partial(_hub_replay, None),
            history=partial(History, ttl=DEFAULT_HISTORY_TTL),
            connections=kib_per_connection,
        ),
        hub_redis(),
        federation(),
    )
}


# -- the helper processes ------------------------------------------------------------------


def count_arrivals(receive: Callable[[float], int], expected: int) -> dict[str, Any]:
    """Call ``receive(IDLE_TIMEOUT)`` until ``expected`` payloads came, or it raises Idle."""
    tally = Tally()
    add = tally.add
    try:
        for _ in range(expected):
            payload = receive(IDLE_TIMEOUT)
            add(payload, clock())
    except Idle:
        pass
    return tally.result()


def _payloads(get: Callable[..., Any]) -> Callable[[float], int]:
    """``receive(timeout)`` for :func:`count_arrivals`: the data of ``get``'s next message."""

    def receive(timeout: float) -> int:
        try:
            data: int = get(timeout=timeout).data
            return data
        except ReceiveTimeout:
            raise Idle from None

    return receive


@contextmanager
def _until_terminated() -> Iterator[Callable[[], None]]:
    """Yield ``wait()``, which blocks until SIGTERM; SIGTERM ends the body cleanly.

    SIGTERM raises SystemExit in the main greenlet wherever it waits, so the
    ``finally`` clauses run and the process exits with 0.
    """
    handler = gevent.signal_handler(signal.SIGTERM, gevent.kill, gevent.getcurrent(), SystemExit)
    try:
        yield gevent.event.Event().wait
    except SystemExit:
        pass
    finally:
        handler.cancel()


@contextmanager
def _connected(url: str, name: str) -> Iterator[RemoteBus]:
    """A ``greenbus.connect`` client of the hub at ``url``, closed at the end."""
    client = greenbus.connect(url, name=name)
    try:
        if not client.connected:
            raise MeasurementError(f"cannot connect to {url}")
        yield client
    finally:
        client.close(timeout=1)


def hub(
    max_pending: int | None,
    count_topic: str | None = None,
    count: int = 0,
    redis_port: int | None = None,
    **history: Any,
) -> None:
    """A hub (``greenbus.serve``, ``history``: its history options); with ``count_topic``, a
    local subscriber counts ``count``; with ``redis_port``, its history is in that Redis."""
    bus = greenbus.Bus("perf-hub")
    limits = {} if max_pending is None else {"max_pending": max_pending}
    remote = None
    if redis_port is not None:
        remote = greenbus.federate(bus, f"redis://{HOST}:{redis_port}/0", **history)
        if not remote.wait_connected(IDLE_TIMEOUT):
            raise MeasurementError(f"not connected to Redis at port {redis_port}")
    server = greenbus.serve(bus, HOST, 0, remote=remote, **limits, **history)
    with _until_terminated() as wait:
        server.start()
        try:
            # Subscribed before the address is announced: nothing can be missed.
            sub = bus.subscribe(count_topic, maxsize=None) if count_topic else None
            say(ready=server.url)
            if sub is not None:
                say(result=count_arrivals(_payloads(sub.get), count))
            wait()
        finally:
            server.stop()
            if remote is not None:
                remote.stop(timeout=1)
            bus.close(timeout=5)


def hub_echo(url: str) -> None:
    """Subscribe to "ping" and emit every payload back on "pong"."""
    with _connected(url, "perf-echo") as client, _until_terminated() as wait:
        emit = client.emit
        client.subscribe(PING, lambda msg: emit(PONG, msg.data))
        await_routing(client)
        say(ready=True)
        wait()


def hub_sub(url: str, topic: str, messages: int) -> None:
    """Subscribe to ``topic`` with ``greenbus.connect``; count ``messages`` arrivals."""
    with _connected(url, "perf-sub") as client:
        receive = _payloads(client.subscribe(topic).get)
        await_routing(client)
        say(ready=True)
        say(result=count_arrivals(receive, messages))


def hub_send(url: str, topic: str, messages: int, topics: int) -> None:
    """Emit ``0 .. messages-1`` on ``topic.<i % topics>`` with ``greenbus.connect``; return
    once the hub has acknowledged them all (so they are in its history)."""
    with _connected(url, "perf-send") as client:
        emit = client.emit
        for i in range(messages):
            emit(f"{topic}.{i % topics}", i)
            if i % 100 == 99:
                gevent.sleep(0)
        deadline = clock() + RESULT_TIMEOUT
        while left := client.statistics().unconfirmed:
            if clock() > deadline:
                raise MeasurementError(f"{left} of {messages} pubs never acknowledged")
            gevent.sleep(DRAIN_POLL)
        say(result=True)


def heard(federation: Federation, pattern: str) -> None:
    """Wait until ``federation``'s view of the other nodes' interest is live and
    settled and has some node's ``pattern``: from then on it publishes what matches
    (a node publishes a topic only while another node wants it).

    Raises:
        Idle: not within ``IDLE_TIMEOUT``.
    """
    deadline = clock() + IDLE_TIMEOUT
    while not (
        federation.interest_settled()
        and any(pattern in patterns for patterns in federation.remote_interest().values())
    ):
        if clock() > deadline:
            raise Idle(f"{federation.node} did not hear of {pattern!r} in {IDLE_TIMEOUT} s")
        gevent.sleep(DRAIN_POLL)


def registered(federation: Federation, pattern: str) -> None:
    """Wait until Redis confirmed ``federation``'s subscription covering ``pattern``
    and holds its interest in it: every node publishing after that sends it
    matching messages.

    Raises:
        MeasurementError: not within ``IDLE_TIMEOUT``.
    """
    for wait in (federation.wait_subscribed, federation.wait_registered):
        if not wait(pattern, IDLE_TIMEOUT):
            raise MeasurementError(f"{wait.__name__}({pattern!r}) timed out")


def drained(federation: Federation, done: gevent.event.Event, arrived: Callable[[], int]) -> None:
    """Wait until ``done`` is set, or ``arrived()`` stops growing for ``IDLE_TIMEOUT``;
    then check that the receiving ``federation`` saw no repeat, gap or bad envelope.

    Raises:
        MeasurementError: it did.
    """
    seen = -1
    while not done.wait(IDLE_TIMEOUT) and arrived() != seen:
        seen = arrived()
    stats = federation.stats()
    if stats.duplicates or stats.gaps or stats.bad_envelopes:
        raise MeasurementError(
            f"the receiving node saw {stats.duplicates} duplicates, {stats.gaps} missing "
            f"and {stats.bad_envelopes} bad envelopes"
        )


@contextmanager
def _node(
    port: int | str, name: str, warm: bool = False, hear: tuple[str, ...] = (), **options: Any
) -> Iterator[tuple[Bus, Federation]]:
    """A bus federated through Redis at ``port`` (or the URL ``port``, a cluster's;
    ``options``: greenbus.federate's) until SIGTERM or the end of the block.

    With ``warm``, its publishing connection is open before the block starts
    (another node must want :data:`WARM_TOPIC`); it has :func:`heard` every
    pattern of ``hear``, and :data:`WARM_TOPIC` if ``warm``.
    """
    url = port if isinstance(port, str) else f"redis://{HOST}:{port}/0"
    bus = greenbus.Bus(name)
    federation = greenbus.federate(bus, url, **options)
    try:
        if not federation.wait_connected(IDLE_TIMEOUT):
            raise MeasurementError(f"not connected to Redis at {url} within {IDLE_TIMEOUT} s")
        for pattern in (*hear, WARM_TOPIC) if warm else hear:
            heard(federation, pattern)
        if warm:
            bus.emit(WARM_TOPIC)
            _published(federation, 1)
        with _until_terminated():
            yield bus, federation
    finally:
        federation.stop(timeout=1)
        bus.close(timeout=1)


def _published(federation: Federation, expected: int) -> None:
    """Wait until the federation has published ``expected`` messages in all; raises
    MeasurementError if it dropped some, or published none for ``IDLE_TIMEOUT``."""
    stats = federation.stats()
    progress, last = clock(), stats.published
    while stats.published < expected and not (stats.dropped or stats.unencodable):
        if stats.published != last:
            progress, last = clock(), stats.published
        elif clock() - progress > IDLE_TIMEOUT:
            break
        gevent.sleep(DRAIN_POLL)
        stats = federation.stats()
    if stats.published != expected or stats.dropped or stats.unencodable:
        raise MeasurementError(
            f"the federation published {stats.published} of {expected} messages "
            f"({stats.outbound_pending} pending, {stats.dropped} dropped, "
            f"{stats.unencodable} unencodable)"
        )


def fed_sub(port: int, topic: str, messages: int, stamped: bool = False) -> None:
    """A federated node: a subscription's handler counts ``messages`` arrivals on ``topic``."""
    with _node(port, "perf-fed-sub") as (bus, federation):
        tally, done = Tally(), gevent.event.Event()
        latencies: list[float] = []
        add = tally.add

        def handler(msg: Any) -> None:
            now = clock_ns()
            add(unstamp(msg.data, now, latencies) if stamped else msg.data, now * 1e-9)
            if tally.count >= messages:
                done.set()

        bus.subscribe(topic, handler)
        bus.subscribe(WARM_TOPIC, lambda msg: None)  # so that the sender can warm up
        # The federation sends SUBSCRIBE without waiting for its confirmation: once Redis
        # counts a subscriber (PUBSUB NUMSUB), whatever is published reaches the node.
        channel = redis_glob(federation.prefix, topic)[0]
        with redis.Redis(host=HOST, port=port) as client:
            deadline = clock() + IDLE_TIMEOUT
            while not client.pubsub_numsub(channel)[0][1]:
                if clock() > deadline:
                    raise Idle(f"Redis counts no subscriber of {channel} after {IDLE_TIMEOUT} s")
                gevent.sleep(DRAIN_POLL)  # the node's reader reads the confirmation meanwhile
        say(ready=True)
        drained(federation, done, lambda: tally.count)
        say(result={**tally.result(), "latencies_us": latencies})


def fed_probe(port: int, topic: str, messages: int, gap: float) -> None:
    """A federated node: emit ``messages`` stamped payloads on ``topic``, ``gap`` s apart."""
    with _node(port, "perf-fed-probe", warm=True, hear=(topic,)) as (bus, federation):
        emit, sleep = bus.emit, gevent.sleep
        for i in range(messages):
            emit(topic, [i, clock_ns()])
            sleep(gap)
        _published(federation, 1 + messages)
        say(result=True)


def fed_send(port: int, topic: str, messages: int, yield_every: int) -> None:
    """A federated node: emit ``0 .. messages-1``, ``gevent.sleep(0)`` every ``yield_every``;
    from its connection open until the federation has published them all."""
    with _node(port, "perf-fed-send", warm=True, hear=(topic,)) as (bus, federation):
        emit, pause = bus.emit, gevent.sleep
        start = clock()
        for first in range(0, messages, yield_every):
            for i in range(first, min(first + yield_every, messages)):
                emit(topic, i)
            pause(0)
        _published(federation, 1 + messages)
        say(result={"start": start, "end": clock()})


# The blocking processes (no gevent loop).


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        sock.sendall(view[start : start + CHUNK])


def hub_pub(url: str, topic: str, messages: int) -> None:
    """Send pre-encoded, pre-framed ``pub`` frames (no ids: no acks) in one go.

    ``websockets``' own client makes the connection; the flood is written
    straight to its socket (nothing else writes meanwhile), then the
    client's closing handshake ends once the hub has read every frame.
    """
    flood = b"".join(
        Frame(Opcode.TEXT, encode(Pub(topic, i)).encode()).serialize(mask=True)
        for i in range(messages)
    )
    with connect(url, compression=None, proxy=None, ping_interval=None) as ws:
        ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = clock()
        _send_all(ws.socket, flood)
    say(result={"start": start, "end": clock()})


def redis_pub(port: int, topic: str, messages: int) -> None:
    """Pipeline pre-packed PUBLISH commands; end when the last reply is in.

    A thread reads the replies while the main thread writes.  Every reply
    must be the same positive count of subscribers reached: a subscriber
    cut off mid-flood would show.
    """
    pack = redis.Connection().pack_command
    flood = b"".join(b"".join(pack("PUBLISH", topic, i)) for i in range(messages))
    replies, done = bytearray(), []
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(IDLE_TIMEOUT)

    def read_replies() -> None:
        lines = 0  # every reply is one line, ":<count>\r\n"
        try:
            while lines < messages and (data := sock.recv(CHUNK)):
                replies.extend(data)
                lines += data.count(b"\n")
        except TimeoutError:
            return
        done.append(clock())

    reader = threading.Thread(target=read_replies)
    reader.start()
    try:
        start = clock()
        _send_all(sock, flood)
        reader.join()
    finally:
        sock.close()
    first = bytes(replies[: replies.find(b"\n") + 1])
    if not done or first in (b"", b":0\r\n") or replies != first * messages:
        raise MeasurementError(
            f"expected {messages} equal replies of one positive count, got "
            f"{len(replies)} bytes starting {bytes(replies[:40])!r}"
        )
    say(result={"start": start, "end": done[0]})


def redis_probe(port: int, topic: str, messages: int, gap: float) -> None:
    """PUBLISH ``messages`` stamped payloads on ``topic`` with redis-py, ``gap`` s apart."""
    with redis.Redis(host=HOST, port=port) as client:
        client.ping()  # connected before the first stamp
        publish, sleep = client.publish, time.sleep
        for i in range(messages):
            if publish(topic, f"{i} {clock_ns()}") != 1:
                raise MeasurementError(f"PUBLISH {i} on {topic} reached no subscriber")
            sleep(gap)
        say(result=True)


def redis_send(port: int, topic: str, messages: int, batch: int) -> None:
    """PUBLISH ``0 .. messages-1`` through redis-py pipelines of ``batch`` commands, from
    the connection open to the last pipeline's replies (each must be 1)."""
    with redis.Redis(host=HOST, port=port) as client:
        client.ping()
        start = clock()
        for first in range(0, messages, batch):
            pipe = client.pipeline(transaction=False)
            publish = pipe.publish
            for i in range(first, min(first + batch, messages)):
                publish(topic, i)
            if (replies := pipe.execute()).count(1) != len(replies):
                raise MeasurementError(f"PUBLISH from {first} on: {replies[:5]}, not all 1")
        say(result={"start": start, "end": clock()})


def redis_echo(port: int) -> None:
    """Subscribe to "ping" and PUBLISH every payload on "pong"."""
    client = redis.Redis(host=HOST, port=port)
    pubsub = client.pubsub()
    subscribe_confirmed(pubsub, PING)
    say(ready=True)
    publish = client.publish
    for msg in pubsub.listen():
        if msg["type"] == "message":
            publish(PONG, msg["data"])


def redis_sub(port: int, topic: str, messages: int, stamped: bool = False) -> None:
    """Subscribe to ``topic`` with redis-py; count ``messages`` arrivals."""
    latencies: list[float] = []
    with redis.Redis(host=HOST, port=port) as client, client.pubsub() as pubsub:

        def receive(timeout: float) -> int:
            data = next_message(pubsub, timeout)
            return unstamp(data, clock_ns(), latencies) if stamped else int(data)

        subscribe_confirmed(pubsub, topic)
        say(ready=True)
        say(result={**count_arrivals(receive, messages), "latencies_us": latencies})


def tcp_echo() -> None:
    """Accept one connection and send back every byte, until EOF."""
    with socket.create_server((HOST, 0)) as server:
        say(ready=server.getsockname()[1])
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(CHUNK):
                conn.sendall(data)


if __name__ == "__main__":
    run_worker(
        {
            f.__name__.replace("_", "-"): f
            for f in (
                *(hub, hub_echo, hub_sub, hub_pub, hub_send, tcp_echo),
                *(redis_echo, redis_sub, redis_pub, redis_probe, redis_send),
                *(fed_sub, fed_probe, fed_send),
            )
        }
    )
