"""The systems across processes: the greenbus hub, Redis pub/sub, the federation
through Redis, and raw TCP.

Every sample starts its own processes (:class:`~perf.procs.Processes`) and
stops them all before it returns, whatever happened.  The parties other
than the benchmark's own client run as ``python -m perf.hub_worker``
commands (see there).  The shapes, beside :meth:`System.echo` (the
benchmark process is the requester; the ``pingpong`` loop times it):

* :meth:`NetworkSystem.ingest`: one publisher process floods the server.
* :meth:`NetworkSystem.broadcast`: one publisher process, ``k`` subscriber
  processes; the flood ends at the latest last arrival.
* :meth:`NetworkSystem.one_way` and :meth:`NetworkSystem.relay` (Redis
  pub/sub and the federation): one publisher process to one subscriber
  process, each with the system's own client (redis-py; a federated
  ``greenbus.Bus``): stamped messages one at a time, each one's latency;
  or a flood that ends at the last arrival.

Set ``PERF_HUB_PROFILE=DIR`` to run every hub process and every federated
node under cProfile, writing ``DIR/<command>-<time_ns>.prof`` when it stops.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import redis

import greenbus

from .hub_worker import PING, PONG, await_routing, next_message, subscribe_confirmed
from .procs import HOST, Child, MeasurementError, Processes, check_stream
from .systems import Echo, System, Unsupported

__all__ = ["NETWORK", "Flood", "NetworkSystem"]

#: Seconds a helper process has to say it is ready; a flood's results may take.
READY_TIMEOUT, RESULT_TIMEOUT = 20.0, 120.0
#: How long a round trip may take before the sample is an error.
REPLY_TIMEOUT = 10.0
#: A hub peer's outbound queue limit: a subscriber slower than the publisher is
#: never cut off as slow (redis-server runs with no pubsub output limit either).
HUB_MAX_PENDING = 10_000_000
#: The environment variable naming a directory for profiles, and the commands profiled.
PROFILE_ENV, PROFILED = "PERF_HUB_PROFILE", ("hub", "fed-sub", "fed-probe", "fed-send")
INGEST_TOPIC, FANOUT_TOPIC, RELAY_TOPIC, ONE_WAY_TOPIC = "ingest", "fanout", "relay", "oneway"
#: PUBLISH commands per redis-py pipeline in Redis's relay: the federation's
#: default batch (``Federation(batch=1000)``), so both send alike.
REDIS_BATCH = 1000


@dataclass(frozen=True)
class Flood:
    """One flood of ``messages`` to ``receivers``, in CLOCK_MONOTONIC seconds."""

    messages: int
    receivers: int
    #: When the publisher started sending, and when the last receiver had the last message.
    start: float
    end: float

    @property
    def rate(self) -> float:
        """Delivered messages per second."""
        if self.end <= self.start:
            raise MeasurementError(f"the flood ended ({self.end}) before it started ({self.start})")
        return self.messages * self.receivers / (self.end - self.start)


def _worker(processes: Processes, name: str, command: str, **options: Any) -> Child:
    """Start ``python -m perf.hub_worker COMMAND OPTIONS`` (maybe under cProfile)."""
    args = ["-m", "perf.hub_worker", command, json.dumps(options)]
    if command in PROFILED and (directory := os.environ.get(PROFILE_ENV)):
        Path(directory).mkdir(parents=True, exist_ok=True)
        profile = Path(directory) / f"{command}-{time.time_ns()}.prof"
        return processes.python(name, "cProfile", "-o", profile, *args)
    return processes.python(name, *args[1:])


class NetworkSystem(System):
    """A system whose parties are processes talking over loopback."""

    def start_echo(self, processes: Processes) -> Callable[[int], Any]:
        """Start the echo party; return the benchmark's ``roundtrip``."""
        raise Unsupported(f"{self.name} has no request/reply")

    def echo(self) -> Echo:
        processes = Processes()
        try:
            return Echo(self.start_echo(processes), processes.close)
        except BaseException:
            processes.close()
            raise

    def ingest(self, messages: int) -> Flood:
        """One publisher process floods the server; when did the last message arrive?"""
        raise Unsupported(f"{self.name} has no ingest")

    def broadcast(self, messages: int, k: int) -> Flood:
        """One publisher process, ``k`` subscriber processes."""
        raise Unsupported(f"{self.name} has no fan-out")

    def one_way(self, messages: int, gap: float) -> list[float]:
        """Stamped messages from one process to another, ``gap`` s apart: each one's µs."""
        raise Unsupported(f"{self.name} has no one-way probe")

    def relay(self, messages: int, yield_every: int) -> Flood:
        """One publisher process floods one subscriber process through the system's clients."""
        raise Unsupported(f"{self.name} has no relay")


class TcpEcho(NetworkSystem):
    name = "tcp-echo"
    summary = (
        "raw TCP: the benchmark sends 8 bytes over one connection (TCP_NODELAY) to an echo "
        "server process, which sends them back; the floor of any round trip here"
    )
    PACK = struct.Struct("!q")

    def start_echo(self, processes: Processes) -> Callable[[int], Any]:
        port = _worker(processes, "tcp-echo server", "tcp-echo").expect("ready", READY_TIMEOUT)
        sock = socket.create_connection((HOST, port))
        processes.callback(sock.close)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(REPLY_TIMEOUT)
        return partial(self._roundtrip, sock)

    def _roundtrip(self, sock: socket.socket, payload: int) -> int:
        size = self.PACK.size
        sock.sendall(self.PACK.pack(payload))
        reply = b""
        while len(reply) < size:
            if not (chunk := sock.recv(size - len(reply))):
                raise MeasurementError("the echo server closed the connection")
            reply += chunk
        value: int = self.PACK.unpack(reply)[0]
        return value


class _Served(NetworkSystem):
    """Client processes of one server: ``{worker}-sub``, ``{worker}-pub``...

    :meth:`server` starts the server and returns what the workers need to
    reach it (``{"url": ...}`` or ``{"port": ...}``).
    """

    worker: ClassVar[str]

    def server(self, processes: Processes) -> dict[str, Any]:
        raise NotImplementedError

    def _start(self, processes: Processes, role: str, name: str = "", **options: Any) -> Child:
        command = f"{self.worker}-{role}"
        return _worker(processes, name or command, command, **options)

    def _subscribers(self, processes: Processes, k: int, **options: Any) -> list[Child]:
        """Start ``k`` subscriber processes; return once each is subscribed."""
        subs = [
            self._start(
                processes, "sub", f"{self.worker}-sub {i + 1}/{k}" if k > 1 else "", **options
            )
            for i in range(k)
        ]
        for sub in subs:
            sub.expect("ready", READY_TIMEOUT)
        return subs


class _Relayed(_Served):
    """A publisher and a subscriber process, each with the system's client, through a server.

    The subscriber starts first and says when the server has its
    subscription; then the publisher runs to its end; then the subscriber
    reports, checked to be ``0 .. M-1``, each once, in order.
    """

    def send_options(self, yield_every: int) -> dict[str, Any]:
        """The ``{worker}-send`` options besides the server, the topic and the count."""
        raise NotImplementedError

    def one_way(self, messages: int, gap: float) -> list[float]:
        with Processes() as processes:
            at = self.server(processes)
            options = {**at, "topic": ONE_WAY_TOPIC, "messages": messages}
            [sub] = self._subscribers(processes, 1, **options, stamped=True)
            probe = self._start(processes, "probe", **options, gap=gap)
            probe.expect("result", RESULT_TIMEOUT)
            result = sub.expect("result", RESULT_TIMEOUT)
            check_stream(result, messages, sub.name)
            latencies: list[float] = result["latencies_us"]
            if len(latencies) != messages:
                raise MeasurementError(f"{sub.name} timed {len(latencies)} of {messages} messages")
            return latencies

    def relay(self, messages: int, yield_every: int) -> Flood:
        with Processes() as processes:
            at = self.server(processes)
            [sub] = self._subscribers(processes, 1, **at, topic=RELAY_TOPIC, messages=messages)
            options = self.send_options(yield_every)
            sender = self._start(
                processes, "send", **at, topic=RELAY_TOPIC, messages=messages, **options
            )
            sent = sender.expect("result", RESULT_TIMEOUT)
            end = check_stream(sub.expect("result", RESULT_TIMEOUT), messages, sub.name)
            return Flood(messages, 1, sent["start"], end)


class _Broker(_Served):
    """A server with an echo peer, pre-made publishers and subscribers in helper processes."""

    def requester(self, processes: Processes, at: dict[str, Any]) -> Callable[[int], Any]:
        """The benchmark's ``roundtrip``: publish on "ping", wait for it on "pong"."""
        raise NotImplementedError

    def start_echo(self, processes: Processes) -> Callable[[int], Any]:
        at = self.server(processes)
        self._start(processes, "echo", **at).expect("ready", READY_TIMEOUT)
        return self.requester(processes, at)

    def publish(self, processes: Processes, at: dict[str, Any], topic: str, n: int) -> Flood:
        """Run the publisher process to its end: when it started, and when it was done."""
        pub = self._start(processes, "pub", **at, topic=topic, messages=n)
        times = pub.expect("result", RESULT_TIMEOUT)
        return Flood(n, 1, times["start"], times["end"])

    def broadcast(self, messages: int, k: int) -> Flood:
        with Processes() as processes:
            at = self.server(processes)
            subs = self._subscribers(processes, k, **at, topic=FANOUT_TOPIC, messages=messages)
            sent = self.publish(processes, at, FANOUT_TOPIC, messages)
            ends = [
                check_stream(s.expect("result", RESULT_TIMEOUT), messages, s.name) for s in subs
            ]
            return Flood(messages, k, sent.start, max(ends))


class GreenbusHub(_Broker):
    name = "greenbus-hub"
    summary = (
        "greenbus's WebSocket hub (greenbus.serve, max_pending 10M) in its own process; "
        "greenbus.connect clients, except the publisher of floods: raw websockets frames"
    )
    worker = "hub"

    def _hub(self, processes: Processes, **count: Any) -> tuple[Child, dict[str, Any]]:
        hub = _worker(processes, "hub", "hub", max_pending=HUB_MAX_PENDING, **count)
        return hub, {"url": hub.expect("ready", READY_TIMEOUT)}

    def server(self, processes: Processes) -> dict[str, Any]:
        return self._hub(processes)[1]

    def requester(self, processes: Processes, at: dict[str, Any]) -> Callable[[int], Any]:
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

    def ingest(self, messages: int) -> Flood:
        with Processes() as processes:
            hub, at = self._hub(processes, count_topic=INGEST_TOPIC, count=messages)
            sent = self.publish(processes, at, INGEST_TOPIC, messages)
            result = hub.expect("result", RESULT_TIMEOUT)
            return Flood(messages, 1, sent.start, check_stream(result, messages, "the hub"))


class RedisPubSub(_Broker, _Relayed):
    """Redis pub/sub: a fresh ``redis-server`` per sample, redis-py clients.

    Args:
        executable: the server's command; if it is not installed, every
            sample is an error that says so.
    """

    name = "redis-pubsub"
    summary = (
        "Redis pub/sub: redis-server (no persistence, pubsub output buffers unlimited) in its "
        "own process; redis-py clients (its reply parser: see the machine record), except "
        "the publisher of the hub floods: pre-packed pipelined PUBLISH"
    )
    worker = "redis"

    def __init__(self, executable: str = "redis-server") -> None:
        self.executable = executable

    def server(self, processes: Processes) -> dict[str, Any]:
        return {"port": processes.redis(self.executable, self.name, READY_TIMEOUT)}

    def send_options(self, yield_every: int) -> dict[str, Any]:
        return {"batch": REDIS_BATCH}  # one blocking process: nothing to yield to

    def requester(self, processes: Processes, at: dict[str, Any]) -> Callable[[int], Any]:
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

    def ingest(self, messages: int) -> Flood:
        with Processes() as processes:
            at = self.server(processes)
            [check] = self._subscribers(processes, 1, **at, topic=INGEST_TOPIC, messages=messages)
            # Ends at the last PUBLISH reply; the subscriber only verifies, untimed.
            sent = self.publish(processes, at, INGEST_TOPIC, messages)
            check_stream(check.expect("result", RESULT_TIMEOUT), messages, check.name)
            return sent


class GreenbusFederation(_Relayed):
    """Two greenbus nodes federated through a fresh ``redis-server`` per sample.

    Args:
        executable: the server's command, as for :class:`RedisPubSub`.
    """

    name = "greenbus-federation"
    summary = (
        "greenbus federation: two node processes, each a greenbus.Bus linked by "
        "greenbus.federate (default options) to one redis-server, started as redis-pubsub's; "
        "the receiving node counts in a subscription's handler"
    )
    worker = "fed"

    def __init__(self, executable: str = "redis-server") -> None:
        self.executable = executable

    def server(self, processes: Processes) -> dict[str, Any]:
        port = processes.redis(self.executable, self.name, READY_TIMEOUT)
        return {"url": f"redis://{HOST}:{port}/0"}

    def send_options(self, yield_every: int) -> dict[str, Any]:
        return {"yield_every": yield_every}


#: The systems across processes, in the order tables and charts list them.
NETWORK: dict[str, NetworkSystem] = {
    s.name: s for s in (TcpEcho(), RedisPubSub(), GreenbusHub(), GreenbusFederation())
}
