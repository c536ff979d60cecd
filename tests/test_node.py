"""The hub is language-agnostic: Node.js peers speak protocol v1 to it.

A hub runs as a subprocess (``python -m greenbus serve --port 0``) for the
whole module; each test starts ``tests/node/peer.mjs`` (plain Node, only the
``ws`` package) in the role it needs and talks to it through the hub, from
another Node peer or from a Python :func:`greenbus.connect` client in this
process.  Node and ``ws`` are required, not optional: when either is missing
the tests fail and say to run ``npm install --prefix tests/node`` (CI runs
``npm ci --prefix tests/node``).

Every wait here is gevent-friendly (``gevent.select`` on the peer's stdout,
``gevent.sleep`` while polling for exit), so the Python client's greenlets
keep running while a test waits for Node; no ``gevent.subprocess``, whose
SIGCHLD reaping would reach the children of other test modules.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, child_env
from nodejs import NODE_DIR, LineReader, node_executable, wait_for_exit

import greenbus
from greenbus.protocol import CloseCode, ErrorCode

PEER = NODE_DIR / "peer.mjs"

#: Seconds a Node peer may live; it is killed after that, whatever happens.
NODE_TIMEOUT = 30.0
#: The peer's own deadline (it exits 4 with a message): inside NODE_TIMEOUT.
PEER_TIMEOUT = 20.0
#: Seconds to wait for the hub to print its URL, and to stop.
HUB_TIMEOUT = 10.0


def read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


class NodePeer:
    """One ``node peer.mjs URL MODE ARGS...`` process (see the top of peer.mjs)."""

    def __init__(self, url: str, mode: str, args: tuple[str, ...], log_dir: Path) -> None:
        node = node_executable("ws")
        self.mode = mode
        self.argv = [mode, *args]
        self.stderr_path = log_dir / f"node-{mode}-{time.monotonic_ns()}.stderr"
        self.deadline = time.monotonic() + NODE_TIMEOUT
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [node, str(PEER), "--timeout", str(PEER_TIMEOUT), url, mode, *args],
                cwd=NODE_DIR,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self._lines = LineReader(self.proc, self.describe)

    def describe(self) -> str:
        stderr = read_file(self.stderr_path).strip() or "(nothing)"
        return (
            f"node peer.mjs {' '.join(self.argv)} (exit code {self.proc.poll()}); "
            f"its stderr: {stderr}"
        )

    def read_json(self) -> Any:
        """The next JSON line the peer printed; fails if it exits or times out first."""
        line = self._lines.readline(self.deadline)
        if line is None:
            wait_for_exit(self.proc, min(self.deadline, time.monotonic() + 5))
            pytest.fail(f"expected another line, but the output ended: {self.describe()}")
        return self._parse(line)

    def _parse(self, line: str) -> Any:
        try:
            return json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r} from {self.describe()}")

    def finish(self, exit_code: int = 0) -> list[Any]:
        """Every JSON line still to come; asserts the peer then exits with ``exit_code``."""
        lines = []
        while (line := self._lines.readline(self.deadline)) is not None:
            lines.append(self._parse(line))
        code = wait_for_exit(self.proc, self.deadline)
        if code is None:
            pytest.fail(f"did not exit within {NODE_TIMEOUT} s: {self.describe()}")
        assert code == exit_code, f"expected exit code {exit_code}: {self.describe()}"
        return lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            wait_for_exit(self.proc, time.monotonic() + 5)
        if self.proc.poll() is None:  # pragma: no cover - a kill that does not take
            self.proc.wait(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


# -- the hub and the fixtures ----------------------------------------------------


class Hub:
    """``python -m greenbus serve --port 0`` in a subprocess."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def describe(self) -> str:
        stderr = read_file(self.log).strip() or "(nothing)"
        return f"the hub (exit code {self.proc.poll()}); its stderr: {stderr}"


@contextlib.contextmanager
def running_hub(log_dir: Path) -> Iterator[Hub]:
    """Start a hub, yield it once it printed its URL; terminate it (or kill it) afterwards."""
    log = log_dir / "hub.stderr"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "greenbus", "serve", "--port", "0", "--log-level", "info"],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )

    hub = Hub("", proc, log)
    try:
        line = LineReader(proc, hub.describe).readline(time.monotonic() + HUB_TIMEOUT)
        prefix = "greenbus hub listening on "
        assert line is not None and line.startswith(prefix), (
            f"unexpected {line!r} from {hub.describe()}"
        )
        hub.url = line[len(prefix) :]
        assert hub.url.startswith("ws://127.0.0.1:") and hub.url.endswith("/"), line
        yield hub
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if wait_for_exit(proc, time.monotonic() + HUB_TIMEOUT) is None:
                proc.kill()
                proc.wait(timeout=5)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture(scope="module")
def hub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One hub for the whole module: its URL."""
    with running_hub(tmp_path_factory.mktemp("hub")) as hub:
        yield hub.url


@pytest.fixture
def node_peer(hub_url: str, tmp_path: Path) -> Iterator[Callable[..., NodePeer]]:
    """``node_peer(MODE, *ARGS)`` starts a Node peer on the hub; all are killed afterwards."""
    peers: list[NodePeer] = []

    def start(mode: str, *args: str) -> NodePeer:
        peer = NodePeer(hub_url, mode, args, tmp_path)
        peers.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in peers:
            peer.kill()


@pytest.fixture
def python_client(hub_url: str, request: pytest.FixtureRequest) -> Iterator[greenbus.RemoteBus]:
    """A :func:`greenbus.connect` client of the hub, in this process."""
    client = greenbus.connect(hub_url, name=f"py-{request.node.name}", timeout=5)
    try:
        assert client.connected, f"the Python client could not connect to {hub_url}"
        yield client
    finally:
        client.close(timeout=5)


# -- Node to Node -----------------------------------------------------------------


def test_a_node_subscriber_receives_a_thousand_messages_from_a_node_publisher_in_order(
    node_peer: Callable[..., NodePeer],
) -> None:
    sub = node_peer("sub", "n2n.>", "1000")
    assert sub.read_json() == {"subscribed": "n2n.>"}

    pub = node_peer("pub", "n2n.counter", "1000")

    assert pub.finish() == [{"published": 1000}]
    received = sub.finish()
    assert len(received) == 1000
    assert all(line["topic"] == "n2n.counter" for line in received)
    assert [line["data"] for line in received] == [{"i": k} for k in range(1000)]


# -- Python and Node ----------------------------------------------------------------


def test_a_node_subscriber_receives_what_a_python_client_publishes_data_and_headers_intact(
    python_client: greenbus.RemoteBus, node_peer: Callable[..., NodePeer]
) -> None:
    sub = node_peer("sub", "py2n.>", "3")
    assert sub.read_json() == {"subscribed": "py2n.>"}

    python_client.emit("py2n", "not matched: '>' needs one more token")
    python_client.emit(
        "py2n.text", {"text": "héllo wörld ✓ 🚌", "quote": '"'}, headers={"trace": "t-1"}
    )
    python_client.emit("py2n.json.types", [0, -1, 1.5, 2**53, None, True, False, {}, []])
    python_client.emit("py2n.none")

    assert sub.finish() == [
        {
            "topic": "py2n.text",
            "data": {"text": "héllo wörld ✓ 🚌", "quote": '"'},
            "headers": {"trace": "t-1"},
        },
        {"topic": "py2n.json.types", "data": [0, -1, 1.5, 2**53, None, True, False, {}, []]},
        {"topic": "py2n.none", "data": None},
    ]


def test_a_python_subscriber_receives_what_a_node_publisher_publishes_in_order(
    python_client: greenbus.RemoteBus, node_peer: Callable[..., NodePeer]
) -> None:
    sub = python_client.subscribe("n2py.>", maxsize=None)
    # The hub handles one connection's frames in order: once this probe comes
    # back, the subscription is in place for the Node publisher too.
    python_client.emit("n2py.probe", "probe")
    assert sub.get(timeout=5).data == "probe"

    pub = node_peer("pub", "n2py.counter", "200")

    assert pub.finish() == [{"published": 200}]
    received = [sub.get(timeout=5) for _ in range(200)]
    assert {m.topic for m in received} == {"n2py.counter"}
    assert [m.data for m in received] == [{"i": k} for k in range(200)]
    assert all(m.reply_to is None and not m.headers for m in received)


def test_a_python_requester_gets_the_replies_of_a_node_responder(
    python_client: greenbus.RemoteBus, node_peer: Callable[..., NodePeer]
) -> None:
    echo = node_peer("echo", "n.echo", "3")
    assert echo.read_json() == {"subscribed": "n.echo"}

    requests: list[Any] = ["ping", {"n": 1, "s": "é"}, [1, [2, [3]]]]
    replies = [python_client.request("n.echo", data, timeout=5) for data in requests]

    assert [r.data for r in replies] == [{"echo": data} for data in requests]
    assert all(r.topic.startswith("_INBOX.") for r in replies)
    assert len({r.topic for r in replies}) == 3, "each request has its own inbox"
    assert echo.finish() == [{"echoed": r.topic} for r in replies]


def test_a_node_requester_gets_the_reply_of_a_python_responder(
    python_client: greenbus.RemoteBus, node_peer: Callable[..., NodePeer]
) -> None:
    def double(msg: greenbus.Message) -> None:
        msg.reply({"answer": msg.data["q"] * 2})

    python_client.subscribe("py.double", double)
    # The responder is in place once it answers a request of its own client.
    assert python_client.request("py.double", {"q": 1}, timeout=5).data == {"answer": 2}

    req = node_peer("request", "py.double", '{"q": 21}')

    [reply] = req.finish()
    assert reply["data"] == {"answer": 42}
    assert reply["topic"].startswith("_INBOX.node.")


# -- errors ----------------------------------------------------------------------------


def test_bad_frames_from_node_get_the_documented_error_codes_and_the_connection_survives(
    node_peer: Callable[..., NodePeer],
) -> None:
    errors = node_peer("errors")

    answers = errors.finish()

    # (case, op, code, id): an id is echoed whenever the frame had a usable one.
    assert [(a["case"], a["op"], a.get("code"), a["id"]) for a in answers] == [
        ("not-json", "error", "bad_json", None),
        ("not-an-object", "error", "bad_frame", None),
        ("missing-op", "error", "bad_frame", "missing-op"),
        ("unknown-op", "error", "unknown_op", "unknown-op"),
        ("pub-missing-topic", "error", "bad_frame", "pub-missing-topic"),
        ("pub-empty-token", "error", "bad_topic", "pub-empty-token"),
        ("pub-wildcard-topic", "error", "bad_topic", "pub-wildcard-topic"),
        ("sub-partial-wildcard", "error", "bad_topic", "sub-partial-wildcard"),
        ("sub-ok", "ack", None, "sub-ok"),
        ("sub-duplicate-sid", "error", "duplicate_sid", "sub-duplicate-sid"),
        ("unsub-unknown-sid", "error", "unknown_sid", "unsub-unknown-sid"),
        ("hello-protocol-3", "error", "unsupported_protocol", "hello-protocol-3"),
        ("ping-after-errors", "pong", None, "ping-after-errors"),
    ]
    documented = {code.value for code in ErrorCode}
    assert {a["code"] for a in answers if "code" in a} <= documented


def test_a_binary_message_from_node_makes_the_hub_close_the_connection_with_1003(
    node_peer: Callable[..., NodePeer],
) -> None:
    binary = node_peer("binary")

    [closed] = binary.finish()

    assert closed["closed"] == CloseCode.UNSUPPORTED_DATA == 1003


# -- the hub going away ------------------------------------------------------------------


def test_a_node_subscriber_sees_a_terminated_hub_go_away_with_1001(tmp_path: Path) -> None:
    # HubServer.stop() (the CLI's SIGTERM handler) documents: "close every
    # peer with 1001 (going away), wait for them".  A hub of its own, as it
    # is stopped.
    with running_hub(tmp_path) as hub:
        peer = NodePeer(hub.url, "sub", ("gone.>", "1"), tmp_path)
        try:
            assert peer.read_json() == {"subscribed": "gone.>"}

            hub.proc.send_signal(signal.SIGTERM)

            assert wait_for_exit(hub.proc, time.monotonic() + HUB_TIMEOUT) == 0, hub.describe()
            [closed] = peer.finish(exit_code=3)
            assert closed == {"closed": 1001, "reason": "hub shutting down"}, hub.describe()
        finally:
            peer.kill()
