"""Everything the harnesses write: the JSON records, RESULTS.md, LOAD.md, the charts.

Both documents render from their JSON record alone, so ``python -m
perf.report [DIR]`` redraws them from the newest records under
``DIR/results`` (default: this ``perf/`` directory).  The suite's record
(``results/<date>.json``, built by ``perf/__main__.py``)::

    {"date", "command", "profile", "seed", "machine", "sizes", "systems",
     "metrics": {metric: {"title", "timed", "better", "reference", "rounds",
         "cases": {case: {"unit", "params", "results": {system: {
             "samples", "median", "p99", "max", "n", "errors"}}}}}},
     "derived": {"wildcard_share": {case: ratio}},
     "targets": [{"text", "figure", "met", ...}]}

The load and soak record (``results/load-<date>.json``) is built by
``perf/load.py``.  The "what remains and why" section of RESULTS.md is
``perf/NOTES.md``, which the maintainer writes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["TIMES", "figures", "machine_info", "render", "write_load", "write_results"]

PERF = Path(__file__).resolve().parent
#: Where the maintainer writes "what remains and why", a bullet per target or metric.
NOTES = "perf/NOTES.md"
#: The multiplication sign of ratios, spelled out so linters do not take it for an "x".
TIMES = "\N{MULTIPLICATION SIGN}"
#: The system a ratio is taken against, unless the metric names another.
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
Doc = dict[str, Any]


# -- the records --------------------------------------------------------------------


def _run(*argv: str) -> str | None:
    try:
        return subprocess.run(argv, cwd=PERF, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> Doc:
    """Versions and hardware, so figures are only compared with their kind."""
    import gevent
    import greenlet
    import redis.utils

    import greenbus

    cpuinfo = Path("/proc/cpuinfo")
    models = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else []
    redis_server = re.search(r"v=(\S+)", _run("redis-server", "--version") or "")
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
        "redis-server": redis_server.group(1) if redis_server else None,
        "git": (_run("git", "describe", "--always", "--dirty") or "").strip() or None,
    }


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


def figures(samples: Sequence[float], errors: Sequence[str]) -> Doc:
    """One series' entry in the record: its median, p99, max, count, errors and samples."""
    doc: Doc = {"n": len(samples), "median": None, "p99": None, "max": None}
    if samples:
        doc.update(
            median=_compact(statistics.median(samples)),
            p99=_compact(percentile(samples, 99)),
            max=_compact(max(samples)),
        )
    return {**doc, "errors": list(errors), "samples": [_compact(s) for s in samples]}


def to_json(doc: Doc) -> str:
    """Indented JSON, with each list of numbers kept on one line."""

    def one_line(match: re.Match[str]) -> str:
        return "[" + ", ".join(n.strip() for n in match.group(0)[1:-1].split(",")) + "]"

    return re.sub(r"\[[-+0-9.eE,\s]+\]", one_line, json.dumps(doc, indent=2, ensure_ascii=False))


def _newest(out: Path, load: bool) -> tuple[str, Doc] | None:
    found = sorted(
        p for p in (out / "results").glob("*.json") if p.name.startswith("load-") == load
    )
    if not found:
        return None
    doc: Doc = json.loads(found[-1].read_text(encoding="utf-8"))
    return found[-1].name, doc


# -- formatting ---------------------------------------------------------------------


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
    return f"{value:,.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def _times(ratio: float | None) -> str:
    return "—" if ratio is None else f"{_sig(ratio)}{TIMES}"


def mib(kib: float | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table."""
    lines = ["|" + "".join(f" {cell} |" if cell else " |" for cell in header)]
    lines.append("|" + "---|" * len(header))
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


# -- RESULTS.md -----------------------------------------------------------------------


def _units(doc: Doc) -> dict[tuple[str, str], str]:
    return {
        (name, label): case["unit"]
        for name, metric in doc["metrics"].items()
        for label, case in metric["cases"].items()
    }


def _verdict(t: Doc, unit: str, miss: str = "**MISS**") -> str:
    if t["met"] is None:
        return f"not measured ({t['text']})"
    shown = f"{_times(t['figure'])} {t['against']}" if t["against"] else fmt(t["figure"], unit)
    return f"{'pass' if t['met'] else miss}: {shown} ({t['text']})"


def summary(doc: Doc) -> str:
    """A few lines for the console: each target's verdict."""
    units = _units(doc)
    return "\n".join(
        _verdict(t, units.get((t["metric"], t["case"]), ""), "MISS") for t in doc["targets"]
    )


def results_markdown(doc: Doc, json_name: str, charts: Sequence[tuple[str, str]], out: Path) -> str:
    """RESULTS.md: targets, every figure, the charts, the newest load run under ``out``, notes."""
    units, m = _units(doc), doc["machine"]
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
    ]
    rows = []
    for t in doc["targets"]:
        unit = units.get((t["metric"], t["case"]), "")
        base = f"{t['against']} {fmt(t['baseline'], unit)}" if t["against"] else "—"
        figure = _times(t["figure"]) if t["against"] else fmt(t["figure"], unit)
        result = {True: "pass", False: "**MISS**", None: "not measured"}[t["met"]]
        measured = f"{t['system']} {fmt(t['value'], unit)} ({t['stat']})"
        rows.append((t["text"], measured, base, figure, result))
    lines += table(("target", "measured", "compared with", "figure", "result"), rows)
    lines += [
        "",
        "## All results",
        "",
        f'Median and p99 over every sample of the run. "{TIMES} ref" is this row\'s median ÷ '
        f"the reference system's in the same case ({REFERENCE}; greenbus-hub for the hub's "
        "metrics across processes, greenbus-federation for the federation's): above 1 means a "
        "larger figure than the reference (slower for times, faster for msgs/s).",
        "",
        *table(("metric", "system", "median", "p99", f"{TIMES} ref", "target"), _rows(doc)),
    ]
    if share := doc["derived"]["wildcard_share"]:
        parts = ", ".join(f"{label}: {_times(ratio)}" for label, ratio in share.items())
        what = "greenbus-wildcard ÷ greenbus exact-topic emit cost, medians"
        lines += ["", f"Wildcard share ({what}): {parts}."]
    if charts:
        lines += ["", "## Charts"]
        for name, alt in charts:
            lines += ["", f"![{alt}]({name})"]
    if (load := _newest(out, load=True)) is not None:
        lines += [
            "",
            "## The hub under load and over time",
            "",
            _measured_by(load[1], load[0]) + "  ",
            "How each figure is measured, and what the processes did: [LOAD.md](LOAD.md).",
            "",
            *_load_summary(load[1]),
        ]
    return "\n".join(lines + _notes(doc) + _errors(doc)) + "\n"


def _rows(doc: Doc) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, metric in doc["metrics"].items():
        direction = "lower is better" if metric["better"] == "lower" else "higher is better"
        for label, case in metric["cases"].items():
            unit = case["unit"]
            heading = f"{metric['title']}: {label} ({unit}, {direction})"
            reference = case["results"].get(metric.get("reference", REFERENCE), {}).get("median")
            targets = [t for t in doc["targets"] if (t["metric"], t["case"]) == (name, label)]
            for system, r in case["results"].items():
                verdicts = "; ".join(_verdict(t, unit) for t in targets if t["system"] == system)
                if r["errors"] and not r["n"]:
                    median = p99 = f"error ({len(r['errors'])})"
                else:
                    median, p99 = fmt(r["median"], unit), fmt(r["p99"], unit)
                ratio = _times(_ratio(r["median"], reference))
                rows.append((heading, system, median, p99, ratio, verdicts))
                heading = ""
    return rows


def _notes(doc: Doc) -> list[str]:
    """ "What remains and why": perf/NOTES.md, then each missed target that has no note."""
    text = (PERF / "NOTES.md").read_text(encoding="utf-8")
    notes = [line for line in text.splitlines() if line.startswith("- ")]
    lines = ["", "## What remains and why", "", *notes]
    for t in doc["targets"]:
        if t["met"] is False and not any(n.startswith(f"- **{t['text']}**") for n in notes):
            lines.append(
                f"- **{t['text']}**: missed in this run; no note yet (add one to {NOTES})."
            )
    if len(lines) == 3:
        lines.append(f"_No notes yet: the maintainer writes them in {NOTES}._")
    return lines


def _errors(doc: Doc) -> list[str]:
    errors = [
        f"- {name} / {label} / {system}: {error}"
        for name, metric in doc["metrics"].items()
        for label, case in metric["cases"].items()
        for system, r in case["results"].items()
        for error in r["errors"]
    ]
    return ["", "## Errors (samples not counted)", "", *errors] if errors else []


# -- LOAD.md --------------------------------------------------------------------------


def _measured_by(doc: Doc, json_name: str) -> str:
    """Which command, when, where, and the raw data's file."""
    m = doc["machine"]
    return (
        f"Measured by `python -m perf.load{doc['argv']}` on {doc['date']} "
        f"({m.get('cpu_count', m.get('cpus'))} CPUs, Python {m['python'].split()[-1]}, gevent "
        f"{m['gevent']}, websockets {m['websockets']}); raw data in `results/{json_name}`."
    )


def _load_summary(doc: Doc) -> list[str]:
    """The table of figures and the two charts: LOAD.md's head, and RESULTS.md's section."""
    load, soak, cfg = doc.get("load") or {}, doc.get("soak") or {}, doc["config"]
    conf, trend, live = (
        soak.get("config", {}),
        soak.get("trend", {}),
        soak.get("blocks_trend") or {},
    )
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
            f"**{num(per, 1)} KiB**{ratio}: hub RSS {mib(load.get('rss_before_kib'))} → "
            f"{mib(load.get('rss_connected_kib'))}",
            "Centrifugo ~29 KiB (30 KB); websockets 14 KiB without compression, "
            "64 KiB with its defaults (published figures)",
        ),
        (
            "delivered",
            f"**{num(load.get('delivered_per_s'))} msgs/s**: "
            f"{num(load.get('expected_deliveries'))} messages in "
            f"{num(load.get('flood_seconds'), 1)} s; hub CPU "
            f"{num(load.get('hub_cpu_us_per_delivery'), 1)} µs per message delivered",
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
            f"{num(soak.get('seconds'))} s: {conf.get('connections', 'n/a')} connections, "
            f"{conf.get('replaced_per_s', 'n/a')} replaced/s, "
            f"{conf.get('resubscribed_per_s', 'n/a')} resubscribed/s, "
            f"{num(conf.get('pubs_per_s'))} pubs/s, 1 slow consumer "
            f"(closed as slow {soak.get('hub_slow_consumers', 'n/a')} times)",
            "",
        ),
        (
            "soak RSS",
            f"start {mib(trend.get('first_kib'))} → end {mib(trend.get('last_kib'))} "
            f"(medians of the first and last 20% after a {num(trend.get('warmup_s'), 1)} s "
            f"warm-up); slope {trend.get('slope_kib_per_min', math.nan):+.1f} KiB/min "
            f"({trend.get('slope_second_half_kib_per_min', math.nan):+.1f} KiB/min over the "
            f"second half)",
            "",
        ),
        (
            "soak live memory",
            f"{num(live.get('first'))} → {num(live.get('last'))} Python blocks "
            f"(`greenbus_python_allocated_blocks`, the same windows); slope "
            f"{live.get('slope_per_min', math.nan):+,.0f} blocks/min",
            "",
        ),
        ("verdict", soak.get("verdict", "n/a"), ""),
    ]
    charts = ["![memory per connection](load.png)", "", "![hub RSS during the soak](soak_rss.png)"]
    return [*table(("", "greenbus hub", "for scale"), rows), "", *charts]


def load_markdown(doc: Doc, json_name: str) -> str:
    """LOAD.md: the figures, the charts, how they were measured, what was left."""
    load, soak = doc.get("load") or {}, doc.get("soak") or {}
    client = doc.get("client", "raw WebSocket clients on gevent sockets")
    lines = [
        "# The hub under load and over time",
        "",
        _measured_by(doc, json_name),
        "",
        *_load_summary(doc),
        "",
        "## How it was measured",
        "",
        f"- One `python -m greenbus serve` process per phase, on 127.0.0.1; clients are {client} "
        "(`perf/load_worker.py`), in separate processes, on the same machine: the delivered "
        "rate is what one hub process does while the clients share its CPUs.",
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
            f"- Load hub during the flood: at most {num(load.get('flood_peak_queued'))} "
            "messages queued to peers in any `/metrics` sample (about two a second; the hub "
            "answers them between bursts, so this is not the peak within a burst), RSS up to "
            f"{mib(load.get('flood_peak_rss_kib'))}; "
            f"{mib(load.get('rss_after_traffic_kib'))} after the flood, "
            f"{mib(load.get('rss_after_disconnect_kib'))} once every peer had left "
            f"(from {mib(load.get('rss_before_kib'))} before the connections).",
        ]
    if soak:
        w = soak.get("worker", {})
        c, slow = w.get("counts", {}), w.get("slow_consumer", {})
        lines += [
            f"- Soak: {c.get('connects', 0):,} connections opened, {c.get('closes', 0):,} closed "
            f"and {c.get('aborts', 0):,} dropped without a close frame, {c.get('subs', 0):,} "
            f"extra subscriptions, {c.get('unsubs', 0):,} unsubscriptions, "
            f"{w.get('published', 0):,} pubs; slow consumer: "
            f"{c.get('slow_connects', 0)} connections, ends by close code "
            f"{slow.get('ends')} after {slow.get('lifetimes_s')} s; hub closes by code "
            f"{soak.get('hub_closes')}.",
            f"- Soak hub RSS after every peer left {mib(soak.get('rss_after_disconnect_kib'))}; "
            f"hub CPU {soak.get('hub_cpu_seconds', 0):.1f} s over the soak.",
        ]
    lines.append("")
    if doc["errors"]:
        lines += ["## Errors", "", *(f"- {e}" for e in doc["errors"]), ""]
    return "\n".join(lines)


# -- charts ---------------------------------------------------------------------------


def _new(width: float, height: float) -> Figure:
    # Imported here: the memory probe's fresh processes import perf but draw nothing.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _figure(title: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = _new(10, 5.6)
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
        if shown:
            xs, ys = [x for x, _ in shown], [v for _, v in shown]
            rects = ax.bar(xs, ys, width, label=system, color=COLOURS.get(system))
            ax.bar_label(
                rects, [fmt(v, unit) for _, v in shown], rotation=90, fontsize=7, padding=2
            )
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
    fig, ax = _figure(title, ylabel)
    _bars(ax, groups, bars, unit)
    fig.savefig(path, dpi=110)


def _medians(doc: Doc, metric: str) -> dict[str, dict[str, Any]]:
    """{system: {case: median}} for one metric."""
    out: dict[str, dict[str, Any]] = {}
    for label, case in doc["metrics"].get(metric, {}).get("cases", {}).items():
        for system, r in case["results"].items():
            out.setdefault(system, {})[label] = r["median"]
    return out


def chart_emit_cost(doc: Doc, path: Path) -> bool:
    if not (metric := doc["metrics"].get("emit_cost_by_subscribers")):
        return False
    fig, ax = _figure(
        "Emit cost vs number of subscribers (median µs per emit, lower is better)",
        "µs per emit (log)",
    )
    subscribers = {label: c["params"]["subscribers"] for label, c in metric["cases"].items()}
    for system, by_case in _medians(doc, "emit_cost_by_subscribers").items():
        points = [(subscribers[label], v) for label, v in by_case.items() if v]
        ks, vs = [k for k, _ in points], [v for _, v in points]
        ax.plot(ks, vs, marker="o", label=system, color=COLOURS.get(system), linewidth=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers on the emitted topic (each handler appends to a list; log)")
    ks = sorted(subscribers.values())
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(True, which="major", axis="x", alpha=0.35)
    ax.legend()
    fig.savefig(path, dpi=110)
    return True


def chart_latency(doc: Doc, path: Path) -> bool:
    if not (cases := doc["metrics"].get("pingpong", {}).get("cases", {})):
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


def chart_throughput(doc: Doc, path: Path) -> bool:
    if not (by_system := _medians(doc, "throughput")):
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


def chart_emit_held(doc: Doc, path: Path) -> bool:
    if not (metrics := [n for n in ("emit_held", "emit_held_slow") if n in doc["metrics"]]):
        return False
    bars: dict[str, list[float | None]] = {}
    for i, name in enumerate(metrics):
        for system, cases in _medians(doc, name).items():
            bars.setdefault(system, [None] * len(metrics))[i] = next(iter(cases.values()))
    _bar_chart(
        path,
        "How long emit holds the emitter (median µs per emit, log scale, lower is better)",
        "µs per emit (log)",
        [next(iter(doc["metrics"][name]["cases"])) for name in metrics],
        bars,
        "µs",
    )
    return True


def _panels(doc: Doc, path: Path, title: str, names: Sequence[str]) -> bool:
    """One panel per metric (its first case), side by side, with greenbus's targets drawn in.

    A time panel shows p50 and p99; a rate panel the median.  A target with
    a fixed limit is a dashed line; one relative to another system's median
    is drawn on the p50 bars at ``limit`` times that median, unless the
    limit is 1 (the other system's own bar).
    """
    if not (panels := [name for name in names if name in doc["metrics"]]):
        return False
    fig = _new(5 * len(panels), 5.6)
    fig.suptitle(title, fontweight="bold")
    targets = {t["metric"]: t for t in doc["targets"] if t["metric"] in panels}
    for ax, name in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        metric = doc["metrics"][name]
        label, case = next(iter(metric["cases"].items()))
        results, unit = case["results"], case["unit"]
        better = f"{unit}, {metric['better']} is better"
        ax.set_title(f"{metric['title']}: {label}\n({better})", fontsize=10)
        ax.grid(True, which="major", axis="y", alpha=0.35)
        if unit == "µs":
            _bars(
                ax, ["p50", "p99"], {s: [r["median"], r["p99"]] for s, r in results.items()}, unit
            )
        else:
            _bars(ax, ["median"], {s: [r["median"]] for s, r in results.items()}, unit)
        if (target := targets.get(name)) is None:
            continue
        if not target["against"]:
            line, right = target["limit"], 1.0
        elif target["baseline"] and target["limit"] != 1:
            # Only over the p50 group (the left half) when there is a p99 group.
            line, right = target["limit"] * target["baseline"], 0.5 if unit == "µs" else 1
        else:
            continue
        ax.set_ylim(top=max(ax.get_ylim()[1], line * 2))  # room for the line's label
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


def chart_hub(doc: Doc, path: Path) -> bool:
    """The hub's metrics across processes side by side, with greenbus's targets drawn in."""
    title = "The hub across processes, over loopback (log scale)"
    return _panels(doc, path, title, ("hub_roundtrip", "hub_ingest", "hub_fanout"))


def chart_federation(doc: Doc, path: Path) -> bool:
    """The federation's metrics beside raw redis-py, with greenbus's targets drawn in."""
    title = "Two processes through redis-server: federated buses vs raw redis-py (log scale)"
    return _panels(doc, path, title, ("federation_latency", "federation_throughput"))


def chart_memory(doc: Doc, path: Path) -> bool:
    """The hub's memory per connection beside the published figures of ``anchors_kib``."""
    if (per := (doc.get("load") or {}).get("memory_per_connection_kib")) is None:
        return False
    anchors: dict[str, float] = doc["anchors_kib"]
    names = ["greenbus hub\n(measured here)"] + [
        name.replace(" (", "\n(").replace(", ", ",\n", 1) for name in anchors
    ]
    values = [per, *anchors.values()]
    fig = _new(9, 5)
    ax = fig.subplots()
    bars = ax.bar(names, values, color=["#2a7ab9"] + ["#b0b0b0"] * len(anchors))
    ax.bar_label(bars, [f"{value:.1f}" for value in values], padding=3)
    ax.set_title(
        f"Memory per WebSocket connection (KiB): greenbus hub with "
        f"{doc['load']['connections']:,} connections, 2 subscriptions each"
    )
    ax.set_ylabel("memory per connection (KiB)")
    ax.set_xlabel("server (grey: published figures, not measured here)")
    ax.set_ylim(0, max(values) * 1.15)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    return True


def chart_soak(doc: Doc, path: Path) -> bool:
    """The hub's RSS and open connections over the soak, the trend drawn in; live blocks below."""
    soak = doc.get("soak") or {}
    if not (samples := soak.get("samples")):
        return False
    t = [s["t"] for s in samples]
    rss = [s["rss_kib"] / 1024 for s in samples]
    trend = soak["trend"]
    blocks = [s.get("python_blocks", 0) / 1000 for s in samples]
    fig = _new(10, 7.5 if any(blocks) else 5)
    if any(blocks):
        ax, ax_blocks = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    else:
        ax = fig.subplots()
    ax.axvspan(0, trend["warmup_s"], color="#eeeeee", label="warm-up (left out)")
    ax.plot(t, rss, color="#2a7ab9", lw=1.5, label="hub RSS (MiB)")
    post, k = [x for x in t if x >= trend["warmup_s"]], trend["window_samples"]
    for kib, (x0, x1), colour, label in (
        (trend["first_kib"], (post[0], post[k - 1]), "#2ca02c", "median, first 20%"),
        (trend["last_kib"], (post[-k], post[-1]), "#d62728", "median, last 20%"),
    ):
        ax.hlines(kib / 1024, x0, x1, color=colour, lw=3, label=label)
    slope = trend["slope_kib_per_min"]
    fit = [(trend["intercept_kib"] + slope / 60 * x) / 1024 for x in post]
    ax.plot(post, fit, color="black", ls="--", lw=1, label=f"linear fit: {slope:+.1f} KiB/min")
    ax.set_xlabel("time since the soak started (s)")
    ax.set_ylabel("hub resident set size (MiB)")
    pad = max(0.5, (max(rss) - min(rss)) * 0.3)
    ax.set_ylim(min(rss) - pad, max(rss) + pad)
    ax.grid(alpha=0.3)
    conns = [s["connections"] for s in samples]
    ax2 = ax.twinx()
    label = "open connections (right axis)"
    ax2.step(t, conns, where="post", color="#ff7f0e", alpha=0.7, lw=1, label=label)
    ax2.set_ylabel("open connections (hub's /metrics gauge)")
    ax2.set_ylim(0, max(conns) * 1.4 + 1)
    (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize="small", ncols=2)
    ax.set_title(
        f"Hub RSS over a {soak['seconds']:.0f} s soak (MiB), sampled every second: "
        f"{trend['growth_kib']:+.0f} KiB from the first to the last 20%"
    )
    if any(blocks):
        ax_blocks.axvspan(0, trend["warmup_s"], color="#eeeeee")
        ax_blocks.plot(t, blocks, color="#6a3d9a", lw=1, label="live Python blocks (thousands)")
        if (growth := (soak.get("blocks_trend") or {}).get("growth")) is not None:
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


# -- writing --------------------------------------------------------------------------

#: The suite's charts: file name, alt text, and what draws it (False: no data for it).
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
LOAD_CHARTS = (("load.png", chart_memory), ("soak_rss.png", chart_soak))


def render(out: Path, *, results: bool = True, load: bool = True, draw: bool = True) -> list[Path]:
    """Render RESULTS.md and/or LOAD.md from the newest records under ``out/results``.

    With ``draw``, the charts are drawn again too; without, RESULTS.md lists
    those that exist.  Returns the files written.
    """
    written = []
    if load and (newest := _newest(out, load=True)) is not None:
        name, doc = newest
        written += [out / png for png, draw_it in LOAD_CHARTS if draw and draw_it(doc, out / png)]
        (out / "LOAD.md").write_text(load_markdown(doc, name), encoding="utf-8")
        written.append(out / "LOAD.md")
    if results and (newest := _newest(out, load=False)) is not None:
        name, doc = newest
        if draw:
            charts = [(png, alt) for png, alt, draw_it in CHARTS if draw_it(doc, out / png)]
            written += [out / png for png, _ in charts]
        else:
            charts = [(png, alt) for png, alt, _ in CHARTS if (out / png).exists()]
        (out / "RESULTS.md").write_text(results_markdown(doc, name, charts, out), encoding="utf-8")
        written.append(out / "RESULTS.md")
    return written


def write_results(doc: Doc, out: Path) -> list[Path]:
    """Write ``results/<date>.json``, then the suite's charts and RESULTS.md from it."""
    path = out / "results" / f"{doc['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(doc), encoding="utf-8")
    return [path, *render(out, load=False)]


def write_load(doc: Doc, out: Path) -> list[Path]:
    """Write ``results/load-<date>.json``, then its charts, LOAD.md, and RESULTS.md again."""
    path = out / "results" / f"load-{doc['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(doc) + "\n", encoding="utf-8")
    return [path, *render(out, results=False), *render(out, load=False, draw=False)]


if __name__ == "__main__":
    for written in render(Path(sys.argv[1]) if sys.argv[1:] else PERF):
        print(f"wrote {written}")
