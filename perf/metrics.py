"""How each metric of ``python -m perf`` measures; the sizes, and greenbus's targets.

What each metric compares and exactly what its samples time, the sizes of
each profile and the targets are declared in ``suite.toml``.  A metric's
``measure`` takes one system and one case and returns that round's samples;
every sample is verified: a metric whose messages did not all arrive
(exactly once) raises :class:`~perf.procs.MeasurementError`, and the runner
(``__main__.py``) records an error instead of a number.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from greenbus.history import DEFAULT_HISTORY
from greenbus.protocol import encode_msg_body

from . import SUITE, cluster, interest
from .hub import NETWORK
from .procs import MeasurementError
from .systems import IN_PROCESS, Fanout, System
from .workers import SUBSCRIBERS, WORKER_SYSTEMS
from .workers import measure as measure_workers

__all__ = ["DEFAULT", "METRICS", "QUICK", "SYSTEMS", "TARGETS", "TINY", "Case", "Metric", "Sizes"]

#: What the slow subscriber sleeps per message, in seconds.
SLOW = 0.001
#: Producers pause (``gevent.sleep(0)`` for greenlet systems) after this many emits.
YIELD_EVERY = 100
#: Fewest emits in one emit-cost sample, however many subscribers there are.
MIN_EMITS = 5
#: Untimed round trips before a ping-pong series, so the first sample is warm.
WARM_ROUNDTRIPS = 10
#: Subscriber processes of the hub fan-out.
HUB_SUBSCRIBERS = 4
#: Seconds between the stamped messages of a one-way probe across processes:
#: far above their latency, so a message does not queue behind the previous one.
ONE_WAY_GAP = 0.001
#: Topics the hub replay's messages are spread over (the replay: all of them, by wildcard).
REPLAY_TOPICS = 10
#: The history memory probe records its messages this many times more, beyond the bound.
OVERFLOW = 3
#: The fields of suite.toml's ``timed`` texts and target texts.
FIELDS = {
    "hub_subscribers": HUB_SUBSCRIBERS,
    "warm": WARM_ROUNDTRIPS,
    "gap_ms": ONE_WAY_GAP * 1000,
    "yield_every": YIELD_EVERY,
    "replay_topics": REPLAY_TOPICS,
    "history": DEFAULT_HISTORY,
    "overflow": OVERFLOW,
    "subscribers": SUBSCRIBERS,
    "roots": ", ".join(cluster.ROOTS),
    "masters": cluster.MASTERS,
}
#: Every system: in-process ones (systems.py), then those across processes (hub.py).
SYSTEMS: dict[str, System] = {
    **IN_PROCESS,
    **NETWORK,
    **WORKER_SYSTEMS,
    **interest.SYSTEMS,
    **cluster.SYSTEMS,
}

#: How much work each metric does: suite.toml's ``[profiles]`` fields, and ``profile``.
Sizes = SimpleNamespace
DEFAULT, QUICK, TINY = (
    Sizes(profile=name, **{key: values[i] for key, values in SUITE["profiles"].items()})
    for i, name in enumerate(("default", "quick", "tiny"))
)


@dataclass(frozen=True)
class Case:
    """One setting of a metric (a fan-out, a subscriber count...) and its unit."""

    label: str
    unit: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """A measurement (its declaration: suite.toml's ``[metrics.NAME]``)."""

    name: str
    title: str
    #: Exactly what one sample times (written into the JSON).
    timed: str
    systems: tuple[str, ...]
    cases: Callable[[Sizes], tuple[Case, ...]]
    measure: Callable[[System, Case, Sizes], list[float]]
    better: Literal["lower", "higher"] = "lower"
    #: The :class:`Sizes` field that says how many rounds to run.
    rounds_field: str = "rounds"
    #: Run each (case, system) once, unrecorded, before the rounds (if the profile warms up).
    warmup: bool = True

    @property
    def reference(self) -> str:
        """The system the report's ratio column divides by."""
        return "greenbus" if "greenbus" in self.systems else self.systems[-1]

    def rounds(self, sizes: Sizes) -> int:
        rounds: int = getattr(sizes, self.rounds_field)
        return rounds


# -- measuring loops ----------------------------------------------------------------


def _emit_batches(
    system: System, k: int, emits: int, batches: int, slow: float = 0.0
) -> list[float]:
    """µs per emit, one sample per batch of ``emits``; consumers drain untimed between."""
    samples = []
    with system.fanout(k, slow) as fan:
        emit = fan.emit
        for _ in range(batches):
            start = time.perf_counter()
            for i in range(emits):
                emit(i)
            elapsed = time.perf_counter() - start
            fan.wait(emits)
            fan.take(emits)
            samples.append(elapsed / emits * 1e6)
    return samples


def _flood(fan: Fanout, n: int) -> None:
    """Emit payloads 0..n-1, pausing every :data:`YIELD_EVERY` emits."""
    emit, pause = fan.emit, fan.pause
    for start in range(0, n, YIELD_EVERY):
        for i in range(start, min(start + YIELD_EVERY, n)):
            emit(i)
        pause()


def count_reorders(got: Sequence[int], n: int) -> int:
    """How many payloads arrived after one emitted later than them.

    Raises:
        MeasurementError: ``got`` is not a permutation of ``range(n)``.
    """
    if len(got) != n or sorted(got) != list(range(n)):
        raise MeasurementError(f"expected each of {n} payloads once, got {len(got)} payloads")
    late, highest = 0, -1
    for payload in got:
        if payload < highest:
            late += 1
        else:
            highest = payload
    return late


def measure_emit_held(system: System, case: Case, sizes: Sizes) -> list[float]:
    if system.classic is not None:
        return system.classic(sizes.classic_messages)[0]
    return _emit_batches(system, 1, sizes.emit_batch, sizes.emit_batches)


def measure_emit_held_slow(system: System, case: Case, sizes: Sizes) -> list[float]:
    return _emit_batches(system, 1, sizes.slow_batch, sizes.slow_batches, slow=SLOW)


def measure_emit_cost(system: System, case: Case, sizes: Sizes) -> list[float]:
    k = case.params["subscribers"]
    return _emit_batches(system, k, case.params["emits"], sizes.emit_batches)


def measure_pingpong(system: System, case: Case, sizes: Sizes) -> list[float]:
    if system.classic is not None:
        return system.classic(sizes.classic_messages)[1]
    samples = []
    clock = time.perf_counter
    with system.echo() as echo:
        roundtrip = echo.roundtrip
        for i in range(WARM_ROUNDTRIPS):
            roundtrip(i)
        for i in range(sizes.pingpong):
            start = clock()
            reply = roundtrip(i)
            elapsed = clock() - start
            if reply != i:
                raise MeasurementError(f"round trip {i} came back as {reply!r}")
            samples.append(elapsed * 1e6)
    return samples


def measure_throughput(system: System, case: Case, sizes: Sizes) -> list[float]:
    k, m = case.params["fanout"], case.params["messages"]
    with system.fanout(k, 0.0) as fan:
        start = time.perf_counter()
        _flood(fan, m)
        fan.wait(m)
        elapsed = time.perf_counter() - start
        fan.take(m)
    return [k * m / elapsed]


def measure_reorders(system: System, case: Case, sizes: Sizes) -> list[float]:
    n = case.params["messages"]
    with system.fanout(1, 0.0) as fan:
        _flood(fan, n)
        fan.wait(n)
        [got] = fan.take(n)
    return [float(count_reorders(got, n))]


# -- memory: each probe runs in a fresh process -------------------------------------


def _rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _probe(system_name: str, probe: str, via: str, n: int) -> float:
    """Bytes per built item (run in a fresh process, so earlier work cannot skew it)."""
    system = SYSTEMS[system_name]
    build = system.idle_consumers if probe == "consumers" else system.queued_messages
    assert build is not None
    build(min(10, n))()  # one-time costs (hub, caches, lazy imports) are not per item
    gc.collect()
    if via == "rss":
        before = _rss_bytes()
        close = build(n)
        gc.collect()
        grown = _rss_bytes() - before
    else:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        close = build(n)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    close()
    return grown / n


def measure_memory(system: System, case: Case, sizes: Sizes) -> list[float]:
    probe, via = case.params["probe"], case.params["via"]
    if probe == "messages":
        n = sizes.memory_messages
    else:
        n = sizes.memory_threads if system.thread_per_consumer else sizes.memory_consumers
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        per_item = pool.apply(_probe, (system.name, probe, via, n))
    return [per_item * 10_000 / 1e6 if case.unit == "MB" else per_item]


def kept_message(i: int, topics: int) -> tuple[str, bytes]:
    """Message ``i`` of the history probe: its topic, and the body the hub keeps for it
    (as its Feed encodes it, UTF-8), with 100 bytes of JSON data."""
    topic = f"kept.{i % topics:04d}"
    text = "lorem ipsum dolor sit amet, consectetur"
    data = {"seq": f"{i:08d}", "from": f"user-{i % 1000:03d}", "room": "general", "text": text}
    return topic, encode_msg_body(topic, data, None, None).encode()


def _history_probe(system_name: str, topics: int, per_topic: int) -> float:
    """Bytes per kept message beyond its body (run in a fresh process, as :func:`_probe`).

    The messages are made first, untraced: only what the history allocates
    to keep them is traced.  Then they are recorded ``OVERFLOW`` times
    again, and the history must still keep ``per_topic`` of each topic.
    """
    system = SYSTEMS[system_name]
    assert system.history is not None
    history, n = system.history(per_topic), topics * per_topic
    messages = [kept_message(i, topics) for i in range(n)]
    record = history.record
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for topic, body in messages:
        record(topic, body)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    kept = history.statistics().messages
    for _ in range(OVERFLOW):
        for topic, body in messages:
            record(topic, body)
    bound = history.statistics()
    if (kept, bound.messages, bound.remembered_topics) != (n, n, topics):
        raise MeasurementError(
            f"kept {kept} of {n} messages, then {bound.messages} after recording "
            f"{OVERFLOW * n} more, over {bound.remembered_topics} of {topics} topics"
        )
    return grown / n


def measure_history_memory(system: System, case: Case, sizes: Sizes) -> list[float]:
    args = (system.name, case.params["topics"], case.params["per_topic"])
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return [pool.apply(_history_probe, args)]


# -- across processes: perf/hub.py ----------------------------------------------------


def measure_ingest(system: System, case: Case, sizes: Sizes) -> list[float]:
    return [system.ingest(case.params["messages"])]


def measure_hub_fanout(system: System, case: Case, sizes: Sizes) -> list[float]:
    k = case.params["subscribers"]
    return [system.broadcast(case.params["messages"], k)]


def measure_one_way(system: System, case: Case, sizes: Sizes) -> list[float]:
    probe = system.one_way(WARM_ROUNDTRIPS + case.params["messages"], ONE_WAY_GAP)
    return probe[WARM_ROUNDTRIPS:]


def measure_relay(system: System, case: Case, sizes: Sizes) -> list[float]:
    return [system.relay(case.params["messages"], YIELD_EVERY)]


def measure_replay(system: System, case: Case, sizes: Sizes) -> list[float]:
    return [system.replay(case.params["messages"], REPLAY_TOPICS)]


def measure_hub_memory(system: System, case: Case, sizes: Sizes) -> list[float]:
    assert system.connections is not None
    return [system.connections(case.params["connections"])]


def measure_interest(system: System, case: Case, sizes: Sizes) -> list[float]:
    return interest.measure(system.name, case.label, dict(case.params))


def measure_dropin(system: System, case: Case, sizes: Sizes) -> list[float]:
    from .dropin import measure  # its samples come from a fresh, monkey-patched process

    return measure(case.params["shape"], system.name, case.params["n"])


# -- the list -------------------------------------------------------------------------


def _one(label: str, unit: str, **params: int | str) -> Callable[[Sizes], tuple[Case, ...]]:
    """A metric's one case; a ``str`` param names the :class:`Sizes` field that sets it."""
    return lambda sizes: (
        Case(
            label,
            unit,
            {k: getattr(sizes, v) if isinstance(v, str) else v for k, v in params.items()},
        ),
    )


def subscriber_cases(sizes: Sizes) -> tuple[Case, ...]:
    return tuple(
        Case(
            f"{k} subscriber{'s' if k > 1 else ''}",
            "µs",
            {"subscribers": k, "emits": max(MIN_EMITS, sizes.cost_deliveries // k)},
        )
        for k in sizes.subscriber_counts
    )


def fanout_cases(sizes: Sizes) -> tuple[Case, ...]:
    return tuple(
        Case(
            f"1→{k}",
            "msgs/s",
            {"fanout": k, "messages": max(YIELD_EVERY, sizes.throughput_deliveries // k)},
        )
        for k in sizes.fanouts
    )


MEMORY_CASES = (
    Case("per idle consumer, tracemalloc", "bytes", {"probe": "consumers", "via": "tracemalloc"}),
    Case("per 10k idle consumers, RSS", "MB", {"probe": "consumers", "via": "rss"}),
    Case("per queued message, tracemalloc", "bytes", {"probe": "messages", "via": "tracemalloc"}),
)
ROUND_TRIP = _one("round trip", "µs")


def history_cases(sizes: Sizes) -> tuple[Case, ...]:
    body = len(kept_message(0, sizes.history_topics)[1])
    label = f"per kept message, beyond its {body}-byte body"
    return (Case(label, "bytes", {"topics": sizes.history_topics, "per_topic": DEFAULT_HISTORY}),)


def hub_memory_cases(sizes: Sizes) -> tuple[Case, ...]:
    return tuple(
        Case(f"{n:,} subscribed connections", "KiB", {"connections": n})
        for n in sizes.hub_connections
    )


def workers_cases(sizes: Sizes) -> tuple[Case, ...]:
    ingest = {"shape": "ingest", "publishers": sizes.workers_publishers}
    return tuple(
        Case(f"{label}, history {h}", "msgs/s", {**params, "history": h, "messages": n})
        for label, params, n in (
            ("ingest", ingest, sizes.hub_ingest_messages),
            (f"fan-out 1→{SUBSCRIBERS}", {"shape": "fanout"}, sizes.hub_fanout_messages),
        )
        for h in (0, DEFAULT_HISTORY)
    )


def cluster_cases(sizes: Sizes) -> tuple[Case, ...]:
    roots = len(cluster.ROOTS)
    return tuple(
        Case(
            f"{label}, {roots} topic roots",
            "msgs/s",
            {"senders": senders, "messages": sizes.federation_flood},
        )
        for senders, label in ((1, "node A → node B"), (2, "nodes A1, A2 → node B"))
    )


def interest_cases(sizes: Sizes) -> tuple[Case, ...]:
    return tuple(
        Case(label, unit, params)
        for label, unit, params in interest.cases(sizes.interest_messages, sizes.interest_batch)
    )


def dropin_cases(sizes: Sizes) -> tuple[Case, ...]:
    return (
        Case("emit, 1 no-op listener", "µs", {"shape": "emit", "n": sizes.dropin_emits}),
        Case("ping-pong: round trip", "µs", {"shape": "pingpong", "n": sizes.pingpong}),
        Case(
            "the seed's pattern: emit held, one every 10 ms",
            "µs",
            {"shape": "seed", "n": sizes.dropin_seed},
        ),
    )


#: Each metric of suite.toml: its cases, and how it measures.
MEASURES: dict[str, tuple[Callable[[Sizes], tuple[Case, ...]], Callable[..., list[float]]]] = {
    "emit_held": (_one("1 fast subscriber", "µs"), measure_emit_held),
    "emit_held_slow": (
        _one("1 subscriber sleeping 1 ms per message", "µs"),
        measure_emit_held_slow,
    ),
    "pingpong": (ROUND_TRIP, measure_pingpong),
    "dropin": (dropin_cases, measure_dropin),
    "throughput": (fanout_cases, measure_throughput),
    "emit_cost_by_subscribers": (subscriber_cases, measure_emit_cost),
    "reorders": (_one("1→1 flood", "reorders", messages="flood"), measure_reorders),
    "memory": (lambda sizes: MEMORY_CASES, measure_memory),
    "hub_roundtrip": (ROUND_TRIP, measure_pingpong),
    "hub_ingest": (
        _one("1 publisher, 1 connection", "msgs/s", messages="hub_ingest_messages"),
        measure_ingest,
    ),
    "hub_fanout": (
        _one(
            f"1→{HUB_SUBSCRIBERS} processes",
            "msgs/s",
            subscribers=HUB_SUBSCRIBERS,
            messages="hub_fanout_messages",
        ),
        measure_hub_fanout,
    ),
    "hub_replay": (
        _one(f"missed messages on {REPLAY_TOPICS} topics", "ms", messages="replay_messages"),
        measure_replay,
    ),
    "history_memory": (history_cases, measure_history_memory),
    "hub_memory": (hub_memory_cases, measure_hub_memory),
    "federation_latency": (
        _one("node A → node B", "µs", messages="federation_messages"),
        measure_one_way,
    ),
    "workers": (workers_cases, measure_workers),
    "federation_throughput": (
        _one("node A → node B, flood", "msgs/s", messages="federation_flood"),
        measure_relay,
    ),
    "federation_interest": (interest_cases, measure_interest),
    "federation_cluster": (cluster_cases, cluster.measure),
}

METRICS: dict[str, Metric] = {
    name: Metric(
        name,
        spec["title"],
        spec["timed"].format(**FIELDS),
        tuple(spec["systems"]),
        *MEASURES[name],
        better=spec.get("better", "lower"),
        rounds_field=spec.get("rounds", "rounds"),
        warmup=spec.get("warmup", True),
    )
    for name, spec in SUITE["metrics"].items()
}


# -- greenbus's targets -----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A goal for greenbus, checked against figures of the same run (see suite.toml).

    The figure is ``system``'s ``stat`` in the case, divided by ``against``'s
    when that is set; the target is met when ``figure op limit``.
    """

    text: str
    metric: str
    case: str
    op: Literal["<=", ">="]
    limit: float
    against: str | None = None
    stat: Literal["median", "max"] = "median"
    system: str = "greenbus"

    def met(self, figure: float) -> bool:
        return figure <= self.limit if self.op == "<=" else figure >= self.limit


TARGETS: tuple[Target, ...] = tuple(
    Target(
        **{
            **spec,
            "text": spec["text"].format(**FIELDS),
            "case": spec.get("case") or METRICS[spec["metric"]].cases(DEFAULT)[0].label,
        }
    )
    for spec in SUITE["targets"]
)
