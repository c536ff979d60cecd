"""Smoke test of the hub's load and soak benchmark, ``perf/load.py``.

Runs ``python -m perf.load`` once with tiny sizes (50 connections, a 5 s
soak), in a subprocess with warnings as errors, and checks what it wrote:
the JSON record with numbers where the report promises them, ``LOAD.md``
with its table, and the two charts.  The figures themselves are not
judged: a 5 s soak on a shared machine measures nothing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from perf.load import blocks_trend, rss_trend, verdict
from perf.load_worker import take_frames
from perf.procs import MeasurementError, Tally

ROOT = Path(__file__).resolve().parent.parent

PNG = b"\x89PNG\r\n\x1a\n"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("load")
    # A `python -m perf` record, so the run renders RESULTS.md with its figures.
    (out / "results").mkdir()
    newest = sorted((ROOT / "perf" / "results").glob("2*.json"))[-1]
    (out / "results" / newest.name).write_bytes(newest.read_bytes())
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "perf.load",
            "--quick",
            "--connections",
            "50",
            "--soak-seconds",
            "5",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc, out


def test_the_quick_run_succeeds_and_writes_the_report_the_json_and_the_charts(
    run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "LOAD.md").is_file()
    for chart in ("load.png", "soak_rss.png"):
        assert (out / chart).read_bytes().startswith(PNG), chart
    assert len(list((out / "results").glob("load-*.json"))) == 1


def test_results_md_gets_the_load_and_soak_figures_and_charts_of_the_run(
    run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = run
    (path,) = (out / "results").glob("load-*.json")
    doc = json.loads(path.read_text())
    results = (out / "RESULTS.md").read_text()
    section = results[results.index("## The hub under load and over time") :]
    assert f"results/{path.name}" in section
    assert "![memory per connection](load.png)" in section
    assert "![hub RSS during the soak](soak_rss.png)" in section
    assert doc["soak"]["verdict"] in section
    assert "## Targets for greenbus" in results  # the rest of RESULTS.md is still there


def test_the_json_has_a_number_for_every_figure_of_the_report(
    run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = run
    (path,) = (out / "results").glob("load-*.json")
    doc = json.loads(path.read_text())
    assert doc["errors"] == []
    load, soak = doc["load"], doc["soak"]
    assert load["connections"] == 50
    assert load["delivered"] == load["expected_deliveries"] > 0
    for key in (
        "memory_per_connection_kib",
        "delivered_per_s",
        "rss_before_kib",
        "rss_connected_kib",
        "hub_cpu_us_per_delivery",
    ):
        assert _number(load[key]), key
    assert load["delivered_per_s"] > 0
    assert len(soak["samples"]) >= 4
    assert all(_number(s["rss_kib"]) and s["connections"] > 0 for s in soak["samples"])
    for key in ("first_kib", "last_kib", "growth_kib", "slope_kib_per_min"):
        assert _number(soak["trend"][key]), key
    assert all(s["python_blocks"] > 0 for s in soak["samples"])
    for key in ("first", "last", "growth", "slope_per_min"):
        assert _number(soak["blocks_trend"][key]), key
    assert "live Python blocks" in soak["verdict"]
    assert soak["worker"]["gaps"] == soak["worker"]["disorder"] == 0
    assert soak["worker"]["counts"]["connects"] > soak["config"]["connections"]


def test_the_markdown_table_carries_the_figures(
    run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = run
    text = (out / "LOAD.md").read_text()
    for row in ("| memory per connection |", "| delivered |", "| soak RSS |", "| verdict |"):
        assert row in text
    assert "KiB**" in text and "msgs/s**" in text
    assert "## Errors" not in text


# -- the pieces, without processes ---------------------------------------------------


def test_the_clients_take_whole_text_frames_however_the_bytes_are_cut() -> None:
    ping = bytes([0x89, 2]) + b"hi"
    wire = bytes([0x81, 5]) + b"hello" + ping + bytes([0x81, 126, 0, 200]) + b"x" * 200
    buf, texts, others = bytearray(), [], []
    for i in range(0, len(wire), 3):
        buf += wire[i : i + 3]
        got, rest = take_frames(buf)
        texts += got
        others += rest
    assert texts == [b"hello", b"x" * 200]
    assert others == [ping]  # for websockets' protocol: it answers pings, closes, refusals
    assert len(buf) == 0


def test_a_masked_frame_from_the_server_goes_to_the_protocol_which_refuses_it() -> None:
    masked = bytes([0x81, 0x82]) + b"\x01\x02\x03\x04" + b"hi"
    assert take_frames(bytearray(masked)) == ([], [masked])


def test_a_tally_counts_skipped_and_out_of_order_numbers() -> None:
    tally = Tally()
    for n in (0, 1, 2, 5, 4, 6):
        tally.add(n)
    assert (tally.first, tally.last, tally.count) == (0, 6, 6)
    assert (tally.gaps, tally.disorder) == (2, 1)


def test_the_rss_trend_compares_medians_after_the_warm_up() -> None:
    samples = [(t, 1000.0 + (500 if t < 2 else 0) + 10 * t) for t in range(12)]
    trend = rss_trend(samples, warmup=2)
    assert trend["samples"] == 10 and trend["window_samples"] == 2
    assert trend["growth_kib"] == pytest.approx(80)
    assert trend["slope_kib_per_min"] == pytest.approx(600)
    with pytest.raises(MeasurementError):
        rss_trend(samples[:3], warmup=2)


def _flat(value: float, seconds: int = 100) -> list[tuple[float, float]]:
    return [(float(t), value) for t in range(seconds)]


def _climbing(start: float, per_s: float, seconds: int = 100) -> list[tuple[float, float]]:
    return [(float(t), start + per_s * t) for t in range(seconds)]


@pytest.mark.parametrize(
    ("rss", "blocks", "ok", "words"),
    [
        (_flat(50_000), _flat(200_000), True, "no growth"),
        (_climbing(50_000, 30), _flat(200_000), False, "GROWTH"),  # +2.4 MiB of RSS
        (_flat(50_000), _climbing(200_000, 100), False, "OVER the 2% allowed"),  # +4%
    ],
    ids=["flat", "rss-climbs", "live-blocks-climb"],
)
def test_the_soak_verdict_fails_when_rss_or_live_blocks_climb(
    rss: list[tuple[float, float]], blocks: list[tuple[float, float]], ok: bool, words: str
) -> None:
    passed, text = verdict(rss_trend(rss, 10), 100, blocks_trend(blocks, 10))
    assert passed is ok
    assert words in text
