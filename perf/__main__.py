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
import faulthandler
import gc
import random
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from . import report
from .metrics import DEFAULT, METRICS, QUICK, SYSTEMS, TINY, Case, Metric, Sizes

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
        default=Path(__file__).resolve().parent,
        help="where to write RESULTS.md, the charts and results/ (default: perf/)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the shuffled order")
    args = parser.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(METRICS)
        if unknown:
            parser.error(
                f"unknown metric(s) {', '.join(sorted(unknown))}; of: {', '.join(METRICS)}"
            )
    return args


def choose(args: argparse.Namespace) -> tuple[Sizes, list[Metric]]:
    sizes = TINY if args.tiny else QUICK if args.quick else DEFAULT
    names = args.only.split(",") if args.only else list(METRICS)
    return sizes, [METRICS[name] for name in METRICS if name in names]


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


def run_step(step: Step, sizes: Sizes, store: report.Store, console: Console) -> None:
    """Measure one step into ``store``; an exception becomes an error entry."""
    series = store.series(step.metric.name, step.case.label, step.system)
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    sizes, metrics = choose(args)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    steps = plan(metrics, sizes, random.Random(seed))
    console = Console(stderr=True)
    store = report.Store()
    started = time.time()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("starting", total=len(steps))
        for step in steps:
            progress.update(task, description=step.describe(step.metric.rounds(sizes)))
            run_step(step, sizes, store, console)
            progress.advance(task)
    command = shlex.join(["python", "-m", "perf", *argv])
    doc = report.document(store, metrics, sizes, command=command, seed=seed, started=started)
    written = report.write_all(doc, args.out)
    console.print(report.summary(doc))
    for path in written:
        console.print(f"wrote {path}")
    return 1 if store.has_errors() else 0


if __name__ == "__main__":
    sys.exit(main())
