"""The examples and the demo's scenarios run as a user runs them, and print what they promise.

Every script in ``examples/`` (helper modules named ``_*.py`` aside) and every
two-thread scenario of the ``greenbus.demo`` package (``python -m
greenbus.demo.NAME``) is run once, in a subprocess, from the repository root,
and its output is shared by the smoke test that every program gets and the
specific checks listed in ``CHECKS``.  A new example is smoke-tested without
touching this file; a new scenario must be listed in ``greenbus.demo.SCENARIOS``.
``greenbus demo`` runs the scenarios side by side and is checked here as well.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import greenbus.demo

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEMO = ROOT / "greenbus" / "demo"

#: The runnable examples; ``_*.py`` would be helpers.
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))

#: The demo's two-thread scenarios, modules of greenbus.demo.
SCENARIOS = [module for module, _ in greenbus.demo.SCENARIOS]


@dataclass(frozen=True)
class Program:
    """An example script or a demo scenario, and how a user runs it."""

    #: Its source file.
    path: Path
    #: The command line a user types (``python ...``), as the docstring says it.
    usage: str

    def argv(self) -> list[str]:
        """The command line, with this interpreter for ``python``."""
        return [sys.executable, *self.usage.split()[1:]]


#: Every program, by the name its tests are known by.
PROGRAMS = {
    **{f"examples/{name}": Program(EXAMPLES / name, f"python examples/{name}") for name in SCRIPTS},
    **{
        f"greenbus.demo.{module}": Program(
            DEMO / f"{module}.py", f"python -m greenbus.demo.{module}"
        )
        for module in SCENARIOS
    },
}


def child_env() -> dict[str, str]:
    """The environment of a child run: the checkout importable, warnings fatal."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # The test run treats warnings as errors; so do the examples.
    env["PYTHONWARNINGS"] = "error"
    env["PYTHONIOENCODING"] = "utf-8"  # the tables print "µs"
    return env


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
        check=False,
    )


@functools.cache
def run_program(name: str) -> subprocess.CompletedProcess[str]:
    """Run the program ``PROGRAMS[name]`` once; later calls return the same result."""
    return run(PROGRAMS[name].argv())


def output_of(name: str) -> str:
    proc = run_program(name)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr}"
    return proc.stdout


def lines_matching(pattern: str, text: str) -> list[re.Match[str]]:
    return [m for m in map(re.compile(pattern).fullmatch, text.splitlines()) if m]


def code_after_docstring(path: Path) -> list[str]:
    """The lines of a module after its docstring."""
    source = path.read_text(encoding="utf-8")
    first = ast.parse(source).body[0]
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    assert first.end_lineno is not None
    return source.splitlines()[first.end_lineno :]


# -- every example and scenario ----------------------------------------------


def test_there_are_examples_and_scenarios_to_run() -> None:
    assert "request_reply.py" in SCRIPTS
    assert SCENARIOS == ["threads_pyee", "pyee_dropin", "threads_greenbus"]


def test_every_scenario_module_in_the_demo_package_is_listed() -> None:
    modules = {p.stem for p in DEMO.glob("*.py") if not p.name.startswith("_")}

    assert modules == set(SCENARIOS)


def test_the_scenarios_live_only_in_the_package_not_in_examples() -> None:
    in_examples = {p.name for p in EXAMPLES.glob("*.py")}

    assert in_examples & {f"{module}.py" for module in [*SCENARIOS, "_scenario"]} == set()


def test_the_examples_readme_says_how_to_run_each_scenario() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")

    assert [m for m in SCENARIOS if f"python -m greenbus.demo.{m}" not in readme] == []
    assert "greenbus demo" in readme


@pytest.mark.parametrize("name", PROGRAMS)
def test_program_runs_to_the_end_and_prints_a_result(name: str) -> None:
    proc = run_program(name)

    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Warning" not in proc.stderr
    assert proc.stdout.strip(), f"{name} printed nothing"


@pytest.mark.parametrize("name", PROGRAMS)
def test_program_says_what_it_shows_and_how_to_run_it(name: str) -> None:
    program = PROGRAMS[name]
    tree = ast.parse(program.path.read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}

    assert docstring, f"{name} has no module docstring"
    assert program.usage in docstring
    assert "main" in functions


@pytest.mark.parametrize("module", SCENARIOS)
def test_scenario_prints_its_figures_as_one_json_object_for_the_demo(module: str) -> None:
    proc = run([sys.executable, "-m", f"greenbus.demo.{module}", "--json"])
    figures = json.loads(proc.stdout)

    assert proc.returncode == 0, proc.stderr
    assert sorted(figures) == ["block_us", "rtt_us", "title"]
    assert len(figures["block_us"]) == 10
    assert sorted(figures["rtt_us"], key=int) == [str(i) for i in range(10)]


# -- what each example prints ------------------------------------------------


def check_request_reply(out: str) -> None:
    assert "users.get 1 -> {'id': 1, 'name': 'ada'}" in out
    assert "users.get 99 -> data=None, error header='no user with id 99'" in out
    assert "three concurrent requests -> ['barbara', 'grace', 'ada']" in out
    assert "NoResponders: no subscription matches 'orders.get'" in out
    assert lines_matching(r"RequestTimeout after [\d.]+ s: .*'reports\.build'.*", out)
    assert "the late reply reached 0 subscriber(s)" in out


def check_wildcards(out: str) -> None:
    header, *rows = out.split("\n\n")[0].splitlines()
    patterns = header.split()[1:]
    received = {row.split()[0]: row.split()[1:] for row in rows}
    expected = {  # topic: one mark per pattern, in the header's order
        "sensors": "----",
        "sensors.room1": "--xx",
        "sensors.room1.temp": "xx-x",
        "sensors.room2.temp": "-x-x",
        "sensors.room1.humidity": "---x",
        "sensors.room1.temp.max": "---x",
        "alarms.room1": "----",
    }

    assert patterns == ["sensors.room1.temp", "sensors.*.temp", "sensors.*", "sensors.>"]
    assert {topic: "".join(marks) for topic, marks in received.items()} == expected
    assert "'sensors.>' receives 'sensors'? False" in out
    assert len(lines_matching(r"    InvalidTopic: invalid topic '.*': .+", out)) == 5


def check_slow_subscriber(out: str) -> None:
    [emitted] = lines_matching(r"emitter: 20 emits took ([\d.]+) ms .*needs (\d+) ms.*", out)
    [slow_so_far] = lines_matching(r"slow subscriber: (\d+)/20 handled so far .*", out)

    assert float(emitted[1]) < float(emitted[2]), "the emitter waited for the slow handler"
    assert "fast subscriber: 20/20 handled" in out
    assert int(slow_so_far[1]) < 20
    assert "after bus.close(): slow subscriber 20/20 handled, in order: True" in out
    assert "after the burst: pending=5, dropped=45" in out
    assert "the display showed [45, 46, 47, 48, 49]" in out
    assert "on_error was called 1 time(s) for 45 drops:" in out
    assert out.count("SlowConsumer: slow consumer on 'prices'") == 1
    assert out.count("[log greenbus.bus]") == 1


def check_iterator_consumer(out: str) -> None:
    assert "producer done: 6 jobs emitted" in out
    assert lines_matching(r"  audit \(6 jobs\): image\.resize:cat\.png, email\.send:.*", out)
    assert (
        "  images (4 jobs): image.resize:cat.png, image.resize:dog.png, "
        "image.crop:cat.png, image.resize:owl.png"
    ) in out


def check_threads_unpatched(out: str) -> None:
    assert "received 300 messages; bus.stats().thread_emits = 300" in out
    assert len(lines_matching(r"thread [ABC]: 100 messages, in its own order: True", out)) == 3
    assert "raised WrongThread 3 times" in out


def scenario_rows(out: str) -> list[re.Match[str]]:
    """The per-message rows of ``greenbus.demo._scenario.report``: msg, emit held, round trip."""
    return lines_matching(r"\s*(\d+)\s+([\d.]+)\s+([\d.]+|lost)", out)


def check_two_thread_scenario(title: str) -> Callable[[str], None]:
    def check(out: str) -> None:
        rows = scenario_rows(out)

        assert out.startswith(title)
        assert [int(m[1]) for m in rows] == list(range(10))
        assert [m[3] for m in rows if m[3] == "lost"] == []
        assert lines_matching(r"median: .*; 10/10 replies", out)

    return check


#: Specific facts per example, on top of the smoke test every example gets.
CHECKS: dict[str, Callable[[str], None]] = {
    "examples/request_reply.py": check_request_reply,
    "examples/wildcards.py": check_wildcards,
    "examples/slow_subscriber.py": check_slow_subscriber,
    "examples/iterator_consumer.py": check_iterator_consumer,
    "examples/threads_unpatched.py": check_threads_unpatched,
    "greenbus.demo.threads_greenbus": check_two_thread_scenario(
        "greenbus.Bus, gevent-patched threads"
    ),
    "greenbus.demo.threads_pyee": check_two_thread_scenario("pyee."),
    "greenbus.demo.pyee_dropin": check_two_thread_scenario("greenbus.compat.EventEmitter"),
}


def test_every_check_names_a_program() -> None:
    assert set(CHECKS) - set(PROGRAMS) == set()


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_program_prints_what_it_demonstrates(name: str) -> None:
    CHECKS[name](output_of(name))


def test_pyee_dropin_differs_from_threads_pyee_only_in_the_import() -> None:
    pyee = code_after_docstring(DEMO / "threads_pyee.py")
    dropin = code_after_docstring(DEMO / "pyee_dropin.py")
    changed = [(a, b) for a, b in zip(pyee, dropin, strict=False) if a != b]

    assert len(pyee) == len(dropin)
    assert changed == [
        ("from pyee import EventEmitter", "from greenbus.compat import EventEmitter")
    ]


# -- greenbus demo -----------------------------------------------------------


def demo_command() -> list[str]:
    """The installed console script if there is one, else ``python -m greenbus``."""
    script = Path(sys.executable).with_name("greenbus")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "greenbus"]


def test_greenbus_demo_prints_the_three_scenarios_side_by_side() -> None:
    proc = run([*demo_command(), "demo"])
    number = r"\s+[\d.]+\s+(?:[\d.]+|lost)"
    rows = lines_matching(rf"\s*(\d+)(?: \|{number}){{3}}", proc.stdout)
    median = lines_matching(rf"\s*med(?: \|{number}){{3}}", proc.stdout)

    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [int(m[1]) for m in rows] == list(range(10))
    assert len(median) == 1
