"""Everything the harnesses write: the JSON records, RESULTS.md, LOAD.md, the charts.

Both documents render from their JSON record alone (and the texts of
``suite.toml``), so ``python -m perf.report [DIR]`` redraws them from the
newest records under ``DIR/results`` (default: this ``perf/`` directory).
The suite's record (``results/<date>.json``, built by ``perf/__main__.py``)::

    {"date", "command", "profile", "seed", "machine", "sizes", "systems",
     "metrics": {metric: {"title", "timed", "better", "reference", "rounds",
         "cases": {case: {"unit", "params", "results": {system: {
             "samples", "median", "p99", "max", "n", "errors"}}}}}},
     "derived": {"wildcard_share": {case: ratio}, "replay_rate": {system: msgs/s}},
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
import string
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import SUITE

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
COLOURS: dict[str, str] = SUITE["colours"]
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


def _times(ratio: float | None) -> str:
    return "—" if ratio is None else f"{_sig(ratio)}{TIMES}"


def mib(kib: float | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


class _Fields(string.Formatter):
    """``str.format`` over a record, for suite.toml's texts.

    A figure the record lacks is None: n/a, or nan under a number format.
    The format ``mib`` is :func:`mib`; ``n`` and ``n1`` are :func:`num`.
    """

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, TypeError):  # a missing key, or a key of None
            return None, field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == "mib":
            return mib(value)
        if format_spec in ("n", "n1"):
            return num(value, len(format_spec) - 1)
        if value is None:
            return format(math.nan, format_spec) if format_spec else "n/a"
        return format(value, format_spec)


fill = _Fields().format


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
    units, texts = _units(doc), SUITE["results"]
    redis_server = doc["machine"].get("redis-server") or "not installed"
    lines = [
        fill(line, **doc, json_name=json_name, redis_server=redis_server) for line in texts["head"]
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
    lines += ["", "## All results", "", texts["all_results"], ""]
    lines += table(("metric", "system", "median", "p99", f"{TIMES} ref", "target"), _rows(doc))
    if share := doc["derived"]["wildcard_share"]:
        parts = ", ".join(f"{label}: {_times(ratio)}" for label, ratio in share.items())
        what = "greenbus-wildcard ÷ greenbus exact-topic emit cost, medians"
        lines += ["", f"Wildcard share ({what}): {parts}."]
    if rates := doc["derived"].get("replay_rate"):
        parts = ", ".join(f"{system}: {fmt(rate, 'msgs/s')}" for system, rate in rates.items())
        lines += ["", f"Replay rate (hub_replay's messages ÷ its median time): {parts}."]
    if charts:
        lines += ["", "## Charts"]
        for name, alt in charts:
            lines += ["", f"![{alt}]({name})"]
    if (load := _newest(out, load=True)) is not None:
        fields = _load_fields(load[1], load[0])
        lines += ["", "## The hub under load and over time", ""]
        lines.append(fill(SUITE["load"]["measured_by"], **fields) + "  ")
        lines += ["How each figure is measured, and what the processes did: [LOAD.md](LOAD.md)."]
        lines += ["", *_load_summary(fields)]
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
                ratio = r["median"] / reference if r["median"] is not None and reference else None
                rows.append((heading, system, median, p99, _times(ratio), verdicts))
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


# -- LOAD.md: suite.toml's [load] texts, filled in from the record ------------------------


def _load_fields(doc: Doc, json_name: str) -> Doc:
    load, soak = doc.get("load") or {}, doc.get("soak") or {}
    per, machine = load.get("memory_per_connection_kib"), doc["machine"]
    history = "history_ttl_s" in soak.get("config", {})  # records before 2026-12 lack it
    fields: Doc = {
        **doc,
        "load": load,
        "soak": soak,
        "json_name": json_name,
        "python": machine["python"].split()[-1],
        "cpus": machine.get("cpu_count", machine.get("cpus")),  # older records: cpus
        "ratio": "" if per is None else f" ({per / 14:.1f}x websockets without compression)",
        "drops": SUITE["load"]["no_drops"] if load and not load.get("errors") else "**see Errors**",
        "client": doc.get("client", "raw WebSocket clients on gevent sockets"),
        "counts": Counter((soak.get("worker") or {}).get("counts", {})),  # 0 if never counted
    }
    fields["soak_history"] = "  " + fill(SUITE["load"]["soak_history"], **fields) if history else ""
    return fields


def _load_summary(fields: Doc) -> list[str]:
    """The table of figures and the two charts: LOAD.md's head, and RESULTS.md's section."""
    rows = [[fill(cell, **fields) for cell in row] for row in SUITE["load"]["rows"]]
    charts = ["![memory per connection](load.png)", "", "![hub RSS during the soak](soak_rss.png)"]
    return [*table(("", "greenbus hub", "for scale"), rows), "", *charts]


def load_markdown(doc: Doc, json_name: str) -> str:
    """LOAD.md: the figures, the charts, how they were measured, what was left."""
    fields, texts = _load_fields(doc, json_name), SUITE["load"]
    lines = ["# The hub under load and over time", "", fill(texts["measured_by"], **fields), ""]
    lines += [*_load_summary(fields), "", "## How it was measured", ""]
    lines += [f"- {fill(bullet, **fields)}" for bullet in texts["method"]] + [""]
    if fields["load"]:
        lines += ["## After the load and the soak", "", f"- {fill(texts['after_load'], **fields)}"]
    if fields["soak"]:
        lines += [f"- {fill(bullet, **fields)}" for bullet in texts["after_soak"]]
    lines.append("")
    if doc["errors"]:
        lines += ["## Errors", "", *(f"- {e}" for e in doc["errors"]), ""]
    return "\n".join(lines)


# -- charts ---------------------------------------------------------------------------

Bars = dict[str, list[float | None]]


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


def _bars(ax: Axes, groups: Sequence[str], bars: Bars, unit: str) -> None:
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


def _medians(doc: Doc, metric: str) -> dict[str, dict[str, Any]]:
    """{system: {case: median}} for one metric."""
    out: dict[str, dict[str, Any]] = {}
    for label, case in doc["metrics"].get(metric, {}).get("cases", {}).items():
        for system, r in case["results"].items():
            out.setdefault(system, {})[label] = r["median"]
    return out


def chart_bars(doc: Doc, path: Path, spec: Doc) -> bool:
    """Systems side by side, a group of bars per case of each ``[metric, stat(, label)]``
    of ``spec["bars"]`` (False: no such metric in ``doc``)."""
    groups: list[str] = []
    values: dict[str, dict[int, float | None]] = {}
    for metric, stat, *label in spec["bars"]:
        for name, case in doc["metrics"].get(metric, {}).get("cases", {}).items():
            for system, r in case["results"].items():
                values.setdefault(system, {})[len(groups)] = r[stat]
            groups.append(label[0] if label else name)
            unit = case["unit"]
    if not groups:
        return False
    fig, ax = _figure(spec["title"], spec["ylabel"])
    _bars(ax, groups, {s: [v.get(i) for i in range(len(groups))] for s, v in values.items()}, unit)
    fig.savefig(path, dpi=110)
    return True


def chart_emit_cost(doc: Doc, path: Path, spec: Doc) -> bool:
    if not (metric := doc["metrics"].get("emit_cost_by_subscribers")):
        return False
    fig, ax = _figure(spec["title"], spec["ylabel"])
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


def chart_panels(doc: Doc, path: Path, spec: Doc) -> bool:
    """One panel per metric (its first case), side by side, with greenbus's targets drawn in.

    A time panel shows p50 and p99; a rate panel the median.  A target with
    a fixed limit is a dashed line; one relative to another system's median
    is drawn on the p50 bars at ``limit`` times that median, unless the
    limit is 1 (the other system's own bar).
    """
    if not (panels := [name for name in spec["panels"] if name in doc["metrics"]]):
        return False
    fig = _new(5 * len(panels), 5.6)
    fig.suptitle(spec["title"], fontweight="bold")
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
        # The line in view (a limit far below every bar included), and room for its label.
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom=min(bottom, line / 2), top=max(top * 1.4, line * 2))
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

#: What draws each of the suite's charts (suite.toml's [charts]); False: no data for it.
SUITE_CHARTS: dict[str, Callable[[Doc, Path, Doc], bool]] = {
    "emit_cost.png": chart_emit_cost,
    "emit_held.png": chart_bars,
    "latency.png": chart_bars,
    "throughput.png": chart_bars,
    "hub.png": chart_panels,
    "federation.png": chart_panels,
}
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
        charts = [
            (png, spec["alt"])
            for png, spec in SUITE["charts"].items()
            if (SUITE_CHARTS[png](doc, out / png, spec) if draw else (out / png).exists())
        ]
        written += [out / png for png, _ in charts if draw]
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
