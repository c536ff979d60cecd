"""Smoke test of the benchmark suite in ``perf/``.

Runs ``python -m perf --quick --tiny`` once, in a subprocess with warnings
as errors, and checks what it wrote: a JSON record with numeric samples for
every metric and system the suite promises, ``RESULTS.md`` and the charts.
The figures themselves are not checked: tiny sizes measure nothing.

Where ``redis-server`` is not installed, the samples of the systems that
need it (Redis pub/sub, the federation) must be errors that say it is
unavailable (and the run exits 1 for them), nothing else.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from perf.hub import GreenbusFederation, RedisPubSub, last_arrival
from perf.hub_worker import Tally, unstamp
from perf.systems import MeasurementError

ROOT = Path(__file__).resolve().parent.parent

#: The systems with a second party (a thread, a pool, a greenlet) behind emit.
CONCURRENT = {"pyee-executor", "threads+queue", "gevent.queue", "greenbus", "greenbus-compat"}

#: What the suite promises to measure: metric -> the systems it compares.
EXPECTED: dict[str, set[str]] = {
    "emit_held": {"classic", "pyee", "blinker", *CONCURRENT},
    "emit_held_slow": {"pyee", *CONCURRENT},
    "pingpong": {"classic", "greenbus-request", *CONCURRENT},
    "throughput": {"pyee", *CONCURRENT},
    "emit_cost_by_subscribers": {"pyee", "blinker", "greenbus", "greenbus-wildcard"},
    "reorders": {"pyee", *CONCURRENT},
    "memory": {"threads+queue", "gevent.queue", "greenbus"},
    "hub_roundtrip": {"tcp-echo", "redis-pubsub", "greenbus-hub"},
    "hub_ingest": {"redis-pubsub", "greenbus-hub"},
    "hub_fanout": {"redis-pubsub", "greenbus-hub"},
    "federation_latency": {"redis-pubsub", "greenbus-federation"},
    "federation_throughput": {"redis-pubsub", "greenbus-federation"},
}

CHARTS = (
    "emit_cost.png",
    "emit_held.png",
    "latency.png",
    "throughput.png",
    "hub.png",
    "federation.png",
)

#: Whether redis-server can run here; without it, these systems' samples are errors.
REDIS = shutil.which("redis-server") is not None
NEEDS_REDIS = {"redis-pubsub", "greenbus-federation"}


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The output directory of one tiny run, and its JSON record."""
    out = tmp_path_factory.mktemp("perf")
    proc = _run("perf", "--quick", "--tiny", "--out", str(out))
    assert proc.returncode == (0 if REDIS else 1), proc.stderr[-4000:]
    [record] = (out / "results").glob("*.json")
    return out, json.loads(record.read_text(encoding="utf-8"))


def test_every_metric_and_system_has_numeric_samples_and_no_errors(
    smoke_run: tuple[Path, dict[str, Any]],
) -> None:
    _, doc = smoke_run
    assert set(doc["metrics"]) == set(EXPECTED)
    for metric, systems in EXPECTED.items():
        cases = doc["metrics"][metric]["cases"]
        assert cases, metric
        for label, case in cases.items():
            assert set(case["results"]) == systems, (metric, label)
            for system, result in case["results"].items():
                where = (metric, label, system)
                if system in NEEDS_REDIS and not REDIS:
                    assert result["errors"], where
                    assert all("unavailable" in error for error in result["errors"]), where
                    continue
                assert result["errors"] == [], where
                assert result["samples"], where
                numbers = [*result["samples"], result["median"], result["p99"]]
                assert all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers), where


def test_the_record_says_what_was_timed_on_which_machine_by_which_command(
    smoke_run: tuple[Path, dict[str, Any]],
) -> None:
    _, doc = smoke_run
    assert {"python", "gevent", "greenlet", "pyee", "cpu_count"} <= set(doc["machine"])
    assert doc["command"].startswith("python -m perf --quick --tiny")
    assert all(metric["timed"] for metric in doc["metrics"].values())
    assert doc["targets"]
    for t in doc["targets"]:
        measurable = REDIS or not {t["system"], t["against"]} & NEEDS_REDIS
        assert t["met"] in ((True, False) if measurable else (None,)), t["text"]


@pytest.mark.skipif(not REDIS, reason="redis-server is not installed")
def test_federation_latency_has_one_sample_per_timed_message(
    smoke_run: tuple[Path, dict[str, Any]],
) -> None:
    _, doc = smoke_run
    metric = doc["metrics"]["federation_latency"]
    assert "monotonic_ns" in metric["timed"]
    [case] = metric["cases"].values()
    for system, result in case["results"].items():
        assert result["n"] == metric["rounds"] * case["params"]["messages"], system
        assert all(x > 0 for x in result["samples"]), system
    throughput = doc["metrics"]["federation_throughput"]
    for case in throughput["cases"].values():
        for system, result in case["results"].items():
            assert result["n"] == throughput["rounds"], system


def test_results_md_and_the_charts_are_written(smoke_run: tuple[Path, dict[str, Any]]) -> None:
    out, doc = smoke_run
    text = (out / "RESULTS.md").read_text(encoding="utf-8")
    assert "| metric | system | median | p99 |" in text
    assert doc["command"] in text
    assert "## What remains and why" in text
    for chart in CHARTS:
        assert (out / chart).read_bytes().startswith(b"\x89PNG"), chart
        assert f"]({chart})" in text


def test_greenbus_bench_forwards_its_options_to_the_suite() -> None:
    proc = _run("greenbus", "bench", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout and "--only" in proc.stdout


def test_without_redis_server_every_redis_sample_is_an_unavailable_error() -> None:
    redis_pubsub = RedisPubSub("no-such-redis-server")
    federation = GreenbusFederation("no-such-redis-server")
    for shape in (
        redis_pubsub.echo,
        lambda: redis_pubsub.ingest(10),
        lambda: redis_pubsub.one_way(10, 0.001),
        lambda: redis_pubsub.relay(10, 100),
        lambda: federation.one_way(10, 0.001),
        lambda: federation.relay(10, 100),
    ):
        with pytest.raises(MeasurementError, match="unavailable: no-such-redis-server"):
            shape()


def test_a_stamped_payload_gives_its_index_and_one_way_latency_in_microseconds() -> None:
    latencies: list[float] = []
    assert unstamp([7, 1_000_000], 1_250_000, latencies) == 7
    assert unstamp(b"8 2000000", 2_100_000, latencies) == 8
    assert latencies == [250.0, 100.0]


def test_a_flood_that_lost_or_reordered_a_message_is_an_error() -> None:
    for payloads in ([0, 1, 3], [0, 2, 1, 3], [0, 1, 1, 2]):
        tally = Tally(expected=4)
        for i, payload in enumerate(payloads):
            tally.add(payload, now=float(i))
        with pytest.raises(MeasurementError, match="of 4 messages"):
            last_arrival(tally.result(), 4, "subscriber")
    tally = Tally(expected=4)
    for i in range(4):
        tally.add(i, now=float(i))
    assert last_arrival(tally.result(), 4, "subscriber") == 3.0
