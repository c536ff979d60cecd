"""The hub under faults: processes killed, hubs restarted, connections churned.

Real ``greenbus serve`` processes on 127.0.0.1, over both transports.  The
hub runs under ``tests/greenlet_probe.py`` where a test counts its live
greenlets (greenbus itself is unchanged); everything else is read from
``/metrics`` and ``/proc/PID/status``.  What must hold:

- a client process killed with SIGKILL in the middle of a stream leaves no
  connection, subscription or greenlet behind on the hub;
- a hub killed with SIGKILL and restarted on its port is rejoined by
  ``greenbus.connect`` clients (reconnect, re-subscribe, resume) within 2 s,
  and no message is delivered twice;
- hundreds of connects and disconnects, clean and abrupt, leave nothing
  behind and do not grow the hub's memory;
- every message is accounted for: all delivered under the default settings
  with a reading subscriber, and delivered + dropped == sent under
  ``--slow-policy drop_oldest``.
"""

from __future__ import annotations

import itertools
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from conftest import ROOT, HubProcess, child_env, stop_process
from gevent import socket as gsocket
from hubclient import HubLauncher, LaunchedHub, RawClient, in_step, metric_eventually
from waiting import call_in_thread, wait_until
from websockets.frames import Frame, Opcode

from greenbus import RemoteBus


@pytest.fixture
def launcher(tmp_path: Path, hub_transport: str) -> Iterator[HubLauncher]:
    launcher = HubLauncher(tmp_path, hub_transport)
    yield launcher
    launcher.stop_all()


def settled(hub: LaunchedHub, greenlets: int, timeout: float = 10.0) -> dict[str, float]:
    """Wait until the hub has no connection, no remote subscription and no more
    than ``greenlets`` live greenlets; return its metrics."""
    samples = metric_eventually(hub, "greenbus_connections", lambda v: v == 0, timeout)
    assert samples["greenbus_remote_subscriptions"] == 0
    assert not [k for k in samples if k.startswith("greenbus_queue_depth{")]
    deadline = time.monotonic() + timeout
    while (live := hub.greenlets()) > greenlets:
        assert time.monotonic() < deadline, f"{live} greenlets, up from {greenlets}"
        gevent.sleep(0.02)
    return samples


# -- a client process killed mid-stream -------------------------------------------------------

DOOMED_CLIENT = """
import sys
import gevent
import greenbus

url, role = sys.argv[1], sys.argv[2]
remote = greenbus.connect(url, name="doomed-" + role, timeout=5)
assert remote.connected
subs = [remote.subscribe("doomed.%d.>" % n, maxsize=None) for n in range(20)]
flood = remote.subscribe("flood.>", maxsize=None)
with remote.subscribe("doomed.ready", maxsize=None) as probe:
    remote.emit("doomed.ready")
    probe.get(timeout=5)  # every subscription is in place
print("ready", flush=True)
n = 0
while True:
    if role == "publisher":
        for _ in range(99):
            remote.emit("doomed.%d.x" % (n % 20), n)
            n += 1
        # Paced by the hub's ack of each 100th: a publisher that also
        # receives its own messages must not outrun its reading (the hub
        # would rightly close it as a slow consumer before it is killed).
        remote.publish("doomed.%d.x" % (n % 20), n, timeout=30)
        n += 1
    else:
        flood.get(timeout=60)
"""


def start_doomed(url: str, role: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(
        [sys.executable, "-c", DOOMED_CLIENT, url, role],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line != b"ready\n":
        stop_process(child)
        raise AssertionError(f"the {role} client did not get ready: {line!r}")
    return child


class Flooder:
    """Publishes ``flood.data`` as fast as the hub reads, from a greenlet, until stopped."""

    def __init__(self, url: str) -> None:
        self.raw = RawClient(url)
        self.sent = 0
        self._running = True
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        padding = "x" * 200
        while self._running:
            burst = [{"op": "pub", "topic": "flood.data", "data": [n, padding]} for n in range(100)]
            self.raw.send_burst(burst)
            self.sent += len(burst)
            gevent.sleep(0)

    def wait_for_more(self, count: int) -> None:
        """Return once ``count`` more messages have been sent."""
        target = self.sent + count
        wait_until(lambda: self.sent >= target, 10, f"{count} more flood messages")

    def stop(self) -> None:
        self._running = False
        self._greenlet.get(timeout=10)
        self.raw.sock.close()


@pytest.mark.parametrize("role", ["subscriber", "publisher"])
def test_a_client_process_killed_mid_stream_leaves_no_connection_subscription_or_greenlet(
    launcher: HubLauncher, role: str
) -> None:
    hub = launcher.start(probe=True)
    greenlets = hub.greenlets()
    for cycle in range(3):
        child = start_doomed(hub.url, role)
        flooder = Flooder(hub.url) if role == "subscriber" else None
        try:
            # Mid-stream: messages are flowing to (or from) the child right now.
            before = hub.metrics()
            key = "greenbus_messages_out_total" if flooder else "greenbus_messages_in_total"
            metric_eventually(hub, key, lambda v, b=before[key]: v > b + 1000)
            metric_eventually(hub, "greenbus_remote_subscriptions", lambda v: v == 21)
            child.send_signal(signal.SIGKILL)
            assert child.wait(5) == -signal.SIGKILL
            if flooder is not None:
                # The hub keeps routing to the dead peer until it notices.
                flooder.wait_for_more(1000)
        finally:
            stop_process(child)
            if flooder is not None:
                flooder.stop()
        samples = settled(hub, greenlets)
        assert samples["greenbus_connections_total"] == (cycle + 1) * (2 if flooder else 1)
        assert samples["greenbus_slow_consumers_total"] == 0
    assert hub.proc.poll() is None


# -- the hub killed and restarted ------------------------------------------------------------


class Counter:
    """Publishes 0, 1, 2, ... on ``seq.n`` every few ms from a greenlet; remembers when."""

    def __init__(self, remote: RemoteBus) -> None:
        self.remote = remote
        self.emitted_at: list[float] = []
        self._running = True
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        for n in itertools.count():
            if not self._running:
                return
            self.emitted_at.append(time.monotonic())
            self.remote.emit("seq.n", n)
            gevent.sleep(0.005)  # a steady stream, not a flood

    def first_emitted_after(self, moment: float) -> int | None:
        """The first number published at or after ``moment`` (None: not yet)."""
        return next((n for n, at in enumerate(self.emitted_at) if at >= moment), None)

    def stop(self) -> int:
        self._running = False
        self._greenlet.get(timeout=5)
        return len(self.emitted_at)


class Collector:
    """Records every message of a subscription, with the time it arrived."""

    def __init__(self, remote: RemoteBus, pattern: str) -> None:
        self.got: list[tuple[int, float]] = []
        self.sub = remote.subscribe(pattern, self._on, maxsize=None)

    def _on(self, msg: Any) -> None:
        self.got.append((msg.data, time.monotonic()))

    @property
    def numbers(self) -> list[int]:
        return [n for n, _ in self.got]


def test_clients_rejoin_a_hub_restarted_on_its_port_within_2_s_and_nothing_arrives_twice(
    hub_factory: Callable[..., HubProcess], remote_bus: Callable[..., RemoteBus]
) -> None:
    first = hub_factory()
    subscriber = remote_bus(first.url, name="subscriber")
    collector = Collector(subscriber, "seq.>")
    in_step(subscriber)
    publisher = remote_bus(first.url, name="publisher")
    counter = Counter(publisher)
    try:
        wait_until(lambda: len(collector.got) >= 50, 10, "50 messages through the first hub")
        first.kill()
        wait_until(
            lambda: not subscriber.connected and not publisher.connected,
            5,
            "both clients to see the hub go",
        )
        # Started from an OS thread, so that the clients keep retrying (and
        # backing off) while it starts, as they would in a process of their own.
        second = call_in_thread(hub_factory, port=first.port)
        restarted = time.monotonic()
        # Resumed: a message published after the restart reaches the subscriber.
        wait_until(lambda: counter.first_emitted_after(restarted) is not None, 5, "an emit")
        fresh = counter.first_emitted_after(restarted)
        assert fresh is not None
        wait_until(
            lambda: collector.numbers[-1] >= fresh,
            10,
            "the stream to resume through the second hub",
        )
        # When the first message published after the restart arrived.
        resumed = next(at for n, at in collector.got if n >= fresh) - restarted
        metrics = second.metrics()
    finally:
        emitted = counter.stop()
    in_step(publisher)
    wait_until(lambda: collector.numbers[-1] == emitted - 1, 5, "the last message")
    numbers = collector.numbers
    assert resumed < 2.0, f"the stream resumed {resumed:.2f} s after the hub was back"
    assert metrics["greenbus_connections"] == 2
    assert metrics["greenbus_remote_subscriptions"] == 1  # re-subscribed, once
    assert len(numbers) == len(set(numbers)), "a message was delivered twice"
    assert numbers == sorted(numbers), "messages were reordered"
    assert subscriber.statistics().reconnects == publisher.statistics().reconnects == 1


# -- churn ----------------------------------------------------------------------------------------


def churn_once(url: str, how: str) -> None:
    """Connect, subscribe three times, and go away ``how``."""
    raw = RawClient(url)
    try:
        # One write: a second small one would wait for a delayed ACK (Nagle).
        subs = [{"op": "sub", "sid": n, "topic": f"churn.{n}.>"} for n in range(3)]
        raw.send_burst([*subs, {"op": "ping", "id": "in"}])
        assert raw.recv_json() == {"op": "pong", "id": "in"}
        if how == "close":  # a close handshake, as a polite client does
            raw.protocol.send_close(1000)
            raw.reply_now()
            with pytest.raises(EOFError):
                while True:
                    raw.next_frame()
        elif how == "reset":  # RST
            raw.sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == "half-frame":  # a frame cut short, then FIN
            frame = Frame(Opcode.TEXT, b'{"op": "pub", "topic": "churn"}')
            raw.send_raw(frame.serialize(mask=True, extensions=[])[:7])
    finally:
        raw.sock.close()  # "fin": no close frame at all


WAYS = ("close", "fin", "reset", "half-frame")


def test_hundreds_of_connects_and_disconnects_leave_nothing_behind_and_memory_flat(
    launcher: HubLauncher,
) -> None:
    hub = launcher.start(probe=True)
    greenlets = hub.greenlets()
    for n in range(100):  # warm up: the allocator's and the caches' first growth
        churn_once(hub.url, WAYS[n % len(WAYS)])
    settled(hub, greenlets)
    baseline = hub.rss_kib()
    count = 500
    for n in range(count):
        churn_once(hub.url, WAYS[n % len(WAYS)])
        if n % 50 == 0:  # a bare TCP connection and a half-done upgrade, too
            for data in (b"", b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"):
                with gsocket.create_connection((hub.host, hub.port), timeout=5) as sock:
                    sock.sendall(data)
    samples = settled(hub, greenlets)
    grown = hub.rss_kib() - baseline
    assert samples["greenbus_connections_total"] == 100 + count
    closes = {k: v for k, v in samples.items() if k.startswith("greenbus_closes_total{")}
    assert sum(closes.values()) == 100 + count
    assert closes['greenbus_closes_total{code="1000"}'] == (100 + count) // len(WAYS)
    assert grown < 4 * 1024, f"the hub's RSS grew by {grown} KiB over {count} connections"


# -- every message accounted for ----------------------------------------------------------------


def test_with_default_settings_a_reading_subscriber_gets_every_message_and_counters_agree(
    hub_factory: Callable[..., HubProcess], remote_bus: Callable[..., RemoteBus]
) -> None:
    hub = hub_factory()
    subscriber = remote_bus(hub.url, name="subscriber")
    sub = subscriber.subscribe("flood.>", maxsize=None)
    in_step(subscriber)
    publisher = remote_bus(hub.url, name="publisher")
    before = hub.metrics()
    count, window = 20_000, 2_000
    got: list[int] = []
    for n in range(count):
        if n % 500 == 0:  # keep within a window of the reader: no slow consumer here
            while len(got) < n - window:
                got.append(sub.get(timeout=5).data)
        publisher.emit("flood.data", n)
    while len(got) < count:
        got.append(sub.get(timeout=5).data)
    after = hub.metrics()
    assert got == list(range(count))
    assert after["greenbus_messages_in_total"] - before["greenbus_messages_in_total"] == count
    assert after["greenbus_messages_out_total"] - before["greenbus_messages_out_total"] == count
    assert after["greenbus_dropped_total"] == 0
    assert after["greenbus_slow_consumers_total"] == 0
    assert publisher.statistics().dropped_while_disconnected == 0
    assert subscriber.statistics().dropped_on_receive == 0
    assert subscriber.statistics().reconnects == 0


@pytest.mark.parametrize(
    "hub_process", [("--slow-policy", "drop_oldest", "--max-pending", "500")], indirect=True
)
def test_with_drop_oldest_delivered_plus_dropped_equals_sent_exactly(
    hub_process: HubProcess, remote_bus: Callable[..., RemoteBus]
) -> None:
    subscriber = remote_bus(hub_process.url, name="subscriber")
    # A small blocking queue that nobody reads during the flood: the client
    # stops reading its socket, so the hub's queue for it fills and drops.
    sub = subscriber.subscribe("flood.>", maxsize=50)
    in_step(subscriber)
    publisher = remote_bus(hub_process.url, name="publisher")
    count = 20_000
    padding = "x" * 500
    for n in range(count):
        publisher.emit("flood.data", {"n": n, "pad": padding})
    publisher.emit("flood.end")  # the newest message: drop_oldest never drops it
    in_step(publisher)  # the hub has routed (queued or dropped) all of it
    dropped = hub_process.metrics()["greenbus_dropped_total"]
    delivered = []
    while (msg := sub.get(timeout=10)).topic != "flood.end":
        delivered.append(msg.data["n"])
    assert dropped > 0, "nothing was dropped: the test did not fill the hub's queue"
    assert len(delivered) + dropped == count
    assert delivered == sorted(delivered)
    assert delivered[-1] == count - 1
    samples = hub_process.metrics()
    assert samples["greenbus_dropped_total"] == dropped  # no drop after the end marker
    peer_drops = [v for k, v in samples.items() if k.startswith("greenbus_peer_dropped_total{")]
    assert sorted(peer_drops)[-1] == dropped  # all of them on the one slow peer
    assert samples["greenbus_slow_consumers_total"] == 0
    assert subscriber.statistics().dropped_on_receive == 0
    assert subscriber.statistics().reconnects == 0
