"""Fixtures shared by the test modules."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import greenbus
from greenbus import HubServer, RemoteBus

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
LISTENING = re.compile(rb"greenbus hub listening on (ws://([0-9.]+):(\d+)/)")


def child_env() -> dict[str, str]:
    """The environment of a child process: the checkout importable, warnings fatal."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONWARNINGS"] = "error"
    env["PYTHONIOENCODING"] = "utf-8"
    env.pop("GREENBUS_TOKEN", None)
    return env


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

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def start_hub_process(log_path: Path, *args: str, port: int = 0) -> HubProcess:
    """Run ``python -m greenbus serve --port PORT ARGS`` and wait for its listening line."""
    cmd = [sys.executable, "-m", "greenbus", "serve", "--port", str(port), *args]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=child_env(),
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
    url, host, bound = (g.decode() for g in match.groups())
    return HubProcess(proc, url, host, int(bound), log_path)


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
        code = hub.stop()
        # Shown by pytest only when the test failed.
        print(f"--- {hub.url} (pid {hub.pid}, exit {code}) log, last lines:")
        print("\n".join(hub.log().splitlines()[-40:]))


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
