"""The ``federation_interest`` metric: what a local emit costs Redis and the
emitter, with and without another node wanting its topic (issue 16).

A federated node publishes a topic to Redis only while some other node
wants it (``greenbus/federation/registry.py``).  One *scenario* is a fresh
redis-server and two node processes (``python -m perf.interest COMMAND
OPTIONS``, each a ``greenbus.Bus`` federated as in :mod:`perf.hub`):

* ``interest-node`` (node B) subscribes to the emitted topic (*remote
  interest*) or to another one (*no remote interest*), and says it is ready
  once Redis confirmed its SUBSCRIBE and holds its interest;
* ``interest-emit`` (node A) waits until its view of the federation is live
  and has heard B's pattern, then emits M messages on the topic in batches,
  alternating batch by batch with an unfederated Bus in the same process
  (each bus has one local subscriber on the topic).  Around every batch it
  reads Redis's ``INFO commandstats`` (which also counts the commands run
  inside scripts), after the batch has been delivered locally and, on the
  federated bus, published (with history every emit; without history only
  what another node wants: an unwanted emit never reaches the federation);
  the calls of each bus's windows are summed.

One scenario gives every figure of its (interest, history) pair: the µs per
emit of both buses, and the PUBLISH and EVALSHA calls per emit.  The suite
measures one (case, system) pair per call, so the first pair of a scenario
runs it and keeps the other pairs' samples for their calls in the same round
(:data:`_LEFT`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import redis

import greenbus
from greenbus import Bus, Federation

from .hub import (
    IDLE_TIMEOUT,
    READY_TIMEOUT,
    RESULT_TIMEOUT,
    Idle,
    _node,
    _redis_server,
    drained,
    heard,
    registered,
)
from .procs import HOST, Child, MeasurementError, Processes, Tally, check_stream, run_worker, say
from .systems import System

__all__ = ["HISTORY", "INTEREST_TTL", "SYSTEMS", "cases", "measure"]

#: Messages each topic keeps in the history system's Redis.
HISTORY = 100
#: The nodes' ``interest_ttl`` (s): their heartbeats (a script each, every ttl / 3)
#: then fall outside a scenario's emits, which count EVALSHA calls.
INTEREST_TTL = 60.0
#: The topic node A emits on, and the one node B wants instead without remote interest.
TOPIC, ELSEWHERE = "interest.x", "elsewhere.x"
#: The federated systems and their ``history`` option; ``greenbus`` is the unfederated
#: Bus beside the non-history one.
FEDERATED = {"greenbus-federation": 0, "greenbus-federation-history": HISTORY}
PLAIN = "greenbus"
#: The systems only this metric has (the others are perf/systems.py's and perf/hub.py's).
SYSTEMS = {"greenbus-federation-history": System("greenbus-federation-history")}
#: How often node A polls while a batch drains.
POLL = 0.0005

#: The cases, in the report's order: (label, remote interest, figure, unit).
CASES = (
    ("no remote interest: µs per emit", False, "us", "µs"),
    ("no remote interest: PUBLISH per emit", False, "publish", "PUBLISH/emit"),
    ("no remote interest: EVALSHA per emit", False, "evalsha", "EVALSHA/emit"),
    ("remote interest: µs per emit", True, "us", "µs"),
    ("remote interest: PUBLISH per emit", True, "publish", "PUBLISH/emit"),
    ("remote interest: EVALSHA per emit", True, "evalsha", "EVALSHA/emit"),
)

#: Samples a scenario made for the (case label, system) pairs not yet asked for.
_LEFT: dict[tuple[str, str], list[float]] = {}


def cases(messages: int, batch: int) -> tuple[tuple[str, str, dict[str, Any]], ...]:
    """Each case's label, unit and params."""
    return tuple(
        (
            label,
            unit,
            {"interest": interest, "figure": figure, "messages": messages, "batch": batch},
        )
        for label, interest, figure, unit in CASES
    )


def measure(system: str, label: str, params: dict[str, Any]) -> list[float]:
    """The samples of ``system`` in the case ``label`` (one round)."""
    if (left := _LEFT.pop((label, system), None)) is not None:
        return left
    interest = params["interest"]
    history = FEDERATED.get(system, 0)
    got = _scenario(interest, history, params["messages"], params["batch"])
    systems = [name for name, h in FEDERATED.items() if h == history]
    systems += [PLAIN] if history == 0 else []
    for case, wanted, figure, _ in CASES:
        if wanted == interest:
            for name in systems:
                bus = "plain" if name == PLAIN else "federated"
                samples = got[bus]["us"] if figure == "us" else [got[bus][figure]]
                _LEFT[case, name] = samples
    return _LEFT.pop((label, system))


def _scenario(interest: bool, history: int, messages: int, batch: int) -> dict[str, Any]:
    """Run one scenario: {"plain"|"federated": {"us": [...], "publish": x, "evalsha": x}}."""
    with Processes() as processes:
        port = _redis_server("redis-server", "greenbus-federation", processes)["port"]
        wanted = TOPIC if interest else ELSEWHERE
        node = {"port": port, "history": history}
        b = _start(processes, "interest-node", **node, topic=wanted, messages=messages * interest)
        b.expect("ready", READY_TIMEOUT)
        a = _start(
            processes, "interest-emit", **node, wanted=wanted, messages=messages, batch=batch
        )
        result: dict[str, Any] = a.expect("result", RESULT_TIMEOUT)
        if interest:
            check_stream(b.expect("result", RESULT_TIMEOUT), messages, b.name)
        return result


def _start(processes: Processes, command: str, **options: Any) -> Child:
    return processes.python(command, "perf.interest", command, json.dumps(options))


# -- the helper processes ------------------------------------------------------------------


def _federated(port: int, name: str, history: int) -> Any:
    """A node (:func:`perf.hub._node`) with this metric's options."""
    return _node(port, name, history=history, interest_ttl=INTEREST_TTL)


def interest_node(port: int, history: int, topic: str, messages: int) -> None:
    """Node B: subscribe to ``topic``; once Redis has the subscription and the
    interest, say ready; count ``messages`` arrivals (0: none expected, wait
    for SIGTERM)."""
    with _federated(port, "perf-interest-b", history) as (bus, federation):
        tally, done = Tally(), gevent.event.Event()

        def handler(msg: Any) -> None:
            tally.add(msg.data, time.monotonic())
            if tally.count >= messages:
                done.set()

        bus.subscribe(topic, handler)
        registered(federation, topic)
        say(ready=True)
        if not messages:
            gevent.event.Event().wait()
        drained(federation, done, lambda: tally.count)
        say(result=tally.result())


def _calls(client: redis.Redis) -> tuple[int, int]:
    """PUBLISH and EVALSHA calls Redis has run so far (inside scripts too)."""
    stats = client.info("commandstats")
    publish, evalsha = (stats.get(f"cmdstat_{name}", {}) for name in ("publish", "evalsha"))
    return int(publish.get("calls", 0)), int(evalsha.get("calls", 0))


def _drained(
    got: list[Any], emitted: int, federation: Federation | None, published: int
) -> Callable[[], bool]:
    """True once the local subscriber ``got`` all ``emitted`` messages and the
    federated bus (if any) has published ``published`` messages in all and
    holds none.

    Only what the federation was handed can be waited for: with history every
    emit (the script keeps them all), without history only what another node
    wants (an unwanted emit never reaches the federation, so there is nothing
    to wait for; ``INFO commandstats`` says whether any PUBLISH went out)."""

    def done() -> bool:
        if len(got) != emitted:
            return False
        if federation is None:
            return True
        s = federation.stats()
        if s.dropped or s.unencodable:
            raise MeasurementError(f"{s.dropped} dropped, {s.unencodable} unencodable")
        return s.outbound_pending == 0 and s.published >= published

    return done


def interest_emit(port: int, history: int, wanted: str, messages: int, batch: int) -> None:
    """Node A: batches of emits on :data:`TOPIC`, alternating (in a shuffled order per
    pair of batches) between an unfederated Bus and the federated one."""
    plain = greenbus.Bus("perf-interest-plain")
    try:
        with (
            _federated(port, "perf-interest-a", history) as (bus, federation),
            redis.Redis(host=HOST, port=port) as client,
        ):
            buses: dict[str, tuple[Bus, Federation | None, list[Any]]] = {}
            for name, b, f in (("plain", plain, None), ("federated", bus, federation)):
                got: list[Any] = []
                b.subscribe(TOPIC, got.append)
                buses[name] = (b, f, got)
            heard(federation, wanted)
            us: dict[str, list[float]] = {name: [] for name in buses}
            calls = {name: [0, 0] for name in buses}  # PUBLISH, EVALSHA
            rng = random.Random(0)
            for first in range(0, messages, batch):
                payloads = range(first, min(first + batch, messages))
                order = list(buses)
                rng.shuffle(order)
                for name in order:
                    b, f, got = buses[name]
                    # What the federation publishes: with history every emit,
                    # without history only what another node wants.
                    handed = payloads.stop if history or federation.wants(TOPIC) else 0
                    drained = _drained(got, payloads.stop, f, handed)
                    before = _calls(client)
                    emit, start = b.emit, time.perf_counter()
                    for i in payloads:
                        emit(TOPIC, i)
                    elapsed = time.perf_counter() - start
                    _until(drained)
                    after = _calls(client)
                    us[name].append(elapsed / len(payloads) * 1e6)
                    calls[name] = [
                        n + a - b for n, a, b in zip(calls[name], after, before, strict=True)
                    ]
            figures = {
                name: {"us": us[name], "publish": c[0] / messages, "evalsha": c[1] / messages}
                for name, c in calls.items()
            }
            say(result=figures)
    finally:
        plain.close(timeout=1)


def _until(condition: Callable[[], bool]) -> None:
    """Yield to the node's greenlets until ``condition()``; Idle after ``IDLE_TIMEOUT``."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise Idle(f"a batch did not drain in {IDLE_TIMEOUT} s")
        gevent.sleep(POLL)


if __name__ == "__main__":
    run_worker({"interest-node": interest_node, "interest-emit": interest_emit})
