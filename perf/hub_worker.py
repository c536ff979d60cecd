"""The helper processes of the benchmarks across processes (``perf/hub.py``): one command per role.

Run as ``python -m perf.hub_worker COMMAND ARGS...`` (``--help`` lists
them).  A command talks to the benchmark in JSON lines on stdout: one when
it is ready (with its address, if it is a server), then one with its result,
if it has one.  A command that fails prints ``{"error": "..."}`` and exits 1;
logs go to stderr.

===============================  ============  ===============  =============  ============
role                             greenbus hub  Redis            federation     raw TCP
===============================  ============  ===============  =============  ============
server                           ``hub``       redis-server     redis-server   ``tcp-echo``
echo peer: "ping" -> "pong"      ``hub-echo``  ``redis-echo``                  (the server)
subscriber: counts M arrivals    ``hub-sub``   ``redis-sub``    ``fed-sub``
publisher: sends M, pre-made     ``hub-pub``   ``redis-pub``
publisher: M stamped, GAP apart                ``redis-probe``  ``fed-probe``
publisher: M via its client                    ``redis-send``   ``fed-send``
===============================  ============  ===============  =============  ============

The federation's parties are nodes: processes with a :class:`greenbus.Bus`
federated through redis-server (``greenbus.federate``).  ``fed-sub`` counts
in a subscription's handler; ``fed-probe`` and ``fed-send`` emit on their
bus and let the federation publish.

Every flood carries the payloads ``0 .. M-1``; a :class:`Tally` checks that
each arrives once, in order.  Times are ``time.monotonic()``: on Linux that
is CLOCK_MONOTONIC, one clock for every process of the machine, so times
taken in different processes can be subtracted.  A *stamped* payload also
carries its send time, ``time.monotonic_ns()`` read just before the
publishing call (``[i, ns]`` on a bus, ``b"i ns"`` in raw Redis); with
``--stamped`` a subscriber reads the same clock first thing on arrival and
reports each message's one-way latency.

The gevent commands stop cleanly on SIGTERM (so a hub or a federated node
run under cProfile writes its profile); the others are simply ended by the
benchmark.  Heavy
imports happen inside the commands, so a raw TCP echo starts in a blink.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis
    from redis.client import PubSub

    from greenbus import Bus, Federation, RemoteBus, Subscription

__all__ = [
    "HOST",
    "Idle",
    "Tally",
    "WorkerError",
    "await_routing",
    "next_message",
    "subscribe_confirmed",
    "unstamp",
]

#: Every server binds here and every client connects here: loopback only.
HOST = "127.0.0.1"
#: A subscriber that receives nothing for this long reports what it has.
IDLE_TIMEOUT = 10.0
#: Bytes written per ``sendall`` by the publishers (the whole flood is pre-made).
CHUNK = 1 << 16
#: How many out-of-order arrivals a tally describes (it counts them all).
SHOWN = 5
#: The topic the greenbus echo peer listens on, and the one it answers on.
PING, PONG = "ping", "pong"
#: The topic a federated node emits on to open its publishing connection
#: before the clock starts (nobody subscribes to it).
WARM_TOPIC = "perf.warm"
#: How often a federated node polls its statistics while the federation
#: publishes what was emitted.
DRAIN_POLL = 0.001

clock = time.monotonic
clock_ns = time.monotonic_ns


class Idle(Exception):
    """Nothing arrived within the idle timeout."""


class WorkerError(Exception):
    """The worker cannot do its part (no connection, a refused handshake, lost replies)."""


@dataclass
class Tally:
    """The arrivals of the payloads ``0 .. expected-1``: each must be the next one."""

    expected: int
    count: int = 0
    misplaced: int = 0
    examples: list[str] = field(default_factory=list)
    first: float | None = None
    last: float | None = None

    @property
    def done(self) -> bool:
        return self.count >= self.expected

    def add(self, payload: object, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now
        if payload != self.count:
            self.misplaced += 1
            if len(self.examples) < SHOWN:
                self.examples.append(f"arrival {self.count} was {payload!r}")
        self.count += 1

    def result(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "expected": self.expected,
            "misplaced": self.misplaced,
            "examples": self.examples,
            "first": self.first,
            "last": self.last,
        }


def count_arrivals(receive: Callable[[float], object], expected: int) -> Tally:
    """Call ``receive(IDLE_TIMEOUT)`` until ``expected`` payloads came, or it raises Idle."""
    tally = Tally(expected)
    add = tally.add
    try:
        for _ in range(expected):
            payload = receive(IDLE_TIMEOUT)
            add(payload, clock())
    except Idle:
        pass
    return tally


def unstamp(payload: object, now_ns: int, latencies: list[float]) -> object:
    """The index of a stamped payload; its one-way latency (µs) is appended to ``latencies``.

    A stamped payload is ``[index, sent_ns]`` (a bus's JSON data) or
    ``b"index sent_ns"`` (raw Redis); ``now_ns`` is ``time.monotonic_ns()``
    on arrival.  Raises ValueError or TypeError for anything else.
    """
    if isinstance(payload, bytes):
        index, sent = (int(part) for part in payload.split())
    else:
        index, sent = payload  # type: ignore[misc]
    latencies.append((now_ns - sent) / 1000)
    return index


def say(**fields: Any) -> None:
    """One JSON line to the benchmark."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# -- client helpers, shared with the benchmark process -------------------------------


def await_routing(client: RemoteBus, timeout: float = IDLE_TIMEOUT) -> None:
    """Return once the hub has applied every frame ``client`` sent so far.

    The hub applies one connection's frames in order, so a message that
    comes back on a fresh topic proves the earlier ``sub`` frames are in
    place (``RemoteBus.subscribe`` does not wait for its ack).

    Raises:
        ReceiveTimeout: the hub did not route it within ``timeout``.
    """
    topic = f"perf.ready.{uuid.uuid4().hex}"
    with client.subscribe(topic, maxsize=None) as sub:
        client.emit(topic)
        sub.get(timeout=timeout)


def subscribe_confirmed(pubsub: PubSub, channel: str, timeout: float = IDLE_TIMEOUT) -> None:
    """SUBSCRIBE and wait for Redis's confirmation: after it, publishes reach us.

    Raises:
        Idle: no confirmation within ``timeout``.
    """
    pubsub.subscribe(channel)
    deadline = clock() + timeout
    while (left := deadline - clock()) > 0:
        msg = pubsub.get_message(timeout=left)
        if msg is not None and msg["type"] == "subscribe":
            return
    raise Idle(f"no confirmation of SUBSCRIBE {channel} within {timeout} s")


def next_message(pubsub: PubSub, timeout: float) -> bytes:
    """The data of the next published message.

    Raises:
        Idle: none within ``timeout``.
    """
    deadline = clock() + timeout
    while (left := deadline - clock()) > 0:
        msg = pubsub.get_message(timeout=left)
        if msg is not None and msg["type"] == "message":
            data: bytes = msg["data"]
            return data
    raise Idle(f"no message within {timeout} s")


def _redis(port: int) -> redis.Redis:
    import redis

    return redis.Redis(host=HOST, port=port)


# -- gevent processes -----------------------------------------------------------------


@contextmanager
def _until_terminated() -> Iterator[Callable[[], None]]:
    """Yield ``wait()``, which blocks until SIGTERM; SIGTERM ends the body cleanly.

    SIGTERM raises SystemExit in the main greenlet, wherever it waits, so
    the ``finally`` clauses run and the process exits with 0.
    """
    import gevent
    import gevent.event

    main = gevent.getcurrent()
    handler = gevent.signal_handler(signal.SIGTERM, gevent.kill, main, SystemExit)
    try:
        yield gevent.event.Event().wait
    except SystemExit:
        pass
    finally:
        handler.cancel()


def _connect(url: str, name: str) -> RemoteBus:
    import greenbus

    client = greenbus.connect(url, name=name)
    if not client.connected:
        client.close(timeout=1)
        raise WorkerError(f"cannot connect to {url}")
    return client


def _payloads(sub: Subscription) -> Callable[[float], object]:
    """``receive(timeout)`` for :func:`count_arrivals`: the next message's data."""
    from greenbus import ReceiveTimeout

    get = sub.get

    def receive(timeout: float) -> object:
        try:
            return get(timeout=timeout).data
        except ReceiveTimeout:
            raise Idle from None

    return receive


def hub(args: argparse.Namespace) -> None:
    """A hub (``greenbus.serve``); with ``--count TOPIC M``, a local subscriber counts M."""
    import greenbus

    bus = greenbus.Bus("perf-hub")
    server = greenbus.serve(bus, HOST, 0, max_pending=args.max_pending)
    with _until_terminated() as wait:
        server.start()
        try:
            # Subscribed before the address is announced: nothing can be missed.
            sub = bus.subscribe(args.count[0], maxsize=None) if args.count else None
            say(url=server.url)
            if sub is not None:
                say(**count_arrivals(_payloads(sub), int(args.count[1])).result())
            wait()
        finally:
            server.stop()
            bus.close(timeout=5)


def hub_echo(args: argparse.Namespace) -> None:
    """Subscribe to "ping" and emit every payload back on "pong"."""
    client = _connect(args.url, "perf-echo")
    with _until_terminated() as wait:
        try:
            emit = client.emit
            client.subscribe(PING, lambda msg: emit(PONG, msg.data))
            await_routing(client)
            say(ready=True)
            wait()
        finally:
            client.close(timeout=1)


def hub_sub(args: argparse.Namespace) -> None:
    """Subscribe to TOPIC with ``greenbus.connect``; count M arrivals."""
    client = _connect(args.url, "perf-sub")
    try:
        sub = client.subscribe(args.topic)
        await_routing(client)
        say(ready=True)
        say(**count_arrivals(_payloads(sub), args.messages).result())
    finally:
        client.close(timeout=1)


def _federated(url: str, name: str) -> tuple[Bus, Federation]:
    """A bus federated through Redis at ``url``, its reader subscribed."""
    import greenbus

    bus = greenbus.Bus(name)
    federation = greenbus.federate(bus, url)
    if not federation.wait_connected(IDLE_TIMEOUT):
        federation.stop(timeout=1)
        bus.close(timeout=1)
        raise WorkerError(f"not connected to Redis at {url} within {IDLE_TIMEOUT} s")
    return bus, federation


def _published(federation: Federation, expected: int) -> None:
    """Wait until the federation has published ``expected`` messages in all.

    Raises:
        WorkerError: it dropped some, or published none for ``IDLE_TIMEOUT``.
    """
    import gevent

    stats = federation.stats()
    progress, last = clock(), stats.published
    while stats.published < expected:
        if stats.dropped or stats.unencodable:
            break
        if stats.published != last:
            progress, last = clock(), stats.published
        elif clock() - progress > IDLE_TIMEOUT:
            break
        gevent.sleep(DRAIN_POLL)
        stats = federation.stats()
    if stats.published != expected or stats.dropped or stats.unencodable:
        raise WorkerError(
            f"the federation published {stats.published} of {expected} messages "
            f"({stats.outbound_pending} pending, {stats.dropped} dropped, "
            f"{stats.unencodable} unencodable)"
        )


def _warm_node(url: str, name: str) -> tuple[Bus, Federation]:
    """A federated bus whose publishing connection is open: one message went out."""
    bus, federation = _federated(url, name)
    try:
        bus.emit(WARM_TOPIC)
        _published(federation, 1)
    except BaseException:
        federation.stop(timeout=1)
        bus.close(timeout=1)
        raise
    return bus, federation


def _await_redis_subscriber(url: str, channel: str) -> None:
    """Return once Redis counts a subscriber of ``channel`` (PUBSUB NUMSUB).

    The federation sends SUBSCRIBE without waiting for Redis's
    confirmation; after this, whatever is published on ``channel`` reaches
    the node.

    Raises:
        Idle: no subscriber within ``IDLE_TIMEOUT``.
    """
    import gevent
    import redis

    client = redis.Redis.from_url(url)
    try:
        deadline = clock() + IDLE_TIMEOUT
        while clock() < deadline:
            [(_, count)] = client.pubsub_numsub(channel)
            if count:
                return
            gevent.sleep(DRAIN_POLL)  # the node's reader reads the confirmation meanwhile
    finally:
        client.close()
    raise Idle(f"Redis counts no subscriber of {channel} after {IDLE_TIMEOUT} s")


def fed_sub(args: argparse.Namespace) -> None:
    """A federated node: a subscription's handler counts M arrivals on TOPIC."""
    import gevent.event

    from greenbus.federation import redis_glob

    bus, federation = _federated(args.url, "perf-fed-sub")
    with _until_terminated():
        try:
            tally = Tally(args.messages)
            latencies: list[float] = []
            done = gevent.event.Event()
            add, stamped = tally.add, args.stamped

            def handler(msg: Any) -> None:
                now = clock_ns()
                payload = unstamp(msg.data, now, latencies) if stamped else msg.data
                add(payload, now * 1e-9)
                if tally.done:
                    done.set()

            bus.subscribe(args.topic, handler)
            _await_redis_subscriber(args.url, redis_glob(federation.prefix, args.topic)[0])
            say(ready=True)
            seen = -1
            while not done.wait(IDLE_TIMEOUT) and tally.count != seen:
                seen = tally.count
            stats = federation.stats()
            if stats.duplicates or stats.gaps or stats.bad_envelopes:
                raise WorkerError(
                    f"the federation saw {stats.duplicates} duplicates, {stats.gaps} missing "
                    f"and {stats.bad_envelopes} bad envelopes"
                )
            say(**tally.result(), latencies_us=latencies)
        finally:
            federation.stop(timeout=1)
            bus.close(timeout=1)


def fed_probe(args: argparse.Namespace) -> None:
    """A federated node: emit M stamped payloads on TOPIC, GAP seconds apart."""
    import gevent

    bus, federation = _warm_node(args.url, "perf-fed-probe")
    with _until_terminated():
        try:
            emit, sleep, topic = bus.emit, gevent.sleep, args.topic
            for i in range(args.messages):
                emit(topic, [i, clock_ns()])
                sleep(args.gap)
            _published(federation, 1 + args.messages)
            say(done=True)
        finally:
            federation.stop(timeout=1)
            bus.close(timeout=1)


def fed_send(args: argparse.Namespace) -> None:
    """A federated node: emit 0..M-1 on TOPIC, yielding every YIELD_EVERY emits.

    The clock starts once the publishing connection is open and ends when
    the federation has published all M (the receiver says when they arrived).
    """
    import gevent

    bus, federation = _warm_node(args.url, "perf-fed-send")
    with _until_terminated():
        try:
            emit, pause, topic, step = bus.emit, gevent.sleep, args.topic, args.yield_every
            start = clock()
            for first in range(0, args.messages, step):
                for i in range(first, min(first + step, args.messages)):
                    emit(topic, i)
                pause(0)
            _published(federation, 1 + args.messages)
            say(start=start, end=clock())
        finally:
            federation.stop(timeout=1)
            bus.close(timeout=1)


# -- blocking processes (no gevent loop) -----------------------------------------------------


def _open(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        sock.sendall(view[start : start + CHUNK])


def hub_pub(args: argparse.Namespace) -> None:
    """Send M pre-encoded, pre-framed ``pub`` frames (no ids: no acks) in one go.

    ``websockets``' own client makes the connection; the flood is written
    straight to its socket (nothing else writes meanwhile), then the
    client's closing handshake ends once the hub has read every frame.
    """
    from websockets.frames import Frame, Opcode
    from websockets.sync.client import connect

    from greenbus.protocol import Pub, encode

    flood = b"".join(
        Frame(Opcode.TEXT, encode(Pub(args.topic, i)).encode()).serialize(mask=True)
        for i in range(args.messages)
    )
    with connect(args.url, compression=None, proxy=None, ping_interval=None) as ws:
        ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = clock()
        _send_all(ws.socket, flood)
    say(start=start, end=clock())


def redis_pub(args: argparse.Namespace) -> None:
    """Pipeline M pre-packed PUBLISH commands; end when the last reply is in.

    A thread reads the replies while the main thread writes.  Every reply
    must be the same positive count of subscribers reached: a subscriber
    cut off mid-flood would show.
    """
    import redis

    pack = redis.Connection().pack_command
    flood = b"".join(b"".join(pack("PUBLISH", args.topic, i)) for i in range(args.messages))
    replies = bytearray()
    done: list[float] = []
    sock = _open(args.port)
    sock.settimeout(IDLE_TIMEOUT)

    def read_replies() -> None:
        lines = 0  # every reply is one line, ":<count>\r\n"
        try:
            while lines < args.messages and (data := sock.recv(CHUNK)):
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
    if not done or first in (b"", b":0\r\n") or replies != first * args.messages:
        raise WorkerError(
            f"expected {args.messages} equal replies of one positive count, got "
            f"{len(replies)} bytes starting {bytes(replies[:40])!r}"
        )
    say(start=start, end=done[0])


def redis_probe(args: argparse.Namespace) -> None:
    """PUBLISH M stamped payloads on TOPIC with redis-py, GAP seconds apart."""
    client = _redis(args.port)
    try:
        client.ping()  # connected before the first stamp
        publish, sleep, topic = client.publish, time.sleep, args.topic
        for i in range(args.messages):
            if publish(topic, f"{i} {clock_ns()}") != 1:
                raise WorkerError(f"PUBLISH {i} on {topic} reached no subscriber")
            sleep(args.gap)
        say(done=True)
    finally:
        client.close()


def redis_send(args: argparse.Namespace) -> None:
    """PUBLISH 0..M-1 on TOPIC through redis-py pipelines of BATCH commands.

    The clock starts once the connection is open and ends with the last
    pipeline's replies, each of which must be 1 (one subscriber reached).
    """
    client = _redis(args.port)
    try:
        client.ping()
        topic, batch = args.topic, args.batch
        start = clock()
        for first in range(0, args.messages, batch):
            pipe = client.pipeline(transaction=False)
            publish = pipe.publish
            for i in range(first, min(first + batch, args.messages)):
                publish(topic, i)
            replies = pipe.execute()
            if replies.count(1) != len(replies):
                raise WorkerError(f"a PUBLISH from {first} on reached no subscriber: {replies[:5]}")
        say(start=start, end=clock())
    finally:
        client.close()


def redis_echo(args: argparse.Namespace) -> None:
    """Subscribe to "ping" and PUBLISH every payload on "pong"."""
    client = _redis(args.port)
    pubsub = client.pubsub()
    subscribe_confirmed(pubsub, PING)
    say(ready=True)
    publish = client.publish
    for msg in pubsub.listen():
        if msg["type"] == "message":
            publish(PONG, msg["data"])


def redis_sub(args: argparse.Namespace) -> None:
    """Subscribe to TOPIC with redis-py; count M arrivals."""
    client = _redis(args.port)
    pubsub = client.pubsub()
    latencies: list[float] = []
    stamped = args.stamped

    def receive(timeout: float) -> object:
        data = next_message(pubsub, timeout)
        return unstamp(data, clock_ns(), latencies) if stamped else int(data)

    try:
        subscribe_confirmed(pubsub, args.topic)
        say(ready=True)
        say(**count_arrivals(receive, args.messages).result(), latencies_us=latencies)
    finally:
        pubsub.close()
        client.close()


def tcp_echo(args: argparse.Namespace) -> None:
    """Accept one connection and send back every byte, until EOF."""
    with socket.create_server((HOST, 0)) as server:
        say(port=server.getsockname()[1])
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(CHUNK):
                conn.sendall(data)


# -- the command line ---------------------------------------------------------------------

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "hub": hub,
    "hub-echo": hub_echo,
    "hub-sub": hub_sub,
    "hub-pub": hub_pub,
    "redis-echo": redis_echo,
    "redis-sub": redis_sub,
    "redis-pub": redis_pub,
    "redis-probe": redis_probe,
    "redis-send": redis_send,
    "fed-sub": fed_sub,
    "fed-probe": fed_probe,
    "fed-send": fed_send,
    "tcp-echo": tcp_echo,
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.hub_worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=(command.__doc__ or "").split("\n")[0])
        system = name.split("-")[0]
        if name == "hub":
            sub.add_argument("--count", nargs=2, metavar=("TOPIC", "M"))
            sub.add_argument("--max-pending", type=int, default=10_000)
        elif system in ("hub", "fed"):
            sub.add_argument("url")
        elif system == "redis":
            sub.add_argument("port", type=int)
        if name.endswith(("-sub", "-pub", "-probe", "-send")):
            sub.add_argument("topic")
            sub.add_argument("messages", type=int)
        if name.endswith("-probe"):
            sub.add_argument("gap", type=float, help="seconds between sends")
        if name in ("redis-sub", "fed-sub"):
            sub.add_argument("--stamped", action="store_true", help="report one-way latencies")
        if name == "redis-send":
            sub.add_argument("batch", type=int, help="PUBLISH commands per pipeline")
        if name == "fed-send":
            sub.add_argument("yield_every", type=int, help="emits between gevent.sleep(0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        COMMANDS[args.command](args)
    except Exception as exc:
        say(error=f"{args.command}: {type(exc).__name__}: {exc}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
