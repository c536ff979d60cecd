"""``greenbus serve --workers 2`` against ``--workers 1``: ingest and fan-out, side by side.

Every sample starts its own processes: the ``greenbus serve`` under test
(``--workers 2`` with a fresh redis-server; ``--workers 1`` with one too,
the same federation; or ``--workers 1`` alone, a plain hub, as a user runs
each), and the clients, each a process of its own
(``python -m perf.workers COMMAND OPTIONS``):

* ``pub-acked``: one connection; pre-framed ``pub`` frames without ids, and a
  last one with an id; the clock stops at its ack (the hub acks in order, so
  every pub before it was taken: with history in Redis, stored there).
* ``pub-warm``: one connection; sends ``<topic>.warm`` every few ms until
  told "go" on stdin, then a pre-framed flood on ``<topic>.data``.
* ``sub-count``: one ``greenbus.connect`` client subscribed to ``<topic>.data``
  and ``<topic>.warm``;
  says ``warm`` at the first warm message (so the flood cannot start before
  its worker's interest reached the others), then counts the data.

Which worker a connection lands on is the kernel's choice (SO_REUSEPORT
hashes the addresses): many connections (24 publishers by default), so that
the split evens out (with 6, one worker often got 5 and set the pace).

Every client stays connected, its process idle, until the sample ends
(:func:`_linger`): one that exited as soon as it had its result spent tens
of ms of CPU on interpreter teardown while the others were still timed,
which on 2 cores took CPU from the hub under test (a publisher that finished
early on the less loaded worker slowed the other one).
"""

from __future__ import annotations

import json
import select
import socket
import sys
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.sync.client import connect

import greenbus
from greenbus.protocol import Pub, encode

from .hub import (
    READY_TIMEOUT,
    RESULT_TIMEOUT,
    _payloads,
    _send_all,
    clock,
    count_arrivals,
)
from .procs import HOST, MeasurementError, Processes, check_stream, gather, run_worker, say
from .systems import System

__all__ = ["SUBSCRIBERS", "WORKERS", "WORKER_SYSTEMS", "measure"]

#: Subscriber processes of the fan-out (the ingest's publishers: the profile's
#: ``workers_publishers``).
SUBSCRIBERS = 4
#: Seconds between the warm-up messages of the fan-out's publisher.
WARM_EVERY = 0.01
#: The systems: their ``--workers``, and whether they run with ``--redis``.
WORKERS = {
    "greenbus-serve": (1, False),
    "greenbus-serve-redis": (1, True),
    "greenbus-serve-workers2": (2, True),
}
WORKER_SYSTEMS = {name: System(name) for name in WORKERS}


def _serve(processes: Processes, workers: int, redis: bool, history: int) -> str:
    """``greenbus serve --workers N`` (``redis``: with a fresh redis-server); its URL."""
    options: list[object] = ["--history", history, "--max-pending", 10_000_000]
    options += ["--log-level", "warning", "--stats-interval", 0]
    if redis:
        port = processes.redis("redis-server", "greenbus-serve-workers", READY_TIMEOUT)
        options += ["--workers", workers, "--redis", f"redis://{HOST}:{port}/0"]
    port = processes.serve(f"serve --workers {workers}", *options, timeout=READY_TIMEOUT)[1]
    return f"ws://{HOST}:{port}/"


def _ingest(workers: int, redis: bool, history: int, messages: int, publishers: int) -> float:
    """msgs/s: ``publishers`` processes send ``messages`` in all; until the last ack."""
    share = messages // publishers
    with Processes() as processes:
        url = _serve(processes, workers, redis, history)
        pubs = [
            processes.python(f"pub-acked {i + 1}", "perf.workers", "pub-acked",
                             _json(url=url, topic=f"ingest.{i}", messages=share), stdin=True)
            for i in range(publishers)
        ]  # fmt: skip
        gather(pubs, "ready", READY_TIMEOUT)
        for pub in pubs:
            pub.send("go")
        results = gather(pubs, "result", RESULT_TIMEOUT).values()
        start = min(r["start"] for r in results)
        end = max(r["end"] for r in results)
        return float(share * publishers / (end - start))


def _fanout(workers: int, redis: bool, history: int, messages: int) -> float:
    """delivered msgs/s: one publisher, SUBSCRIBERS subscriber processes."""
    with Processes() as processes:
        url = _serve(processes, workers, redis, history)
        subs = [
            processes.python(f"sub-count {i + 1}", "perf.workers", "sub-count",
                             _json(url=url, topic="fanout", messages=messages), stdin=True)
            for i in range(SUBSCRIBERS)
        ]  # fmt: skip
        gather(subs, "ready", READY_TIMEOUT)
        pub = processes.python(
            "pub-warm",
            "perf.workers",
            "pub-warm",
            _json(url=url, topic="fanout", messages=messages),
            stdin=True,
        )
        pub.expect("ready", READY_TIMEOUT)
        gather(subs, "warm", READY_TIMEOUT)
        pub.send("go")
        start = pub.expect("result", RESULT_TIMEOUT)["start"]
        lasts = [
            check_stream(r, messages, "sub-count")
            for r in gather(subs, "result", RESULT_TIMEOUT).values()
        ]
        return float(SUBSCRIBERS * messages / (max(lasts) - start))


def measure(system: System, case: Any, sizes: Any) -> list[float]:
    """One sample of ``case`` (params: shape "ingest" (with publishers) or "fanout",
    history, messages)."""
    workers, redis = WORKERS[system.name]
    params = dict(case.params)
    if params.pop("shape") == "ingest":
        return [_ingest(workers, redis, **params)]
    return [_fanout(workers, redis, **params)]


def _json(**options: Any) -> str:
    return json.dumps(options)


# -- the helper processes ------------------------------------------------------------------


def _flood(topic: str, messages: int) -> bytes:
    return b"".join(
        Frame(Opcode.TEXT, encode(Pub(topic, i)).encode()).serialize(mask=True)
        for i in range(messages)
    )


def _wait_go() -> None:
    if sys.stdin.readline().strip() != "go":
        raise MeasurementError("no go")


def _linger() -> None:
    """Wait for EOF on stdin (the parent's stop), connection still open.

    A client that has said its result must not close its connection and exit
    (interpreter teardown: tens of ms of CPU) while the others are still
    timed: on 2 cores that would take CPU from the hub under test."""
    sys.stdin.read()


def pub_acked(url: str, topic: str, messages: int) -> None:
    """Send ``messages`` pre-framed pubs, then one with an id; result: start and ack time."""
    flood = _flood(topic, messages)
    last = Frame(Opcode.TEXT, encode(Pub(topic, -1, id="last")).encode()).serialize(mask=True)
    with connect(url, compression=None, proxy=None, ping_interval=None) as ws:
        ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        say(ready=True)
        _wait_go()
        start = clock()
        _send_all(ws.socket, flood + last)
        while True:
            frame = ws.recv(RESULT_TIMEOUT)
            if '"id":"last"' in str(frame):
                break
        say(result={"start": start, "end": clock()})
        _linger()


def pub_warm(url: str, topic: str, messages: int) -> None:
    """``<topic>.warm`` every WARM_EVERY s until "go", then ``<topic>.data`` 0..messages-1."""
    flood = _flood(f"{topic}.data", messages)
    warm = Frame(Opcode.TEXT, encode(Pub(f"{topic}.warm", 0)).encode()).serialize(mask=True)
    with connect(url, compression=None, proxy=None, ping_interval=None) as ws:
        ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        say(ready=True)
        while not select.select([sys.stdin], [], [], WARM_EVERY)[0]:
            _send_all(ws.socket, warm)
        _wait_go()
        start = clock()
        _send_all(ws.socket, flood)
        say(result={"start": start, "end": clock()})
        _linger()


def sub_count(url: str, topic: str, messages: int) -> None:
    """Subscribe to ``<topic>.data`` and ``.warm``; say warm at the first warm; count the data."""
    client = greenbus.connect(url, name="perf-sub")
    try:
        data = client.subscribe(f"{topic}.data", maxsize=None)
        warm = client.subscribe(f"{topic}.warm", maxsize=None)
        say(ready=True)
        warm.get(timeout=READY_TIMEOUT)
        say(warm=True)
        say(result=count_arrivals(_payloads(data.get), messages))
        _linger()
    finally:
        client.close(timeout=5)


if __name__ == "__main__":
    run_worker({"pub-acked": pub_acked, "pub-warm": pub_warm, "sub-count": sub_count})
