"""The helper processes of the benchmarks across processes (``perf/hub.py``).

Run as ``python -m perf.hub_worker COMMAND OPTIONS``, OPTIONS a JSON object
of the command's keyword arguments.  A command says ``{"ready": ...}`` when
it is ready (a server: its address), then ``{"result": ...}`` if it has
one (see :mod:`perf.procs`).

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

A federation's parties are nodes: a :class:`greenbus.Bus` federated through
redis-server (``greenbus.federate``).  Every flood carries ``0 .. M-1``,
checked on arrival by a :class:`~perf.procs.Tally`.  A *stamped* payload
also carries ``time.monotonic_ns()`` read just before the publishing call
(``[i, ns]`` on a bus, ``b"i ns"`` in raw Redis); a ``stamped`` subscriber
reads the same clock first thing on arrival and reports each latency.

The gevent commands stop cleanly on SIGTERM (a hub or node run under
cProfile writes its profile).  Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .procs import HOST, Tally, say, worker_main

if TYPE_CHECKING:
    import redis
    from redis.client import PubSub

    from greenbus import Bus, Federation, RemoteBus, Subscription

__all__ = ["PING", "PONG", "Idle", "await_routing", "next_message", "subscribe_confirmed"]

#: A subscriber that receives nothing for this long reports what it has.
IDLE_TIMEOUT = 10.0
#: Bytes written per ``sendall`` by the publishers (the whole flood is pre-made).
CHUNK = 1 << 16
#: The topic the echo peers listen on, and the one they answer on.
PING, PONG = "ping", "pong"
#: A federated node emits here to open its publishing connection before the clock starts.
WARM_TOPIC = "perf.warm"
#: How often a federated node polls its statistics while the federation publishes.
DRAIN_POLL = 0.001

clock, clock_ns = time.monotonic, time.monotonic_ns


class Idle(Exception):
    """Nothing arrived within the idle timeout."""


class WorkerError(Exception):
    """The worker cannot do its part (no connection, lost replies, dropped messages)."""


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


def unstamp(payload: object, now_ns: int, latencies: list[float]) -> int:
    """The index of a stamped payload; its one-way latency (µs) goes to ``latencies``."""
    if isinstance(payload, bytes):
        index, sent = (int(part) for part in payload.split())
    else:
        index, sent = payload  # type: ignore[misc]
    latencies.append((now_ns - sent) / 1000)
    return index


# -- client helpers, shared with the benchmark process ------------------------------------


def await_routing(client: RemoteBus, timeout: float = IDLE_TIMEOUT) -> None:
    """Return once the hub has applied every frame ``client`` sent so far.

    The hub applies one connection's frames in order, so a message that
    comes back on a fresh topic proves the earlier ``sub`` frames are in
    place (``RemoteBus.subscribe`` does not wait for its ack).
    """
    topic = f"perf.ready.{uuid.uuid4().hex}"
    with client.subscribe(topic, maxsize=None) as sub:
        client.emit(topic)
        sub.get(timeout=timeout)


def subscribe_confirmed(pubsub: PubSub, channel: str, timeout: float = IDLE_TIMEOUT) -> None:
    """SUBSCRIBE and wait for Redis's confirmation, after which publishes reach us."""
    pubsub.subscribe(channel)
    deadline = clock() + timeout
    while (left := deadline - clock()) > 0:
        msg = pubsub.get_message(timeout=left)
        if msg is not None and msg["type"] == "subscribe":
            return
    raise Idle(f"no confirmation of SUBSCRIBE {channel} within {timeout} s")


def next_message(pubsub: PubSub, timeout: float) -> bytes:
    """The data of the next published message; raises Idle after ``timeout``."""
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


# -- gevent processes ---------------------------------------------------------------------


@contextmanager
def _until_terminated() -> Iterator[Callable[[], None]]:
    """Yield ``wait()``, which blocks until SIGTERM; SIGTERM ends the body cleanly.

    SIGTERM raises SystemExit in the main greenlet wherever it waits, so the
    ``finally`` clauses run and the process exits with 0.
    """
    import gevent
    import gevent.event

    handler = gevent.signal_handler(signal.SIGTERM, gevent.kill, gevent.getcurrent(), SystemExit)
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


def _payloads(sub: Subscription) -> Callable[[float], int]:
    """``receive(timeout)`` for :func:`count_arrivals`: the next message's data."""
    from greenbus import ReceiveTimeout

    get = sub.get

    def receive(timeout: float) -> int:
        try:
            data: int = get(timeout=timeout).data
            return data
        except ReceiveTimeout:
            raise Idle from None

    return receive


def hub(max_pending: int, count_topic: str | None = None, count: int = 0) -> None:
    """A hub (``greenbus.serve``); with ``count_topic``, a local subscriber counts ``count``."""
    import greenbus

    bus = greenbus.Bus("perf-hub")
    server = greenbus.serve(bus, HOST, 0, max_pending=max_pending)
    with _until_terminated() as wait:
        server.start()
        try:
            # Subscribed before the address is announced: nothing can be missed.
            sub = bus.subscribe(count_topic, maxsize=None) if count_topic else None
            say(ready=server.url)
            if sub is not None:
                say(result=count_arrivals(_payloads(sub), count))
            wait()
        finally:
            server.stop()
            bus.close(timeout=5)


def hub_echo(url: str) -> None:
    """Subscribe to "ping" and emit every payload back on "pong"."""
    client = _connect(url, "perf-echo")
    with _until_terminated() as wait:
        try:
            emit = client.emit
            client.subscribe(PING, lambda msg: emit(PONG, msg.data))
            await_routing(client)
            say(ready=True)
            wait()
        finally:
            client.close(timeout=1)


def hub_sub(url: str, topic: str, messages: int) -> None:
    """Subscribe to ``topic`` with ``greenbus.connect``; count ``messages`` arrivals."""
    client = _connect(url, "perf-sub")
    try:
        sub = client.subscribe(topic)
        await_routing(client)
        say(ready=True)
        say(result=count_arrivals(_payloads(sub), messages))
    finally:
        client.close(timeout=1)


def _federated(url: str, name: str, warm: bool = False) -> tuple[Bus, Federation]:
    """A bus federated through Redis at ``url``; ``warm``: its publishing connection open."""
    import greenbus

    bus = greenbus.Bus(name)
    federation = greenbus.federate(bus, url)
    try:
        if not federation.wait_connected(IDLE_TIMEOUT):
            raise WorkerError(f"not connected to Redis at {url} within {IDLE_TIMEOUT} s")
        if warm:
            bus.emit(WARM_TOPIC)
            _published(federation, 1)
    except BaseException:
        federation.stop(timeout=1)
        bus.close(timeout=1)
        raise
    return bus, federation


def _published(federation: Federation, expected: int) -> None:
    """Wait until the federation has published ``expected`` messages in all.

    Raises:
        WorkerError: it dropped some, or published none for ``IDLE_TIMEOUT``.
    """
    import gevent

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
        raise WorkerError(
            f"the federation published {stats.published} of {expected} messages "
            f"({stats.outbound_pending} pending, {stats.dropped} dropped, "
            f"{stats.unencodable} unencodable)"
        )


def _await_redis_subscriber(url: str, channel: str) -> None:
    """Return once Redis counts a subscriber of ``channel`` (PUBSUB NUMSUB).

    The federation sends SUBSCRIBE without waiting for its confirmation;
    after this, whatever is published on ``channel`` reaches the node.
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


def fed_sub(url: str, topic: str, messages: int, stamped: bool = False) -> None:
    """A federated node: a subscription's handler counts ``messages`` arrivals on ``topic``."""
    import gevent.event

    from greenbus.federation import redis_glob

    bus, federation = _federated(url, "perf-fed-sub")
    with _until_terminated():
        try:
            tally, done = Tally(), gevent.event.Event()
            latencies: list[float] = []
            add = tally.add

            def handler(msg: Any) -> None:
                now = clock_ns()
                add(unstamp(msg.data, now, latencies) if stamped else msg.data, now * 1e-9)
                if tally.count >= messages:
                    done.set()

            bus.subscribe(topic, handler)
            _await_redis_subscriber(url, redis_glob(federation.prefix, topic)[0])
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
            say(result={**tally.result(), "latencies_us": latencies})
        finally:
            federation.stop(timeout=1)
            bus.close(timeout=1)


def fed_probe(url: str, topic: str, messages: int, gap: float) -> None:
    """A federated node: emit ``messages`` stamped payloads on ``topic``, ``gap`` s apart."""
    import gevent

    bus, federation = _federated(url, "perf-fed-probe", warm=True)
    with _until_terminated():
        try:
            emit, sleep = bus.emit, gevent.sleep
            for i in range(messages):
                emit(topic, [i, clock_ns()])
                sleep(gap)
            _published(federation, 1 + messages)
            say(result=True)
        finally:
            federation.stop(timeout=1)
            bus.close(timeout=1)


def fed_send(url: str, topic: str, messages: int, yield_every: int) -> None:
    """A federated node: emit ``0 .. messages-1``, ``gevent.sleep(0)`` every ``yield_every``.

    The clock starts once the publishing connection is open and ends when
    the federation has published them all (the receiver says when they arrived).
    """
    import gevent

    bus, federation = _federated(url, "perf-fed-send", warm=True)
    with _until_terminated():
        try:
            emit, pause = bus.emit, gevent.sleep
            start = clock()
            for first in range(0, messages, yield_every):
                for i in range(first, min(first + yield_every, messages)):
                    emit(topic, i)
                pause(0)
            _published(federation, 1 + messages)
            say(result={"start": start, "end": clock()})
        finally:
            federation.stop(timeout=1)
            bus.close(timeout=1)


# -- blocking processes (no gevent loop) ------------------------------------------------------


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
    from websockets.frames import Frame, Opcode
    from websockets.sync.client import connect

    from greenbus.protocol import Pub, encode

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
    import redis

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
        raise WorkerError(
            f"expected {messages} equal replies of one positive count, got "
            f"{len(replies)} bytes starting {bytes(replies[:40])!r}"
        )
    say(result={"start": start, "end": done[0]})


def redis_probe(port: int, topic: str, messages: int, gap: float) -> None:
    """PUBLISH ``messages`` stamped payloads on ``topic`` with redis-py, ``gap`` s apart."""
    client = _redis(port)
    try:
        client.ping()  # connected before the first stamp
        publish, sleep = client.publish, time.sleep
        for i in range(messages):
            if publish(topic, f"{i} {clock_ns()}") != 1:
                raise WorkerError(f"PUBLISH {i} on {topic} reached no subscriber")
            sleep(gap)
        say(result=True)
    finally:
        client.close()


def redis_send(port: int, topic: str, messages: int, batch: int) -> None:
    """PUBLISH ``0 .. messages-1`` through redis-py pipelines of ``batch`` commands.

    The clock starts once the connection is open and ends with the last
    pipeline's replies, each of which must be 1 (one subscriber reached).
    """
    client = _redis(port)
    try:
        client.ping()
        start = clock()
        for first in range(0, messages, batch):
            pipe = client.pipeline(transaction=False)
            publish = pipe.publish
            for i in range(first, min(first + batch, messages)):
                publish(topic, i)
            replies = pipe.execute()
            if replies.count(1) != len(replies):
                raise WorkerError(f"a PUBLISH from {first} on reached no subscriber: {replies[:5]}")
        say(result={"start": start, "end": clock()})
    finally:
        client.close()


def redis_echo(port: int) -> None:
    """Subscribe to "ping" and PUBLISH every payload on "pong"."""
    client = _redis(port)
    pubsub = client.pubsub()
    subscribe_confirmed(pubsub, PING)
    say(ready=True)
    publish = client.publish
    for msg in pubsub.listen():
        if msg["type"] == "message":
            publish(PONG, msg["data"])


def redis_sub(port: int, topic: str, messages: int, stamped: bool = False) -> None:
    """Subscribe to ``topic`` with redis-py; count ``messages`` arrivals."""
    client = _redis(port)
    pubsub = client.pubsub()
    latencies: list[float] = []

    def receive(timeout: float) -> int:
        data = next_message(pubsub, timeout)
        return unstamp(data, clock_ns(), latencies) if stamped else int(data)

    try:
        subscribe_confirmed(pubsub, topic)
        say(ready=True)
        say(result={**count_arrivals(receive, messages), "latencies_us": latencies})
    finally:
        pubsub.close()
        client.close()


def tcp_echo() -> None:
    """Accept one connection and send back every byte, until EOF."""
    with socket.create_server((HOST, 0)) as server:
        say(ready=server.getsockname()[1])
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(CHUNK):
                conn.sendall(data)


COMMANDS: dict[str, Callable[..., None]] = {
    f.__name__.replace("_", "-"): f
    for f in (
        *(hub, hub_echo, hub_sub, hub_pub, tcp_echo),
        *(redis_echo, redis_sub, redis_pub, redis_probe, redis_send),
        *(fed_sub, fed_probe, fed_send),
    )
}

if __name__ == "__main__":
    command, options = sys.argv[1:]
    sys.exit(worker_main(command, lambda: COMMANDS[command](**json.loads(options))))
