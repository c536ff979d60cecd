"""The hub under load and over time: ``python -m perf.load``.

Usage, from the repository root::

    python -m perf.load                       # 1,000 connections, a 300 s soak
    python -m perf.load --quick               # fewer messages, a 30 s soak
    python -m perf.load --connections 50 --soak-seconds 5 --out /tmp/load

1. **Load.**  One hub process (``python -m greenbus serve --port 0``).  Up to
   four client processes (``perf.load_worker subscribers``, 250 connections
   each) subscribe every connection to ``load.<group>`` (ten groups) and
   ``load.all``; a publisher process sends the fan-out traffic.  The hub's RSS
   before and after the connections gives the memory per connection; the
   client processes count and check every message (each subscription must
   see ``0 .. n-1`` in order), so a loss is an error, not a figure.
2. **Soak.**  A fresh hub; one ``perf.load_worker soak`` process runs a steady
   mix (connections replaced every second, one in five without a close
   frame; unsubscribe and subscribe to fresh topics every second; a fixed
   publishing rate, partly to topics nobody subscribes to; one slow consumer
   that the hub closes as slow, and that reconnects).  The hub's RSS is
   sampled every second; after a warm-up, the median of the last 20% of the
   samples is compared with the median of the first 20%, and a straight
   line fitted to them gives the slope.  When every peer has left, the
   hub's gauges must be back to zero.

Writes ``LOAD.md``, ``load.png``, ``soak_rss.png`` and
``results/load-<date>.json`` under ``--out`` (default: this ``perf/``
directory).  Exits 1 if any check failed, after writing the report.

Every process it starts is stopped before it returns (stdin closed or
SIGTERM, a wait, then SIGKILL), whatever happened; everything binds and
connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from .load_worker import HOST, raise_fd_limit

__all__ = ["Config", "LoadError", "main", "rss_trend"]

ROOT = Path(__file__).resolve().parent.parent
PERF = Path(__file__).resolve().parent

#: Connections per client process, and client processes at most.
PER_PROCESS = 250
MAX_PROCESSES = 4
#: Seconds a process has to say it is ready / to finish its part.
READY_TIMEOUT = 60.0
RESULT_TIMEOUT = 300.0
#: Seconds a process has to exit on its own (EOF or SIGTERM) before SIGKILL.
STOP_TIMEOUT = 10.0
#: Seconds the hub has to report zero peers once every client has left.
DRAIN_TIMEOUT = 15.0

#: Published figures the memory per connection is compared with (KiB).
#: Centrifugo: "about 30 KB" per connection (docs; shared/ANCHORS.md).
#: websockets: 64 KiB per connection with its defaults (permessage-deflate),
#: 14 KiB with compression disabled ("Memory and buffers" in its docs).  The
#: hub negotiates no compression, so 14 KiB is the like-for-like figure.
ANCHORS_KIB: dict[str, float] = {
    "Centrifugo (~30 KB, published)": 30_000 / 1024,
    "websockets, no compression (published)": 14.0,
    "websockets, default settings (published)": 64.0,
}

URL_LINE = re.compile(rb"listening on ws://127\.0\.0\.1:(\d+)/")

clock = time.monotonic


class LoadError(Exception):
    """A step could not be measured: a process failed, timed out, or counts did not match."""


@dataclass(frozen=True)
class Config:
    """The sizes of one run."""

    connections: int
    processes: int
    groups: int
    #: Messages to ``load.all`` and to each ``load.<group>``.
    per_all: int
    per_group: int
    soak_seconds: float
    soak_connections: int
    #: Pubs per second, connections replaced per second, resubscriptions per second.
    soak_rate: float
    churn: int
    resubscribe: int
    #: Seconds at the start of the soak left out of the trend.
    warmup: float

    @classmethod
    def build(cls, quick: bool, connections: int, soak_seconds: float | None) -> Config:
        if connections < 1:
            raise SystemExit("--connections must be at least 1")
        seconds = soak_seconds if soak_seconds is not None else (30.0 if quick else 300.0)
        if seconds <= 0:
            raise SystemExit("--soak-seconds must be positive")
        soak_conns = max(10, connections // 5)
        return cls(
            connections=connections,
            processes=min(MAX_PROCESSES, math.ceil(connections / PER_PROCESS)),
            groups=10,
            per_all=200 if quick else 1000,
            per_group=100 if quick else 500,
            soak_seconds=seconds,
            soak_connections=soak_conns,
            soak_rate=200.0,
            churn=max(1, soak_conns // 40),
            resubscribe=max(1, soak_conns // 20),
            # 10% of the soak, at most 30 s: imports, caches and pools fill up first.
            warmup=min(30.0, seconds / 10),
        )


# -- processes -----------------------------------------------------------------------


class Child:
    """A process of the run: JSON lines (or plain lines) on stdout, stderr in a log file.

    Args:
        name: for errors and the log file's name.
        argv: the command, run from the repository root.
        logs: the directory of the log file.
    """

    def __init__(self, name: str, argv: Sequence[str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buffer = b""
        self._lines: list[bytes] = []
        self._eof = False

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.proc.pid} exit={self.proc.poll()}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def eof(self) -> bool:
        """True once stdout has ended."""
        return self._eof

    def fileno(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def pump(self) -> None:
        """Read what stdout has now (never blocks)."""
        assert self.proc.stdout is not None
        while True:
            try:
                chunk = os.read(self.fileno(), 65536)
            except BlockingIOError:
                return
            if not chunk:
                self._eof = True
                return
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            self._lines.extend(line for line in lines if line.strip())

    def take(self) -> list[bytes]:
        lines, self._lines = self._lines, []
        return lines

    def line(self, timeout: float) -> bytes:
        """The next line of stdout.

        Raises:
            LoadError: the process exited, or nothing came within ``timeout``.
        """
        deadline = clock() + timeout
        while not self._lines:
            if self._eof:
                raise self.failure("exited")
            left = deadline - clock()
            if left <= 0:
                raise self.failure(f"said nothing for {timeout:.0f} s")
            select.select([self], [], [], left)
            self.pump()
        return self._lines.pop(0)

    def send(self, command: str) -> None:
        """One command line on stdin (``report``, ``close``)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise self.failure(f"cannot take {command!r}") from exc

    def failure(self, what: str) -> LoadError:
        code = self.proc.poll()
        if code is None and self._eof:
            # Its stdout ended: it is exiting; say how (a signal, a status).
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(2.0)
        state = f"exit status {code}" if code is not None else "still running"
        return LoadError(f"{self.name} {what} ({state}); its log ends:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) or "(empty log)"

    def stop(self, *, sigterm: bool = False) -> None:
        """Close stdin (or send SIGTERM), wait; then SIGTERM, wait; then SIGKILL.  Idempotent."""
        proc = self.proc
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc.poll() is None and sigterm:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def messages(child: Child, timeout: float) -> Iterator[dict[str, Any]]:
    """The JSON lines of ``child``, until ``timeout`` without one.

    Raises:
        LoadError: it said ``{"error": ...}``, exited, or went quiet.
    """
    while True:
        obj = json.loads(child.line(timeout))
        if "error" in obj:
            raise child.failure(f"failed: {obj['error']}")
        yield obj


def expect(child: Child, key: str, timeout: float) -> Any:
    """Skip progress lines until one with ``key``; return its value."""
    for obj in messages(child, timeout):
        if key in obj:
            return obj[key]
    raise AssertionError("unreachable")


def gather(
    children: Sequence[Child],
    key: str,
    timeout: float,
    on_progress: Callable[[Child, dict[str, Any]], None] | None = None,
    also: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Wait until every child has said ``key``: {child name: value}.

    ``on_progress`` gets each ``{"progress": ...}`` line; ``also`` runs about
    ten times a second (to watch another process).

    Raises:
        LoadError: a child failed, exited, or ``timeout`` passed first.
    """
    found: dict[str, Any] = {}
    deadline = clock() + timeout
    while len(found) < len(children):
        if clock() > deadline:
            missing = [c.name for c in children if c.name not in found]
            raise LoadError(f"no {key!r} from {', '.join(missing)} within {timeout:.0f} s")
        waiting = [c for c in children if c.name not in found]
        select.select(waiting, [], [], 0.1)
        for child in waiting:
            child.pump()
            for line in child.take():
                obj = json.loads(line)
                if "error" in obj:
                    raise child.failure(f"failed: {obj['error']}")
                if "progress" in obj and on_progress is not None:
                    on_progress(child, obj["progress"])
                if key in obj:
                    found[child.name] = obj[key]
            if child.eof and child.name not in found:
                raise child.failure(f"exited before {key!r}")
        if also is not None:
            also()
    return found


class Hub:
    """A ``python -m greenbus serve`` process on 127.0.0.1, a free port."""

    def __init__(self, name: str, logs: Path, *options: str) -> None:
        argv = [sys.executable, "-m", "greenbus", "serve", "--host", HOST, "--port", "0"]
        self.child = Child(name, [*argv, "--log-level", "warning", *options], logs)
        line = self.child.line(READY_TIMEOUT)
        match = URL_LINE.search(line)
        if match is None:
            raise self.child.failure(f"printed {line!r}, not its address")
        self.port = int(match.group(1))
        self.pid = self.child.pid

    def check_alive(self) -> None:
        if self.child.proc.poll() is not None:
            raise self.child.failure("died")

    def rss_kib(self) -> int:
        """Resident set size now (VmRSS), KiB."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise LoadError("no VmRSS in /proc/PID/status")

    def rss_settled(self, samples: int = 5, every: float = 0.2) -> float:
        """The median of a few RSS samples, KiB."""
        values = []
        for _ in range(samples):
            values.append(self.rss_kib())
            time.sleep(every)
        return float(statistics.median(values))

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {name{labels}: value}; the per-peer series left out, but
        ``queue_depth_sum``: the messages queued to all peers."""
        url = f"http://{HOST}:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        values = {"queue_depth_sum": 0.0}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            if name.startswith("greenbus_queue_depth{"):
                values["queue_depth_sum"] += float(value)
            elif "peer=" not in name:
                values[name] = float(value)
        return values

    def wait_drained(self, timeout: float = DRAIN_TIMEOUT) -> dict[str, float]:
        """Wait until the hub has no peer left; return its metrics then.

        Raises:
            LoadError: peers still there after ``timeout``.
        """
        deadline = clock() + timeout
        while True:
            m = self.metrics()
            if m.get("greenbus_connections", 0) == 0:
                return m
            if clock() > deadline:
                raise LoadError(
                    f"{m['greenbus_connections']:.0f} peer(s) still on the hub "
                    f"{timeout:.0f} s after every client left"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        self.child.stop(sigterm=True)


@contextlib.contextmanager
def processes() -> Iterator[Callable[[Child | Hub], Any]]:
    """Yield ``keep(process)``: every process kept is stopped on the way out."""
    with contextlib.ExitStack() as stack:

        def keep(process: Child | Hub) -> Any:
            stack.callback(process.stop)
            return process

        yield keep


def worker(name: str, logs: Path, command: str, **options: object) -> Child:
    """A ``perf.load_worker`` process; ``expect_all=5`` becomes ``--expect-all 5``."""
    argv = [sys.executable, "-m", "perf.load_worker", command]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return Child(name, argv, logs)


def closes(m: dict[str, float]) -> dict[str, int]:
    """The hub's ``closes_total`` by code."""
    out = {}
    for name, value in m.items():
        match = re.fullmatch(r'greenbus_closes_total\{code="(\d+)"\}', name)
        if match:
            out[match.group(1)] = int(value)
    return out


def leftovers(m: dict[str, float]) -> list[str]:
    """What a hub with no peers still holds (it should hold nothing)."""
    problems = []
    for gauge in ("greenbus_remote_subscriptions", "greenbus_local_subscriptions"):
        if m.get(gauge, 0):
            problems.append(f"{gauge} is {m[gauge]:.0f} with no peer connected")
    return problems


# -- 1. load -------------------------------------------------------------------------


def _delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def run_load(cfg: Config, logs: Path, progress: Progress) -> dict[str, Any]:
    """Connect, measure memory, flood the fan-out, count; see the module docstring."""
    out: dict[str, Any] = {"errors": []}
    errors: list[str] = out["errors"]
    n = cfg.connections
    shares = [n // cfg.processes + (i < n % cfg.processes) for i in range(cfg.processes)]
    per_connection = cfg.per_all + cfg.per_group
    expected = n * per_connection
    connecting = progress.add_task("load · connecting", total=n)
    with processes() as keep:
        hub: Hub = keep(Hub("load-hub", logs))
        out["hub_port"] = hub.port
        # Warm-up: the first peers make the hub import and allocate what every
        # later one reuses; that is not a per-connection cost.
        warm = keep(
            worker(
                "warm-subscribers",
                logs,
                "subscribers",
                port=hub.port,
                count=20,
                expect_group=2,
                expect_all=20,
            )
        )
        expect(warm, "ready", READY_TIMEOUT)
        warm_pub = keep(
            worker("warm-publisher", logs, "publisher", port=hub.port, per_all=20, per_group=2)
        )
        expect(warm_pub, "result", RESULT_TIMEOUT)
        warm.send("report")
        warm_result = expect(warm, "result", RESULT_TIMEOUT)
        if warm_result["received"] != warm_result["expected"]:
            errors.append(f"warm-up: {warm_result['received']} of {warm_result['expected']}")
        warm.send("close")
        expect(warm, "closed", RESULT_TIMEOUT)
        warm.stop()
        warm_pub.stop()
        hub.wait_drained()
        time.sleep(1.0)
        out["rss_before_kib"] = hub.rss_settled()

        counts = {}

        def on_connect(child: Child, p: dict[str, Any]) -> None:
            counts[child.name] = p
            progress.update(connecting, completed=sum(c["connected"] for c in counts.values()))

        subscribers = []
        first = 0
        for i, share in enumerate(shares):
            subscribers.append(
                keep(
                    worker(
                        f"subscribers-{i}",
                        logs,
                        "subscribers",
                        port=hub.port,
                        first=first,
                        count=share,
                        groups=cfg.groups,
                        expect_group=cfg.per_group,
                        expect_all=cfg.per_all,
                    )
                )
            )
            first += share
        started = clock()
        gather(subscribers, "ready", READY_TIMEOUT, on_connect, hub.check_alive)
        out["connect_seconds"] = round(clock() - started, 3)
        progress.update(connecting, completed=n)
        time.sleep(1.0)
        out["rss_connected_kib"] = hub.rss_settled()
        m0 = hub.metrics()
        if m0.get("greenbus_connections") != n:
            errors.append(f"the hub counts {m0.get('greenbus_connections')} peers, not {n}")
        if m0.get("greenbus_remote_subscriptions") != 2 * n:
            errors.append(
                f"the hub counts {m0.get('greenbus_remote_subscriptions')} subscriptions, "
                f"not {2 * n}"
            )
        out["memory_per_connection_kib"] = (out["rss_connected_kib"] - out["rss_before_kib"]) / n

        # The flood.
        delivering = progress.add_task("load · delivering", total=expected)
        peak = {"rss_kib": 0, "queued": 0, "at": 0.0}

        def watch() -> None:
            # About twice a second: the hub's RSS and the messages queued to its peers.
            hub.check_alive()
            if clock() - peak["at"] < 0.5:
                return
            m = hub.metrics()
            peak.update(
                rss_kib=max(peak["rss_kib"], hub.rss_kib()),
                queued=max(peak["queued"], m["queue_depth_sum"]),
                at=clock(),
            )

        def on_receive(child: Child, p: dict[str, Any]) -> None:
            counts[child.name] = p
            progress.update(delivering, completed=sum(c["received"] for c in counts.values()))

        cpu0 = hub.cpu_seconds()
        publisher = keep(
            worker(
                "publisher",
                logs,
                "publisher",
                port=hub.port,
                groups=cfg.groups,
                per_all=cfg.per_all,
                per_group=cfg.per_group,
            )
        )
        sent = gather([publisher], "result", RESULT_TIMEOUT, None, watch)["publisher"]
        for child in subscribers:
            child.send("report")
        results = gather(subscribers, "result", RESULT_TIMEOUT, on_receive, watch)
        cpu1 = hub.cpu_seconds()
        m1 = hub.metrics()
        out["rss_after_traffic_kib"] = hub.rss_settled()
        progress.update(delivering, completed=sum(r["received"] for r in results.values()))

        # Verify every count against what was sent.
        sent_total = sum(sent["sent"].values())
        want_sent = cfg.per_all + cfg.groups * cfg.per_group
        if sent_total != want_sent:
            errors.append(f"the publisher sent {sent_total} messages, not {want_sent}")
        received = sum(r["received"] for r in results.values())
        for name, r in sorted(results.items()):
            for field in (
                "incomplete",
                "not_from_zero",
                "gaps",
                "disorder",
                "unknown_sid",
                "hub_errors",
            ):
                if r[field]:
                    errors.append(f"{name}: {field} = {r[field]}; e.g. {r['examples'][:3]}")
            if r["early_ends"]:
                errors.append(f"{name}: connections closed by the hub: {r['early_ends']}")
        if received != expected:
            errors.append(f"delivered {received} messages, not {expected} (lost or duplicated)")
        written = _delta(m1, m0, "greenbus_messages_out_total")
        if written != expected:
            errors.append(f"the hub wrote {written:.0f} messages, not {expected}")
        for counter in ("greenbus_dropped_total", "greenbus_slow_consumers_total"):
            if _delta(m1, m0, counter):
                errors.append(f"{counter} rose by {_delta(m1, m0, counter):.0f}")
        last = max(r["last"] for r in results.values() if r["last"] is not None)
        elapsed = last - sent["start"]
        out.update(
            connections=n,
            processes=cfg.processes,
            subscriptions_per_connection=2,
            published=sent_total,
            expected_deliveries=expected,
            delivered=received,
            flood_seconds=round(elapsed, 3),
            publisher_seconds=round(sent["end"] - sent["start"], 3),
            hub_cpu_seconds=round(cpu1 - cpu0, 3),
            hub_cpu_us_per_delivery=(cpu1 - cpu0) / received * 1e6 if received else None,
            flood_peak_rss_kib=peak["rss_kib"],
            flood_peak_queued=peak["queued"],
            # A figure only when every count matched.
            delivered_per_s=expected / elapsed if not errors else None,
            per_process={
                name: {k: r[k] for k in ("connections", "received", "expected")}
                for name, r in sorted(results.items())
            },
        )

        # Everyone leaves; the hub must be back to nothing.
        for child in subscribers:
            child.send("close")
        closed = gather(subscribers, "closed", RESULT_TIMEOUT, None, hub.check_alive)
        out["client_closes"] = {name: c["codes"] for name, c in sorted(closed.items())}
        for child in subscribers:
            child.stop()
        m2 = hub.wait_drained()
        errors.extend(leftovers(m2))
        time.sleep(1.0)
        out["rss_after_disconnect_kib"] = hub.rss_settled()
        out["hub_closes"] = closes(m2)
    return out


# -- 2. soak -------------------------------------------------------------------------


def rss_trend(samples: Sequence[tuple[float, float]], warmup: float) -> dict[str, Any]:
    """Compare the start and end of the RSS series after ``warmup`` seconds.

    Args:
        samples: ``(seconds since the start, RSS KiB)``.

    Returns:
        ``first_kib``/``last_kib``: medians of the first and last 20% of the
        samples after the warm-up (at least one sample each); ``growth_kib``;
        ``slope_kib_per_min`` of a least-squares line through them (and
        ``slope_second_half_kib_per_min`` through the second half: a
        curve levelling off is not a line climbing).

    Raises:
        LoadError: fewer than three samples after the warm-up.
    """
    post = [(t, rss) for t, rss in samples if t >= warmup]
    if len(post) < 3:
        raise LoadError(f"{len(post)} RSS sample(s) after the warm-up: too few for a trend")
    k = max(1, len(post) // 5)
    first = statistics.median(rss for _, rss in post[:k])
    last = statistics.median(rss for _, rss in post[-k:])
    fit = statistics.linear_regression([t for t, _ in post], [rss for _, rss in post])
    half = post[len(post) // 2 :]
    late = statistics.linear_regression([t for t, _ in half], [rss for _, rss in half])
    return {
        "warmup_s": warmup,
        "samples": len(post),
        "window_samples": k,
        "first_kib": first,
        "last_kib": last,
        "growth_kib": last - first,
        "slope_kib_per_min": fit.slope * 60,
        "slope_second_half_kib_per_min": late.slope * 60,
        "intercept_kib": fit.intercept,
    }


def blocks_trend(samples: Sequence[tuple[float, float]], warmup: float) -> dict[str, Any]:
    """:func:`rss_trend` of the hub's live Python blocks: ``first``, ``last``, ``growth``,
    ``slope_per_min`` (in blocks)."""
    t = rss_trend(samples, warmup)
    return {
        "first": t["first_kib"],
        "last": t["last_kib"],
        "growth": t["growth_kib"],
        "slope_per_min": t["slope_kib_per_min"],
    }


def verdict(
    trend: dict[str, Any], seconds: float, live: dict[str, Any] | None = None
) -> tuple[bool, str]:
    """(no growth?, the sentence): RSS growth within max(1 MiB, 2% of the start), and,
    when ``live`` (:func:`blocks_trend`) is given, live blocks within 2% of the start."""
    allowed = max(1024.0, 0.02 * trend["first_kib"])
    rss_ok = trend["growth_kib"] <= allowed
    text = (
        f"no growth: {trend['growth_kib']:+.0f} KiB, within the {allowed:.0f} KiB allowed"
        if rss_ok
        else f"GROWTH: {trend['growth_kib']:+.0f} KiB, over the {allowed:.0f} KiB allowed"
    )
    ok = rss_ok
    if live is not None and live["first"] > 0:
        share = live["growth"] / live["first"]
        live_ok = share <= 0.02
        ok = ok and live_ok
        text += f"; live Python blocks {live['growth']:+,.0f} ({share:+.1%}), " + (
            "within the 2% allowed" if live_ok else "OVER the 2% allowed"
        )
    if seconds < 120:
        text += f" (a {seconds:.0f} s soak: indicative only)"
    return ok, text


def run_soak(cfg: Config, logs: Path, progress: Progress) -> dict[str, Any]:
    """Run the soak mix against a fresh hub, sampling its RSS every second."""
    out: dict[str, Any] = {"errors": []}
    errors: list[str] = out["errors"]
    task = progress.add_task("soak · connecting", total=cfg.soak_seconds)
    with processes() as keep:
        hub: Hub = keep(Hub("soak-hub", logs))
        soak = keep(
            worker(
                "soak",
                logs,
                "soak",
                port=hub.port,
                seconds=cfg.soak_seconds,
                connections=cfg.soak_connections,
                rate=cfg.soak_rate,
                churn=cfg.churn,
                resubscribe=cfg.resubscribe,
                groups=cfg.groups,
            )
        )
        expect(soak, "ready", READY_TIMEOUT)
        start = clock()
        cpu_start = hub.cpu_seconds()
        samples: list[dict[str, Any]] = []
        result = None
        progress.update(task, description="soak · running")
        next_sample = start
        while result is None:
            now = clock()
            if now >= next_sample:
                m = hub.metrics()
                t = clock() - start
                samples.append(
                    {
                        "t": round(t, 3),
                        "rss_kib": hub.rss_kib(),
                        "connections": int(m.get("greenbus_connections", 0)),
                        "cpu_s": round(hub.cpu_seconds() - cpu_start, 3),
                        "slow_consumers": int(m.get("greenbus_slow_consumers_total", 0)),
                        "python_blocks": int(m.get("greenbus_python_allocated_blocks", 0)),
                    }
                )
                progress.update(
                    task,
                    completed=min(t, cfg.soak_seconds),
                    description=(
                        f"soak · {samples[-1]['connections']} conns · "
                        f"RSS {samples[-1]['rss_kib'] / 1024:.1f} MiB"
                    ),
                )
                next_sample += 1.0
            hub.check_alive()
            select.select([soak], [], [], max(0.0, min(next_sample - clock(), 0.5)))
            soak.pump()
            for line in soak.take():
                obj = json.loads(line)
                if "error" in obj:
                    raise soak.failure(f"failed: {obj['error']}")
                if "result" in obj:
                    result = obj["result"]
            if soak.eof and result is None:
                raise soak.failure("exited before its result")
            if clock() - start > cfg.soak_seconds + RESULT_TIMEOUT:
                raise LoadError("the soak worker did not finish")
        progress.update(task, completed=cfg.soak_seconds, description="soak · done")
        soak.stop()
        m_end = hub.wait_drained()
        errors.extend(leftovers(m_end))
        time.sleep(1.0)
        out["rss_after_disconnect_kib"] = hub.rss_settled()
        out["hub_closes"] = closes(m_end)
        out["hub_slow_consumers"] = int(m_end.get("greenbus_slow_consumers_total", 0))
        out["hub_close_timeouts"] = int(m_end.get('greenbus_timeouts_total{kind="close"}', 0))
        out["hub_dropped"] = int(m_end.get("greenbus_dropped_total", 0))
        out["hub_connections_total"] = int(m_end.get("greenbus_connections_total", 0))
        out["hub_cpu_seconds"] = round(hub.cpu_seconds() - cpu_start, 3)

    for field in ("gaps", "disorder", "stable_incomplete", "failure_count"):
        if result[field]:
            errors.append(f"{field} = {result[field]}; e.g. {result['examples'][:3]}")
    counts = result["counts"]
    for field in ("late", "hub_errors"):
        if counts.get(field):
            errors.append(f"{field} = {counts[field]}; e.g. {result['examples'][:3]}")
    if result["unexpected_ends"]:
        errors.append(f"the hub closed fast consumers: {result['unexpected_ends']}")
    slow_ends = result["slow_consumer"]["ends"]
    if cfg.soak_seconds >= 30 and not out["hub_slow_consumers"]:
        errors.append("the hub never closed the slow consumer as slow")
    elif set(slow_ends) - {"1013", "1006"}:
        errors.append(f"the slow consumer saw close codes {slow_ends}; the hub's is 1013")
    elif slow_ends.get("1006", 0) > out["hub_close_timeouts"]:
        # 1006 only when the hub gave up writing its close frame (close_timeout).
        errors.append(
            f"the slow consumer ended {slow_ends['1006']} times without a close frame, "
            f"but the hub aborted only {out['hub_close_timeouts']} connections"
        )
    trend = rss_trend([(s["t"], s["rss_kib"]) for s in samples], cfg.warmup)
    live = blocks_trend([(s["t"], s["python_blocks"]) for s in samples], cfg.warmup)
    ok, text = verdict(trend, cfg.soak_seconds, live)
    out.update(
        seconds=cfg.soak_seconds,
        config={
            "connections": cfg.soak_connections,
            "stable": max(1, cfg.soak_connections // 4),
            "pubs_per_s": cfg.soak_rate,
            "replaced_per_s": cfg.churn,
            "resubscribed_per_s": cfg.resubscribe,
        },
        worker=result,
        samples=samples,
        rss_start_kib=samples[0]["rss_kib"],
        rss_end_kib=samples[-1]["rss_kib"],
        trend=trend,
        blocks_trend=live,
        no_growth=ok,
        verdict=text,
    )
    return out


# -- the report ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import gevent
    import websockets

    import greenbus

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "greenbus": greenbus.__version__,
        "gevent": gevent.__version__,
        "websockets": websockets.__version__,
    }


def _mib(kib: float | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The table of figures and the two charts: LOAD.md's head, and RESULTS.md's section."""
    load, soak = doc.get("load") or {}, doc.get("soak") or {}
    cfg = doc["config"]
    conf, trend = soak.get("config", {}), soak.get("trend", {})
    live = soak.get("blocks_trend") or {}
    per = load.get("memory_per_connection_kib")
    ratio = "" if per is None else f" ({per / 14:.1f}x websockets without compression)"
    rows = [
        (
            "connections",
            f"{cfg['connections']:,} from {cfg['processes']} client process(es), "
            f"2 subscriptions each ({cfg['groups']} group topics + `load.all`)",
            "",
        ),
        (
            "memory per connection",
            f"**{_num(per, 1)} KiB**{ratio}: hub RSS {_mib(load.get('rss_before_kib'))} → "
            f"{_mib(load.get('rss_connected_kib'))}",
            "Centrifugo ~29 KiB (30 KB); websockets 14 KiB without compression, "
            "64 KiB with its defaults (published figures)",
        ),
        (
            "delivered",
            f"**{_num(load.get('delivered_per_s'))} msgs/s**: "
            f"{_num(load.get('expected_deliveries'))} messages in "
            f"{_num(load.get('flood_seconds'), 1)} s; hub CPU "
            f"{_num(load.get('hub_cpu_us_per_delivery'), 1)} µs per message delivered",
            "Centrifugo: ~500k msgs/s across 20 pods (published); here one hub process",
        ),
        (
            "drops",
            "0: every subscription got every message, in order (checked by the clients "
            "and against the hub's counters)"
            if load and not load.get("errors")
            else "**see Errors**",
            "",
        ),
        (
            "soak",
            f"{_num(soak.get('seconds'))} s: {conf.get('connections', 'n/a')} connections, "
            f"{conf.get('replaced_per_s', 'n/a')} replaced/s, "
            f"{conf.get('resubscribed_per_s', 'n/a')} resubscribed/s, "
            f"{_num(conf.get('pubs_per_s'))} pubs/s, 1 slow consumer "
            f"(closed as slow {soak.get('hub_slow_consumers', 'n/a')} times)",
            "",
        ),
        (
            "soak RSS",
            f"start {_mib(trend.get('first_kib'))} → end {_mib(trend.get('last_kib'))} "
            f"(medians of the first and last 20% after a {_num(trend.get('warmup_s'), 1)} s "
            f"warm-up); slope {trend.get('slope_kib_per_min', math.nan):+.1f} KiB/min "
            f"({trend.get('slope_second_half_kib_per_min', math.nan):+.1f} KiB/min over the "
            f"second half)",
            "",
        ),
        (
            "soak live memory",
            f"{_num(live.get('first'))} → {_num(live.get('last'))} Python blocks "
            f"(`greenbus_python_allocated_blocks`, the same windows); slope "
            f"{live.get('slope_per_min', math.nan):+,.0f} blocks/min",
            "",
        ),
        ("verdict", soak.get("verdict", "n/a"), ""),
    ]
    return [
        "| | greenbus hub | for scale |",
        "|---|---|---|",
        *(f"| {name} | {value} | {scale} |" for name, value, scale in rows),
        "",
        "![memory per connection](load.png)",
        "",
        "![hub RSS during the soak](soak_rss.png)",
    ]


def measured_by(doc: dict[str, Any], json_name: str) -> str:
    """The sentence saying which command, when, where, and the raw data's file."""
    return (
        f"Measured by `python -m perf.load{doc['argv']}` on {doc['date']} "
        f"({doc['machine']['cpus']} CPUs, Python {doc['machine']['python']}, gevent "
        f"{doc['machine']['gevent']}, websockets {doc['machine']['websockets']}); "
        f"raw data in `results/{json_name}`."
    )


def markdown(doc: dict[str, Any], json_name: str) -> str:
    """``LOAD.md``: the figures, the charts, how they were measured, what was left."""
    load, soak = doc.get("load") or {}, doc.get("soak") or {}
    lines = [
        "# The hub under load and over time",
        "",
        measured_by(doc, json_name),
        "",
        *summary_lines(doc),
        "",
        "## How it was measured",
        "",
        "- One `python -m greenbus serve` process per phase, on 127.0.0.1; clients are raw "
        "WebSocket clients on gevent sockets (`perf/load_worker.py`), in separate processes, "
        "on the same machine: the delivered rate is what one hub process does while the "
        "clients share its CPUs.",
        "- Memory per connection: the hub's RSS (median of 5 samples) after every connection "
        "has its two subscriptions acknowledged, minus the RSS before, after a warm-up of "
        "20 connections that had come and gone; divided by the connections.  The hub "
        "negotiates no compression, so websockets' 14 KiB (compression off) is the "
        "like-for-like anchor.",
        "- Delivered: from the publisher's first `pub` to the last arrival in any client "
        "process (one monotonic clock); a figure only if every count matched.",
        "- Soak: the hub runs with its default limits.  The slow consumer has a 4 KiB "
        "receive buffer and 16 subscriptions to `soak.>` (so the hub's socket buffer fills "
        "within seconds), reads 1 KiB every 0.2 s for 20 s, then catches up.  The hub finds "
        "it slow within seconds; its 1013 close frame then waits behind the full buffer, and "
        "after `close_timeout` (5 s) the hub aborts the connection (the consumer sees 1006, "
        "and each one must match a close timeout counted by the hub).  A fifth of the pubs "
        "go to fresh topics nobody else subscribes to; 5,000 fresh topics are published to "
        "before sampling, so the hub's two 4,096-entry caches are already full.  One in five "
        "replaced connections leaves without a close frame.  After the soak, every peer "
        "leaves and the hub's gauges must read zero.",
        "- Verdict: the RSS after the warm-up must not grow by more than max(1 MiB, 2%) from "
        "the first to the last 20% of the samples, and the hub's live Python blocks "
        "(`greenbus_python_allocated_blocks` in `/metrics`, sampled with the RSS) by more "
        "than 2%.  RSS also counts what the allocators keep after a peak (freed memory "
        "they hold for reuse), which is why it rises in steps and then stays level; a leak "
        "shows as live blocks climbing.",
        "",
    ]
    if load:
        lines += [
            "## After the load and the soak",
            "",
            f"- Load hub during the flood: at most {_num(load.get('flood_peak_queued'))} "
            "messages queued to peers in any `/metrics` sample (about two a second; the hub "
            "answers them between bursts, so this is not the peak within a burst), RSS up to "
            f"{_mib(load.get('flood_peak_rss_kib'))}; "
            f"{_mib(load.get('rss_after_traffic_kib'))} after the flood, "
            f"{_mib(load.get('rss_after_disconnect_kib'))} once every peer had left "
            f"(from {_mib(load.get('rss_before_kib'))} before the connections).",
        ]
    if soak:
        w = soak.get("worker", {})
        c = w.get("counts", {})
        lines += [
            f"- Soak: {c.get('connects', 0):,} connections opened, {c.get('closes', 0):,} closed "
            f"and {c.get('aborts', 0):,} dropped without a close frame, {c.get('subs', 0):,} "
            f"extra subscriptions, {c.get('unsubs', 0):,} unsubscriptions, "
            f"{w.get('published', 0):,} pubs; slow consumer: "
            f"{c.get('slow_connects', 0)} connections, ends by close code "
            f"{w.get('slow_consumer', {}).get('ends')} after "
            f"{w.get('slow_consumer', {}).get('lifetimes_s')} s; hub closes by code "
            f"{soak.get('hub_closes')}.",
            f"- Soak hub RSS after every peer left {_mib(soak.get('rss_after_disconnect_kib'))}; "
            f"hub CPU {soak.get('hub_cpu_seconds', 0):.1f} s over the soak.",
        ]
    lines.append("")
    if doc["errors"]:
        lines += ["## Errors", ""]
        lines += [f"- {e}" for e in doc["errors"]]
        lines.append("")
    return "\n".join(lines)


def chart_memory(doc: dict[str, Any], path: Path) -> bool:
    from matplotlib.figure import Figure

    per = (doc.get("load") or {}).get("memory_per_connection_kib")
    if per is None:
        return False
    names = ["greenbus hub\n(measured here)"] + [
        name.replace(" (", "\n(").replace(", ", ",\n", 1) for name in ANCHORS_KIB
    ]
    values = [per, *ANCHORS_KIB.values()]
    colors = ["#2a7ab9"] + ["#b0b0b0"] * len(ANCHORS_KIB)
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(names, values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:.1f}",
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
            xytext=(0, 3),
            textcoords="offset points",
        )
    load = doc["load"]
    ax.set_title(
        f"Memory per WebSocket connection (KiB): greenbus hub with "
        f"{load['connections']:,} connections, 2 subscriptions each"
    )
    ax.set_ylabel("memory per connection (KiB)")
    ax.set_xlabel("server (grey: published figures, not measured here)")
    ax.set_ylim(0, max(values) * 1.15)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    return True


def chart_soak(doc: dict[str, Any], path: Path) -> bool:
    from matplotlib.figure import Figure

    soak = doc.get("soak") or {}
    samples = soak.get("samples")
    if not samples:
        return False
    t = [s["t"] for s in samples]
    rss = [s["rss_kib"] / 1024 for s in samples]
    conns = [s["connections"] for s in samples]
    trend = soak["trend"]
    blocks = [s.get("python_blocks", 0) / 1000 for s in samples]
    live = any(blocks)
    fig = Figure(figsize=(10, 7.5 if live else 5), layout="constrained")
    if live:
        ax, ax_blocks = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    else:
        ax = fig.subplots()
    ax.axvspan(0, trend["warmup_s"], color="#eeeeee", label="warm-up (left out)")
    ax.plot(t, rss, color="#2a7ab9", lw=1.5, label="hub RSS (MiB)")
    post = [x for x in t if x >= trend["warmup_s"]]
    k = trend["window_samples"]
    ax.hlines(
        trend["first_kib"] / 1024,
        post[0],
        post[k - 1],
        color="#2ca02c",
        lw=3,
        label="median, first 20%",
    )
    ax.hlines(
        trend["last_kib"] / 1024,
        post[-k],
        post[-1],
        color="#d62728",
        lw=3,
        label="median, last 20%",
    )
    fit = [(trend["intercept_kib"] + trend["slope_kib_per_min"] / 60 * x) / 1024 for x in post]
    ax.plot(
        post,
        fit,
        color="black",
        ls="--",
        lw=1,
        label=f"linear fit: {trend['slope_kib_per_min']:+.1f} KiB/min",
    )
    ax.set_xlabel("time since the soak started (s)")
    ax.set_ylabel("hub resident set size (MiB)")
    low, high = min(rss), max(rss)
    pad = max(0.5, (high - low) * 0.3)
    ax.set_ylim(low - pad, high + pad)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.step(
        t,
        conns,
        where="post",
        color="#ff7f0e",
        alpha=0.7,
        lw=1,
        label="open connections (right axis)",
    )
    ax2.set_ylabel("open connections (hub's /metrics gauge)")
    ax2.set_ylim(0, max(conns) * 1.4 + 1)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(
        handles[0] + handles2[0],
        handles[1] + handles2[1],
        loc="lower right",
        fontsize="small",
        ncols=2,
    )
    ax.set_title(
        f"Hub RSS over a {soak['seconds']:.0f} s soak (MiB), sampled every second: "
        f"{trend['growth_kib']:+.0f} KiB from the first to the last 20%"
    )
    if live:
        ax_blocks.axvspan(0, trend["warmup_s"], color="#eeeeee")
        ax_blocks.plot(t, blocks, color="#6a3d9a", lw=1, label="live Python blocks (thousands)")
        growth = (soak.get("blocks_trend") or {}).get("growth")
        if growth is not None:
            ax_blocks.set_title(
                f"Live Python blocks (greenbus_python_allocated_blocks): {growth:+,.0f} "
                "from the first to the last 20%",
                fontsize="medium",
            )
        ax_blocks.set_ylim(0, max(blocks) * 1.15)
        ax_blocks.set_ylabel("thousands")
        ax_blocks.set_xlabel("time since the soak started (s)")
        ax_blocks.grid(alpha=0.3)
        ax.set_xlabel("")
    fig.savefig(path, dpi=110)
    return True


def write_all(doc: dict[str, Any], out: Path) -> list[Path]:
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    json_name = f"load-{doc['date']}.json"
    written = [results / json_name]
    (results / json_name).write_text(json.dumps(doc, indent=1) + "\n")
    for name, chart in (("load.png", chart_memory), ("soak_rss.png", chart_soak)):
        if chart(doc, out / name):
            written.append(out / name)
    (out / "LOAD.md").write_text(markdown(doc, json_name))
    written.append(out / "LOAD.md")
    # RESULTS.md carries these figures too: render it again with them.
    from . import report

    results_md = report.rewrite_markdown(out)
    if results_md is not None:
        written.append(results_md)
    return written


# -- main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.load", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and a 30 s soak")
    parser.add_argument(
        "--connections", type=int, default=1000, help="connections of the load test (default 1000)"
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=None,
        help="soak duration (default 300; 30 with --quick)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=PERF,
        metavar="DIR",
        help="where to write LOAD.md, the charts and results/ (default: perf/)",
    )
    return parser.parse_args(argv)


def _without_out(argv: Sequence[str]) -> list[str]:
    # The command line as the report shows it: --out DIR is where, not what.
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            shown.append(arg)
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = Config.build(args.quick, args.connections, args.soak_seconds)
    raise_fd_limit()  # the children inherit it
    args.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "argv": "".join(f" {a}" for a in _without_out(argv)),
        "machine": machine(),
        "config": asdict(cfg),
        "anchors_kib": ANCHORS_KIB,
        "load": None,
        "soak": None,
        "errors": [],
    }
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with tempfile.TemporaryDirectory(prefix="greenbus-load-") as tmp:
        logs = Path(tmp)
        with Progress(*columns, console=console, transient=False) as progress:
            for phase, run in (("load", run_load), ("soak", run_soak)):
                try:
                    doc[phase] = run(cfg, logs, progress)
                    doc["errors"] += [f"{phase}: {e}" for e in doc[phase]["errors"]]
                except (LoadError, OSError, KeyError, ValueError) as exc:
                    doc["errors"].append(f"{phase}: {type(exc).__name__}: {exc}")
        if doc["errors"]:
            # The processes' logs go with a failed run's record.
            kept = args.out / "results" / f"load-{doc['date']}-logs"
            shutil.copytree(logs, kept, dirs_exist_ok=True)
            doc["logs"] = str(kept)
    written = write_all(doc, args.out)
    load, soak = doc["load"] or {}, doc["soak"] or {}
    console.print(
        f"memory per connection {_num(load.get('memory_per_connection_kib'), 1)} KiB; "
        f"delivered {_num(load.get('delivered_per_s'))} msgs/s; "
        f"soak: {soak.get('verdict', 'n/a')}"
    )
    for path in written:
        console.print(f"wrote {path}")
    for error in doc["errors"]:
        console.print(f"[red]error:[/red] {error}")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
