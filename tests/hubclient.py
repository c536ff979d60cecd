"""Clients and hub launchers shared by the hub test modules.

``client`` and friends drive the ``websockets`` sync client; :class:`RawClient`
is a bare socket driven by ``websockets``' sans-I/O ``ClientProtocol`` that
sends exactly what it is told and reads only when asked.  :func:`launch_hub`
runs ``greenbus serve`` like ``conftest.start_hub_process`` does, but also
for ``wss://`` hubs, with extra environment variables, and optionally under
``tests/greenlet_probe.py``, which reports the hub's live greenlets on
SIGUSR1 (see :meth:`LaunchedHub.greenlets`).
"""

from __future__ import annotations

import json
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from conftest import HubProcess, spawn_hub
from gevent import socket as gsocket
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.uri import parse_uri

from greenbus import RemoteBus

__all__ = [
    "Closed",
    "HubLauncher",
    "LaunchedHub",
    "RawClient",
    "ask",
    "client",
    "in_step",
    "launch_hub",
    "metric_eventually",
    "recv",
    "send",
    "until_closed",
]

# -- clients -------------------------------------------------------------------


def client(url: str, **options: Any) -> ClientConnection:
    """A ``websockets`` sync client; use it as a context manager."""
    options = {
        "open_timeout": 5,
        "close_timeout": 2,
        "proxy": None,
        "compression": None,
        "ping_interval": None,
        **options,
    }
    return ws_connect(url, **options)


def send(ws: ClientConnection, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    return json.loads(ws.recv(timeout))  # type: ignore[no-any-return]


def ask(ws: ClientConnection, **frame: Any) -> dict[str, Any]:
    """Send one frame and return the next frame the hub sends."""
    send(ws, **frame)
    return recv(ws)


#: How the hub closed: (close code, close reason).
Closed = tuple[int, str]


def hello_v2(ws: ClientConnection, session: str | None = None) -> dict[str, Any]:
    """Say hello in protocol 2 (with a publisher session, if given); the welcome."""
    frame: dict[str, Any] = {"op": "hello", "protocol": 2, "id": "hello"}
    if session is not None:
        frame["session"] = session
    welcome = ask(ws, **frame)
    assert welcome["op"] == "welcome" and welcome["protocol"] == 2, welcome
    return welcome


def start_position(url: str, pattern: str) -> str:
    """Where a protocol-2 ``sub`` on ``pattern`` starts (its ack's ``pos``), asked by a
    client that then leaves: a position to resume from later."""
    with client(url) as subscriber:
        hello_v2(subscriber)
        return str(ask(subscriber, op="sub", sid=1, topic=pattern, id=1)["pos"])


def until_closed(ws: ClientConnection, timeout: float = 5.0) -> tuple[list[dict[str, Any]], Closed]:
    """Read until the hub closes: (the frames before the close, (code, reason))."""
    frames = []
    try:
        while True:
            frames.append(recv(ws, timeout))
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, f"the hub closed without a close frame: {exc}"
        return frames, (exc.rcvd.code, exc.rcvd.reason)


class RawClient:
    """A WebSocket client on a bare gevent socket.

    The opening handshake and the framing are ``websockets``' sans-I/O
    ``ClientProtocol``; nothing is read from the socket unless a method is
    called, so the hub sees a peer that does not read.  Gevent sockets
    cooperate with an in-process hub and simply block otherwise.
    """

    def __init__(self, url: str, *, rcvbuf: int | None = None, timeout: float = 5.0) -> None:
        uri = parse_uri(url)
        #: Send what the protocol queues on its own (pongs, the close reply)
        #: as soon as it is queued; set to False to hold it back.
        self.replying = True
        self.sock = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                # Before connect(), so the window the hub sees is small.
                self.sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((uri.host, uri.port))
            self.protocol = ClientProtocol(uri, max_size=None)
            self.protocol.send_request(self.protocol.connect())
            self._flush()
            self._frames: deque[Frame] = deque()
            events: list[Any] = []
            while not events:
                events = self._read()
            assert isinstance(events[0], Response), events
            assert events[0].status_code == 101, events[0]
            self._frames.extend(events[1:])
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)
            else:
                self.sock.shutdown(gsocket.SHUT_WR)

    def _read(self) -> list[Any]:
        data = self.sock.recv(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        events = self.protocol.events_received()
        if self.replying:
            self._flush()
        if not data and not events:
            raise EOFError("the hub closed the TCP connection")
        return events

    def send_json(self, **frame: Any) -> None:
        self.protocol.send_text(json.dumps(frame).encode())
        self._flush()

    def send_burst(self, frames: list[dict[str, Any]]) -> None:
        """Send many text messages with one ``sendall``: they reach the hub back to back."""
        for frame in frames:
            self.protocol.send_text(json.dumps(frame).encode())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def reply_now(self) -> None:
        """Send what the protocol queued while ``replying`` was False."""
        self._flush()

    def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the socket, bypassing the protocol."""
        self.sock.sendall(data)

    def next_frame(self) -> Frame:
        while not self._frames:
            self._frames.extend(self._read())
        return self._frames.popleft()

    def recv_json(self) -> dict[str, Any]:
        """The next text message (control frames skipped)."""
        while True:
            frame = self.next_frame()
            if frame.opcode is Opcode.TEXT:
                return json.loads(frame.data)  # type: ignore[no-any-return]
            assert frame.opcode in (Opcode.PING, Opcode.PONG, Opcode.CLOSE), frame

    def ask_json(self, **frame: Any) -> dict[str, Any]:
        """Send one text message and return the next one the hub sends."""
        self.send_json(**frame)
        return self.recv_json()

    def until_closed(self) -> tuple[list[dict[str, Any]], Closed]:
        """Read to the end of the stream: (text messages before the close, (code, reason))."""
        texts = []
        while True:
            try:
                frame = self.next_frame()
            except EOFError:
                break
            if frame.opcode is Opcode.TEXT:
                texts.append(json.loads(frame.data))
        close = self.protocol.close_rcvd
        assert close is not None, "the hub closed the TCP connection without a close frame"
        return texts, (close.code, close.reason)

    def abort(self) -> None:
        """Reset the connection (RST): no close frame, no FIN."""
        self.sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def metric_eventually(
    hub: HubProcess, name: str, predicate: Callable[[float], bool], timeout: float = 10.0
) -> dict[str, float]:
    """Poll ``/metrics`` until ``predicate(value of name)``; return the samples."""
    deadline = time.monotonic() + timeout
    while True:
        samples = hub.metrics()
        if predicate(samples.get(name, float("nan"))):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} still {samples.get(name)} after {timeout} s")
        gevent.sleep(0.02)


def in_step(remote: RemoteBus) -> None:
    """Return once the hub has applied everything ``remote`` sent so far.

    The hub handles one connection's frames in order, so a round trip on a
    fresh subscription comes back only after the earlier frames took effect.
    """
    probe = f"probe.{id(remote):x}"
    with remote.subscribe(probe, maxsize=None) as sub:
        remote.emit(probe)
        sub.get(timeout=5)


# -- hub processes ---------------------------------------------------------------

#: Runs ``greenbus serve`` and reports its live greenlets on SIGUSR1.
GREENLET_PROBE = Path(__file__).resolve().with_name("greenlet_probe.py")


@dataclass
class LaunchedHub(HubProcess):
    """A hub process started by :func:`launch_hub`."""

    scheme: str = "ws"
    probe_path: Path | None = None
    probes: int = 0

    def greenlets(self, timeout: float = 5.0) -> int:
        """The hub's live greenlets, counted in the hub on request (SIGUSR1).

        Raises:
            AssertionError: the hub was not started with ``probe=True``, or
                did not answer within ``timeout`` seconds.
        """
        assert self.probe_path is not None, "start the hub with probe=True"
        self.probes += 1
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                report = json.loads(self.probe_path.read_text())
            except (OSError, ValueError):
                report = {"seq": 0}
            if report["seq"] >= self.probes:
                return int(report["greenlets"])
            if time.monotonic() > deadline:
                raise AssertionError(f"the hub's greenlet probe did not answer in {timeout} s")
            time.sleep(0.005)


def launch_hub(
    log_path: Path,
    *args: str,
    port: int = 0,
    probe: bool = False,
    env: dict[str, str] | None = None,
) -> LaunchedHub:
    """Run ``greenbus serve --port PORT ARGS`` and wait for its listening line.

    Args:
        probe: run it under ``tests/greenlet_probe.py`` (see ``LaunchedHub.greenlets``).
        env: variables added to the child's environment (``conftest.child_env``).
    """
    probe_path = log_path.with_suffix(".probe.json") if probe else None
    runner = [str(GREENLET_PROBE)] if probe else ["-m", "greenbus"]
    cmd = [sys.executable, *runner, "serve", "--port", str(port), *args]
    extra = dict(env or {})
    if probe_path is not None:
        extra["GREENBUS_PROBE_FILE"] = str(probe_path)
    proc, url, scheme, host, bound = spawn_hub(cmd, log_path, extra)
    return LaunchedHub(proc, url, host, bound, log_path, scheme, probe_path)


class HubLauncher:
    """Starts hub processes of one transport in ``directory``; :meth:`stop_all` at teardown."""

    def __init__(self, directory: Path, transport: str = "websockets") -> None:
        self.directory = directory
        self.transport = transport
        self.hubs: list[LaunchedHub] = []

    def start(self, *args: str, port: int = 0, **options: Any) -> LaunchedHub:
        """:func:`launch_hub` with ``--transport``; the options are its keyword arguments."""
        log_path = self.directory / f"hub{len(self.hubs)}.log"
        hub = launch_hub(log_path, "--transport", self.transport, *args, port=port, **options)
        self.hubs.append(hub)
        return hub

    def stop_all(self) -> None:
        for hub in self.hubs:
            hub.stop_and_show_log()
