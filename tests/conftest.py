"""Fixtures shared by the test modules."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.cluster

import greenbus
from greenbus import HubServer, RemoteBus, _codec, protocol
from greenbus.federation._redis import GeventConnection

# -- buses (tests/test_bus.py, tests/test_ordering.py) ------------------------


@pytest.fixture
def bus(request: pytest.FixtureRequest) -> Iterator[greenbus.Bus]:
    """A fresh bus named after the test, closed afterwards."""
    b = greenbus.Bus(request.node.name)
    yield b
    # A timeout, so a test that leaves a handler stuck cannot hang the run.
    b.close(timeout=5)


@pytest.fixture
def default_bus() -> Iterator[greenbus.Bus]:
    """The module-level default bus; whichever is current is closed afterwards."""
    yield greenbus.default_bus()
    greenbus.default_bus().close(timeout=5)


# -- hubs (tests/test_hub.py) --------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent

#: The line ``greenbus serve`` prints on stdout once it is listening.
LISTENING = re.compile(rb"greenbus hub listening on ((wss?)://([0-9.]+):(\d+)/)")


def child_env() -> dict[str, str]:
    """The environment of a child process: the checkout importable, warnings fatal."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONWARNINGS"] = "error"
    env["PYTHONIOENCODING"] = "utf-8"
    env.pop("GREENBUS_TOKEN", None)
    return env


def start_child(cmd: list[str]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` from the checkout in :func:`child_env`: stdin closed, stdout and
    stderr piped (read them with ``communicate``)."""
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_child(cmd: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd`` to its end from the checkout in :func:`child_env`, output captured;
    whatever its exit code."""
    return subprocess.run(
        cmd, cwd=ROOT, env=child_env(), capture_output=True, timeout=timeout, check=False
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """Terminate ``proc``, wait up to ``timeout`` s, then kill it; return its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return proc.returncode


def show_log_tail(what: str, log: str, lines: int = 40) -> None:
    """Print the last ``lines`` of a child's ``log``, headed by ``what`` it is (its
    name, pid and exit code): printed at teardown, pytest shows it when the test failed."""
    print(f"--- {what} log, last lines:")
    print("\n".join(log.splitlines()[-lines:]))


@dataclass
class HubProcess:
    """A ``greenbus serve`` child process, listening on ``url``."""

    proc: subprocess.Popen[bytes]
    url: str
    host: str
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """What the hub wrote on stderr so far (its log)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, str, str]:
        """GET ``path`` on the hub's port: (status, content type, body)."""
        url = f"http://{self.host}:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = response.read().decode()
                return response.status, response.headers["Content-Type"], body
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers["Content-Type"], exc.read().decode()

    def health(self) -> dict[str, object]:
        """``/health`` parsed."""
        status, _, body = self.http_get("/health")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def metrics(self) -> dict[str, float]:
        """``/metrics`` parsed: ``{'greenbus_connections': 0.0, 'name{label="x"}': 1.0, ...}``."""
        status, _, body = self.http_get("/metrics")
        assert status == 200, body
        samples = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def rss_kib(self) -> int:
        """The hub's resident set size (VmRSS), in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; the exit code."""
        return stop_process(self.proc, timeout)

    def stop_and_show_log(self) -> None:
        """At teardown: :meth:`stop`, then :func:`show_log_tail`."""
        code = self.stop()
        show_log_tail(f"{self.url} (pid {self.pid}, exit {code})", self.log())

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def spawn_hub(
    cmd: list[str], log_path: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str, str, str, int]:
    """Run ``cmd`` (a ``greenbus serve``), stderr to ``log_path``, and wait for its
    listening line: ``(process, url, scheme, host, port)``.  Stopped if it fails."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**child_env(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert proc.stdout is not None
    line = b""
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        if ready:
            line = proc.stdout.readline()
        match = LISTENING.search(line)
        if match is None:
            raise AssertionError(
                f"{' '.join(cmd)} did not report listening: {line!r}\n"
                + log_path.read_text(errors="replace")
            )
    except BaseException:
        stop_process(proc)
        raise
    url, scheme, host, bound = (g.decode() for g in match.groups())
    return proc, url, scheme, host, int(bound)


def start_hub_process(log_path: Path, *args: str, port: int = 0) -> HubProcess:
    """Run ``python -m greenbus serve --port PORT ARGS`` and wait for its listening line."""
    cmd = [sys.executable, "-m", "greenbus", "serve", "--port", str(port), *args]
    proc, url, _, host, bound = spawn_hub(cmd, log_path)
    return HubProcess(proc, url, host, bound, log_path)


#: The transports every hub-process test runs against: the hub's own listener
#: and gevent-websocket through greenbus.bridge.wsgi (docs/transports.md).
TRANSPORTS = ("websockets", "wsgi")


@pytest.fixture(params=TRANSPORTS)
def hub_transport(request: pytest.FixtureRequest) -> str:
    """The ``--transport`` of hub processes; tests using hubs run once per transport.

    A test that checks a listener-only behaviour overrides it with
    ``@pytest.mark.parametrize("hub_transport", ["websockets"], indirect=True)``.
    """
    return str(request.param)


@pytest.fixture
def hub_factory(tmp_path: Path, hub_transport: str) -> Iterator[Callable[..., HubProcess]]:
    """``start(*cli_args, port=0)`` runs a hub process; all are stopped afterwards."""
    hubs: list[HubProcess] = []

    def start(*args: str, port: int = 0) -> HubProcess:
        args = ("--transport", hub_transport, *args)
        hub = start_hub_process(tmp_path / f"hub{len(hubs)}.log", *args, port=port)
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        hub.stop_and_show_log()


@pytest.fixture
def hub_process(
    request: pytest.FixtureRequest, hub_factory: Callable[..., HubProcess]
) -> HubProcess:
    """A ``greenbus serve --port 0`` process; parametrise indirectly with extra CLI args::

    @pytest.mark.parametrize("hub_process", [("--token", "s3cret")], indirect=True)
    """
    return hub_factory(*getattr(request, "param", ()))


# -- in-process hubs and gevent clients (tests/test_hub.py) --------------------


@pytest.fixture
def local_hub(request: pytest.FixtureRequest) -> Iterator[Callable[..., HubServer]]:
    """``start(**options)``: a started in-process hub on a fresh bus, port 0."""
    hubs: list[HubServer] = []

    def start(**options: Any) -> HubServer:
        bus = greenbus.Bus(request.node.name)
        hub = greenbus.serve(bus, port=0, **options).start()
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        hub.stop(timeout=2)
        hub.bus.close(timeout=2)


@pytest.fixture
def remote_bus() -> Iterator[Callable[..., RemoteBus]]:
    """``connect(url, **options)``: a connected ``greenbus.connect`` client, closed afterwards."""
    clients: list[RemoteBus] = []

    def connect(url: str, **options: Any) -> RemoteBus:
        remote = greenbus.connect(url, **options)
        clients.append(remote)
        assert remote.wait_connected(5), f"{remote!r} did not connect"
        return remote

    yield connect
    for remote in clients:
        remote.close(timeout=2)


# -- Redis (test_federation, test_publisher, test_redis_link) ---------------------------

#: Debian's redis-server (CI installs it in .ci/run): the federation tests
#: need a real server, never a fake, and fail without one.
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_pid(port: int) -> int | None:
    """The process id of the Redis server answering on ``port``; None if none answers.

    One short connection and an inline ``INFO server``: the answer is a RESP
    bulk string, ``$<length>\\r\\n<text>\\r\\n``.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(b"INFO server\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
                header, sep, body = data.partition(b"\r\n")
                if sep and (not header.startswith(b"$") or len(body) >= int(header[1:]) + 2):
                    break  # the whole bulk string, or an error such as -LOADING
    except OSError:
        return None
    match = re.search(rb"^process_id:(\d+)", data, re.MULTILINE)
    return int(match.group(1)) if match else None


Startable = TypeVar("Startable", "RedisServer", "RedisCluster")


def started(make: Callable[[int], Startable]) -> Startable:
    """``make(attempt).start()``, with new free ports up to three attempts (free
    ports can race away to another process between the probe and the bind).

    Raises:
        AssertionError: the third attempt failed too (its log in the message).
    """
    for attempt in range(2):
        made = make(attempt)
        try:
            made.start()
            return made
        except AssertionError:
            continue  # its free ports raced away: new ones
    made = make(2)
    made.start()  # three times: something is wrong, and it says what
    return made


@dataclass
class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1:``port``: no persistence.

    ``stop()`` and ``kill()`` leave the port to a later ``start()``, which
    brings up an empty server on the same address (what a Redis restart
    looks like to its clients).  Waiting is on conditions, polled with a
    plain ``time.sleep``: it does not yield to the gevent hub, so greenlets
    of the test process stay where they are until the test waits on them.
    """

    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    #: More ``redis-server`` options, after the defaults (a cluster node's, say).
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The process id of the last ``start()``; None before any."""
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (again, on the same port) and wait until it answers.

        Raises:
            AssertionError: it exited (the port is taken, say) or did not
                answer within ``timeout`` s; its log is in the message.
        """
        assert not self.running, f"redis-server on port {self.port} is already running"
        cmd = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.log_path.parent),
            "--logfile", "",
            *self.args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        # Its own pid in the answer: not another server that holds the port.
        while redis_pid(self.port) != self.proc.pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"redis-server on port {self.port} did not start within "
                    f"{timeout} s:\n{self.log()}"
                )
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait (SIGKILL if needed).  A no-op if it is not running."""
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL, and reap: the abrupt end of a crash or a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty ``redis-server`` on a free port of 127.0.0.1; stopped afterwards."""
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.fail(
            f"{REDIS_SERVER} not found: the federation tests need a real Redis; "
            "install it with `apt-get install -y redis-server`",
            pytrace=False,
        )
    server = started(lambda attempt: RedisServer(free_port(), tmp_path / f"redis{attempt}.log"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_cli(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A redis-py client of the test's server (it reconnects by itself after a restart)."""
    client = redis.Redis(
        host="127.0.0.1", port=redis_server.port, socket_timeout=5, decode_responses=True
    )
    yield client
    client.close()


@pytest.fixture
def redis_pools(redis_server: RedisServer) -> Iterator[Callable[..., redis.ConnectionPool]]:
    """``make(url=None)``: a pool as a federation makes one (gevent sockets, the URL's
    options; the test's server by default), for ``greenbus.federation._redis.Link``;
    all disconnected afterwards."""
    pools: list[redis.ConnectionPool] = []

    def make(url: str | None = None) -> redis.ConnectionPool:
        pool = redis.ConnectionPool.from_url(
            url or redis_server.url, connection_class=GeventConnection, socket_connect_timeout=5
        )
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.disconnect()


# -- Redis Cluster (issue 16: sharded pub/sub; test_redis_cluster_fixture) ----------

#: redis-cli, which builds the cluster (``--cluster create``); Debian's
#: redis-server package depends on redis-tools, which ships it.
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"

#: Sharded pub/sub (SSUBSCRIBE, SPUBLISH) arrived in Redis 7.0.
CLUSTER_MIN_VERSION = (7, 0)

#: Hash slots of a Redis Cluster (the cluster specification, "Key distribution model").
CLUSTER_SLOTS = 16384

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@functools.cache
def redis_server_version() -> tuple[int, int, int]:
    """The version of :data:`REDIS_SERVER`, from ``redis-server --version``.

    Raises:
        AssertionError: it did not print a ``v=X.Y.Z``.
    """
    out = subprocess.run(
        [REDIS_SERVER, "--version"], capture_output=True, timeout=10, check=False
    ).stdout
    match = re.search(rb"\bv=(\d+)\.(\d+)\.(\d+)", out)
    assert match, f"{REDIS_SERVER} --version: {out!r}"
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def redis_client(port: int) -> redis.Redis:
    """A plain redis-py client of 127.0.0.1:``port`` (one node of a cluster, say):
    strings decoded, 5 s socket timeout.  Close it (it is a context manager)."""
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)


@dataclass
class RedisCluster:
    """A Redis Cluster of ``size`` masters and no replicas, each a ``redis-server
    --cluster-enabled yes`` child process on 127.0.0.1, built by ``redis-cli
    --cluster create``: no persistence, files in ``directory``.

    Each node takes two free ports: its client port and its cluster bus port
    (``--cluster-port``; the default, port + 10000, may be taken or past 65535).
    ``nodes`` are :class:`RedisServer` handles: a test may ``kill()`` one, and
    ``start()`` it again on the same port, where it rejoins the cluster from its
    ``nodes-<port>.conf`` (empty, as a restart without persistence is).
    Waiting is polled with a plain ``time.sleep``, as :class:`RedisServer` does.
    """

    directory: Path
    size: int = 3
    node_timeout_ms: int = 2000
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        """The nodes' client ports, in creation order."""
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...``: every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def create_log_path(self) -> Path:
        return self.directory / "cluster-create.log"

    def start(self, timeout: float = 30.0) -> RedisCluster:
        """Start the nodes on free ports, create the cluster, and wait until every
        node reports it ``ok`` with all slots served and every node known.

        Raises:
            AssertionError: a node did not start (its port was taken, say),
                ``redis-cli --cluster create`` failed, or the cluster was not
                ``ok`` within ``timeout`` s; the logs are in the message.
                Whatever was started is stopped.
        """
        assert not self.nodes, f"cluster in {self.directory} already started"
        deadline = time.monotonic() + timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * self.size)
        for port, bus_port in zip(ports[::2], ports[1::2], strict=True):
            options = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
                "--cluster-port", str(bus_port),
                "--cluster-node-timeout", str(self.node_timeout_ms),
            )  # fmt: skip
            self.nodes.append(RedisServer(port, self.directory / f"redis-{port}.log", args=options))
        try:
            for node in self.nodes:
                node.start()
            self._create(deadline)
            self.wait_ok(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, deadline: float) -> None:
        """Run ``redis-cli --cluster create`` on the nodes; its output to the log."""
        cmd = [
            REDIS_CLI, "--cluster", "create",
            *(f"127.0.0.1:{port}" for port in self.ports),
            "--cluster-replicas", "0",
            "--cluster-yes",
        ]  # fmt: skip
        with self.create_log_path.open("wb") as log:
            try:
                code = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=max(deadline - time.monotonic(), 1.0),
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = None
        if code != 0:
            raise AssertionError(f"{' '.join(cmd)} failed (exit {code}):\n{self.log()}")

    def cluster_info(self, port: int) -> dict[str, str]:
        """``CLUSTER INFO`` of the node on ``port``, as redis-py parses it."""
        with redis_client(port) as client:
            return client.execute_command("CLUSTER INFO")  # type: ignore[no-any-return]

    def wait_ok(self, timeout: float = 10.0) -> None:
        """Wait until every node reports ``cluster_state:ok``, all
        :data:`CLUSTER_SLOTS` slots ok and every node known.

        Raises:
            AssertionError: a node exited, or not within ``timeout`` s; the last
                answers and the logs are in the message.
        """
        deadline = time.monotonic() + timeout
        wanted = {
            "cluster_state": "ok",
            "cluster_slots_ok": str(CLUSTER_SLOTS),
            "cluster_known_nodes": str(self.size),
        }
        while True:
            answers: dict[int, object] = {}
            for node in self.nodes:
                try:
                    info = self.cluster_info(node.port)
                    answers[node.port] = {key: info.get(key) for key in wanted}
                except redis.RedisError as exc:
                    answers[node.port] = exc
            if all(answer == wanted for answer in answers.values()):
                return
            exited = [node.port for node in self.nodes if not node.running]
            if exited or time.monotonic() > deadline:
                raise AssertionError(
                    f"Redis Cluster {self.url} not ok within {timeout:.1f} s "
                    f"(exited: {exited}); CLUSTER INFO: {answers}\n{self.log()}"
                )
            time.sleep(0.05)

    def master_of(self, key_or_channel: str) -> int:
        """The port of the master that serves the hash slot of ``key_or_channel``
        (hash tags count: ``{user1}.a`` goes where ``user1`` goes), as ``CLUSTER
        SLOTS`` of the first running node tells it.

        Raises:
            AssertionError: no running node, or no master serves the slot.
        """
        slot = redis.cluster.key_slot(key_or_channel.encode())
        running = [node for node in self.nodes if node.running]
        assert running, f"no node of {self.url} is running"
        with redis_client(running[0].port) as client:
            ranges = client.execute_command("CLUSTER SLOTS")
        for first, last, master, *_replicas in ranges:
            if first <= slot <= last:
                return int(master[1])
        raise AssertionError(f"no master serves slot {slot} of {key_or_channel!r}: {ranges}")

    def commandstats(self, name: str) -> int:
        """Calls of command ``name`` (``spublish``, ``cluster|info``) since the nodes
        started: ``INFO commandstats`` ``cmdstat_<name>`` summed over the running
        nodes (those of a node that is down are lost, as a restart loses them).
        Redis counts the calls made by scripts too."""
        total = 0
        for node in self.nodes:
            if node.running:
                with redis_client(node.port) as client:
                    stats = client.info("commandstats")
                total += int(stats.get(f"cmdstat_{name.lower()}", {}).get("calls", 0))
        return total

    def stop(self) -> None:
        """Stop every node (SIGTERM, wait, SIGKILL if needed); idempotent."""
        for node in self.nodes:
            node.stop()

    def log(self) -> str:
        """``redis-cli --cluster create``'s output, then each node's log."""
        parts = []
        if self.create_log_path.exists():
            text = self.create_log_path.read_text(encoding="utf-8", errors="replace")
            parts.append("--- redis-cli --cluster create:\n" + _ANSI.sub("", text))
        for node in self.nodes:
            if node.log_path.exists():
                parts.append(
                    f"--- redis-server 127.0.0.1:{node.port} (pid {node.pid}):\n{node.log()}"
                )
        return "\n".join(parts)


@contextlib.contextmanager
def running_redis_cluster(directory: Path, size: int = 3) -> Iterator[RedisCluster]:
    """A started :class:`RedisCluster` (in ``directory``), stopped when the block
    ends, whichever way; what the ``redis_cluster`` fixture yields.

    Fails the test (no traceback) when redis-server or redis-cli is missing or
    redis-server is older than :data:`CLUSTER_MIN_VERSION`.  Free ports that raced
    away are retried with new ones, up to three attempts.
    """
    for program, package in ((REDIS_SERVER, "redis-server"), (REDIS_CLI, "redis-tools")):
        if not os.access(program, os.X_OK):
            pytest.fail(
                f"{program} not found: the Redis Cluster tests need a real cluster; "
                f"install it with `apt-get install -y {package}`",
                pytrace=False,
            )
    version = redis_server_version()
    if version[:2] < CLUSTER_MIN_VERSION:
        pytest.fail(
            f"{REDIS_SERVER} is {'.'.join(map(str, version))}: the Redis Cluster tests "
            f"need sharded pub/sub, Redis >= {'.'.join(map(str, CLUSTER_MIN_VERSION))}",
            pytrace=False,
        )
    cluster = started(lambda attempt: RedisCluster(directory / f"cluster{attempt}", size=size))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A fresh, empty three-master Redis Cluster on free ports of 127.0.0.1
    (``redis_cluster.url`` is the ``redis+cluster://`` URL); stopped afterwards."""
    with running_redis_cluster(tmp_path) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_cli(redis_cluster: RedisCluster) -> Iterator[redis.cluster.RedisCluster]:
    """A redis-py cluster client of the test's cluster (seeded by its first node);
    closed afterwards."""
    client = redis.cluster.RedisCluster(
        host="127.0.0.1", port=redis_cluster.ports[0], decode_responses=True
    )
    yield client
    client.close()


# -- subscriptions, as the bus tests read them (test_bus, test_subscription, test_message) --


def drain(sub: greenbus.Subscription) -> list[object]:
    """Everything queued on a handler-less subscription now, as data."""
    out = []
    while True:
        try:
            out.append(sub.get_nowait().data)
        except (greenbus.ChannelEmpty, greenbus.EndOfChannel):
            return out


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """What the bus logged at ``level`` (on ``greenbus.bus``)."""
    return [r for r in caplog.records if r.name == "greenbus.bus" and r.levelno == level]


@pytest.fixture(scope="module", params=["c", "pure"])
def codec(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the tests that use it with both codecs: the hot frames in C, then the pure
    parser alone (a hub process a test starts takes ``GREENBUS_PURE_PYTHON`` for it)."""
    saved = protocol._fast_pub, protocol._fast_msg, protocol._fast_body
    c = request.param == "c"
    protocol._fast_pub = _codec.pub_decoder(protocol.Pub) if c else None
    protocol._fast_msg = _codec.msg_decoder(protocol.Msg) if c else None
    protocol._fast_body = _codec.msg_body if c else None
    yield request.param
    protocol._fast_pub, protocol._fast_msg, protocol._fast_body = saved
