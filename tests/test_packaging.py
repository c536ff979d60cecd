"""The distribution works as ``pip install greenbus`` gives it, away from the checkout.

The module builds the sdist and the wheel once (``python -m build``, which
builds the wheel from the sdist, so the sdist is complete enough to build
from), checks both with ``twine check``, reads the wheel's file list, then
installs the wheel into a fresh virtual environment (no system site
packages; pip fetches the dependencies, through its cache) and runs the
``greenbus`` command from there, in a working directory outside the
checkout, with nothing of the checkout on its path.  ``greenbus bench`` alone
needs a source checkout (``perf/`` is not in the package), and says so.

The build and the environment are shared by every test here (module-scoped
fixtures): about 10 s in all, most of it pip.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import LISTENING, ROOT, stop_process

#: Seconds for building, or for installing the wheel with its dependencies.
SLOW_STEP = 240.0

#: Seconds for one run of the installed ``greenbus``.
RUN = 60.0

#: The top-level directories of the checkout that the wheel must not ship.
NOT_SHIPPED = ("tests/", "perf/", "examples/", "docs/")


@dataclass(frozen=True)
class Dists:
    """The built distributions."""

    sdist: Path
    wheel: Path

    def wheel_files(self) -> set[str]:
        """The paths of the files in the wheel."""
        with zipfile.ZipFile(self.wheel) as archive:
            return set(archive.namelist())


@dataclass(frozen=True)
class Venv:
    """A fresh virtual environment with the wheel installed, and a directory to run in."""

    path: Path
    #: A working directory outside the checkout.
    cwd: Path

    def bin(self, name: str) -> str:
        """The path of the script ``name`` in the environment."""
        return str(self.path / ("Scripts" if os.name == "nt" else "bin") / name)

    def env(self) -> dict[str, str]:
        """The environment of a run: the venv first on PATH, nothing of the checkout.

        Warnings are errors, as in the test run.
        """
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "GREENBUS_TOKEN")
        }
        env["PATH"] = os.pathsep.join([str(Path(self.bin("python")).parent), env.get("PATH", "")])
        env["PYTHONNOUSERSITE"] = "1"
        env["PYTHONWARNINGS"] = "error"
        env["PYTHONIOENCODING"] = "utf-8"
        return env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``args`` (``args[0]`` a script of the venv) to its end."""
        return subprocess.run(
            [self.bin(args[0]), *args[1:]],
            cwd=self.cwd,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=RUN,
            check=False,
        )


def without_checkout_env() -> dict[str, str]:
    """This process's environment without a PYTHONPATH that could name the checkout."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def run_step(args: list[str], what: str, cwd: Path) -> None:
    """Run one step of building or installing; fail with its output if it fails."""
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=without_checkout_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SLOW_STEP,
        check=False,
    )
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The sdist and the wheel of the checkout, built once for the module."""
    out = tmp_path_factory.mktemp("dist")
    run_step([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], "build", out)
    [sdist] = out.glob("greenbus-*.tar.gz")
    [wheel] = out.glob("greenbus-*.whl")
    return Dists(sdist, wheel)


@pytest.fixture(scope="module")
def venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh virtual environment with only the wheel (and its dependencies) installed."""
    home = tmp_path_factory.mktemp("installed")
    path, cwd = home / "venv", home / "elsewhere"
    cwd.mkdir()
    run_step([sys.executable, "-m", "venv", str(path)], "python -m venv", home)
    venv = Venv(path, cwd)
    pip = [venv.bin("python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run_step([*pip, str(dists.wheel)], "pip install the wheel", home)
    return venv


# -- the distributions ------------------------------------------------------------------


def test_the_sdist_and_the_wheel_pass_twine_check(dists: Dists) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dists.sdist), str(dists.wheel)],
        env={**without_checkout_env(), "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=RUN,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_the_wheel_ships_every_module_py_typed_the_web_files_and_the_demo(dists: Dists) -> None:
    package = ROOT / "greenbus"
    sources = {
        path.relative_to(ROOT).as_posix()
        for pattern in ("**/*.py", "web/*")
        for path in package.glob(pattern)
        if "__pycache__" not in path.parts
    }
    files = dists.wheel_files()

    assert sorted(sources - files) == []
    assert {"greenbus/py.typed", "greenbus/web/index.html", "greenbus/web/greenbus.js"} <= files
    assert {"greenbus/demo/__init__.py", "greenbus/demo/threads_greenbus.py"} <= files


def test_the_wheel_ships_no_tests_perf_examples_or_docs(dists: Dists) -> None:
    files = dists.wheel_files()
    tops = {name.split("/")[0] for name in files}

    assert [name for name in files if name.startswith(NOT_SHIPPED)] == []
    assert {top for top in tops if not top.endswith(".dist-info")} == {"greenbus"}


def test_the_wheel_declares_the_greenbus_console_script(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        lines = archive.read(name).decode("utf-8").splitlines()

    assert "greenbus = greenbus.cli:main" in lines


# -- the installed command --------------------------------------------------------------


def test_the_venv_imports_greenbus_from_the_wheel_not_the_checkout(venv: Venv) -> None:
    proc = venv.run("python", "-c", "import greenbus; print(greenbus.__file__)")

    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(venv.path), proc.stdout
    assert not Path(proc.stdout.strip()).is_relative_to(ROOT), proc.stdout


@pytest.mark.parametrize("command", [["greenbus"], ["python", "-m", "greenbus"]], ids=" ".join)
def test_installed_greenbus_help_lists_every_command(venv: Venv, command: list[str]) -> None:
    proc = venv.run(*command, "--help")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: greenbus ")
    for name in ("serve", "pub", "sub", "demo", "bench"):
        assert f"    {name} " in proc.stdout


def test_installed_greenbus_demo_runs_the_three_scenarios_from_the_package(venv: Venv) -> None:
    proc = venv.run("greenbus", "demo")
    rows = [line for line in proc.stdout.splitlines() if line.count(" | ") == 3]

    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [row.split()[0] for row in rows[2:]] == [*map(str, range(10)), "med"], proc.stdout
    assert "lost" not in proc.stdout
    for module in ("threads_pyee", "pyee_dropin", "threads_greenbus"):
        assert f"running greenbus.demo.{module} ..." in proc.stderr


def test_installed_scenario_runs_alone_with_python_m(venv: Venv) -> None:
    proc = venv.run("python", "-m", "greenbus.demo.threads_greenbus", "--json")

    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["rtt_us"]) == 10


@pytest.fixture
def installed_hub(venv: Venv) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``greenbus serve --port 0`` from the venv, once listening: (process, its URL)."""
    proc = subprocess.Popen(
        [venv.bin("greenbus"), "serve", "--port", "0", "--log-level", "warning"],
        cwd=venv.cwd,
        env=venv.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], RUN)
        line = proc.stdout.readline() if ready else b""
        match = LISTENING.search(line)
        assert match is not None, f"no listening line: {line!r}"
        yield proc, match[1].decode()
    finally:
        stop_process(proc)


def test_installed_greenbus_serve_listens_and_exits_0_on_sigterm(
    installed_hub: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, url = installed_hub
    health_url = url.replace("ws://", "http://", 1) + "health"
    with urllib.request.urlopen(health_url, timeout=RUN) as response:
        health = json.load(response)

    proc.send_signal(signal.SIGTERM)
    returncode = proc.wait(timeout=RUN)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode("utf-8", errors="replace")

    assert health["server"] == "greenbus"
    assert returncode == 0, stderr
    assert "Traceback" not in stderr


def test_installed_greenbus_bench_says_it_needs_a_checkout_in_one_line(venv: Venv) -> None:
    proc = venv.run("greenbus", "bench")

    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("greenbus bench: perf/ not found under ")
    assert proc.stderr.rstrip().endswith("; use a source checkout")
