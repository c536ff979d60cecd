"""The pyee drop-in on its users' road: pyee, greenbus.compat and the Bus, monkey-patched.

Users reach ``greenbus.compat.EventEmitter`` by changing one import in the
classic two-thread pyee pattern (``greenbus/demo/threads_pyee.py``), usually
under ``gevent.monkey.patch_all()``.  Each measurement here runs in a fresh
interpreter that calls ``gevent.monkey.patch_all()`` before importing
anything else, for one of three systems:

* ``pyee``: ``pyee.EventEmitter``, whose ``emit`` runs every listener inline;
* ``greenbus-compat``: ``greenbus.compat.EventEmitter``, the drop-in;
* ``greenbus``: ``greenbus.Bus``, ``emit`` and ``subscribe(topic, handler)``
  (its handlers read ``msg.data``).

and one of three cases, each sample in µs:

* ``emit``: one no-op listener (it records the payload); one sample per
  batch of :data:`EMIT_BATCH` emits, the batch's time divided by its size,
  the listener draining untimed between batches (as ``perf``'s
  ``emit_held``); one untimed batch first, so the loop is warm;
* ``pingpong``: a listener of ``ping`` re-emits it as ``pong``, a listener
  of ``pong`` hands it to the driver through a :class:`greenbus.Channel`;
  one sample per round trip (emit ``ping`` until the driver has it back),
  after :data:`WARM_ROUNDTRIPS` untimed ones;
* ``seed``: the seed's pattern: a thread emits ``data`` every
  :data:`GAP` seconds (sleeping between emits, so caches are cold), a
  listener re-emits each as ``reply`` at once, and the emitter's ``reply``
  listener records it; one sample per emit: how long ``emit`` held the
  emitting thread.

Every message must arrive once and in order, else
:class:`~perf.procs.MeasurementError`.  ``python -m perf.dropin`` prints the
three cases side by side, rounds interleaved in shuffled order.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .procs import MeasurementError

__all__ = ["CASES", "SYSTEMS", "measure"]

ROOT = Path(__file__).resolve().parent.parent
#: The cases, and the systems (in the table's order).
CASES = ("emit", "pingpong", "seed")
SYSTEMS = ("pyee", "greenbus-compat", "greenbus")
#: Emits per ``emit`` sample (as suite.toml's ``emit_batch``).
EMIT_BATCH = 1000
#: Untimed round trips before a ``pingpong`` series (as perf.metrics).
WARM_ROUNDTRIPS = 10
#: Seconds between the ``seed`` case's emits (the seed's 10 ms).
GAP = 0.01
#: Seconds a child may wait for deliveries before it reports an error.
WAIT_TIMEOUT = 30.0
#: What the child runs: monkey-patching comes first, before any import.
CHILD = """\
from gevent import monkey
monkey.patch_all()
import sys
{setup}
from perf.dropin import _child
_child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


def measure(case: str, system: str, n: int) -> list[float]:
    """Run ``case`` for ``system`` in a fresh, monkey-patched interpreter.

    Args:
        case: ``"emit"``, ``"pingpong"`` or ``"seed"`` (see the module docstring).
        system: ``"pyee"``, ``"greenbus-compat"`` or ``"greenbus"``.
        n: samples: batches for ``emit``, round trips for ``pingpong``, emits
            (:data:`GAP` apart) for ``seed``.

    Returns:
        ``n`` samples, in µs.

    Raises:
        ValueError: an unknown case or system, or ``n < 1``.
        MeasurementError: a message was lost, duplicated or reordered, or
            the child failed or timed out.
    """
    if case not in CASES or system not in SYSTEMS or n < 1:
        raise ValueError(f"case {case!r} of {CASES}, system {system!r} of {SYSTEMS}, n={n}")
    return _spawn(case, system, n)


def _spawn(case: str, system: str, n: int, setup: str = "") -> list[float]:
    """:func:`measure`, with ``setup`` run in the child after patching (an extra system)."""
    timeout = 60 + (n * GAP * 2 if case == "seed" else 0)
    argv = [sys.executable, "-c", CHILD.format(setup=setup), case, system, str(n)]
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise MeasurementError(f"{case} · {system}: no result within {timeout:.0f} s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise MeasurementError(f"{case} · {system}: exit {done.returncode}: {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise MeasurementError(f"{case} · {system}: {result['error']}")
    samples: list[float] = result["samples"]
    return samples


# -- the child's end: runs monkey-patched --------------------------------------------


class Rig:
    """One system under test: ``on(event, listener)``, ``emit(event, payload)``, ``close()``.

    ``bus`` is true when listeners are Bus handlers, called with a
    :class:`greenbus.Message` (the payload in ``msg.data``) instead of the payload.
    """

    def __init__(
        self,
        on: Callable[[str, Callable[[Any], object]], object],
        emit: Callable[[str, Any], object],
        close: Callable[[], object],
        bus: bool = False,
    ) -> None:
        self.on, self.emit, self.close, self.bus = on, emit, close, bus


def _pyee() -> Rig:
    import pyee

    ee = pyee.EventEmitter()
    return Rig(ee.on, ee.emit, ee.remove_all_listeners)


def _compat() -> Rig:
    from greenbus.compat import EventEmitter

    ee = EventEmitter()
    return Rig(ee.on, ee.emit, ee.shutdown)


def _bus() -> Rig:
    import greenbus

    bus = greenbus.Bus("greenbus")
    return Rig(bus.subscribe, bus.emit, bus.close, bus=True)


#: How the child makes each system (a setup snippet may add one).
RIGS: dict[str, Callable[[], Rig]] = {
    "pyee": _pyee,
    "greenbus-compat": _compat,
    "greenbus": _bus,
}


def _recorder(rig: Rig, got: list[Any]) -> Callable[[Any], object]:
    """A listener that appends each payload to ``got``."""
    if not rig.bus:
        return got.append
    append = got.append
    return lambda msg: append(msg.data)


def _wait_for(got: list[Any], count: int) -> None:
    """Yield to the listeners until ``got`` holds ``count`` items."""
    import gevent

    deadline = time.monotonic() + WAIT_TIMEOUT
    while len(got) < count:
        if time.monotonic() > deadline:
            raise MeasurementError(f"timed out: {len(got)} of {count} deliveries")
        gevent.sleep(0)


def _in_order(got: list[Any], count: int) -> None:
    if got != list(range(count)):
        raise MeasurementError(f"{count} payloads expected once and in order; got {len(got)}")


def _emit_case(rig: Rig, n: int) -> list[float]:
    got: list[Any] = []
    rig.on("data", _recorder(rig, got))
    emit, clock, samples, total = rig.emit, time.perf_counter, [], 0
    for batch in range(n + 1):
        start = clock()
        for i in range(total, total + EMIT_BATCH):
            emit("data", i)
        elapsed = clock() - start
        total += EMIT_BATCH
        _wait_for(got, total)
        if batch:  # the first batch warms up
            samples.append(elapsed / EMIT_BATCH * 1e6)
    _in_order(got, total)
    return samples


def _pingpong_case(rig: Rig, n: int) -> list[float]:
    from greenbus import Channel

    mailbox: Channel[Any] = Channel(None)
    emit = rig.emit
    if rig.bus:
        rig.on("ping", lambda msg: emit("pong", msg.data))
        rig.on("pong", lambda msg: mailbox.put(msg.data))
    else:
        rig.on("ping", lambda x: emit("pong", x))
        rig.on("pong", mailbox.put)
    get, clock, samples = mailbox.get, time.perf_counter, []
    for i in range(WARM_ROUNDTRIPS + n):
        start = clock()
        emit("ping", i)
        reply = get(WAIT_TIMEOUT)
        elapsed = clock() - start
        if reply != i:
            raise MeasurementError(f"round trip {i} came back as {reply!r}")
        if i >= WARM_ROUNDTRIPS:
            samples.append(elapsed * 1e6)
    return samples


def _seed_case(rig: Rig, n: int) -> list[float]:
    import threading  # patched: threads are greenlets

    emit, replies, held = rig.emit, [], []
    all_replied = threading.Event()

    def recorded(i: int) -> None:
        replies.append(i)
        if len(replies) == n:
            all_replied.set()

    if rig.bus:
        rig.on("data", lambda msg: emit("reply", msg.data))
        rig.on("reply", lambda msg: recorded(msg.data))
    else:
        rig.on("data", lambda i: emit("reply", i))
        rig.on("reply", recorded)

    def thread1() -> None:
        clock = time.perf_counter
        for i in range(n):
            start = clock()
            emit("data", i)
            held.append((clock() - start) * 1e6)
            time.sleep(GAP)
        all_replied.wait(WAIT_TIMEOUT)

    emitter = threading.Thread(target=thread1, name="thread1")
    emitter.start()
    emitter.join()
    _in_order(replies, n)
    return held


CASE_RUNS: dict[str, Callable[[Rig, int], list[float]]] = {
    "emit": _emit_case,
    "pingpong": _pingpong_case,
    "seed": _seed_case,
}


def _child(case: str, system: str, n: int) -> None:
    """In the child: run one case, print ``{"samples": [...]}`` or ``{"error": ...}``."""
    rig = RIGS[system]()
    try:
        samples = CASE_RUNS[case](rig, n)
    except MeasurementError as exc:
        print(json.dumps({"error": str(exc)}))
        return
    finally:
        rig.close()
    print(json.dumps({"samples": samples}))


# -- the parent's table ---------------------------------------------------------------


def p99(samples: Sequence[float]) -> float:
    """The 99th percentile (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run(
    sizes: dict[str, int],
    rounds: int,
    systems: Sequence[str] = SYSTEMS,
    spawn: Callable[[str, str, int], list[float]] = measure,
) -> dict[tuple[str, str], list[float]]:
    """Every (case, system), ``rounds`` times, each round's systems in shuffled order."""
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for case, n in sizes.items():
            for system in random.sample(list(systems), len(systems)):
                samples.setdefault((case, system), []).extend(spawn(case, system, n))
    return samples


def table(samples: dict[tuple[str, str], list[float]], systems: Sequence[str] = SYSTEMS) -> str:
    """Median, p99 and the medians' ratios to pyee's and the Bus's, per case and system."""
    lines = [
        f"{'case':<9} {'system':<18} {'n':>6} {'median µs':>10} {'p99 µs':>9} "
        f"{'÷ pyee':>7} {'÷ greenbus':>10}"
    ]
    for case in CASES:
        medians = {s: statistics.median(v) for (c, s), v in samples.items() if c == case}
        for system in systems:
            if system not in medians:
                continue
            values = samples[case, system]
            ratios = [
                f"{medians[system] / medians[ref]:.2f}" if ref in medians else "-"
                for ref in ("pyee", "greenbus")
            ]
            lines.append(
                f"{case:<9} {system:<18} {len(values):>6} {medians[system]:>10.2f} "
                f"{p99(values):>9.2f} {ratios[0]:>7} {ratios[1]:>10}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m perf.dropin", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--emit", type=int, default=20, help="emit batches per round")
    parser.add_argument("--pingpong", type=int, default=500, help="round trips per round")
    parser.add_argument("--seed", type=int, default=100, help="seed emits per round (10 ms apart)")
    parser.add_argument("--only", help="cases, comma-separated (default: all)")
    args = parser.parse_args(argv)
    sizes = {"emit": args.emit, "pingpong": args.pingpong, "seed": args.seed}
    if args.only:
        sizes = {c: n for c, n in sizes.items() if c in args.only.split(",")}
    print(table(run(sizes, args.rounds)))


if __name__ == "__main__":
    main()
