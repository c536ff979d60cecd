"""``greenbus serve --workers N``: a supervisor and N hub processes on one port.

The supervisor is the ``greenbus serve`` process itself.  It does no
networking of its own beyond holding the port:

1. It checks the port is free and binds it with SO_REUSEPORT, not
   listening (with ``--port 0`` that is how the port is chosen), before
   any worker starts: a busy port is one line, as without workers.
2. It starts N workers, each ``python -m greenbus serve ARGS --port PORT``
   with :data:`WORKER_ENV` in its environment.  A worker is an ordinary
   hub (``serve.serve_command``) that listens with SO_REUSEPORT, so the
   kernel spreads connections over the workers, and federates through
   ``--redis`` as one node: clients on different workers see one bus.
   Its statistics are shared through Redis (:mod:`greenbus.bridge.siblings`).
3. Once every worker has printed its listening line, it prints the usual
   ``greenbus hub listening on URL`` once (scripts read it).

SIGTERM and SIGINT are sent on to every worker as SIGTERM: each closes its
peers with 1001 and exits; the supervisor waits for them (SIGKILL after
``--close-timeout`` and :data:`STOP_GRACE` s) and exits 0, or 1 with one line
if a worker did not end cleanly.

A worker that dies while serving is logged and restarted, and the restarts
are counted in the log line (as gunicorn's arbiter does); its peers
reconnect to the other workers meanwhile.  A worker that fails to start, at
first or on a restart, stops them all: one line naming why, exit status 1
(gunicorn's "worker failed to boot": a problem that restarting would only
repeat).  A worker whose supervisor is gone (killed with SIGKILL) notices
within a second and stops by itself (:func:`watch_supervisor`).
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

__all__ = [
    "START_TIMEOUT",
    "STOP_GRACE",
    "WORKER_ENV",
    "WorkerIdentity",
    "reserve_port",
    "supervise",
    "watch_supervisor",
    "worker_identity",
]

#: The environment variable that makes ``greenbus serve`` a worker: ``"<group>:<index>"``.
WORKER_ENV = "GREENBUS_WORKER"
#: Seconds a worker has to print its listening line.
START_TIMEOUT = 30.0
#: Seconds beyond ``--close-timeout`` that workers have to exit once told to stop.
STOP_GRACE = 5.0

_log = logging.getLogger("greenbus.cli")

LISTENING = b"greenbus hub listening on "


@dataclass(frozen=True)
class WorkerIdentity:
    """Who a worker is: its supervisor's ``group`` (random per supervisor) and its
    ``index`` (1..N), and ``node``, its federation node (unique per process)."""

    group: str
    index: int
    node: str = field(default="")


def worker_identity() -> WorkerIdentity | None:
    """This process's identity if a supervisor started it as a worker, else None."""
    value = os.environ.get(WORKER_ENV)
    if not value:
        return None
    group, _, index = value.partition(":")
    # A fresh node per process: a restarted worker must not reuse its
    # predecessor's origin, whose sequence numbers other nodes remember.
    return WorkerIdentity(group, int(index), f"w{index}-{uuid.uuid4().hex[:8]}")


def watch_supervisor(interval: float = 1.0) -> None:
    """In a worker: SIGTERM itself once its supervisor is gone (its parent changed).

    Runs in a greenlet for the worker's life (spawn it).
    """
    import gevent

    parent = os.getppid()
    while os.getppid() == parent:
        gevent.sleep(interval)
    _log.warning("the supervisor (pid %d) is gone: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with SO_REUSEPORT, not listening, and return the socket.

    First a plain bind checks that nothing listens there, with SO_REUSEPORT
    or not (another supervisor's workers would otherwise share the port).

    Raises:
        OSError: the port is in use, or the address cannot be bound.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        address = probe.getsockname()
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class WorkerFailed(Exception):
    """A worker did not start; the message says why (one line)."""


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]

    @property
    def stdout_fd(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def close_stdout(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Supervisor:
    """Starts, watches and stops the workers of one ``greenbus serve --workers N``."""

    def __init__(self, args: argparse.Namespace, port: int) -> None:
        self.args = args
        self.port = port
        self.group = uuid.uuid4().hex[:8]
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self.stopping = 0  # the signal that asked to stop
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def install_signals(self) -> Callable[[], None]:
        """SIGTERM/SIGINT ask to stop; SIGCHLD wakes the loop (a worker died).

        Returns:
            what puts the handlers back as they were.
        """
        wakeup = signal.set_wakeup_fd(self._wake_w)
        previous = {
            signum: signal.signal(signum, handler)
            for signum, handler in (
                (signal.SIGTERM, self._on_stop_signal),
                (signal.SIGINT, self._on_stop_signal),
                (signal.SIGCHLD, lambda signum, frame: None),
            )
        }

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(wakeup)

        return restore

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = signum

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _spawn(self, index: int) -> _Worker:
        argv = [*self.args.argv, "--port", str(self.port)]
        env = {**os.environ, WORKER_ENV: f"{self.group}:{index}"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "greenbus", *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        worker = _Worker(index, proc)
        self.workers[index] = worker
        return worker

    def start(self, indexes: list[int]) -> None:
        """Start the workers ``indexes`` and wait until each listens.

        Raises:
            WorkerFailed: one exited or said nothing within :data:`START_TIMEOUT`.
        """
        spawned = [self._spawn(i) for i in indexes]
        waiting = {w.stdout_fd: w for w in spawned}
        buffers = {w.index: b"" for w in spawned}
        deadline = time.monotonic() + START_TIMEOUT
        total = self.args.workers
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                w = next(iter(waiting.values()))
                raise WorkerFailed(
                    f"worker {w.index} of {total} did not start within {START_TIMEOUT:g} s"
                )
            if self.stopping:
                return
            ready, _, _ = select.select([*waiting, self._wake_r], [], [], left)
            for fd in ready:
                if fd == self._wake_r:
                    self._drain_wakeups()
                    continue
                w = waiting[fd]
                chunk = os.read(fd, 4096)
                buffers[w.index] += chunk
                if LISTENING in buffers[w.index] and buffers[w.index].endswith(b"\n"):
                    w.close_stdout()  # a worker prints nothing else on stdout
                    del waiting[fd]
                elif not chunk:
                    code = w.proc.wait()
                    w.close_stdout()
                    raise WorkerFailed(
                        f"worker {w.index} of {total} did not start: it exited with "
                        f"status {code} (its log is above)"
                    )

    def watch(self) -> None:
        """Until asked to stop: restart a worker that dies (logged and counted).

        Raises:
            WorkerFailed: a restarted worker did not start.
        """
        while not self.stopping:
            select.select([self._wake_r], [], [], 1.0)
            self._drain_wakeups()
            for index, worker in list(self.workers.items()):
                code = worker.proc.poll()
                if code is None or self.stopping:
                    continue
                self.restarts += 1
                _log.warning(
                    "worker %d (pid %d) exited with status %d; restarting it (restart #%d)",
                    index,
                    worker.proc.pid,
                    code,
                    self.restarts,
                )
                self.start([index])

    def stop(self) -> int:
        """SIGTERM every worker, wait (SIGKILL past the deadline); how many did not
        end cleanly (status 0)."""
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.args.close_timeout + STOP_GRACE
        failed = 0
        for worker in self.workers.values():
            try:
                code = worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.error("worker %d (pid %d) did not stop: killed", worker.index, worker.proc.pid)
                worker.proc.kill()
                code = worker.proc.wait()
            if code != 0:
                failed += 1
            worker.close_stdout()
        return failed

    def close(self) -> None:
        """Close the wake-up pipe (once the signal handlers are put back)."""
        os.close(self._wake_r)
        os.close(self._wake_w)


def supervise(args: argparse.Namespace) -> int:
    """Run ``args.workers`` hub workers on one port until SIGTERM/SIGINT; 0 once all stopped.

    ``args`` are ``greenbus serve``'s, checked (``--redis`` given), with
    ``args.argv`` the command line that made them (the workers run it again).

    Raises:
        SystemExit: one line, status 1: the port is in use or cannot be
            bound, a worker did not start, or a worker did not stop cleanly.
    """
    from .serve import _listen

    reserved: list[socket.socket] = []
    _listen(lambda: reserved.append(reserve_port(args.host, args.port)), args.host, args.port)
    sock = reserved[0]
    port = sock.getsockname()[1]
    supervisor = Supervisor(args, port)
    restore_signals = supervisor.install_signals()
    failure = None
    try:
        supervisor.start(list(range(1, args.workers + 1)))
        if not supervisor.stopping:
            scheme = "wss" if args.certfile else "ws"
            print(f"greenbus hub listening on {scheme}://{args.host}:{port}/", flush=True)
            _log.info(
                "%d workers on port %d (pid %s), federated through %s",
                args.workers,
                port,
                ", ".join(str(w.proc.pid) for w in supervisor.workers.values()),
                args.redis,
            )
            supervisor.watch()
    except WorkerFailed as exc:
        failure = f"greenbus serve: {exc}; stopping the others"
    finally:
        failed = supervisor.stop()
        restore_signals()
        supervisor.close()
        sock.close()
    if failure is not None:
        raise SystemExit(failure)
    if failed:
        raise SystemExit(f"greenbus serve: {failed} worker(s) did not stop cleanly")
    return 0
