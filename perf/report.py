"""Turn a run's samples into the JSON record, ``RESULTS.md`` and the charts.

Everything here works from the JSON-shaped *document* that :func:`document`
builds, so a report can be redrawn from a saved ``results/<date>.json``
with :func:`write_all`.  The document's layout::

    {"date", "command", "profile", "seed", "machine", "sizes", "systems",
     "metrics": {metric: {"title", "timed", "better", "cases": {case: {
         "unit", "params", "results": {system: {
             "samples", "median", "p99", "max", "n", "errors"}}}}}},
     "derived": {"wildcard_share": {case: ratio}},
     "targets": [{"text", "figure", "met", ...}]}

The "what remains and why" section of ``RESULTS.md`` comes from
:data:`NOTES`, which the maintainer writes.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import gevent
import greenlet
import redis.utils
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import greenbus

from .metrics import SYSTEMS, TARGETS, TIMES, Metric, Sizes, Target

__all__ = ["NOTES", "Store", "document", "summary", "write_all"]

#: The maintainer's notes for "what remains and why", keyed by a target's
#: text (e.g. "0 reorders") or a metric's name (e.g. "throughput").
NOTES: dict[str, str] = {
    "ping-pong ≤ 1/15 of threads+queue": (
        "greenbus's round trip is two emits, two parks and two wake-ups, and building two "
        "Messages, all in Python: about 3.2 µs here (the bare channel round trip, without "
        "the bus, is about 2.0 µs; the greenlet switches themselves about 0.4 µs).  The "
        "consumer is switched to directly, with no hub pass (see greenbus/channel.py).  "
        "threads + queue.Queue measured 40-63 µs across runs, so 1/15 is 2.7-4.2 µs: the "
        "target sits inside the noise of the baseline and is met or missed by run.  "
        "Closing the rest needs the channel in C (gevent.queue is Cython-compiled)."
    ),
    "ping-pong ≤ 0.8\N{MULTIPLICATION SIGN} gevent.queue": (
        "Met: 0.66 in the 2026-12-07 run, 0.67-0.73 in earlier quiet runs (one run on a "
        "machine loaded by test processes measured 1.03).  The design is the one in "
        "greenbus/channel.py: a consumer "
        "that is parked is switched to directly by the greenlet that parks next, with no "
        "hub pass; bare channels do a round trip in about 2.0 µs."
    ),
    "hub round trip ≤ Redis pub/sub's": (
        "Both round trips cross three processes (client, broker, echo peer), but every "
        "greenbus hop is Python: websockets framing, JSON decode and checks, routing, JSON "
        "encode, framing again -- about 60 µs of CPU per hop, where redis-server is C.  "
        "The hub now writes from its writer greenlet without an extra loop pass after "
        "small reads and encodes each message once; what remains is interpreter time, "
        "measured with cProfile in the hub process (perf/hub.py, PERF_HUB_PROFILE)."
    ),
    "hub ingest ≥ 100k msgs/s": (
        "Met: 124k msgs/s in the 2026-12-07 run (107k on 2026-11-28).  The hub's CPU per "
        "pub goes to validating the frame (35-45%, after an inline fast path for pub), "
        "websockets' frame parser (20-29%) and routing (15%), as profiled on 2026-11-28; "
        "the next step would be parsing frames in a C extension."
    ),
    "hub fan-out 1→4 ≥ 188k msgs/s (NATS's delivered rate: an anchor from ANCHORS.md, "
    "not measured here)": (
        "135k msgs/s in the 2026-12-07 run, up from 93k: each message is now encoded once "
        "per emit, in the publisher's reader greenlet, and queued to the 4 peers as ready "
        "text.  The 2 cores run the hub and all 4 subscriber processes (greenbus clients, "
        "also Python), so the clients' CPU is part of the figure; NATS's 188k is a Go "
        "server with a Go/C client on another machine."
    ),
    "federation one-way p50 ≤ 1.5\N{MULTIPLICATION SIGN} raw redis-py publish→receive": (
        "greenbus adds about 100 µs to redis-py's own path: the hop to the writer "
        "greenlet, encoding the envelope, and on the receiving node redis-py's "
        "PubSub.listen machinery per message plus the handler greenlet running only once "
        "the reader blocks again.  Parsing Redis's pub/sub replies directly (instead of "
        "PubSub.listen) is the next step."
    ),
    "1→1 throughput ≥ 5\N{MULTIPLICATION SIGN} threads+queue": (
        "greenbus delivers ~1.4-2 M msgs/s 1→1: about 0.3 µs per emit (route lookup, "
        "channel put) and about 0.3 µs per delivery (a batch of up to 64 taken per "
        "channel call, one Message and one handler call each).  threads + queue.Queue "
        "measured 261k-737k msgs/s across runs (it depends on how the GIL is handed "
        "over), so 5 times that is 1.3-3.7 M msgs/s.  gevent.queue reaches ~4.7 M msgs/s because "
        "it is compiled; a pure-Python bus with routing cannot get there."
    ),
}

#: The system every ratio is taken against.
REFERENCE = "greenbus"

#: One colour per system in every chart; greenbus's variants in greens.
COLOURS = {
    "classic": "#7f7f7f",
    "pyee": "#1f77b4",
    "blinker": "#17becf",
    "pyee-executor": "#9467bd",
    "threads+queue": "#d62728",
    "gevent.queue": "#ff7f0e",
    "greenbus": "#2ca02c",
    "greenbus-wildcard": "#98df8a",
    "greenbus-request": "#0b5d0b",
    "greenbus-compat": "#bcbd22",
    "tcp-echo": "#7f7f7f",
    "redis-pubsub": "#d62728",
    "greenbus-hub": "#2ca02c",
    "greenbus-federation": "#1a9850",
}


# -- collecting ------------------------------------------------------------------


@dataclass
class Series:
    """The samples of one (metric, case, system), and the errors met on the way."""

    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Store:
    """Every series of a run, keyed by (metric, case, system)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, str], Series] = {}

    def series(self, metric: str, case: str, system: str) -> Series:
        return self._series.setdefault((metric, case, system), Series())

    def has_errors(self) -> bool:
        return any(s.errors for s in self._series.values())


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating between closest ranks."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _compact(value: float) -> float:
    """Five significant digits: plenty for noisy timings, and a smaller file."""
    return float(f"{value:.5g}")


def _stats(series: Series) -> dict[str, Any]:
    samples = series.samples
    figures: dict[str, Any] = {"n": len(samples), "median": None, "p99": None, "max": None}
    if samples:
        figures.update(
            median=_compact(statistics.median(samples)),
            p99=_compact(percentile(samples, 99)),
            max=_compact(max(samples)),
        )
    return {**figures, "errors": series.errors, "samples": [_compact(s) for s in samples]}


def machine_info() -> dict[str, Any]:
    """Versions and hardware, so figures are only compared with their kind."""
    cpuinfo = Path("/proc/cpuinfo")
    models = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else []
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": models[0] if models else platform.processor(),
        "gevent": gevent.__version__,
        "gevent_loop": type(gevent.get_hub().loop).__module__,
        "greenlet": greenlet.__version__,
        "pyee": metadata.version("pyee"),
        "blinker": metadata.version("blinker"),
        "greenbus": greenbus.__version__,
        "websockets": metadata.version("websockets"),
        "redis-py": metadata.version("redis"),
        "redis-py parser": "hiredis" if redis.utils.HIREDIS_AVAILABLE else "pure Python",
        "redis-server": _redis_server_version(),
        "git": _git_revision(),
    }


def _redis_server_version() -> str | None:
    """``redis-server --version``'s version, or None if it is not installed."""
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else out.strip() or None


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() or None


def document(
    store: Store,
    metrics: Iterable[Metric],
    sizes: Sizes,
    *,
    command: str,
    seed: int,
    started: float,
) -> dict[str, Any]:
    """The run as one JSON-ready dict (see the module docstring)."""
    metrics = list(metrics)
    used = {system for m in metrics for system in m.systems}
    doc: dict[str, Any] = {
        "suite": "greenbus perf",
        "date": datetime.date.fromtimestamp(started).isoformat(),
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "duration_s": round(datetime.datetime.now().timestamp() - started, 1),
        "command": command,
        "profile": sizes.profile,
        "seed": seed,
        "machine": machine_info(),
        "sizes": asdict(sizes),
        "systems": {name: s.summary for name, s in SYSTEMS.items() if name in used},
        "metrics": {
            m.name: {
                "title": m.title,
                "timed": m.timed,
                "better": m.better,
                "reference": m.reference,
                "rounds": m.rounds(sizes),
                "cases": {
                    case.label: {
                        "unit": case.unit,
                        "params": dict(case.params),
                        "results": {
                            system: _stats(store.series(m.name, case.label, system))
                            for system in m.systems
                        },
                    }
                    for case in m.cases(sizes)
                },
            }
            for m in metrics
        },
    }
    doc["derived"] = {"wildcard_share": wildcard_share(doc)}
    doc["targets"] = [evaluate(t, doc) for t in TARGETS]
    return doc


def _results(doc: dict[str, Any], metric: str, case: str) -> dict[str, Any]:
    return doc["metrics"].get(metric, {}).get("cases", {}).get(case, {}).get("results", {})


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def wildcard_share(doc: dict[str, Any]) -> dict[str, float | None]:
    """Per subscriber count: wildcard emit cost ÷ exact-topic emit cost (medians)."""
    cases = doc["metrics"].get("emit_cost_by_subscribers", {}).get("cases", {})
    return {
        label: _ratio(
            case["results"].get("greenbus-wildcard", {}).get("median"),
            case["results"].get(REFERENCE, {}).get("median"),
        )
        for label, case in cases.items()
    }


def evaluate(target: Target, doc: dict[str, Any]) -> dict[str, Any]:
    """A target's figure in this run and whether it is met (None: not measured)."""
    results = _results(doc, target.metric, target.case)
    value = results.get(target.system, {}).get(target.stat)
    baseline = results.get(target.against, {}).get(target.stat) if target.against else None
    figure = _ratio(value, baseline) if target.against else value
    return {
        **asdict(target),
        "value": value,
        "baseline": baseline,
        "figure": figure,
        "met": None if figure is None else target.met(figure),
    }


# -- formatting --------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    """A figure with its unit, to three significant digits, scaled to read easily."""
    if value is None:
        return "—"
    if unit == "µs" and value >= 1000:
        return f"{_sig(value / 1000)} ms"
    if unit == "msgs/s":
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if value >= scale:
                return f"{_sig(value / scale)} {suffix}/s"
    if unit == "bytes" and value >= 1024:
        return f"{_sig(value / 1024)} KiB"
    if unit == "reorders":
        return f"{value:.0f}"
    return f"{_sig(value)} {unit}"


def _sig(value: float) -> str:
    if value == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:,.{digits}f}"


def _fmt_ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{_sig(ratio)}{TIMES}"


def _target_verdict(t: dict[str, Any], unit: str, miss: str = "**MISS**") -> str:
    if t["met"] is None:
        return f"not measured ({t['text']})"
    verdict = "pass" if t["met"] else miss
    if t["against"]:
        shown = f"{_fmt_ratio(t['figure'])} {t['against']}"
    else:
        shown = fmt(t["figure"], unit)
    return f"{verdict}: {shown} ({t['text']})"


def _units(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {
        (metric, label): case["unit"]
        for metric, m in doc["metrics"].items()
        for label, case in m["cases"].items()
    }


def markdown(
    doc: dict[str, Any],
    json_name: str,
    charts: Sequence[tuple[str, str]] = (),
    out: Path | None = None,
) -> str:
    """``RESULTS.md``: targets first, then every figure, the charts, the load and
    soak figures of the newest ``python -m perf.load`` run under ``out``, and the notes."""
    units = _units(doc)
    m = doc["machine"]
    lines = [
        "# greenbus benchmarks",
        "",
        f"Produced by `{doc['command']}` on {doc['date']} ({doc['profile']} profile, "
        f"{doc['duration_s']:.0f} s, git {m['git']}).  ",
        f"{m['python']}, gevent {m['gevent']}, greenlet {m['greenlet']}, pyee {m['pyee']}, "
        f"blinker {m['blinker']}, websockets {m.get('websockets')}, redis-py {m.get('redis-py')} "
        f"({m.get('redis-py parser')} parser), "
        f"redis-server {m.get('redis-server') or 'not installed'}; "
        f"{m['cpu_count']} CPUs ({m['cpu_model']}).  ",
        f"Raw samples and exactly what each metric times: [results/{json_name}]"
        f"(results/{json_name}).",
        "",
        "## Targets for greenbus",
        "",
        "Ratios are between figures of this same run.",
        "",
        "| target | measured | compared with | figure | result |",
        "|---|---|---|---|---|",
    ]
    for t in doc["targets"]:
        unit = units.get((t["metric"], t["case"]), "")
        base = f"{t['against']} {fmt(t['baseline'], unit)}" if t["against"] else "—"
        figure = _fmt_ratio(t["figure"]) if t["against"] else fmt(t["figure"], unit)
        result = {True: "pass", False: "**MISS**", None: "not measured"}[t["met"]]
        lines.append(
            f"| {t['text']} | {t['system']} {fmt(t['value'], unit)} ({t['stat']}) | {base} "
            f"| {figure} | {result} |"
        )
    lines += [
        "",
        "## All results",
        "",
        f'Median and p99 over every sample of the run. "{TIMES} ref" is this row\'s median ÷ '
        f"the reference system's in the same case ({REFERENCE}; greenbus-hub for the hub's "
        "metrics across processes, greenbus-federation for the federation's): above 1 means a "
        "larger figure than the reference (slower for times, faster for msgs/s).",
        "",
        f"| metric | system | median | p99 | {TIMES} ref | target |",
        "|---|---|---|---|---|---|",
    ]
    lines += _result_rows(doc)
    lines += _derived_lines(doc) + _chart_lines(charts) + _load_lines(out)
    lines += _notes_lines(doc) + _error_lines(doc)
    return "\n".join(lines) + "\n"


def _result_rows(doc: dict[str, Any]) -> list[str]:
    rows = []
    for name, metric in doc["metrics"].items():
        direction = "lower is better" if metric["better"] == "lower" else "higher is better"
        for label, case in metric["cases"].items():
            unit = case["unit"]
            heading = f"{metric['title']}: {label} ({unit}, {direction})"
            reference = case["results"].get(metric.get("reference", REFERENCE), {}).get("median")
            targets = [t for t in doc["targets"] if (t["metric"], t["case"]) == (name, label)]
            for system, r in case["results"].items():
                verdicts = "; ".join(
                    _target_verdict(t, unit) for t in targets if t["system"] == system
                )
                if r["errors"] and not r["n"]:
                    median = p99 = f"error ({len(r['errors'])})"
                else:
                    median, p99 = fmt(r["median"], unit), fmt(r["p99"], unit)
                ratio = _fmt_ratio(_ratio(r["median"], reference))
                rows.append(f"| {heading} | {system} | {median} | {p99} | {ratio} | {verdicts} |")
                heading = ""
    return rows


def _derived_lines(doc: dict[str, Any]) -> list[str]:
    share = doc["derived"]["wildcard_share"]
    if not share:
        return []
    parts = ", ".join(f"{label}: {_fmt_ratio(ratio)}" for label, ratio in share.items())
    return [
        "",
        f"Wildcard share (greenbus-wildcard ÷ greenbus exact-topic emit cost, medians): {parts}.",
    ]


def _chart_lines(charts: Sequence[tuple[str, str]]) -> list[str]:
    lines = ["", "## Charts"]
    for name, alt in charts:
        lines += ["", f"![{alt}]({name})"]
    return lines if charts else []


def _load_lines(out: Path | None) -> list[str]:
    # The newest run of `python -m perf.load` under out, if there is one.
    from . import load

    found = sorted((out / "results").glob("load-*.json")) if out is not None else []
    if not found:
        return []
    doc = json.loads(found[-1].read_text(encoding="utf-8"))
    return [
        "",
        "## The hub under load and over time",
        "",
        load.measured_by(doc, found[-1].name) + "  ",
        "How each figure is measured, and what the processes did: [LOAD.md](LOAD.md).",
        "",
        *load.summary_lines(doc),
    ]


def _notes_lines(doc: dict[str, Any]) -> list[str]:
    lines = ["", "## What remains and why", ""]
    for key, note in NOTES.items():
        lines.append(f"- **{key}**: {note}")
    for t in doc["targets"]:
        if t["met"] is False and t["text"] not in NOTES:
            lines.append(
                f"- **{t['text']}**: missed in this run; no note yet (add one to `NOTES` in "
                "perf/report.py)."
            )
    if len(lines) == 3:
        lines.append("_No notes yet: the maintainer writes them in `NOTES` in perf/report.py._")
    return lines


def _error_lines(doc: dict[str, Any]) -> list[str]:
    errors = [
        f"- {name} / {label} / {system}: {error}"
        for name, metric in doc["metrics"].items()
        for label, case in metric["cases"].items()
        for system, r in case["results"].items()
        for error in r["errors"]
    ]
    return ["", "## Errors (samples not counted)", "", *errors] if errors else []


def summary(doc: dict[str, Any]) -> str:
    """A few lines for the console: each target's verdict."""
    units = _units(doc)
    return "\n".join(
        _target_verdict(t, units.get((t["metric"], t["case"]), ""), miss="MISS")
        for t in doc["targets"]
    )


# -- charts ------------------------------------------------------------------------


def _figure(title: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(10, 5.6), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=12, fontweight="bold")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", axis="y", alpha=0.35)
    return fig, ax


def _bars(ax: Axes, groups: Sequence[str], bars: dict[str, list[float | None]], unit: str) -> None:
    """Bars grouped by ``groups``, one colour per system, log scale, values on top."""
    width = 0.8 / max(1, len(bars))
    for i, (system, values) in enumerate(bars.items()):
        xs = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))]
        shown = [(x, v) for x, v in zip(xs, values, strict=True) if v]
        if not shown:
            continue
        rects = ax.bar(
            [x for x, _ in shown],
            [v for _, v in shown],
            width,
            label=system,
            color=COLOURS.get(system),
        )
        ax.bar_label(rects, [fmt(v, unit) for _, v in shown], rotation=90, fontsize=7, padding=2)
    ax.set_yscale("log")
    ax.margins(y=0.25)
    ax.set_xticks(range(len(groups)), groups)
    ax.legend(fontsize=8, ncols=2)


def _bar_chart(
    path: Path,
    title: str,
    ylabel: str,
    groups: Sequence[str],
    bars: dict[str, list[float | None]],
    unit: str,
) -> None:
    """One chart of :func:`_bars`, saved to ``path``."""
    fig, ax = _figure(title, ylabel)
    _bars(ax, groups, bars, unit)
    fig.savefig(path, dpi=110)


def _medians(doc: dict[str, Any], metric: str, stat: str = "median") -> dict[str, dict[str, Any]]:
    """{system: {case: figure}} for one metric."""
    out: dict[str, dict[str, Any]] = {}
    for label, case in doc["metrics"].get(metric, {}).get("cases", {}).items():
        for system, r in case["results"].items():
            out.setdefault(system, {})[label] = r[stat]
    return out


def chart_emit_cost(doc: dict[str, Any], path: Path) -> bool:
    metric = doc["metrics"].get("emit_cost_by_subscribers")
    if not metric:
        return False
    fig, ax = _figure(
        "Emit cost vs number of subscribers (median µs per emit, lower is better)",
        "µs per emit (log)",
    )
    subscribers = {label: c["params"]["subscribers"] for label, c in metric["cases"].items()}
    for system, by_case in _medians(doc, "emit_cost_by_subscribers").items():
        points = [(subscribers[label], v) for label, v in by_case.items() if v]
        ax.plot(
            [k for k, _ in points],
            [v for _, v in points],
            marker="o",
            label=system,
            color=COLOURS.get(system),
            linewidth=2,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers on the emitted topic (each handler appends to a list; log)")
    ax.set_xticks(sorted(subscribers.values()), [str(k) for k in sorted(subscribers.values())])
    ax.grid(True, which="major", axis="x", alpha=0.35)
    ax.legend()
    fig.savefig(path, dpi=110)
    return True


def chart_latency(doc: dict[str, Any], path: Path) -> bool:
    cases = doc["metrics"].get("pingpong", {}).get("cases", {})
    if not cases:
        return False
    results = next(iter(cases.values()))["results"]
    _bar_chart(
        path,
        "Ping-pong round trip, p50 and p99 (µs, log scale, lower is better)",
        "µs per round trip (log)",
        ["p50 (median)", "p99"],
        {system: [r["median"], r["p99"]] for system, r in results.items()},
        "µs",
    )
    return True


def chart_throughput(doc: dict[str, Any], path: Path) -> bool:
    by_system = _medians(doc, "throughput")
    if not by_system:
        return False
    groups = list(doc["metrics"]["throughput"]["cases"])
    _bar_chart(
        path,
        "Delivered messages per second, one producer to k consumers (median, higher is better)",
        "delivered msgs/s (log)",
        groups,
        {system: [cases.get(g) for g in groups] for system, cases in by_system.items()},
        "msgs/s",
    )
    return True


def chart_emit_held(doc: dict[str, Any], path: Path) -> bool:
    metrics = [name for name in ("emit_held", "emit_held_slow") if name in doc["metrics"]]
    if not metrics:
        return False
    groups = [next(iter(doc["metrics"][name]["cases"])) for name in metrics]
    bars: dict[str, list[float | None]] = {}
    for i, name in enumerate(metrics):
        for system, cases in _medians(doc, name).items():
            bars.setdefault(system, [None] * len(metrics))[i] = next(iter(cases.values()))
    _bar_chart(
        path,
        "How long emit holds the emitter (median µs per emit, log scale, lower is better)",
        "µs per emit (log)",
        groups,
        bars,
        "µs",
    )
    return True


def _panels(doc: dict[str, Any], path: Path, title: str, names: Sequence[str]) -> bool:
    """One panel per metric (its first case), side by side, with greenbus's targets drawn in.

    A time panel shows p50 and p99; a rate panel the median.  A target with
    a fixed limit is a dashed line; one relative to another system's median
    is drawn on the p50 bars at ``limit`` times that median, unless the
    limit is 1 (the other system's own bar).
    """
    panels = [name for name in names if name in doc["metrics"]]
    if not panels:
        return False
    fig = Figure(figsize=(5 * len(panels), 5.6), layout="constrained")
    fig.suptitle(title, fontweight="bold")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    targets = {t["metric"]: t for t in doc["targets"] if t["metric"] in panels}
    for ax, name in zip(axes, panels, strict=True):
        metric = doc["metrics"][name]
        label, case = next(iter(metric["cases"].items()))
        results = case["results"]
        better = "lower" if metric["better"] == "lower" else "higher"
        ax.set_title(
            f"{metric['title']}: {label}\n({case['unit']}, {better} is better)", fontsize=10
        )
        ax.grid(True, which="major", axis="y", alpha=0.35)
        if case["unit"] == "µs":
            _bars(
                ax, ["p50", "p99"], {s: [r["median"], r["p99"]] for s, r in results.items()}, "µs"
            )
        else:
            _bars(ax, ["median"], {s: [r["median"]] for s, r in results.items()}, case["unit"])
        target = targets.get(name)
        if target is None:
            continue
        if not target["against"]:
            line, right = target["limit"], 1.0
        elif target["baseline"] and target["limit"] != 1:
            # Only over the p50 group (the left half) when there is a p99 group.
            line, right = target["limit"] * target["baseline"], 0.5 if case["unit"] == "µs" else 1
        else:
            continue
        # Room above the line for its label, below the title.
        ax.set_ylim(top=max(ax.get_ylim()[1], line * 2))
        ax.axhline(line, xmax=right, color="black", linestyle="--", linewidth=1)
        ax.annotate(
            textwrap.fill(target["text"], 45),
            (0, line),
            xycoords=("axes fraction", "data"),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=7,
        )
    fig.savefig(path, dpi=110)
    return True


def chart_hub(doc: dict[str, Any], path: Path) -> bool:
    """The hub's metrics across processes side by side, with greenbus's targets drawn in."""
    return _panels(
        doc,
        path,
        "The hub across processes, over loopback (log scale)",
        ("hub_roundtrip", "hub_ingest", "hub_fanout"),
    )


def chart_federation(doc: dict[str, Any], path: Path) -> bool:
    """The federation's metrics beside raw redis-py, with greenbus's targets drawn in."""
    return _panels(
        doc,
        path,
        "Two processes through redis-server: federated buses vs raw redis-py (log scale)",
        ("federation_latency", "federation_throughput"),
    )


# -- writing -----------------------------------------------------------------------


def to_json(doc: dict[str, Any]) -> str:
    """Indented JSON, with each list of numbers kept on one line."""

    def one_line(match: re.Match[str]) -> str:
        return "[" + ", ".join(n.strip() for n in match.group(0)[1:-1].split(",")) + "]"

    return re.sub(r"\[[-+0-9.eE,\s]+\]", one_line, json.dumps(doc, indent=2, ensure_ascii=False))


#: The charts: file name, alt text, and what draws it (returns False if it has no data).
CHARTS = (
    ("emit_cost.png", "emit cost by number of subscribers", chart_emit_cost),
    ("emit_held.png", "emit held, with a fast and a 1 ms-slow subscriber", chart_emit_held),
    ("latency.png", "ping-pong round trip p50/p99", chart_latency),
    ("throughput.png", "delivered messages per second by fan-out", chart_throughput),
    ("hub.png", "the hub across processes: round trip, ingest, fan-out", chart_hub),
    (
        "federation.png",
        "federated buses vs raw redis-py across processes: one-way latency, delivered msgs/s",
        chart_federation,
    ),
)


def write_all(doc: dict[str, Any], out: Path) -> list[Path]:
    """Write ``results/<date>.json``, the charts and ``RESULTS.md`` under ``out``."""
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    json_path = results / f"{doc['date']}.json"
    json_path.write_text(to_json(doc), encoding="utf-8")
    drawn = [(name, alt) for name, alt, draw in CHARTS if draw(doc, out / name)]
    md_path = out / "RESULTS.md"
    md_path.write_text(markdown(doc, json_path.name, drawn, out), encoding="utf-8")
    return [json_path, *(out / name for name, _ in drawn), md_path]


def rewrite_markdown(out: Path) -> Path | None:
    """Render ``RESULTS.md`` again from the newest ``results/<date>.json`` under ``out``
    (after a new ``perf.load`` run); None if there is no such run."""
    found = sorted(p for p in (out / "results").glob("*.json") if not p.name.startswith("load-"))
    if not found:
        return None
    doc = json.loads(found[-1].read_text(encoding="utf-8"))
    charts = [(name, alt) for name, alt, _ in CHARTS if (out / name).exists()]
    md_path = out / "RESULTS.md"
    md_path.write_text(markdown(doc, found[-1].name, charts, out), encoding="utf-8")
    return md_path
