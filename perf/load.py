"""The hub under load and over time: ``python -m perf.load``.

Usage, from the repository root::

    python -m perf.load                       # 1,000 connections, a 300 s soak
    python -m perf.load --quick               # fewer messages, a 30 s soak
    python -m perf.load --connections 50 --soak-seconds 5 --out /tmp/load

1. **Load.**  One hub process (``python -m greenbus serve --port 0``) and up
   to four ``perf.load_worker subscribers`` processes (250 connections each,
   every connection subscribed to ``load.<group>`` and ``load.all``); a
   publisher process sends the fan-out traffic.  The hub's RSS before and
   after the connections gives the memory per connection; the client
   processes check every message, so a loss is an error, not a figure.
2. **Soak.**  A fresh hub; one ``perf.load_worker soak`` process runs a
   steady mix (churn, resubscriptions, a fixed publishing rate, one slow
   consumer) while the hub's RSS is sampled every second; see
   :func:`rss_trend` and :func:`verdict`.

How each figure is measured is said in LOAD.md (``suite.toml``'s
``[load]`` texts).  Writes ``results/load-<date>.json``, ``LOAD.md``,
``load.png`` and ``soak_rss.png`` under ``--out`` (default: this ``perf/``
directory), and renders RESULTS.md again with these figures.  Exits 1 if
any check failed, after writing the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import report
from .procs import HOST, Child, MeasurementError, Processes, gather, raise_fd_limit

__all__ = ["Config", "blocks_trend", "main", "rss_trend", "verdict"]

#: Connections per client process, and client processes at most.
PER_PROCESS, MAX_PROCESSES = 250, 4
#: Seconds a process has to say it is ready / to finish its part; the hub to lose its peers.
READY_TIMEOUT, RESULT_TIMEOUT, DRAIN_TIMEOUT = 60.0, 300.0, 15.0
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
#: What the clients are, for LOAD.md.
CLIENT = "websockets' sans-I/O ClientProtocol on gevent sockets"
#: The soak hub's --history-ttl and --history-topics (defaults: 120 s, 100,000 topics).  The
#: soak publishes to 40 fresh topics a second and more, so with the defaults the history's
#: window fills for two minutes and its table of topics for over half an hour while the trend
#: is measured: bounded growth that reads as a leak.  With these, the window is full within
#: the warm-up and the table during the prefill of 5,000 fresh topics; every message is
#: still recorded.
SOAK_HISTORY_TTL, SOAK_HISTORY_TOPICS = 3.0, 4096
#: What a subscribers process counts that must be zero (see load_worker.py).
FLAWS = ("incomplete", "gaps", "disorder", "late", "hub_errors")

clock = time.monotonic
Out = dict[str, Any]


@dataclasses.dataclass(frozen=True)
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
            # 10% of the soak, at most 30 s, and at least the history's ttl (a third of a
            # soak too short for that): imports, caches, pools and the history fill up first.
            warmup=min(30.0, max(seconds / 10, min(SOAK_HISTORY_TTL, seconds / 3))),
        )


class Hub:
    """A ``python -m greenbus serve`` process, and what it says about itself."""

    def __init__(self, processes: Processes, name: str, *options: object) -> None:
        options = ("--log-level", "warning", *options)
        self.child, self.port = processes.serve(name, *options, timeout=READY_TIMEOUT)
        self.check_alive = self.child.check_alive
        self.proc = Path(f"/proc/{self.child.proc.pid}")

    def rss_kib(self) -> int:
        """Resident set size now (VmRSS), KiB."""
        if found := re.search(r"^VmRSS:\s+(\d+)", (self.proc / "status").read_text(), re.M):
            return int(found.group(1))
        raise MeasurementError("no VmRSS in /proc/PID/status")

    def rss_settled(self, samples: int = 5, every: float = 0.2) -> float:
        """The median of a few RSS samples, KiB."""
        values = []
        for _ in range(samples):
            values.append(self.rss_kib())
            time.sleep(every)
        return float(statistics.median(values))

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far."""
        fields = (self.proc / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {name{labels}: value}, without the per-peer series but with
        ``queue_depth_sum``: the messages queued to all peers."""
        with urllib.request.urlopen(f"http://{HOST}:{self.port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        values = {"queue_depth_sum": 0.0}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                if name.startswith("greenbus_queue_depth{"):
                    values["queue_depth_sum"] += float(value)
                elif "peer=" not in name:
                    values[name] = float(value)
        return values

    def wait_drained(self) -> dict[str, float]:
        """Wait until the hub has no peer left; return its metrics then."""
        deadline = clock() + DRAIN_TIMEOUT
        while (m := self.metrics()).get("greenbus_connections", 0):
            if clock() > deadline:
                raise MeasurementError(
                    f"{m['greenbus_connections']:.0f} peer(s) still on the hub "
                    f"{DRAIN_TIMEOUT:.0f} s after every client left"
                )
            time.sleep(0.2)
        return m

    def after(self, out: Out) -> dict[str, float]:
        """Once every client left: the hub must hold nothing; its RSS and closes go to ``out``."""
        m = self.wait_drained()
        for gauge in ("greenbus_remote_subscriptions", "greenbus_local_subscriptions"):
            if m.get(gauge, 0):
                out["errors"].append(f"{gauge} is {m[gauge]:.0f} with no peer connected")
        time.sleep(1.0)
        out["rss_after_disconnect_kib"] = self.rss_settled()
        out["hub_closes"] = {
            match.group(1): int(value)
            for name, value in m.items()
            if (match := re.fullmatch(r'greenbus_closes_total\{code="(\d+)"\}', name))
        }
        return m


def worker(processes: Processes, name: str, command: str, **options: object) -> Child:
    """A ``python -m perf.load_worker COMMAND OPTIONS`` process, commands on its stdin."""
    return processes.python(name, "perf.load_worker", command, json.dumps(options), stdin=True)


def _close(children: Sequence[Child], check: Callable[[], None]) -> dict[str, Any]:
    """Tell subscriber processes to close their connections; stop them."""
    for child in children:
        child.send("close")
    closed = gather(children, "closed", RESULT_TIMEOUT, None, check)
    for child in children:
        child.stop()
    return closed


# -- 1. load ---------------------------------------------------------------------------


def run_load(cfg: Config, processes: Processes, progress: Progress) -> Out:
    """Connect, measure memory, flood the fan-out, count; see the module docstring."""
    out: Out = {"errors": []}
    errors: list[str] = out["errors"]
    n = cfg.connections
    shares = [n // cfg.processes + (i < n % cfg.processes) for i in range(cfg.processes)]
    expected = n * (cfg.per_all + cfg.per_group)
    connecting = progress.add_task("load · connecting", total=n)
    hub = Hub(processes, "load-hub")
    # Warm-up: the first peers make the hub import and allocate what every
    # later one reuses; that is not a per-connection cost.
    small = {"port": hub.port, "groups": 10}
    expect = {"first": 0, "count": 20, "expect_group": 2, "expect_all": 20}
    warm = worker(processes, "warm-subscribers", "subscribers", **small, **expect)
    warm.expect("ready", READY_TIMEOUT)
    warm_pub = worker(processes, "warm-publisher", "publisher", **small, per_all=20, per_group=2)
    warm_pub.expect("result", RESULT_TIMEOUT)
    warm.send("report")
    if (r := warm.expect("result", RESULT_TIMEOUT))["received"] != r["expected"]:
        errors.append(f"warm-up: {r['received']} of {r['expected']}")
    _close([warm], hub.check_alive)
    warm_pub.stop()
    hub.wait_drained()
    time.sleep(1.0)
    out["rss_before_kib"] = hub.rss_settled()

    counts: dict[str, dict[str, Any]] = {}

    def on_progress(task: Any, key: str) -> Callable[[Child, dict[str, Any]], None]:
        def update(child: Child, p: dict[str, Any]) -> None:
            counts[child.name] = p
            progress.update(task, completed=sum(c[key] for c in counts.values()))

        return update

    sizes = {"port": hub.port, "groups": cfg.groups}
    expect = {**sizes, "expect_group": cfg.per_group, "expect_all": cfg.per_all}
    subscribers = [
        worker(
            processes, f"subscribers-{i}", "subscribers", **expect, first=sum(shares[:i]), count=k
        )
        for i, k in enumerate(shares)
    ]
    started = clock()
    on_connect = on_progress(connecting, "connected")
    gather(subscribers, "ready", READY_TIMEOUT, on_connect, hub.check_alive)
    out["connect_seconds"] = round(clock() - started, 3)
    progress.update(connecting, completed=n)
    time.sleep(1.0)
    out["rss_connected_kib"] = hub.rss_settled()
    m0 = hub.metrics()
    if m0.get("greenbus_connections") != n:
        errors.append(f"the hub counts {m0.get('greenbus_connections')} peers, not {n}")
    if (subs := m0.get("greenbus_remote_subscriptions")) != 2 * n:
        errors.append(f"the hub counts {subs} subscriptions, not {2 * n}")
    out["memory_per_connection_kib"] = (out["rss_connected_kib"] - out["rss_before_kib"]) / n

    # The flood.
    delivering = progress.add_task("load · delivering", total=expected)
    peak = {"rss_kib": 0.0, "queued": 0.0, "at": 0.0}

    def watch() -> None:
        # About twice a second: the hub's RSS and the messages queued to its peers.
        hub.check_alive()
        if clock() - peak["at"] >= 0.5:
            queued = hub.metrics()["queue_depth_sum"]
            peak.update(
                rss_kib=max(peak["rss_kib"], hub.rss_kib()),
                queued=max(peak["queued"], queued),
                at=clock(),
            )

    cpu0 = hub.cpu_seconds()
    per = {"per_all": cfg.per_all, "per_group": cfg.per_group}
    publisher = worker(processes, "publisher", "publisher", **sizes, **per)
    sent = gather([publisher], "result", RESULT_TIMEOUT, None, watch)["publisher"]
    for child in subscribers:
        child.send("report")
    results = gather(
        subscribers, "result", RESULT_TIMEOUT, on_progress(delivering, "received"), watch
    )
    cpu1, m1 = hub.cpu_seconds(), hub.metrics()
    out["rss_after_traffic_kib"] = hub.rss_settled()
    received = sum(r["received"] for r in results.values())
    progress.update(delivering, completed=received)

    # Verify every count against what was sent.
    sent_total = sum(sent["sent"].values())
    if sent_total != (want := cfg.per_all + cfg.groups * cfg.per_group):
        errors.append(f"the publisher sent {sent_total} messages, not {want}")
    for name, r in sorted(results.items()):
        if flaws := {key: r[key] for key in FLAWS if r.get(key)}:
            errors.append(f"{name}: {flaws}; e.g. {r['examples'][:3]}")
        if r["early_ends"]:
            errors.append(f"{name}: connections closed by the hub: {r['early_ends']}")
    if received != expected:
        errors.append(f"delivered {received} messages, not {expected} (lost or duplicated)")
    delta = {key: m1.get(key, 0.0) - m0.get(key, 0.0) for key in m1}
    if (written := delta.get("greenbus_messages_out_total", 0.0)) != expected:
        errors.append(f"the hub wrote {written:.0f} messages, not {expected}")
    for counter in ("greenbus_dropped_total", "greenbus_slow_consumers_total"):
        if delta.get(counter):
            errors.append(f"{counter} rose by {delta[counter]:.0f}")
    elapsed = max(r["last"] for r in results.values() if r["last"] is not None) - sent["start"]
    out.update(
        connections=n,
        processes=cfg.processes,
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
    )
    # Everyone leaves; the hub must be back to nothing.
    closed = _close(subscribers, hub.check_alive)
    out["client_closes"] = {name: c["codes"] for name, c in sorted(closed.items())}
    hub.after(out)
    return out


# -- 2. soak ---------------------------------------------------------------------------


def rss_trend(samples: Sequence[tuple[float, float]], warmup: float) -> Out:
    """Compare the start and end of the RSS series ``(seconds, KiB)`` after ``warmup``.

    Returns:
        ``first_kib``/``last_kib``: medians of the first and last 20% of the
        samples after the warm-up (at least one sample each); ``growth_kib``;
        ``slope_kib_per_min`` of a least-squares line through them (and
        ``slope_second_half_kib_per_min`` through the second half: a curve
        levelling off is not a line climbing).

    Raises:
        MeasurementError: fewer than three samples after the warm-up.
    """
    post = [(t, rss) for t, rss in samples if t >= warmup]
    if len(post) < 3:
        raise MeasurementError(f"{len(post)} RSS sample(s) after the warm-up: too few for a trend")
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


def blocks_trend(samples: Sequence[tuple[float, float]], warmup: float) -> Out:
    """:func:`rss_trend` of live blocks: ``first``, ``last``, ``growth``, ``slope_per_min``."""
    t = rss_trend(samples, warmup)
    keys = ("first_kib", "last_kib", "growth_kib", "slope_kib_per_min")
    return dict(
        zip(("first", "last", "growth", "slope_per_min"), (t[k] for k in keys), strict=True)
    )


def verdict(trend: Out, seconds: float, live: Out | None = None) -> tuple[bool, str]:
    """(no growth?, the sentence): RSS growth within max(1 MiB, 2% of the start), and,
    when ``live`` (:func:`blocks_trend`) is given, live blocks within 2% of the start."""
    allowed = max(1024.0, 0.02 * trend["first_kib"])
    ok = trend["growth_kib"] <= allowed
    text = (
        f"no growth: {trend['growth_kib']:+.0f} KiB, within the {allowed:.0f} KiB allowed"
        if ok
        else f"GROWTH: {trend['growth_kib']:+.0f} KiB, over the {allowed:.0f} KiB allowed"
    )
    if live is not None and live["first"] > 0:
        share = live["growth"] / live["first"]
        ok = ok and share <= 0.02
        text += f"; live Python blocks {live['growth']:+,.0f} ({share:+.1%}), " + (
            "within the 2% allowed" if share <= 0.02 else "OVER the 2% allowed"
        )
    if seconds < 120:
        text += f" (a {seconds:.0f} s soak: indicative only)"
    return ok, text


def run_soak(cfg: Config, processes: Processes, progress: Progress) -> Out:
    """Run the soak mix against a fresh hub, sampling its RSS every second."""
    out: Out = {"errors": []}
    errors: list[str] = out["errors"]
    task = progress.add_task("soak · connecting", total=cfg.soak_seconds)
    history = ("--history-ttl", SOAK_HISTORY_TTL, "--history-topics", SOAK_HISTORY_TOPICS)
    hub = Hub(processes, "soak-hub", *history)
    mix = {
        "connections": cfg.soak_connections,
        "rate": cfg.soak_rate,
        "churn": cfg.churn,
        "resubscribe": cfg.resubscribe,
    }
    options = {"port": hub.port, "seconds": cfg.soak_seconds, "groups": cfg.groups, **mix}
    soak = worker(processes, "soak", "soak", **options)
    soak.expect("ready", READY_TIMEOUT)
    start, cpu_start = clock(), hub.cpu_seconds()
    samples: list[dict[str, Any]] = []

    def sample() -> None:
        hub.check_alive()
        if clock() < start + len(samples):
            return
        m, t = hub.metrics(), clock() - start
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
        conns, mib = samples[-1]["connections"], samples[-1]["rss_kib"] / 1024
        description = f"soak · {conns} conns · RSS {mib:.1f} MiB"
        progress.update(task, completed=min(t, cfg.soak_seconds), description=description)

    sample()
    result = gather([soak], "result", cfg.soak_seconds + RESULT_TIMEOUT, None, sample)["soak"]
    progress.update(task, completed=cfg.soak_seconds, description="soak · done")
    soak.stop()
    m_end = hub.after(out)
    out["hub_slow_consumers"] = int(m_end.get("greenbus_slow_consumers_total", 0))
    out["hub_close_timeouts"] = int(m_end.get('greenbus_timeouts_total{kind="close"}', 0))
    out["hub_dropped"] = int(m_end.get("greenbus_dropped_total", 0))
    out["hub_cpu_seconds"] = round(hub.cpu_seconds() - cpu_start, 3)

    for key in ("gaps", "disorder", "stable_incomplete", "failure_count", "late", "hub_errors"):
        if value := result.get(key) or result["counts"].get(key):
            errors.append(f"{key} = {value}; e.g. {result['examples'][:3]}")
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
            "history_ttl_s": SOAK_HISTORY_TTL,
            "history_topics": SOAK_HISTORY_TOPICS,
        },
        worker=result,
        samples=samples,
        trend=trend,
        blocks_trend=live,
        no_growth=ok,
        verdict=text,
    )
    return out


# -- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.load", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and a 30 s soak")
    parser.add_argument(
        "--connections", type=int, default=1000, help="connections of the load test (default 1000)"
    )
    parser.add_argument(
        "--soak-seconds", type=float, help="soak duration (default 300; 30 with --quick)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=report.PERF,
        metavar="DIR",
        help="where to write LOAD.md, the charts and results/ (default: perf/)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = Config.build(args.quick, args.connections, args.soak_seconds)
    raise_fd_limit()  # the children inherit it
    # The command line as the report shows it: --out DIR is where, not what.
    out_at = {i for i, a in enumerate(argv) if a == "--out"}
    shown = [
        a
        for i, a in enumerate(argv)
        if not (i in out_at or i - 1 in out_at or a.startswith("--out="))
    ]
    doc: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "argv": "".join(f" {arg}" for arg in shown),
        "machine": report.machine_info(),
        "client": CLIENT,
        "config": dataclasses.asdict(cfg),
        "anchors_kib": ANCHORS_KIB,
        "load": None,
        "soak": None,
        "errors": [],
    }
    console = Console(stderr=True)
    columns = TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()
    with tempfile.TemporaryDirectory(prefix="greenbus-load-") as tmp:
        with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
            for phase, run in (("load", run_load), ("soak", run_soak)):
                try:
                    with Processes(Path(tmp)) as processes:
                        doc[phase] = run(cfg, processes, progress)
                    doc["errors"] += [f"{phase}: {e}" for e in doc[phase]["errors"]]
                except (MeasurementError, OSError, KeyError, ValueError) as exc:
                    doc["errors"].append(f"{phase}: {type(exc).__name__}: {exc}")
        if doc["errors"]:
            # The processes' logs go with a failed run's record.
            kept = args.out / "results" / f"load-{doc['date']}-logs"
            shutil.copytree(tmp, kept, dirs_exist_ok=True)
            doc["logs"] = str(kept)
    written = report.write_load(doc, args.out)
    load, soak = doc["load"] or {}, doc["soak"] or {}
    console.print(
        f"memory per connection {report.num(load.get('memory_per_connection_kib'), 1)} KiB; "
        f"delivered {report.num(load.get('delivered_per_s'))} msgs/s; "
        f"soak: {soak.get('verdict', 'n/a')}"
    )
    for path in written:
        console.print(f"wrote {path}")
    for error in doc["errors"]:
        console.print(f"[red]error:[/red] {error}")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
