"""The code passes its own checks: mypy --strict on the package, ruff on the tree.

They run here so that the README's one test command (``pytest``) is the
whole check, on CI and on a developer's machine alike.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_package_type_checks_with_mypy_strict() -> None:
    proc = run("mypy", "greenbus")  # setup.cfg's [mypy] section: strict
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_ruff_finds_nothing_and_the_code_is_formatted() -> None:
    check = run("ruff", "check", ".")
    assert check.returncode == 0, check.stdout + check.stderr
    formatted = run("ruff", "format", "--check", ".")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
