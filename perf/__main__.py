"""Run the benchmark suite and write its report.

Usage, from the repository root::

    python -m perf                  # the default run, a few minutes
    python -m perf --quick          # under a minute
    python -m perf --quick --tiny   # seconds: every size shrunk (the test suite's smoke run)
    python -m perf --only pingpong,throughput --out /tmp/perf

Each metric runs in rounds; every round runs each (case, system) pair once,
in shuffled order, so machine noise falls on every system alike.  Writes
``results/<date>.json`` (raw samples), ``RESULTS.md`` and the PNG charts
under ``--out`` (default: this ``perf/`` directory).  Exits 1 if any sample
was an error (messages lost, a wait timed out), after writing the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import faulthandler
import gc
import random
import shlex
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import SUITE, report
from .metrics import DEFAULT, METRICS, QUICK, SYSTEMS, TARGETS, TINY, Case, Metric, Sizes, Target

#: Seconds one measurement may take before the run is aborted with a traceback
#: (a lost message would otherwise block a ping-pong forever).
STEP_TIMEOUT = 300
#: The samples of each (metric, case, system), and the errors met on the way.
Store = defaultdict[tuple[str, str, str], tuple[list[float], list[str]]]


class Step(NamedTuple):
    """One call of a metric: a system, a case, and its round (None: warm-up)."""

    metric: Metric
    case: Case
    system: str
    round: int | None

    def describe(self, sizes: Sizes) -> str:
        r = self.round
        when = "warm-up" if r is None else f"round {r + 1}/{self.metric.rounds(sizes)}"
        return f"{self.metric.name} · {self.case.label} · {self.system} · {when}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n")[0])
    size = parser.add_argument_group("size")
    size.add_argument("--quick", action="store_true", help="fewer rounds: under a minute")
    size.add_argument("--tiny", action="store_true", help="shrink every size: seconds")
    names = ", ".join(METRICS)
    parser.add_argument(
        "--only", metavar="METRIC[,METRIC]", help=f"run these metrics only; of: {names}"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=report.PERF,
        help="where to write RESULTS.md, the charts and results/ (default: perf/)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the shuffled order")
    args = parser.parse_args(argv)
    if args.only and (unknown := set(args.only.split(",")) - set(METRICS)):
        parser.error(f"unknown metric(s) {', '.join(sorted(unknown))}; of: {names}")
    return args


def plan(metrics: list[Metric], sizes: Sizes, rng: random.Random) -> list[Step]:
    """Every step of the run, in order: per metric, warm-ups, then shuffled rounds."""
    steps: list[Step] = []
    for metric in metrics:
        pairs = [(case, system) for case in metric.cases(sizes) for system in metric.systems]
        if sizes.warmup and metric.warmup:
            steps += [Step(metric, case, system, None) for case, system in pairs]
        for r in range(metric.rounds(sizes)):
            rng.shuffle(pairs)
            steps += [Step(metric, case, system, r) for case, system in pairs]
    return steps


def run_step(step: Step, sizes: Sizes, store: Store, console: Console) -> None:
    """Measure one step into ``store``; an exception becomes an error entry."""
    samples, errors = store[step.metric.name, step.case.label, step.system]
    gc.collect()  # start every measurement from the same place; GC stays enabled
    faulthandler.dump_traceback_later(STEP_TIMEOUT, exit=True)
    try:
        got = step.metric.measure(SYSTEMS[step.system], step.case, sizes)
    except Exception as exc:
        where = "warm-up" if step.round is None else f"round {step.round + 1}"
        errors.append(f"{where}: {type(exc).__name__}: {exc}")
        console.print(f"[red]error[/red] {step.describe(sizes)}: {exc}")
        console.print(traceback.format_exc(), markup=False, highlight=False)
    else:
        if step.round is not None:
            samples.extend(got)
    finally:
        faulthandler.cancel_dump_traceback_later()


def evaluate(target: Target, doc: dict[str, Any]) -> dict[str, Any]:
    """A target's figure in this run and whether it is met (None: not measured)."""
    cases = doc["metrics"].get(target.metric, {}).get("cases", {})
    results = cases.get(target.case, {}).get("results", {})
    value = results.get(target.system, {}).get(target.stat)
    if target.against:
        baseline = results.get(target.against, {}).get(target.stat)
        figure = value / baseline if value is not None and baseline else None
    else:
        baseline, figure = None, value
    met = None if figure is None else target.met(figure)
    fields = {"value": value, "baseline": baseline, "figure": figure, "met": met}
    return {**dataclasses.asdict(target), **fields}


def wildcard_share(doc: dict[str, Any]) -> dict[str, float | None]:
    """Per subscriber count: wildcard emit cost ÷ exact-topic emit cost (medians)."""
    shares: dict[str, float | None] = {}
    for label, case in doc["metrics"].get("emit_cost_by_subscribers", {}).get("cases", {}).items():
        wildcard = case["results"].get("greenbus-wildcard", {}).get("median")
        exact = case["results"].get("greenbus", {}).get("median")
        shares[label] = wildcard / exact if wildcard is not None and exact else None
    return shares


def replay_rate(doc: dict[str, Any]) -> dict[str, float | None]:
    """Per system: messages replayed per second (hub_replay's messages ÷ median seconds)."""
    rates: dict[str, float | None] = {}
    for case in doc["metrics"].get("hub_replay", {}).get("cases", {}).values():
        for system, result in case["results"].items():
            ms = result["median"]
            rates[system] = case["params"]["messages"] / ms * 1000 if ms else None
    return rates


def document(
    store: Store, metrics: list[Metric], sizes: Sizes, command: str, seed: int, started: float
) -> dict[str, Any]:
    """The run as one JSON-ready record (its layout: perf/report.py)."""
    used = {system for m in metrics for system in m.systems}
    when = datetime.datetime.fromtimestamp(started)
    doc: dict[str, Any] = {
        "suite": "greenbus perf",
        "date": when.date().isoformat(),
        "started": when.isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "command": command,
        "profile": sizes.profile,
        "seed": seed,
        "machine": report.machine_info(),
        "sizes": vars(sizes),
        "systems": {name: SUITE["systems"][name] for name in SYSTEMS if name in used},
        "metrics": {
            m.name: {
                "title": m.title,
                "timed": m.timed,
                "better": m.better,
                "reference": m.reference,
                "rounds": m.rounds(sizes),
                "cases": {
                    case.label: {
                        "unit": case.unit,
                        "params": dict(case.params),
                        "results": {
                            system: report.figures(*store[m.name, case.label, system])
                            for system in m.systems
                        },
                    }
                    for case in m.cases(sizes)
                },
            }
            for m in metrics
        },
    }
    doc["derived"] = {"wildcard_share": wildcard_share(doc), "replay_rate": replay_rate(doc)}
    doc["targets"] = [evaluate(t, doc) for t in TARGETS]
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    sizes = TINY if args.tiny else QUICK if args.quick else DEFAULT
    names = args.only.split(",") if args.only else list(METRICS)
    metrics = [METRICS[name] for name in METRICS if name in names]
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    steps = plan(metrics, sizes, random.Random(seed))
    console = Console(stderr=True)
    store: Store = defaultdict(lambda: ([], []))
    started = time.time()
    columns = TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting", total=len(steps))
        for step in steps:
            progress.update(task, description=step.describe(sizes))
            run_step(step, sizes, store, console)
            progress.advance(task)
    command = shlex.join(["python", "-m", "perf", *argv])
    doc = document(store, metrics, sizes, command, seed, started)
    written = report.write_results(doc, args.out)
    console.print(report.summary(doc))
    for path in written:
        console.print(f"wrote {path}")
    return 1 if any(errors for _, errors in store.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
