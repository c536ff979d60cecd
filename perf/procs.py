"""Both ends of the benchmarks' child processes.

The parent's end, used by every harness: :class:`Processes` starts children
(``greenbus serve``, redis-server, the ``perf`` workers) from the repository
root, each in its own process group with stderr in a log file, and stops
them all, the latest first, when its ``with`` block ends: EOF on stdin for
a worker that reads commands, SIGTERM for the rest, a wait, then SIGKILL to
the whole group.  :func:`gather` waits for the JSON lines children print.

The child's end: :func:`say` prints one JSON line (``{"ready": ...}``,
``{"progress": ...}``, ``{"result": ...}``, or ``{"error": ...}`` before
exit status 1, see :func:`run_worker`); a :class:`Tally` checks that a
stream of numbered payloads arrives whole and in order.

Everything binds and connects to 127.0.0.1 only.  Times that cross
processes are ``time.monotonic()``: on Linux one clock for the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["HOST", "Child", "MeasurementError", "Processes", "Tally", "check_stream", "gather"]
__all__ += ["raise_fd_limit", "run_worker", "say"]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
#: Seconds a child has to exit after EOF or SIGTERM, before the next step.
STOP_TIMEOUT = 10.0
#: What ``greenbus serve`` prints once it listens.
SERVE_LINE = re.compile(rb"listening on ws://127\.0\.0\.1:(\d+)/")


class MeasurementError(Exception):
    """No figure: a process failed or went quiet, messages were lost, a wait timed out."""


class Child:
    """One child process: JSON lines (or, for servers, plain lines) on stdout.

    Args:
        name: for errors.
        argv: the command, run from the repository root with it on PYTHONPATH.
        log: where stderr goes (and stdout, when ``lines`` is false).
        stdin: give it a pipe for commands; closing it (EOF) asks it to finish.
    """

    def __init__(
        self, name: str, argv: Sequence[object], log: Path, *, stdin: bool, lines: bool = True
    ) -> None:
        self.name, self.log = name, log
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [str(arg) for arg in argv],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": path},
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if lines else err,
                stderr=err,
                start_new_session=True,  # its own group: stop() reaches what it started
            )
        if self.proc.stdout is not None:
            os.set_blocking(self.proc.stdout.fileno(), False)
        self.eof = not lines
        self._buffer = b""
        self._lines: list[bytes] = []

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.proc.pid} exit={self.proc.poll()}>"

    def fileno(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def _pump(self) -> None:
        while not self.eof:
            try:
                chunk = os.read(self.fileno(), 1 << 16)
            except BlockingIOError:
                return
            self.eof = not chunk
            *lines, self._buffer = (self._buffer + chunk).split(b"\n")
            self._lines += (line for line in lines if line.strip())

    def line(self, timeout: float) -> bytes:
        """The next line of stdout; raises MeasurementError at EOF or after ``timeout``."""
        deadline = time.monotonic() + timeout
        self._pump()
        while not self._lines:
            left = deadline - time.monotonic()
            if self.eof or left <= 0:
                raise self.failure("exited" if self.eof else f"said nothing for {timeout:.0f} s")
            select.select([self], [], [], left)
            self._pump()
        return self._lines.pop(0)

    def next_json(self) -> dict[str, Any] | None:
        """The next JSON line already printed, or None; raises MeasurementError on an error."""
        self._pump()
        if not self._lines:
            return None
        doc: dict[str, Any] = json.loads(self._lines.pop(0))
        if "error" in doc:
            raise self.failure(f"failed: {doc['error']}")
        return doc

    def expect(self, key: str, timeout: float) -> Any:
        """The value of the next JSON line that has ``key`` (see :func:`gather`)."""
        return gather([self], key, timeout)[self.name]

    def send(self, command: str) -> None:
        """One command line on stdin."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise self.failure(f"cannot take {command!r}") from exc

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise self.failure("died")

    def failure(self, what: str) -> MeasurementError:
        """An error that says what happened, how the process ended, and its log's end."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2.0 if self.eof else 0)
        code = self.proc.returncode
        state = "still running" if code is None else f"exit status {code}"
        tail = self.log.read_text(errors="replace").strip().splitlines()[-10:]
        return MeasurementError(f"{self.name} {what} ({state}); its log ends:\n" + "\n".join(tail))

    def _signal(self, sig: int) -> None:
        if self.proc.poll() is None:  # not reaped: its group id is still its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        """EOF on stdin (a worker's cue to finish), or SIGTERM; wait; then SIGTERM, SIGKILL.

        Signals go to the child's whole process group.  Idempotent.
        """
        signals = [signal.SIGTERM, signal.SIGKILL]
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        else:
            self._signal(signals.pop(0))
        for sig in signals:
            try:
                self.proc.wait(STOP_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                self._signal(sig)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def gather(
    children: Sequence[Child],
    key: str,
    timeout: float,
    on_progress: Callable[[Child, Any], None] | None = None,
    also: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Wait until every child has printed a JSON line with ``key``: {name: value}.

    Lines before it go to ``on_progress`` if they are ``{"progress": ...}``;
    lines after it stay for the next call.  ``also()`` runs about ten times
    a second meanwhile (to watch another process).

    Raises:
        MeasurementError: a child said ``{"error": ...}``, exited first, or
            ``timeout`` passed.
    """
    found: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while True:
        waiting = [child for child in children if child.name not in found]
        for child in waiting:
            while child.name not in found and (doc := child.next_json()) is not None:
                if "progress" in doc and on_progress is not None:
                    on_progress(child, doc["progress"])
                if key in doc:
                    found[child.name] = doc[key]
            if child.name not in found and child.eof:
                raise child.failure(f"exited before its {key!r}")
        waiting = [child for child in children if child.name not in found]
        if not waiting:
            return found
        if also is not None:
            also()
        left = deadline - time.monotonic()
        if left <= 0:
            names = ", ".join(child.name for child in waiting)
            raise MeasurementError(f"no {key!r} from {names} within {timeout:.0f} s")
        select.select(waiting, [], [], min(left, 0.1))


class Processes(contextlib.ExitStack):
    """The children of one measurement, and what else must close before they stop.

    Leaving the ``with`` block closes everything added, the latest first.

    Args:
        logs: the directory of the children's logs (default: a temporary one).
    """

    def __init__(self, logs: Path | None = None) -> None:
        super().__init__()
        if logs is None:
            logs = Path(self.enter_context(tempfile.TemporaryDirectory(prefix="perf-")))
        self.logs = logs
        self._started = 0

    def start(
        self, name: str, argv: Sequence[object], *, stdin: bool = False, lines: bool = True
    ) -> Child:
        """Start a child (see :class:`Child`); it stops when the block ends."""
        self._started += 1
        safe = re.sub(r"[^\w.-]+", "-", name)
        log = self.logs / f"{self._started:02d}-{safe}.log"
        child = Child(name, argv, log, stdin=stdin, lines=lines)
        self.callback(child.stop)
        return child

    def python(self, name: str, module: str, *args: object, stdin: bool = False) -> Child:
        """``python -m MODULE ARGS`` with this interpreter and its ``-W`` options."""
        warnings = [f"-W{option}" for option in sys.warnoptions]
        return self.start(name, [sys.executable, *warnings, "-m", module, *args], stdin=stdin)

    def serve(self, name: str, *options: object, timeout: float) -> tuple[Child, int]:
        """``greenbus serve`` on a free port of 127.0.0.1: the child and its port."""
        argv = [sys.executable, "-m", "greenbus", "serve", "--host", HOST, "--port", "0"]
        hub = self.start(name, [*argv, *options])
        line = hub.line(timeout)
        if (match := SERVE_LINE.search(line)) is None:
            raise hub.failure(f"printed {line!r}, not its address")
        return hub, int(match.group(1))

    def redis(self, executable: str, system: str, timeout: float) -> int:
        """A fresh redis-server on a free port: no persistence, no pubsub output limit.

        Raises:
            MeasurementError: ``executable`` is not installed (``system`` is
                unavailable), or it did not answer PING within ``timeout``.
        """
        import redis

        path = shutil.which(executable)
        if path is None:
            raise MeasurementError(f"{system} unavailable: {executable} is not installed")
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        options = ["--save", "", "--appendonly", "no", "--client-output-buffer-limit"]
        argv = [path, "--port", port, "--bind", HOST, *options, "pubsub 0 0 0"]
        server = self.start("redis-server", argv, lines=False)
        deadline = time.monotonic() + timeout
        with contextlib.closing(redis.Redis(host=HOST, port=port)) as probe:
            while True:
                try:
                    probe.ping()
                    return port
                except redis.ConnectionError:
                    server.check_alive()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)

    def redis_cluster(self, system: str, timeout: float, masters: int = 3) -> list[int]:
        """A fresh Redis Cluster of ``masters`` masters and no replicas: each a
        ``redis-server --cluster-enabled yes`` (as :meth:`redis`, its files in
        the logs directory), joined by ``redis-cli --cluster create``; their
        client ports, once every node says the cluster is ok (every slot
        served, every node known).

        Raises:
            MeasurementError: redis-server or redis-cli is not installed
                (``system`` is unavailable), the cluster could not be
                created, or it was not ok within ``timeout``.
        """
        import redis

        path, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if path is None or cli is None:
            missing = "redis-server" if path is None else "redis-cli"
            raise MeasurementError(f"{system} unavailable: {missing} is not installed")
        deadline = time.monotonic() + timeout
        # Two free ports per node: its clients' and its cluster bus's (the
        # default, port + 10000, may be taken or past 65535).
        with contextlib.ExitStack() as held:
            socks = [held.enter_context(socket.socket()) for _ in range(2 * masters)]
            for sock in socks:
                sock.bind((HOST, 0))
            ports: list[int] = [sock.getsockname()[1] for sock in socks]
        nodes = list(zip(ports[::2], ports[1::2], strict=True))
        options = ["--save", "", "--appendonly", "no", "--client-output-buffer-limit"]
        for port, bus in nodes:
            cluster = ["--cluster-enabled", "yes", "--cluster-port", bus]
            cluster += ["--cluster-config-file", self.logs / f"nodes-{port}.conf"]
            argv = [path, "--port", port, "--bind", HOST, *options, "pubsub 0 0 0", *cluster]
            self.start(f"redis-server {port}", argv, lines=False)
        addresses = [f"{HOST}:{port}" for port, _ in nodes]
        for port, _ in nodes:
            with contextlib.closing(redis.Redis(host=HOST, port=port)) as probe:
                while True:
                    try:
                        probe.ping()
                        break
                    except redis.ConnectionError:
                        if time.monotonic() > deadline:
                            raise MeasurementError(f"redis-server {port} did not start") from None
                        time.sleep(0.01)
        create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        done = subprocess.run(
            [*create, "--cluster-yes"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=max(deadline - time.monotonic(), 1.0),
            check=False,
        )
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
            raise MeasurementError(f"{' '.join(create)} failed:\n" + "\n".join(out[-10:]))
        wanted = {"cluster_state": "ok", "cluster_slots_ok": 16384, "cluster_known_nodes": masters}
        for port, _ in nodes:
            with contextlib.closing(redis.Redis(host=HOST, port=port)) as probe:
                while True:
                    info = probe.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
                    if all(str(info.get(key)) == str(value) for key, value in wanted.items()):
                        break
                    if time.monotonic() > deadline:
                        raise MeasurementError(f"cluster not ok within {timeout:.0f} s: {info}")
                    time.sleep(0.05)
        return [port for port, _ in nodes]


# -- the child's end ------------------------------------------------------------------


def say(**fields: Any) -> None:
    """One JSON line to the parent."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def run_worker(commands: Mapping[str, Callable[..., object]]) -> None:
    """Run the command ``argv[1]`` with the keyword arguments of the JSON ``argv[2]``; exit.

    A failure is ``{"error": ...}``, a traceback, and exit status 1.
    """
    command, options = sys.argv[1:]
    try:
        commands[command](**json.loads(options))
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # gevent.Timeout is not an Exception
        say(error=f"{command}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)


def raise_fd_limit() -> int:
    """Raise this process's open-files soft limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


@dataclass
class Tally:
    """The numbers of one stream, checked as they arrive: each must follow the one before.

    ``first_at``/``last_at`` are the arrival times given to :meth:`add`.
    """

    first: int | None = None
    last: int | None = None
    count: int = 0
    #: Numbers skipped between two arrivals.
    gaps: int = 0
    #: Arrivals not above the one before (duplicates, reorders).
    disorder: int = 0
    first_at: float | None = None
    last_at: float | None = None

    def add(self, n: int, now: float | None = None) -> None:
        last = self.last
        if last is None:
            self.first = self.last = n
        elif n == last + 1:
            self.last = n
        elif n > last:
            self.gaps += n - last - 1
            self.last = n
        else:
            self.disorder += 1
        self.count += 1
        if now is not None:
            if self.first_at is None:
                self.first_at = now
            self.last_at = now

    @property
    def clean(self) -> bool:
        return self.gaps == 0 and self.disorder == 0

    def result(self) -> dict[str, Any]:
        return asdict(self)


def check_stream(result: Mapping[str, Any], expected: int, who: str) -> float:
    """The last arrival time of a :class:`Tally` that must be ``0 .. expected-1`` in order.

    Raises:
        MeasurementError: a number was lost, repeated or reordered.
    """
    count, gaps, disorder = result["count"], result["gaps"], result["disorder"]
    if count != expected or gaps or disorder or (count and result["first"] != 0):
        raise MeasurementError(
            f"{who} got {count} of {expected} messages: first {result['first']}, "
            f"{gaps} skipped, {disorder} out of order"
        )
    last: float = result["last_at"]
    return last
