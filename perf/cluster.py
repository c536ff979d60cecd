"""The ``federation_cluster`` metric: federation throughput across nodes through a
3-master Redis Cluster (sharded pub/sub) against one redis-server, side by side
(issue 16).

Every sample starts its own processes: the Redis under test (a fresh
redis-server, or a fresh cluster of three ``redis-server --cluster-enabled
yes`` built by ``redis-cli --cluster create``, see
:meth:`perf.procs.Processes.redis_cluster`), one receiving node and one or
two sending nodes (``python -m perf.cluster COMMAND OPTIONS``), each a
``greenbus.Bus`` federated through it (``redis://`` or ``redis+cluster://``):

* ``cluster-sub`` (node B) subscribes to ``<root>.>`` for every topic root of
  :data:`ROOTS` and says it is ready once Redis confirmed every subscription
  and holds its interest; it counts every topic's stream, which must arrive
  whole and in order;
* ``cluster-send`` (node A; two of them in the 2-sender case) waits until it
  has heard B's interest in every root, emits ``<root>.warm`` on each (so that
  its connection to every master is open), then on "go" emits
  ``<root>.s<sender>`` payloads ``0..n-1``, round-robin over the roots.

A root is a topic's first token: over a cluster, each root is one channel on
one master (:mod:`greenbus.federation.cluster`).  :data:`ROOTS` are picked by
their hash slot so that each master of a freshly created 3-master cluster
(slots split in three equal ranges) serves two of them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import gevent
import gevent.event
import gevent.socket
from redis.crc import key_slot

from .hub import (
    READY_TIMEOUT,
    RESULT_TIMEOUT,
    _node,
    _published,
    drained,
    heard,
    registered,
)
from .procs import (
    HOST,
    Child,
    MeasurementError,
    Processes,
    Tally,
    check_stream,
    gather,
    run_worker,
    say,
)
from .systems import System

__all__ = ["MASTERS", "ROOTS", "SYSTEMS", "measure", "roots"]

#: The cluster's masters (no replicas).
MASTERS = 3
#: Topic roots per master.
PER_MASTER = 2
#: The system of the cluster (``greenbus-federation`` is the same nodes on one redis-server).
SINGLE, CLUSTER = "greenbus-federation", "greenbus-federation-cluster"
SYSTEMS = {CLUSTER: System(CLUSTER)}
#: Emits between a sender's ``gevent.sleep(0)`` (as federation_throughput's).
YIELD_EVERY = 100
SLOTS = 16384


def roots(masters: int = MASTERS, per_master: int = PER_MASTER) -> tuple[str, ...]:
    """``per_master`` topic roots in each of ``masters`` equal slot ranges, in order."""
    chosen: list[list[str]] = [[] for _ in range(masters)]
    i = 0
    while any(len(c) < per_master for c in chosen):
        name = f"root{i}"
        # A root's channel is "<prefix>:{<root>}": its hash tag is the root.
        third = key_slot(name.encode()) * masters // SLOTS
        if len(chosen[third]) < per_master:
            chosen[third].append(name)
        i += 1
    return tuple(name for c in zip(*chosen, strict=True) for name in c)


ROOTS = roots()


def measure(system: System, case: Any, sizes: Any) -> list[float]:
    """One sample: msgs/s from the first send to B's last arrival (params:
    ``messages`` in all, ``senders``)."""
    senders, messages = case.params["senders"], case.params["messages"]
    per_topic = messages // (len(ROOTS) * senders)
    with Processes() as processes:
        if system.name == CLUSTER:
            ports = processes.redis_cluster(CLUSTER, READY_TIMEOUT, MASTERS)
            url = "redis+cluster://" + ",".join(f"{HOST}:{port}" for port in ports)
        else:
            port = processes.redis("redis-server", system.name, READY_TIMEOUT)
            url = f"redis://{HOST}:{port}/0"
        sub = _start(processes, "cluster-sub", url=url, per_topic=per_topic, senders=senders)
        sub.expect("ready", READY_TIMEOUT)
        sends = [
            _start(processes, "cluster-send", name=f"cluster-send {s + 1}", url=url, sender=s,
                   per_topic=per_topic)
            for s in range(senders)
        ]  # fmt: skip
        gather(sends, "ready", READY_TIMEOUT)
        for send in sends:
            send.send("go")
        starts = [r["start"] for r in gather(sends, "result", RESULT_TIMEOUT).values()]
        result = sub.expect("result", RESULT_TIMEOUT)
        for topic, tally in result.items():
            check_stream(tally, per_topic, f"cluster-sub's {topic}")
        if len(result) != len(ROOTS) * senders:
            raise MeasurementError(f"cluster-sub heard {len(result)} topics: {sorted(result)}")
        last = max(tally["last_at"] for tally in result.values())
        return [per_topic * len(ROOTS) * senders / (last - min(starts))]


def _start(processes: Processes, command: str, name: str = "", **options: Any) -> Child:
    stdin = command == "cluster-send"
    args = (command, json.dumps(options))
    return processes.python(name or command, "perf.cluster", *args, stdin=stdin)


# -- the helper processes ------------------------------------------------------------------


def _stdin_line() -> str:
    """The next line of stdin ("" at EOF), waiting cooperatively (the federation's
    greenlets keep running)."""
    line = b""
    while not line.endswith(b"\n"):
        gevent.socket.wait_read(0)
        chunk = os.read(0, 1)
        if not chunk:
            break
        line += chunk
    return line.decode()


def cluster_sub(url: str, per_topic: int, senders: int) -> None:
    """Node B: subscribe to every root; count each topic's stream (warm-ups aside)."""
    with _node(url, "perf-cluster-sub") as (bus, federation):
        tallies: dict[str, Tally] = {}
        expected = per_topic * len(ROOTS) * senders
        count, done = [0], gevent.event.Event()

        def handler(msg: Any) -> None:
            if msg.topic.endswith(".warm"):
                return
            now = time.monotonic()
            if (tally := tallies.get(msg.topic)) is None:
                tally = tallies[msg.topic] = Tally()
            tally.add(msg.data, now)
            count[0] += 1
            if count[0] >= expected:
                done.set()

        patterns = [f"{root}.>" for root in ROOTS]
        for pattern in patterns:
            bus.subscribe(pattern, handler)
        for pattern in patterns:
            registered(federation, pattern)
        say(ready=True)
        drained(federation, done, lambda: count[0])
        say(result={topic: tally.result() for topic, tally in tallies.items()})


def cluster_send(url: str, sender: int, per_topic: int) -> None:
    """Node A: once it has heard B's interest and warmed every root, on "go" emit
    ``<root>.s<sender>`` 0..per_topic-1 round-robin over the roots; from the
    first emit until the federation has published them all.  Then stays
    connected until EOF on stdin."""
    patterns = tuple(f"{root}.>" for root in ROOTS)
    with _node(url, f"perf-cluster-send-{sender}") as (bus, federation):
        for pattern in patterns:
            heard(federation, pattern)
        for root in ROOTS:
            bus.emit(f"{root}.warm")
        _published(federation, len(ROOTS))
        topics = [f"{root}.s{sender}" for root in ROOTS]
        say(ready=True)
        if _stdin_line().strip() != "go":
            raise MeasurementError("no go")
        emit, pause = bus.emit, gevent.sleep
        start, emitted = time.monotonic(), 0
        for i in range(per_topic):
            for topic in topics:
                emit(topic, i)
                emitted += 1
                if emitted % YIELD_EVERY == 0:
                    pause(0)
        _published(federation, len(ROOTS) + emitted)
        say(result={"start": start, "end": time.monotonic()})
        _stdin_line()  # EOF: the sample is over (no teardown while others are timed)


if __name__ == "__main__":
    run_worker({"cluster-sub": cluster_sub, "cluster-send": cluster_send})
