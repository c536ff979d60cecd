"""What the suite measures: sizes, metrics, and greenbus's targets.

A :class:`Metric` is a function that takes one system and one case and
returns that round's samples.  The runner (``perf/__main__.py``) calls it
once per round for every (case, system) pair, in shuffled order, so machine
noise hits every system alike.  :attr:`Metric.timed` says exactly what the
samples time; that text goes into the JSON.

Every sample is verified: a metric whose messages did not all arrive
(exactly once) raises :class:`~perf.procs.MeasurementError`, and the runner
records an error instead of a number.
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
from typing import Literal

from .hub import NETWORK, NetworkSystem
from .procs import MeasurementError
from .systems import IN_PROCESS, Classic, Fanout, System

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

#: The multiplication sign of the targets' ratios, spelled out so linters do not take it for
#: an "x".  Not imported from report.py: the memory probe's fresh processes import this
#: module, and every module they load before they measure moves their RSS figure.
TIMES = "\N{MULTIPLICATION SIGN}"
#: Every system: in-process ones (systems.py), then those across processes (hub.py).
SYSTEMS: dict[str, System] = {**IN_PROCESS, **NETWORK}


@dataclass(frozen=True)
class Sizes:
    """How much work each metric does; one instance per profile (see ``_PROFILES``)."""

    profile: str
    rounds: int  # rounds of the per-call metrics (emit held, emit cost, ping-pong)
    warmup: bool  # run every (case, system) once, unrecorded, before the first round
    emit_batch: int  # emit_held: emits per sample, samples per round
    emit_batches: int
    slow_batch: int  # emit_held_slow: emits per sample, samples per round
    slow_batches: int
    cost_deliveries: int  # emit_cost_by_subscribers: deliveries per sample
    subscriber_counts: tuple[int, ...]
    pingpong: int  # round trips per round (hub_roundtrip too)
    classic_messages: int  # the classic scenario's messages per round
    throughput_deliveries: int  # deliveries per sample (messages = this / fan-out)
    throughput_rounds: int  # also the rounds of the floods across processes
    fanouts: tuple[int, ...]
    flood: int  # reorders: messages per flood, and rounds
    reorder_rounds: int
    memory_consumers: int  # idle consumers per probe (OS-thread consumers are fewer)
    memory_threads: int
    memory_messages: int
    memory_rounds: int
    hub_ingest_messages: int  # hub_ingest, hub_fanout: messages per flood
    hub_fanout_messages: int
    federation_messages: int  # federation_latency: timed one-way messages per round
    federation_flood: int  # federation_throughput: messages per flood


#: The profiles side by side: field -> (default, --quick, --tiny).  --tiny
#: shrinks every size so the whole suite runs in seconds (the test suite's
#: smoke run); what it measures is noise.
_PROFILES: dict[str, tuple[object, object, object]] = {
    "rounds": (10, 4, 2),
    "warmup": (True, True, False),
    "emit_batch": (1000, 1000, 50),
    "emit_batches": (5, 3, 2),
    "slow_batch": (50, 50, 5),
    "slow_batches": (3, 2, 1),
    "cost_deliveries": (20_000, 10_000, 200),
    "subscriber_counts": ((1, 10, 100, 1000),) * 3,
    "pingpong": (500, 300, 20),
    "classic_messages": (20, 10, 2),
    "throughput_deliveries": (60_000, 30_000, 1000),
    "throughput_rounds": (5, 3, 1),
    "fanouts": ((1, 10, 100),) * 3,
    "flood": (20_000, 20_000, 500),
    "reorder_rounds": (3, 1, 1),
    "memory_consumers": (10_000, 10_000, 200),
    "memory_threads": (1000, 300, 20),
    "memory_messages": (100_000, 100_000, 2000),
    "memory_rounds": (3, 1, 1),
    "hub_ingest_messages": (200_000, 100_000, 2000),
    "hub_fanout_messages": (50_000, 25_000, 500),
    "federation_messages": (500, 300, 20),
    "federation_flood": (100_000, 50_000, 1000),
}

DEFAULT, QUICK, TINY = (
    Sizes(profile=name, **{key: values[i] for key, values in _PROFILES.items()})  # type: ignore[arg-type]
    for i, name in enumerate(("default", "quick", "tiny"))
)


@dataclass(frozen=True)
class Case:
    """One setting of a metric (a fan-out, a subscriber count...) and its unit."""

    label: str
    unit: str
    params: Mapping[str, int | str] = field(default_factory=dict)

    def int_param(self, name: str) -> int:
        value = self.params[name]
        assert isinstance(value, int)
        return value


Measure = Callable[[System, Case, Sizes], list[float]]


@dataclass(frozen=True)
class Metric:
    """A measurement and everything the report says about it."""

    name: str
    title: str
    #: Exactly what one sample times (written into the JSON).
    timed: str
    systems: tuple[str, ...]
    cases: Callable[[Sizes], tuple[Case, ...]]
    measure: Measure
    better: Literal["lower", "higher"] = "lower"
    #: The :class:`Sizes` field that says how many rounds to run.
    rounds_field: str = "rounds"
    #: Run each (case, system) once, unrecorded, before the rounds (if the profile warms up).
    warmup: bool = True
    #: The system the report's ratio column divides by.
    reference: str = "greenbus"

    def rounds(self, sizes: Sizes) -> int:
        rounds = getattr(sizes, self.rounds_field)
        assert isinstance(rounds, int)
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


ONE = Case("1 fast subscriber", "µs")
SLOW_ONE = Case("1 subscriber sleeping 1 ms per message", "µs")
ROUND_TRIP = Case("round trip", "µs")
FLOOD_LABEL = "1→1 flood"


def measure_emit_held(system: System, case: Case, sizes: Sizes) -> list[float]:
    if isinstance(system, Classic):
        return system.run(sizes.classic_messages).held_us
    return _emit_batches(system, 1, sizes.emit_batch, sizes.emit_batches)


def measure_emit_held_slow(system: System, case: Case, sizes: Sizes) -> list[float]:
    return _emit_batches(system, 1, sizes.slow_batch, sizes.slow_batches, slow=SLOW)


def subscriber_cases(sizes: Sizes) -> tuple[Case, ...]:
    return tuple(
        Case(
            f"{k} subscriber{'s' if k > 1 else ''}",
            "µs",
            {"subscribers": k, "emits": max(MIN_EMITS, sizes.cost_deliveries // k)},
        )
        for k in sizes.subscriber_counts
    )


def measure_emit_cost(system: System, case: Case, sizes: Sizes) -> list[float]:
    k = case.int_param("subscribers")
    return _emit_batches(system, k, case.int_param("emits"), sizes.emit_batches)


def measure_pingpong(system: System, case: Case, sizes: Sizes) -> list[float]:
    if isinstance(system, Classic):
        return system.run(sizes.classic_messages).roundtrip_us
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


def fanout_cases(sizes: Sizes) -> tuple[Case, ...]:
    return tuple(
        Case(
            f"1→{k}",
            "msgs/s",
            {"fanout": k, "messages": max(YIELD_EVERY, sizes.throughput_deliveries // k)},
        )
        for k in sizes.fanouts
    )


def measure_throughput(system: System, case: Case, sizes: Sizes) -> list[float]:
    k, m = case.int_param("fanout"), case.int_param("messages")
    with system.fanout(k) as fan:
        start = time.perf_counter()
        _flood(fan, m)
        fan.wait(m)
        elapsed = time.perf_counter() - start
        fan.take(m)
    return [k * m / elapsed]


def measure_reorders(system: System, case: Case, sizes: Sizes) -> list[float]:
    n = case.int_param("messages")
    with system.fanout(1) as fan:
        _flood(fan, n)
        fan.wait(n)
        [got] = fan.take(n)
    return [float(count_reorders(got, n))]


# -- memory: each probe runs in a fresh process -------------------------------------

MEMORY_CASES = (
    Case("per idle consumer, tracemalloc", "bytes", {"probe": "consumers", "via": "tracemalloc"}),
    Case("per 10k idle consumers, RSS", "MB", {"probe": "consumers", "via": "rss"}),
    Case("per queued message, tracemalloc", "bytes", {"probe": "messages", "via": "tracemalloc"}),
)


def _rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _probe(system_name: str, probe: str, via: str, n: int) -> float:
    """Bytes per built item (run in a fresh process, so earlier work cannot skew it)."""
    system = SYSTEMS[system_name]
    build = system.idle_consumers if probe == "consumers" else system.queued_messages
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
    probe, via = str(case.params["probe"]), str(case.params["via"])
    if probe == "messages":
        n = sizes.memory_messages
    else:
        n = sizes.memory_threads if system.thread_per_consumer else sizes.memory_consumers
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        per_item = pool.apply(_probe, (system.name, probe, via, n))
    return [per_item * 10_000 / 1e6 if case.unit == "MB" else per_item]


# -- across processes: perf/hub.py ----------------------------------------------------

INGEST_LABEL = "1 publisher, 1 connection"
FANOUT_LABEL = f"1→{HUB_SUBSCRIBERS} processes"
FED_ONE_WAY_LABEL = "node A → node B"
FED_FLOOD_LABEL = "node A → node B, flood"


def _network(system: System) -> NetworkSystem:
    if not isinstance(system, NetworkSystem):
        raise TypeError(f"{system.name} is not a system across processes")
    return system


def measure_ingest(system: System, case: Case, sizes: Sizes) -> list[float]:
    return [_network(system).ingest(case.int_param("messages")).rate]


def measure_hub_fanout(system: System, case: Case, sizes: Sizes) -> list[float]:
    k = case.int_param("subscribers")
    return [_network(system).broadcast(case.int_param("messages"), k).rate]


def measure_one_way(system: System, case: Case, sizes: Sizes) -> list[float]:
    probe = _network(system).one_way(WARM_ROUNDTRIPS + case.int_param("messages"), ONE_WAY_GAP)
    return probe[WARM_ROUNDTRIPS:]


def measure_relay(system: System, case: Case, sizes: Sizes) -> list[float]:
    return [_network(system).relay(case.int_param("messages"), YIELD_EVERY).rate]


def _across(
    name: str,
    title: str,
    timed: str,
    case: Callable[[Sizes], Case],
    measure: Measure,
    *,
    better: Literal["lower", "higher"] = "lower",
    systems: tuple[str, ...] = ("redis-pubsub", "greenbus-hub"),
    rounds_field: str = "rounds",
) -> Metric:
    """A metric across processes: fresh processes every sample, so no warm-up run."""
    cases = lambda sizes: (case(sizes),)  # noqa: E731
    return Metric(
        name, title, timed, systems, cases, measure, better, rounds_field, False, systems[-1]
    )


# -- the list -------------------------------------------------------------------------

#: The systems with a second party (a pool, a thread, a greenlet) behind emit.
CONCURRENT = ("pyee-executor", "threads+queue", "gevent.queue", "greenbus", "greenbus-compat")

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "emit_held",
            "emit held",
            "Batches of emits to one subscriber whose handler appends the payload to a list; a "
            "sample is the batch's wall time divided by its emits (the loop, ~0.03 µs, "
            "included). Between batches the consumers drain, untimed, and the counts are "
            "checked. classic: each emit of the two-thread scenario, timed singly, 10 ms apart.",
            systems=("classic", "pyee", "blinker", *CONCURRENT),
            cases=lambda sizes: (ONE,),
            measure=measure_emit_held,
        ),
        Metric(
            "emit_held_slow",
            "emit held",
            "As emit_held, with a handler that sleeps 1 ms before recording: time.sleep for "
            "pyee (inside emit) and the threads, gevent.sleep for greenlets. Consumers drain "
            "between batches, untimed.",
            systems=("pyee", *CONCURRENT),
            cases=lambda sizes: (SLOW_ONE,),
            measure=measure_emit_held_slow,
        ),
        Metric(
            "pingpong",
            "ping-pong",
            "perf_counter around each round trip: send a number, block until the responder "
            "sends it back (checked). One sample per message. classic: emit 'data' until the "
            "'reply' handler runs, thread2 polling every 10 ms.",
            systems=("classic", *CONCURRENT[:-1], "greenbus-request", CONCURRENT[-1]),
            cases=lambda sizes: (ROUND_TRIP,),
            measure=measure_pingpong,
        ),
        Metric(
            "throughput",
            "delivered msgs/s",
            "One producer emits M messages to k consumers (greenlet producers gevent.sleep(0) "
            "every 100 emits); the clock stops when every consumer has handled all M. A sample "
            "is k*M / elapsed; counts are checked after.",
            better="higher",
            systems=("pyee", *CONCURRENT),
            cases=fanout_cases,
            measure=measure_throughput,
            rounds_field="throughput_rounds",
        ),
        Metric(
            "emit_cost_by_subscribers",
            "emit cost",
            "As emit_held, with k subscribers on the emitted topic (greenbus-wildcard: "
            "alternately 'a.*' and 'a.>', emitting to 'a.b'); a sample is a batch's wall time "
            "divided by its emits.",
            systems=("pyee", "blinker", "greenbus", "greenbus-wildcard"),
            cases=subscriber_cases,
            measure=measure_emit_cost,
        ),
        Metric(
            "reorders",
            "out-of-order deliveries",
            "Not a time: one producer floods one consumer with 0..n-1; a sample counts the "
            "payloads that arrived after a later one (all must arrive, once).",
            systems=("pyee", *CONCURRENT),
            cases=lambda sizes: (Case(FLOOD_LABEL, "reorders", {"messages": sizes.flood}),),
            measure=measure_reorders,
            rounds_field="reorder_rounds",
            warmup=False,
        ),
        Metric(
            "memory",
            "memory",
            "Not a time: each probe runs in a fresh process and builds n idle consumers "
            "(greenbus: a subscription with a handler, on its own topic; gevent.queue: a queue "
            "and a greenlet in get(); threads+queue: a queue and a thread in get()) or queues n "
            "messages to one consumer that does not consume. tracemalloc does not see all of a "
            "greenlet's stack, nor thread stacks; the RSS figure (/proc/self/statm) does, and "
            "is scaled to 10k consumers.",
            systems=("threads+queue", "gevent.queue", "greenbus"),
            cases=lambda sizes: MEMORY_CASES,
            measure=measure_memory,
            rounds_field="memory_rounds",
            warmup=False,
        ),
        _across(
            "hub_roundtrip",
            "across processes",
            "perf_counter around each round trip made by the benchmark process, one sample per "
            "message (after 10 untimed); the reply must be the number sent. Every sample starts "
            "its own processes and stops them after, so there is no warm-up run. greenbus-hub: "
            "the benchmark's greenbus.connect client emits i on 'ping' to a hub process; an "
            "echo client process (greenbus.connect) subscribed to 'ping' emits it on 'pong'; "
            "the benchmark's 'pong' subscription receives it. redis-pubsub, the same shape: "
            "the benchmark PUBLISHes i on 'ping' through redis-py (which waits for PUBLISH's "
            "reply), an echo process subscribed to 'ping' PUBLISHes it on 'pong', and the "
            "benchmark's second connection, subscribed to 'pong', receives it (get_message). "
            "Both: 3 processes, 4 one-way trips over loopback. tcp-echo (the floor: 2 one-way "
            "trips): 8 bytes to an echo server process and back, over one TCP_NODELAY "
            "connection.",
            lambda sizes: ROUND_TRIP,
            systems=("tcp-echo", "redis-pubsub", "greenbus-hub"),
            measure=measure_pingpong,
        ),
        _across(
            "hub_ingest",
            "ingest msgs/s",
            "One publisher process sends M messages (payloads 0..M-1) over one connection, "
            "every byte made before the clock starts and written with sendall. greenbus-hub: "
            "'pub' frames without ids (so no acks), JSON from greenbus.protocol.encode, framed "
            "and masked by websockets' sans-I/O ClientProtocol, into a hub process "
            "(greenbus.serve) where an unbounded local subscription (Bus.subscribe) on the "
            "topic takes them; the clock stops at its last arrival. redis-pubsub: PUBLISH "
            "commands packed by redis-py, pipelined to redis-server; the clock stops when the "
            "publisher has read the last PUBLISH reply, each of which must be 1, and a "
            "redis-py subscriber process checks the arrivals, untimed. A sample is M / (stop - "
            "first send), with time.monotonic (one clock for all processes). Arrivals must be "
            "0..M-1, each once, in order.",
            lambda sizes: Case(INGEST_LABEL, "msgs/s", {"messages": sizes.hub_ingest_messages}),
            better="higher",
            measure=measure_ingest,
            rounds_field="throughput_rounds",
        ),
        _across(
            "hub_fanout",
            "delivered msgs/s",
            f"One publisher process (as in hub_ingest) sends M messages on a topic to which "
            f"{HUB_SUBSCRIBERS} subscriber processes subscribed with the system's Python client "
            f"(greenbus.connect, default subscription; redis-py PubSub, get_message). Each "
            f"counts its arrivals, checks they are 0..M-1 in order, and reports its first and "
            f"last arrival times. A sample is {HUB_SUBSCRIBERS}*M / (latest last arrival - "
            f"first send), with time.monotonic. Neither server cuts off a slow subscriber: the "
            f"hub runs with max_pending 10M, redis-server with client-output-buffer-limit "
            f"pubsub 0 0 0. Publisher, server and subscribers share the machine's CPUs.",
            lambda sizes: Case(
                FANOUT_LABEL,
                "msgs/s",
                {"subscribers": HUB_SUBSCRIBERS, "messages": sizes.hub_fanout_messages},
            ),
            better="higher",
            measure=measure_hub_fanout,
            rounds_field="throughput_rounds",
        ),
        _across(
            "federation_latency",
            "federation one-way",
            "One-way latency from one process to another, with CLOCK_MONOTONIC: the sender "
            "reads time.monotonic_ns() just before its publishing call and sends it in the "
            "payload; the receiver reads time.monotonic_ns() first thing on arrival (on Linux "
            "one clock for every process, so the readings subtract). One sample per message: "
            f"{WARM_ROUNDTRIPS} untimed, then n timed, one at a time, each sent "
            f"{ONE_WAY_GAP * 1000:g} ms after the previous publishing call returned. Every round "
            "starts a fresh redis-server and both processes, and stops them after. "
            "greenbus-federation: node A, a greenbus.Bus federated with greenbus.federate "
            "(default options; its publishing connection opened before the first message), "
            "emits [i, ns] on 'oneway'; its federation's writer greenlet publishes the envelope "
            "(a pipeline of one PUBLISH); node B's federation reader, whose SUBSCRIBE Redis "
            "confirmed (PUBSUB NUMSUB) before A started, emits it into B's bus, and the clock "
            "stops in B's subscription handler. redis-pubsub, raw redis-py publish→receive: the "
            "publisher process calls client.publish with b'i ns' (which waits for PUBLISH's "
            "reply, 1); the subscriber process (PubSub.get_message, SUBSCRIBE confirmed) stops "
            "the clock as get_message returns it. Both: every message must arrive once, in "
            "order.",
            lambda sizes: Case(FED_ONE_WAY_LABEL, "µs", {"messages": sizes.federation_messages}),
            systems=("redis-pubsub", "greenbus-federation"),
            measure=measure_one_way,
        ),
        _across(
            "federation_throughput",
            "federation delivered msgs/s",
            "Process A floods process B through a fresh redis-server with M messages (payloads "
            "0..M-1). greenbus-federation: node A emits them on its federated bus as fast as it "
            f"can, gevent.sleep(0) every {YIELD_EVERY} emits, and its federation publishes them "
            "in pipelined batches (up to 1000 PUBLISH per round trip); node B's subscription "
            "handler counts them. redis-pubsub: a redis-py publisher sends PUBLISH through "
            "client.pipeline(transaction=False) in batches of 1000 (the federation's default), "
            "each reply checked to be 1; a redis-py subscriber (PubSub.get_message) counts. A "
            "sample is M / (B's last arrival - A's first send), with time.monotonic (one clock "
            "for all processes), the clock starting once A's connection is open. B checks that "
            "every payload arrived once and in order; A that its federation published all M "
            "and dropped none. A, redis-server and B share the machine's CPUs.",
            lambda sizes: Case(FED_FLOOD_LABEL, "msgs/s", {"messages": sizes.federation_flood}),
            better="higher",
            systems=("redis-pubsub", "greenbus-federation"),
            measure=measure_relay,
            rounds_field="throughput_rounds",
        ),
    )
}


# -- greenbus's targets -----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A goal for greenbus, checked against figures of the same run.

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


TARGETS: tuple[Target, ...] = (
    Target(f"emit ≤ 0.5{TIMES} pyee's inline emit", "emit_held", ONE.label, "<=", 0.5, "pyee"),
    Target(
        "ping-pong ≤ 1/15 of threads+queue",
        "pingpong",
        ROUND_TRIP.label,
        "<=",
        1 / 15,
        "threads+queue",
    ),
    Target(
        f"ping-pong ≤ 0.8{TIMES} gevent.queue",
        "pingpong",
        ROUND_TRIP.label,
        "<=",
        0.8,
        "gevent.queue",
    ),
    Target(
        f"1→1 throughput ≥ 5{TIMES} threads+queue",
        "throughput",
        "1→1",
        ">=",
        5.0,
        "threads+queue",
    ),
    Target("emit with a 1 ms-slow subscriber ≤ 2 µs", "emit_held_slow", SLOW_ONE.label, "<=", 2.0),
    Target("0 reorders", "reorders", FLOOD_LABEL, "<=", 0.0, stat="max"),
    Target(
        "hub round trip ≤ Redis pub/sub's",
        "hub_roundtrip",
        ROUND_TRIP.label,
        "<=",
        1.0,
        "redis-pubsub",
        system="greenbus-hub",
    ),
    Target(
        "hub ingest ≥ 100k msgs/s", "hub_ingest", INGEST_LABEL, ">=", 100_000, system="greenbus-hub"
    ),
    Target(
        f"hub fan-out 1→{HUB_SUBSCRIBERS} ≥ 188k msgs/s (NATS's delivered rate: an anchor "
        "from ANCHORS.md, not measured here)",
        "hub_fanout",
        FANOUT_LABEL,
        ">=",
        188_000,
        system="greenbus-hub",
    ),
    Target(
        f"federation one-way p50 ≤ 1.5{TIMES} raw redis-py publish→receive",
        "federation_latency",
        FED_ONE_WAY_LABEL,
        "<=",
        1.5,
        "redis-pubsub",
        system="greenbus-federation",
    ),
    Target(
        "federation ≥ 50k msgs/s across nodes",
        "federation_throughput",
        FED_FLOOD_LABEL,
        ">=",
        50_000,
        system="greenbus-federation",
    ),
)
