"""``greenbus serve --workers N``: real supervisors, workers, Redis and clients.

Which worker a client is on is what its worker says: each worker's
``$greenbus.stats`` document names it (``worker``), and ``$`` topics are
never federated, so a client subscribed to it hears only its own worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from conftest import HubProcess, RedisServer, run_child, start_hub_process
from hubclient import client, recv, send, until_closed
from websockets.sync.client import ClientConnection

from greenbus.bridge.metrics import Family
from greenbus.bridge.siblings import Siblings

#: Stats often, so the workers' shared figures are fresh soon.
FAST_STATS = ("--stats-interval", "0.2")


@pytest.fixture
def workers(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., HubProcess]]:
    """``start(*args, n=2)``: a ``greenbus serve --workers n`` on Redis; stopped afterwards."""
    started: list[HubProcess] = []

    def start(*args: str, n: int = 2) -> HubProcess:
        hub = start_hub_process(
            tmp_path / f"supervisor{len(started)}.log",
            "--workers", str(n), "--redis", redis_server.url, *FAST_STATS, *args,
        )  # fmt: skip
        started.append(hub)
        return hub

    yield start
    for hub in started:
        hub.stop_and_show_log()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Call ``check`` until it returns something true; return that (AssertionError at
    the timeout)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)
    return result


def worker_of(ws: ClientConnection) -> str:
    """The worker ``ws`` is connected to (it subscribes to ``$greenbus.stats`` on sid 999)."""
    send(ws, op="sub", sid=999, topic="$greenbus.stats", id="stats")
    while True:
        frame = recv(ws)
        if frame["op"] == "msg" and frame["sid"] == 999:
            send(ws, op="unsub", sid=999, id="unstats")
            while recv(ws).get("id") != "unstats":  # a last msg may come before the ack
                pass
            return str(frame["data"]["worker"])


def spread_clients(
    stack: ExitStack, url: str, at_least: int = 2, most: int = 40
) -> dict[str, list[ClientConnection]]:
    """Connect clients (hello'd) until every one of two workers has ``at_least``:
    {worker: its clients}."""
    by_worker: dict[str, list[ClientConnection]] = {}
    while len(by_worker) < 2 or min(map(len, by_worker.values())) < at_least:
        assert sum(map(len, by_worker.values())) < most, f"all on one worker: {by_worker}"
        ws = stack.enter_context(client(url))
        send(ws, op="hello", protocol=1, id="hello")
        assert recv(ws)["op"] == "welcome"
        by_worker.setdefault(worker_of(ws), []).append(ws)
    return by_worker


def test_a_subscriber_on_one_worker_gets_in_order_and_once_what_a_publisher_on_the_other_published(
    workers: Callable[..., HubProcess],
) -> None:
    hub = workers()
    with ExitStack() as stack:
        by_worker = spread_clients(stack, hub.url)
        (a, on_a), (b, on_b) = by_worker.items()
        subscriber, publisher = on_a[0], on_b[0]
        send(subscriber, op="sub", sid=1, topic="chat.>", id="s")
        assert recv(subscriber) == {"op": "ack", "id": "s"}
        # The other worker publishes to Redis once it knows worker a wants it:
        # probe until one arrives (bounded by the federation's interest delay).
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "worker a never got worker b's messages"
            send(publisher, op="pub", topic="chat.warm", data=0)
            try:
                assert recv(subscriber, timeout=0.2)["topic"] == "chat.warm"
                break
            except TimeoutError:
                continue
        n = 300
        for i in range(n):
            send(publisher, op="pub", topic="chat.room", data=i)
        send(publisher, op="pub", topic="chat.end", data=n)
        got = []
        while True:
            frame = recv(subscriber, timeout=10)
            if frame["topic"] == "chat.end":
                break
            if frame["topic"] == "chat.room":
                got.append(frame["data"])
        assert got == list(range(n))
        # /metrics (any worker) shows the sum over the workers, and each worker's share.
        clients = sum(map(len, by_worker.values()))

        def summed() -> dict[str, float] | None:
            m = hub.metrics()
            mine = {w: m.get(f'greenbus_connections{{worker="{w}"}}') for w in (a, b)}
            if m.get("greenbus_workers") != 2 or m.get("greenbus_connections") != clients:
                return None
            if mine != {a: len(on_a), b: len(on_b)}:
                return None
            return m if m["greenbus_messages_in_total"] >= n + 2 else None

        m = wait_for("/metrics summing both workers", summed)
        assert m["greenbus_messages_in_total"] == sum(
            m[f'greenbus_messages_in_total{{worker="{w}"}}'] for w in (a, b)
        )
        assert m[f'greenbus_messages_in_total{{worker="{b}"}}'] >= n + 2
        health = hub.health()
        assert health["workers"] == 2 and health["worker"] in (a, b)


def test_the_stats_document_of_any_worker_carries_the_totals_and_the_worker_count(
    workers: Callable[..., HubProcess],
) -> None:
    hub = workers()
    with ExitStack() as stack:
        by_worker = spread_clients(stack, hub.url)
        watcher = next(iter(by_worker.values()))[0]
        send(watcher, op="sub", sid=7, topic="$greenbus.stats", id="w")
        total = sum(map(len, by_worker.values()))

        def whole() -> dict[str, Any] | None:
            frame = recv(watcher)
            if frame["op"] != "msg":
                return None
            doc = frame["data"]
            ok = doc["workers"] == 2 and doc["totals"]["connections"] == total
            return doc if ok else None

        doc = wait_for("a stats document of both workers", whole)
        assert doc["peers_total"] == total
        assert {p["worker"] for p in doc["peers"]} == set(by_worker)


def test_sigterm_closes_every_workers_peers_with_1001_and_exits_0(
    workers: Callable[..., HubProcess],
) -> None:
    hub = workers()
    with ExitStack() as stack:
        by_worker = spread_clients(stack, hub.url)
        hub.proc.send_signal(signal.SIGTERM)
        for peers in by_worker.values():
            for ws in peers:
                assert until_closed(ws, timeout=10)[1][0] == 1001
        assert hub.proc.wait(15) == 0, hub.log()
    assert "Traceback" not in hub.log()


def test_a_worker_that_dies_is_restarted_and_counted_in_the_log(
    workers: Callable[..., HubProcess],
) -> None:
    hub = workers()
    pids = wait_for(
        "the supervisor's line naming its workers",
        lambda: re.search(r"2 workers on port \d+ \(pid (\d+), (\d+)\)", hub.log()),
    )
    victim = int(pids.group(1))
    os.kill(victim, signal.SIGKILL)
    wait_for(
        "the restart's log line",
        lambda: re.search(rf"worker 1 \(pid {victim}\) exited with status -9; "
                          r"restarting it \(restart #1\)", hub.log()),
    )  # fmt: skip
    # Serving on: both workers share their figures again.
    wait_for("two live workers", lambda: hub.health()["workers"] == 2, timeout=15)
    assert hub.proc.poll() is None


#: ``greenbus serve`` arguments that --workers refuses, and what the one line must name.
USAGE_ERRORS = {
    "workers-without-redis": (["--workers", "2"], "--workers 2 needs --redis"),
    "workers-zero": (["--workers", "0"], "--workers"),
    "workers-not-a-number": (["--workers", "two"], "--workers"),
    "workers-with-wsgi": (
        ["--workers", "2", "--redis", "redis://127.0.0.1:1/0", "--transport", "wsgi"],
        "--workers needs the default transport",
    ),
}


@pytest.mark.parametrize(("options", "named"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_workers_refuses_a_bad_setting_in_one_line_and_exits_2(
    options: list[str], named: str
) -> None:
    run = run_child([sys.executable, "-m", "greenbus", "serve", "--port", "0", *options])
    stderr = run.stderr.decode()
    assert run.returncode == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("greenbus serve: error: "), stderr
    assert named in stderr, stderr
    assert run.stdout == b""


def test_workers_on_a_busy_port_say_so_in_one_line_and_exit_1() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        run = run_child(
            [sys.executable, "-m", "greenbus", "serve", "--port", str(port),
             "--workers", "2", "--redis", "redis://127.0.0.1:1/0"]
        )  # fmt: skip
    lines = [line for line in run.stderr.decode().splitlines() if "greenbus serve" in line]
    assert lines == [f"greenbus serve: port {port} is already in use"], run.stderr
    assert run.returncode == 1 and run.stdout == b""


#: A supervisor whose workers are given a command line they refuse (in a real
#: supervisor they run its own, which it checked: this stands for a worker that
#: fails for its own reasons).
DOOMED = """\
import sys
from greenbus.cli import build_parser, workers
args = build_parser().parse_args(["serve", "--port", "0", "--workers", "2", "--redis", sys.argv[1]])
args.argv = ["serve", "--max-connections", "0"]
sys.exit(workers.supervise(args))
"""


def test_a_worker_that_cannot_start_stops_them_all_in_one_line_with_exit_1(
    redis_server: RedisServer,
) -> None:
    run = run_child([sys.executable, "-c", DOOMED, redis_server.url])
    stderr = run.stderr.decode()
    assert run.returncode == 1, stderr
    last = stderr.splitlines()[-1]
    assert re.fullmatch(
        r"greenbus serve: worker \d of 2 did not start: it exited with status 2 "
        r"\(its log is above\); stopping the others",
        last,
    ), stderr
    assert "Traceback" not in stderr
    assert run.stdout == b""


# -- the merge, without processes ----------------------------------------------------


class _FakeRedis:
    def close(self) -> None:
        pass


def _siblings(others: dict[str, dict[str, Any]]) -> Siblings:
    s = Siblings("redis://x", "k", "w1-a", 1.0, connect=lambda url: _FakeRedis())
    s.others = others
    return s


def _families(connections: int, closes: dict[int, int], peers: list[str]) -> list[Family]:
    return [
        ("connections", "gauge", "Open.", [("", connections)]),
        (
            "closes_total",
            "counter",
            "By code.",
            [(f'{{code="{c}"}}', n) for c, n in closes.items()],
        ),
        ("queue_depth", "gauge", "Per peer.", [(f'{{peer="{p}"}}', 1) for p in peers]),
    ]


def test_merged_metrics_sum_every_label_set_and_list_each_workers_series() -> None:
    other = {"at": time.time(), "metrics": json.loads(json.dumps(_families(3, {1001: 2}, ["p1"])))}
    merged = {f[0]: f[3] for f in _siblings({"w2-b": other}).merge_metrics(
        _families(1, {1000: 1, 1001: 1}, ["p1", "p2"])
    )}  # fmt: skip
    assert merged["workers"] == [("", 2)]
    assert merged["connections"] == [
        ("", 4), ('{worker="w1-a"}', 1), ('{worker="w2-b"}', 3),
    ]  # fmt: skip
    assert merged["closes_total"] == [
        ('{code="1000"}', 1), ('{code="1001"}', 3),
        ('{worker="w1-a",code="1000"}', 1), ('{worker="w1-a",code="1001"}', 1),
        ('{worker="w2-b",code="1001"}', 2),
    ]  # fmt: skip
    # Peers are per worker (p1 is on both): never summed.
    assert merged["queue_depth"] == [
        ('{worker="w1-a",peer="p1"}', 1), ('{worker="w1-a",peer="p2"}', 1),
        ('{worker="w2-b",peer="p1"}', 1),
    ]  # fmt: skip
