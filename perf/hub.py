"""The systems that cross processes: the greenbus hub, Redis pub/sub, the
greenbus federation (through Redis), raw TCP.

Every sample starts its own processes and stops them all before it returns
(SIGTERM, a wait, then SIGKILL), whatever happened.  Servers bind
127.0.0.1 on a free port.  The roles other than the benchmark's own client
run in helper processes, ``python -m perf.hub_worker`` (see there); they
report readiness and results in JSON lines.

The shapes, beside :meth:`System.echo` (the benchmark process is the
requester; the ``pingpong`` loop times it):

* :meth:`NetworkSystem.ingest`: one publisher process floods the server;
  the :class:`Flood` says when the first message left and the last one
  arrived.
* :meth:`NetworkSystem.broadcast`: one publisher process, ``k`` subscriber
  processes; the flood ends at the latest last arrival.
* :meth:`NetworkSystem.one_way` and :meth:`NetworkSystem.relay` (Redis
  pub/sub and the federation): one publisher process to one subscriber
  process, each using the system's own client (redis-py; a federated
  ``greenbus.Bus``).  ``one_way`` sends stamped messages one at a time and
  returns each one's latency; ``relay`` floods and ends at the last arrival.

Set ``PERF_HUB_PROFILE=DIR`` to run every hub process and every federated
node under cProfile, writing ``DIR/<command>-<time_ns>.prof`` when it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import redis

import greenbus

from .hub_worker import HOST, PING, PONG, await_routing, next_message, subscribe_confirmed
from .systems import Echo, MeasurementError, System, Unsupported

__all__ = ["NETWORK", "Flood", "NetworkSystem", "last_arrival", "start_redis"]

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a helper process has to say it is ready.
READY_TIMEOUT = 20.0
#: Seconds a flood's results may take (their workers give up after 10 idle seconds).
RESULT_TIMEOUT = 120.0
#: Seconds a process has to exit after SIGTERM, before SIGKILL.
STOP_TIMEOUT = 5.0
#: How long a round trip may take before the sample is an error.
REPLY_TIMEOUT = 10.0
#: A hub peer's outbound queue limit, and Redis's pubsub output-buffer limit
#: (none): a subscriber slower than the publisher is never cut off as slow.
HUB_MAX_PENDING = 10_000_000
REDIS_PUBSUB_LIMIT = "pubsub 0 0 0"
#: The environment variable naming a directory for the hub and node processes' profiles.
PROFILE_ENV = "PERF_HUB_PROFILE"
#: The worker commands that run under cProfile when it is set.
PROFILED = ("hub", "fed-sub", "fed-probe", "fed-send")
#: The topics of the floods, and of the one-way probe.
INGEST_TOPIC, FANOUT_TOPIC, RELAY_TOPIC, ONE_WAY_TOPIC = "ingest", "fanout", "relay", "oneway"
#: PUBLISH commands per redis-py pipeline in Redis's relay: the federation's
#: default batch (``Federation(batch=1000)``), so both send alike.
REDIS_BATCH = 1000


@dataclass(frozen=True)
class Flood:
    """One flood of ``messages`` to ``receivers``, in CLOCK_MONOTONIC seconds."""

    messages: int
    receivers: int
    #: When the publisher started sending.
    start: float
    #: When the last message reached the last receiver.
    end: float

    @property
    def rate(self) -> float:
        """Delivered messages per second."""
        if self.end <= self.start:
            raise MeasurementError(f"the flood ended ({self.end}) before it started ({self.start})")
        return self.messages * self.receivers / (self.end - self.start)


# -- processes ---------------------------------------------------------------------------


class Child:
    """A process of the sample: stdout read as JSON lines, stderr kept in a log file.

    Args:
        name: for error messages.
        argv: the command.
        log: where stderr (and, for a non-worker, stdout) goes.
        lines: read JSON lines from stdout (a helper worker); otherwise
            stdout goes to the log too.
    """

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, lines: bool = True) -> None:
        self.name = name
        self.log = log
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if lines else err,
                stderr=err,
                bufsize=0,
            )
        self._buffer = b""

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.proc.pid} exit={self.proc.poll()}>"

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the process prints.

        Raises:
            MeasurementError: it printed ``{"error": ...}``, exited, or said
                nothing within ``timeout`` seconds (with the end of its log).
        """
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                raise self._failure(f"said nothing within {timeout} s")
            chunk = os.read(stdout.fileno(), 1 << 16)
            if not chunk:
                raise self._failure(f"exited with {self.proc.wait(STOP_TIMEOUT)}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        doc: dict[str, Any] = json.loads(line)
        if "error" in doc:
            raise self._failure(doc["error"])
        return doc

    def check_alive(self) -> None:
        """Raises MeasurementError if the process has exited."""
        if self.proc.poll() is not None:
            raise self._failure(f"exited with {self.proc.returncode}")

    def _failure(self, what: str) -> MeasurementError:
        tail = self.log.read_text(errors="replace").strip().splitlines()[-6:]
        shown = "".join(f"\n    {line}" for line in tail)
        return MeasurementError(f"{self.name} {what}{shown}")

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if need be; reap it and close its pipe."""
        proc = self.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


class Processes:
    """The processes of one sample, and the clients connected to them.

    :meth:`close` (or leaving the ``with`` block) closes what was added, the
    latest first: clients, then the processes that serve them.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._logs = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="perf-")))
        self._started = 0

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def callback(self, close: Callable[[], object]) -> None:
        """Call ``close()`` when closing (before the processes started so far stop)."""
        self._stack.callback(close)

    def start(self, name: str, argv: Sequence[object], *, lines: bool = True) -> Child:
        """Start a process (see :class:`Child`); it is stopped on closing."""
        self._started += 1
        log = self._logs / f"{self._started}-{name.replace(' ', '-').replace('/', 'of')}.log"
        child = Child(name, [str(arg) for arg in argv], log, lines=lines)
        self._stack.callback(child.stop)
        return child

    def worker(self, name: str, command: str, *args: object) -> Child:
        """Start ``python -m perf.hub_worker COMMAND ARGS`` (with this interpreter's -W options).

        With ``PERF_HUB_PROFILE=DIR`` set, the :data:`PROFILED` commands run under cProfile.
        """
        python: list[object] = [sys.executable, *(f"-W{option}" for option in sys.warnoptions)]
        if command in PROFILED and (directory := os.environ.get(PROFILE_ENV)):
            Path(directory).mkdir(parents=True, exist_ok=True)
            python += ["-m", "cProfile", "-o", Path(directory) / f"{command}-{time.time_ns()}.prof"]
        return self.start(name, [*python, "-m", "perf.hub_worker", command, *args])


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (for servers that need one)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(processes: Processes, executable: str, system: str) -> int:
    """Start a fresh redis-server on a free port of 127.0.0.1; return the port once it answers.

    No persistence, and no output-buffer limit for pubsub clients (a
    subscriber slower than the publisher is never cut off).

    Raises:
        MeasurementError: ``executable`` is not installed (the message says
            ``system`` is unavailable), or it exited before answering.
    """
    path = shutil.which(executable)
    if path is None:
        raise MeasurementError(f"{system} unavailable: {executable} is not installed (not on PATH)")
    port = free_port()
    server = processes.start(
        "redis-server",
        [
            path,
            "--port",
            port,
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--client-output-buffer-limit",
            REDIS_PUBSUB_LIMIT,
        ],
        lines=False,
    )
    probe = redis.Redis(host=HOST, port=port)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                probe.ping()
                return port
            except redis.ConnectionError:
                server.check_alive()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
    finally:
        probe.close()


def last_arrival(result: dict[str, Any], messages: int, who: str) -> float:
    """The last arrival of a tally, after checking every message came once, in order."""
    if result["count"] != messages or result["misplaced"]:
        raise MeasurementError(
            f"{who} got {result['count']} of {messages} messages, {result['misplaced']} out of "
            f"place: {'; '.join(result['examples'])}"
        )
    last: float = result["last"]
    return last


# -- the systems ---------------------------------------------------------------------------


class NetworkSystem(System):
    """A system whose parties are processes talking over loopback.

    :meth:`echo` starts them with :meth:`start_echo`; the processes are
    stopped when the :class:`Echo` closes (or at once, if starting fails).
    """

    def start_echo(self, processes: Processes) -> Callable[[int], Any]:
        """Start the echo party; return the benchmark's ``roundtrip``."""
        raise Unsupported(f"{self.name} has no request/reply")

    def echo(self) -> Echo:
        processes = Processes()
        try:
            roundtrip = self.start_echo(processes)
        except BaseException:
            processes.close()
            raise
        return Echo(roundtrip, processes.close)

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
    _PACK = struct.Struct("!q")

    def start_echo(self, processes: Processes) -> Callable[[int], Any]:
        port = processes.worker("tcp-echo server", "tcp-echo").read(READY_TIMEOUT)["port"]
        sock = socket.create_connection((HOST, port))
        processes.callback(sock.close)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(REPLY_TIMEOUT)
        return partial(self._roundtrip, sock)

    def _roundtrip(self, sock: socket.socket, payload: int) -> int:
        size = self._PACK.size
        sock.sendall(self._PACK.pack(payload))
        reply = b""
        while len(reply) < size:
            chunk = sock.recv(size - len(reply))
            if not chunk:
                raise MeasurementError("the echo server closed the connection")
            reply += chunk
        value: int = self._PACK.unpack(reply)[0]
        return value


class _Relayed(NetworkSystem):
    """Two client processes, a publisher and a subscriber, through a server.

    The subscriber (``{worker}-sub``) starts first and says when the server
    has its subscription; then the publisher (``{worker}-probe`` or
    ``{worker}-send``) runs to its end; then the subscriber reports every
    arrival, checked to be 0..M-1 once each, in order.  Subclasses start the
    server and say what the sender needs besides the topic and the count.
    """

    #: The prefix of this system's worker commands (``redis-sub``, ``fed-send``...).
    worker: ClassVar[str]

    def start_server(self, processes: Processes) -> str:
        """Start the server; return the address its workers take."""
        raise NotImplementedError

    def send_options(self, yield_every: int) -> list[object]:
        """The ``{worker}-send`` arguments after the topic and the count."""
        raise NotImplementedError

    def _subscriber(self, processes: Processes, address: str, *args: object) -> Child:
        command = f"{self.worker}-sub"
        sub = processes.worker(command, command, address, *args)
        sub.read(READY_TIMEOUT)
        return sub

    def one_way(self, messages: int, gap: float) -> list[float]:
        with Processes() as processes:
            address = self.start_server(processes)
            sub = self._subscriber(processes, address, ONE_WAY_TOPIC, messages, "--stamped")
            command = f"{self.worker}-probe"
            probe = processes.worker(command, command, address, ONE_WAY_TOPIC, messages, gap)
            probe.read(RESULT_TIMEOUT)
            result = sub.read(RESULT_TIMEOUT)
            last_arrival(result, messages, sub.name)
            latencies: list[float] = result["latencies_us"]
            if len(latencies) != messages:
                raise MeasurementError(f"{sub.name} timed {len(latencies)} of {messages} messages")
            return latencies

    def relay(self, messages: int, yield_every: int) -> Flood:
        with Processes() as processes:
            address = self.start_server(processes)
            sub = self._subscriber(processes, address, RELAY_TOPIC, messages)
            command = f"{self.worker}-send"
            sender = processes.worker(
                command, command, address, RELAY_TOPIC, messages, *self.send_options(yield_every)
            )
            sent = sender.read(RESULT_TIMEOUT)
            end = last_arrival(sub.read(RESULT_TIMEOUT), messages, sub.name)
            return Flood(messages, 1, sent["start"], end)


class _Broker(NetworkSystem):
    """A server with an echo peer, publishers and subscribers in helper processes.

    Subclasses start the server, connect the benchmark's requester and
    measure ingest; the echo peer and the fan-out work alike for both.
    """

    #: The prefix of this system's worker commands (``hub-sub``, ``redis-pub``...).
    worker: ClassVar[str]

    def start_server(self, processes: Processes) -> str:
        """Start the server; return the address its workers take."""
        raise NotImplementedError

    def requester(self, processes: Processes, address: str) -> Callable[[int], Any]:
        """The benchmark's ``roundtrip``: publish on "ping", wait for it on "pong"."""
        raise NotImplementedError

    def start_echo(self, processes: Processes) -> Callable[[int], Any]:
        address = self.start_server(processes)
        command = f"{self.worker}-echo"
        processes.worker(command, command, address).read(READY_TIMEOUT)
        return self.requester(processes, address)

    def subscribers(
        self, processes: Processes, address: str, topic: str, messages: int, k: int
    ) -> list[Child]:
        """Start ``k`` subscriber processes; return once each is subscribed."""
        command = f"{self.worker}-sub"
        subs = [
            processes.worker(f"{command} {i + 1}/{k}", command, address, topic, messages)
            for i in range(k)
        ]
        for sub in subs:
            sub.read(READY_TIMEOUT)
        return subs

    def publish(self, processes: Processes, address: str, topic: str, messages: int) -> Flood:
        """Run the publisher process to its end: when it started, and when it was done."""
        command = f"{self.worker}-pub"
        times = processes.worker(command, command, address, topic, messages).read(RESULT_TIMEOUT)
        return Flood(messages, 1, times["start"], times["end"])

    def broadcast(self, messages: int, k: int) -> Flood:
        with Processes() as processes:
            address = self.start_server(processes)
            subs = self.subscribers(processes, address, FANOUT_TOPIC, messages, k)
            sent = self.publish(processes, address, FANOUT_TOPIC, messages)
            ends = [last_arrival(sub.read(RESULT_TIMEOUT), messages, sub.name) for sub in subs]
            return Flood(messages, k, sent.start, max(ends))


class GreenbusHub(_Broker):
    name = "greenbus-hub"
    summary = (
        "greenbus's WebSocket hub (greenbus.serve, max_pending 10M) in its own process; "
        "greenbus.connect clients, except the publisher of floods: raw websockets frames"
    )
    worker = "hub"

    def _start_hub(self, processes: Processes, *count: object) -> tuple[Child, str]:
        hub = processes.worker("hub", "hub", "--max-pending", HUB_MAX_PENDING, *count)
        url: str = hub.read(READY_TIMEOUT)["url"]
        return hub, url

    def start_server(self, processes: Processes) -> str:
        return self._start_hub(processes)[1]

    def requester(self, processes: Processes, address: str) -> Callable[[int], Any]:
        client = greenbus.connect(address, name="perf-requester")
        processes.callback(partial(client.close, timeout=STOP_TIMEOUT))
        if not client.connected:
            raise MeasurementError(f"cannot connect to the hub at {address}")
        get = client.subscribe(PONG, maxsize=None).get
        await_routing(client)
        emit = partial(client.emit, PING)

        def roundtrip(payload: int) -> Any:
            emit(payload)
            return get(timeout=REPLY_TIMEOUT).data

        return roundtrip

    def ingest(self, messages: int) -> Flood:
        with Processes() as processes:
            hub, url = self._start_hub(processes, "--count", INGEST_TOPIC, messages)
            sent = self.publish(processes, url, INGEST_TOPIC, messages)
            end = last_arrival(hub.read(RESULT_TIMEOUT), messages, "the hub's local subscriber")
            return Flood(messages, 1, sent.start, end)


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

    def start_server(self, processes: Processes) -> str:
        return str(start_redis(processes, self.executable, self.name))

    def send_options(self, yield_every: int) -> list[object]:
        return [REDIS_BATCH]  # one blocking process: nothing to yield to

    def requester(self, processes: Processes, address: str) -> Callable[[int], Any]:
        client = redis.Redis(host=HOST, port=int(address))
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
            port = self.start_server(processes)
            [check] = self.subscribers(processes, port, INGEST_TOPIC, messages, 1)
            # Ends at the last PUBLISH reply; the subscriber only verifies, untimed.
            sent = self.publish(processes, port, INGEST_TOPIC, messages)
            last_arrival(check.read(RESULT_TIMEOUT), messages, check.name)
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

    def start_server(self, processes: Processes) -> str:
        return f"redis://{HOST}:{start_redis(processes, self.executable, self.name)}/0"

    def send_options(self, yield_every: int) -> list[object]:
        return [yield_every]


#: The systems across processes, in the order tables and charts list them.
NETWORK: dict[str, NetworkSystem] = {
    s.name: s for s in (TcpEcho(), RedisPubSub(), GreenbusHub(), GreenbusFederation())
}
