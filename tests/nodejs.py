"""Node.js for the tests that run it: test_node, test_js_client and test_browser.

Node and the packages of ``tests/node/package.json`` are required, not
optional: when one is missing the tests fail (never skip) and say how to
install it.  Reading a child's output waits in gevent, never blocking the
hub, so the test's own greenlets (Python clients) keep running meanwhile.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from collections.abc import Callable

import gevent
import gevent.select
import pytest
from conftest import ROOT

__all__ = ["INSTALL_HINT", "NODE_DIR", "LineReader", "node_executable", "wait_for_exit"]

NODE_DIR = ROOT / "tests" / "node"

INSTALL_HINT = "run `npm install --prefix tests/node` (CI runs `npm ci --prefix tests/node`)"


@functools.cache
def node_executable(package: str) -> str:
    """The path of ``node``, once ``package`` is known to be installed in tests/node."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"`node` is not on PATH: install Node.js (>= 20), then {INSTALL_HINT}")
    if not (NODE_DIR / "node_modules" / package / "package.json").is_file():
        pytest.fail(
            f"the `{package}` package is not installed in {NODE_DIR / 'node_modules'}: "
            f"{INSTALL_HINT}",
            pytrace=False,
        )
    return node


class LineReader:
    """Lines from a child's stdout pipe, waiting in gevent (never blocking the hub)."""

    def __init__(self, proc: subprocess.Popen[bytes], describe: Callable[[], str]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._buffer = b""
        self._eof = False
        self._describe = describe

    def readline(self, deadline: float) -> str | None:
        """The next line without its newline; None at EOF.  Fails at ``deadline``."""
        while b"\n" not in self._buffer and not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out waiting for a line from {self._describe()}")
            readable, _, _ = gevent.select.select([self._fd], [], [], remaining)
            if not readable:
                continue
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True
        if b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            return line.decode("utf-8")
        if self._buffer:  # a last line without a newline
            line, self._buffer = self._buffer, b""
            return line.decode("utf-8")
        return None


def wait_for_exit(proc: subprocess.Popen[bytes], deadline: float) -> int | None:
    """Poll (in gevent) until ``proc`` exits; its return code, or None at ``deadline``."""
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return None
        gevent.sleep(0.01)
    return proc.returncode
