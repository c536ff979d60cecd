"""``greenbus demo`` and ``greenbus bench``: the comparisons a user runs.

``greenbus demo`` runs the three two-thread scenarios of :mod:`greenbus.demo`
from the installed package, each in its own process, and prints their
figures side by side.  ``greenbus bench`` runs the benchmark suite in
``perf/``, which is not part of the package: it needs a source checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO, TypedDict

from ..demo import SCENARIOS

__all__ = ["PERF_PROG", "bench_command", "demo_command"]

#: Seconds a scenario may run (each takes about 0.2 s).
SCENARIO_TIMEOUT = 120

#: The name perf's own parser gives itself (perf/__main__.py builds it with
#: ``prog="python -m perf"``, and has no way to be told another).
PERF_PROG = "python -m perf"


class Figures(TypedDict):
    """What a scenario prints with ``--json`` (``greenbus.demo._scenario.report``)."""

    title: str
    #: Per message i, how long emit held the emitter, in µs.
    block_us: list[float]
    #: Per message answered, by ``str(i)``: the round trip in µs.
    rtt_us: dict[str, float]


def _package_home() -> Path:
    """The directory that holds the greenbus package this command runs from."""
    return Path(__file__).resolve().parents[2]


def _run_scenario(module: str) -> Figures:
    """Run ``python -m greenbus.demo.<module> --json``; the figures it printed.

    The child runs in the directory that holds this greenbus package: ``-m``
    puts the working directory first on ``sys.path``, and a checkout there
    (of another version, say) must not shadow the package that runs the demo.

    Raises:
        SystemExit: the scenario failed; its stderr follows the line.
    """
    proc = subprocess.run(
        [sys.executable, "-m", f"greenbus.demo.{module}", "--json"],
        cwd=_package_home(),
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"greenbus demo: greenbus.demo.{module} failed:\n{proc.stderr}")
    figures: Figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def demo_command(args: argparse.Namespace) -> int:
    """Run the three two-thread scenarios and print them side by side; returns 0.

    Progress goes to stderr, the table to stdout: one row per message, one
    column pair (emit held, round trip) per scenario, then the medians.

    Raises:
        SystemExit: a scenario failed (see ``_run_scenario``).
    """
    results = []
    for module, heading in SCENARIOS:
        print(f"running greenbus.demo.{module} ...", file=sys.stderr)
        results.append((heading, _run_scenario(module)))
    _print_side_by_side(results, sys.stdout)
    return 0


def _print_side_by_side(results: list[tuple[str, Figures]], out: TextIO) -> None:
    """Write the table of ``results`` (heading, figures), then what it shows, to ``out``."""
    width = 27
    out.write("\nThe two-thread scenario: thread1 emits 'data' every 10 ms, thread2 replies.\n")
    out.write("Per message: how long emit held thread1 / the round trip, in µs.\n\n")
    out.write(f"{'msg':>4}" + "".join(f" | {h:^{width}}" for h, _ in results) + "\n")
    out.write(f"{'':>4}" + "".join(f" | {'held':>12} {'round trip':>14}" for _ in results) + "\n")
    count = max(len(r["block_us"]) for _, r in results)
    for i in range(count):
        row = f"{i:>4}"
        for _, r in results:
            held = r["block_us"][i]
            rtt = r["rtt_us"].get(str(i))
            rtt_text = f"{rtt:14.1f}" if rtt is not None else f"{'lost':>14}"
            row += f" | {held:12.1f} {rtt_text}"
        out.write(row + "\n")
    row = f"{'med':>4}"
    for _, r in results:
        rtts = list(r["rtt_us"].values())
        held = statistics.median(r["block_us"])
        rtt_text = f"{statistics.median(rtts):14.1f}" if rtts else f"{'-':>14}"
        row += f" | {held:12.1f} {rtt_text}"
    out.write(row + "\n\n")
    out.write(
        "pyee runs handlers inline in the emitting thread and thread2 polls a queue every\n"
        "10 ms; the drop-in stops holding the emitter but keeps the polling loop; greenbus\n"
        "pushes each message to thread2's channel, so the round trip loses the 10 ms sleep.\n"
        "Figures after a 10 ms sleep include the machine's wake-up cost; for hot-path\n"
        "numbers run `greenbus bench`.\n"
        "Each scenario also runs alone: python -m greenbus.demo.NAME, where NAME is one of\n"
        + ", ".join(module for module, _ in SCENARIOS)
        + ".\n"
    )


def bench_command(extra: Sequence[str]) -> int:
    """Run ``python -m perf`` from the source checkout with the options ``extra``.

    ``-h``/``--help`` prints perf's help under ``greenbus bench``'s name.

    Returns:
        perf's exit status.

    Raises:
        SystemExit: not a source checkout (no ``perf/``); one line, status 1.
    """
    root = _package_home()
    if not (root / "perf" / "__main__.py").is_file():
        raise SystemExit(f"greenbus bench: perf/ not found under {root}; use a source checkout")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "perf"]
    if "-h" in extra or "--help" in extra:
        return _bench_help(command, root, env)
    return subprocess.call([*command, *extra], cwd=root, env=env)


def _bench_help(command: list[str], root: Path, env: dict[str, str]) -> int:
    """Print ``python -m perf --help`` with the usage under ``greenbus bench``'s name."""
    proc = subprocess.run(
        [*command, "--help"], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    sys.stderr.write(proc.stderr)
    # Both names are 14 characters: argparse's wrapped usage lines stay aligned.
    sys.stdout.write(proc.stdout.replace(f"usage: {PERF_PROG}", "usage: greenbus bench", 1))
    return proc.returncode
