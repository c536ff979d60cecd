"""Test helpers that wait on conditions, never on the clock.

``wait_until`` yields to the gevent hub while it polls, so handler greenlets,
the bus's thread portal and timers keep running.  ``OSThread`` runs a
function in a real (unpatched) OS thread and hands its result or exception
back to the test.  ``preemptible`` lets races between OS threads show up
inside one function's bytecode.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType, FrameType
from typing import Any

import gevent

__all__ = ["OSThread", "call_in_thread", "preemptible", "wait_until"]


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Yield to the hub until ``predicate()`` is true.

    Raises:
        AssertionError: it was still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or predicate}")
        gevent.sleep(0.001)


class OSThread:
    """``target(*args, **kwargs)`` in a real OS thread; :meth:`join` re-raises its error."""

    def __init__(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = target(*args, **kwargs)
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=run, name=f"test:{target!r}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = 10.0) -> Any:
        """Wait for the thread while letting the hub run; return its result."""
        wait_until(lambda: not self._thread.is_alive(), timeout, "OS thread to finish")
        if self.error is not None:
            raise self.error
        return self.result


def call_in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` in a real OS thread and return its result (or raise its error)."""
    return OSThread(fn, *args, **kwargs).join()


_Tracer = Callable[[FrameType, str, Any], Any]


@contextmanager
def preemptible(code: CodeType) -> Iterator[None]:
    """Let the calling OS thread lose the GIL between any two bytecodes of ``code``.

    CPython with a GIL hands it over only at calls, backward jumps and
    function entries, so ``self.n += 1`` (load, add, store) is never
    interrupted there however short the switch interval, although nothing
    promises it (free-threaded builds interrupt it anywhere).  Tracing each
    opcode of ``code`` calls a Python function between its bytecodes: a
    point where, with a tiny switch interval, another thread gets to run.
    """

    def each_opcode(frame: FrameType, event: str, arg: Any) -> _Tracer:
        return each_opcode

    def on_call(frame: FrameType, event: str, arg: Any) -> _Tracer | None:
        if frame.f_code is not code:
            return None
        frame.f_trace_opcodes = True
        return each_opcode

    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(None)
