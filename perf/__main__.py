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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import report
from .metrics import DEFAULT, METRICS, QUICK, SYSTEMS, TARGETS, TINY, Case, Metric, Sizes, Target

#: Seconds one measurement may take before the run is aborted with a traceback
#: (a lost message would otherwise block a ping-pong forever).
STEP_TIMEOUT = 300


@dataclass(frozen=True)
class Step:
    """One call of a metric: a system, a case, and its round (None: warm-up)."""

    metric: Metric
    case: Case
    system: str
    round: int | None

    def describe(self, rounds: int) -> str:
        when = "warm-up" if self.round is None else f"round {self.round + 1}/{rounds}"
        return f"{self.metric.name} · {self.case.label} · {self.system} · {when}"


@dataclass
class Series:
    """The samples of one (metric, case, system), and the errors met on the way."""

    samples: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n")[0])
    size = parser.add_argument_group("size")
    size.add_argument("--quick", action="store_true", help="fewer rounds: under a minute")
    size.add_argument("--tiny", action="store_true", help="shrink every size: seconds")
    parser.add_argument(
        "--only",
        metavar="METRIC[,METRIC]",
        help=f"run these metrics only; of: {', '.join(METRICS)}",
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
        parser.error(f"unknown metric(s) {', '.join(sorted(unknown))}; of: {', '.join(METRICS)}")
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


def run_step(step: Step, sizes: Sizes, series: Series, console: Console) -> None:
    """Measure one step into ``series``; an exception becomes an error entry."""
    gc.collect()  # start every measurement from the same place; GC stays enabled
    faulthandler.dump_traceback_later(STEP_TIMEOUT, exit=True)
    try:
        samples = step.metric.measure(SYSTEMS[step.system], step.case, sizes)
    except Exception as exc:
        where = "warm-up" if step.round is None else f"round {step.round + 1}"
        series.errors.append(f"{where}: {type(exc).__name__}: {exc}")
        console.print(f"[red]error[/red] {step.describe(step.metric.rounds(sizes))}: {exc}")
        console.print(traceback.format_exc(), markup=False, highlight=False)
    else:
        if step.round is not None:
            series.samples.extend(samples)
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


def document(
    store: defaultdict[tuple[str, str, str], Series],
    metrics: list[Metric],
    sizes: Sizes,
    *,
    command: str,
    seed: int,
    started: float,
) -> dict[str, Any]:
    """The run as one JSON-ready record (its layout: perf/report.py)."""
    used = {system for m in metrics for system in m.systems}
    doc: dict[str, Any] = {
        "suite": "greenbus perf",
        "date": datetime.date.fromtimestamp(started).isoformat(),
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "command": command,
        "profile": sizes.profile,
        "seed": seed,
        "machine": report.machine_info(),
        "sizes": dataclasses.asdict(sizes),
        "systems": {name: s.summary for name, s in SYSTEMS.items() if name in used},
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
                            system: report.figures(series.samples, series.errors)
                            for system in m.systems
                            for series in [store[m.name, case.label, system]]
                        },
                    }
                    for case in m.cases(sizes)
                },
            }
            for m in metrics
        },
    }
    doc["derived"] = {"wildcard_share": wildcard_share(doc)}
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
    store: defaultdict[tuple[str, str, str], Series] = defaultdict(Series)
    started = time.time()
    columns = TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting", total=len(steps))
        for step in steps:
            progress.update(task, description=step.describe(step.metric.rounds(sizes)))
            run_step(step, sizes, store[step.metric.name, step.case.label, step.system], console)
            progress.advance(task)
    command = shlex.join(["python", "-m", "perf", *argv])
    doc = document(store, metrics, sizes, command=command, seed=seed, started=started)
    written = report.write_results(doc, args.out)
    console.print(report.summary(doc))
    for path in written:
        console.print(f"wrote {path}")
    return 1 if any(series.errors for series in store.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
