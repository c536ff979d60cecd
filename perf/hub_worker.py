"""The helper processes of the hub benchmarks (``perf/hub.py``): one command per role.

Run as ``python -m perf.hub_worker COMMAND ARGS...`` (``--help`` lists
them).  A command talks to the benchmark in JSON lines on stdout: one when
it is ready (with its address, if it is a server), then one with its result,
if it has one.  A command that fails prints ``{"error": "..."}`` and exits 1;
logs go to stderr.

=============================  ===============  =============  ==========
role                           greenbus hub     Redis          raw TCP
=============================  ===============  =============  ==========
server                         ``hub``          redis-server   ``tcp-echo``
echo peer: "ping" -> "pong"    ``hub-echo``     ``redis-echo`` (the server)
subscriber: counts M arrivals  ``hub-sub``      ``redis-sub``
publisher: sends M, pre-made   ``hub-pub``      ``redis-pub``
=============================  ===============  =============  ==========

Every flood carries the payloads ``0 .. M-1``; a :class:`Tally` checks that
each arrives once, in order.  Times are ``time.monotonic()``: on Linux that
is CLOCK_MONOTONIC, one clock for every process of the machine, so times
taken in different processes can be subtracted.

The gevent commands stop cleanly on SIGTERM (so a hub run under cProfile
writes its profile); the others are simply ended by the benchmark.  Heavy
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

    from greenbus import RemoteBus, Subscription

__all__ = [
    "HOST",
    "Idle",
    "Tally",
    "WorkerError",
    "await_routing",
    "next_message",
    "subscribe_confirmed",
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

clock = time.monotonic


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
    try:
        subscribe_confirmed(pubsub, args.topic)
        say(ready=True)
        tally = count_arrivals(lambda timeout: int(next_message(pubsub, timeout)), args.messages)
        say(**tally.result())
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
        elif system == "hub":
            sub.add_argument("url")
        elif system == "redis":
            sub.add_argument("port", type=int)
        if name.endswith(("-sub", "-pub")):
            sub.add_argument("topic")
            sub.add_argument("messages", type=int)
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
