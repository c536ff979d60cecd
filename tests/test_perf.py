"""Smoke test of the benchmark suite in ``perf/``.

Runs ``python -m perf --quick --tiny`` once, in a subprocess with warnings
as errors, and checks what it wrote: a JSON record with numeric samples for
every metric and system the suite promises, ``RESULTS.md`` and the charts.
The figures themselves are not checked: tiny sizes measure nothing.

Where ``redis-server`` is not installed, the samples of the systems that
need it (Redis pub/sub, the federation) must be errors that say it is
unavailable (and the run exits 1 for them), nothing else.

Also checks the committed report against its record, and the pieces every
harness shares: the child-process helper and the stream tally.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from perf import report
from perf.hub import federation, hub_redis, redis_pubsub, unstamp
from perf.procs import MeasurementError, Processes, Tally, check_stream

ROOT = Path(__file__).resolve().parent.parent

#: The systems with a second party (a thread, a pool, a greenlet) behind emit.
CONCURRENT = {"pyee-executor", "threads+queue", "gevent.queue", "greenbus", "greenbus-compat"}

#: What the suite promises to measure: metric -> the systems it compares.
EXPECTED: dict[str, set[str]] = {
    "emit_held": {"classic", "pyee", "blinker", *CONCURRENT},
    "emit_held_slow": {"pyee", *CONCURRENT},
    "pingpong": {"classic", "greenbus-request", *CONCURRENT},
    "dropin": {"pyee", "greenbus-compat", "greenbus"},
    "throughput": {"pyee", *CONCURRENT},
    "emit_cost_by_subscribers": {"pyee", "blinker", "greenbus", "greenbus-wildcard"},
    "reorders": {"pyee", *CONCURRENT},
    "memory": {"threads+queue", "gevent.queue", "greenbus"},
    "hub_roundtrip": {"tcp-echo", "redis-pubsub", "greenbus-hub-nohistory", "greenbus-hub"},
    "hub_ingest": {"redis-pubsub", "greenbus-hub-nohistory", "greenbus-hub"},
    "hub_fanout": {"redis-pubsub", "greenbus-hub"},
    "hub_replay": {"greenbus-hub-redis", "greenbus-hub"},
    "history_memory": {"greenbus-hub"},
    "hub_memory": {"greenbus-hub"},
    "federation_latency": {"redis-pubsub", "greenbus-federation"},
    "federation_throughput": {"redis-pubsub", "greenbus-federation"},
    "workers": {"greenbus-serve", "greenbus-serve-redis", "greenbus-serve-workers2"},
    "federation_interest": {"greenbus", "greenbus-federation", "greenbus-federation-history"},
    "federation_cluster": {"greenbus-federation", "greenbus-federation-cluster"},
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
NEEDS_REDIS = {
    "redis-pubsub",
    "greenbus-federation",
    "greenbus-federation-history",
    "greenbus-federation-cluster",
    "greenbus-hub-redis",
    "greenbus-serve-redis",
    "greenbus-serve-workers2",
}
#: Metrics whose every system needs redis-server (the unfederated Bus beside the federated one).
ALL_NEED_REDIS = {"federation_interest"}


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
                if (system in NEEDS_REDIS or metric in ALL_NEED_REDIS) and not REDIS:
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


def test_the_committed_reports_render_from_the_newest_records(tmp_path: Path) -> None:
    perf = ROOT / "perf"
    (tmp_path / "results").mkdir()
    for pattern in ("2*.json", "load-*.json"):
        newest = sorted((perf / "results").glob(pattern))[-1]
        shutil.copy(newest, tmp_path / "results" / newest.name)
    report.render(tmp_path)
    for name in ("RESULTS.md", "LOAD.md"):
        rendered = (tmp_path / name).read_text(encoding="utf-8")
        assert rendered == (perf / name).read_text(encoding="utf-8"), (
            f"perf/{name} is not what its record renders: run `python -m perf.report`"
        )


def test_greenbus_bench_forwards_its_options_to_the_suite() -> None:
    proc = _run("greenbus", "bench", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout and "--only" in proc.stdout


def test_without_redis_server_every_redis_sample_is_an_unavailable_error() -> None:
    redis, federated = redis_pubsub("no-such-redis-server"), federation("no-such-redis-server")
    hub = hub_redis("no-such-redis-server")
    for shape in (
        redis.echo,
        lambda: redis.ingest(10),
        lambda: redis.one_way(10, 0.001),
        lambda: redis.relay(10, 100),
        lambda: federated.one_way(10, 0.001),
        lambda: federated.relay(10, 100),
        lambda: hub.replay(10, 2),
    ):
        with pytest.raises(MeasurementError, match="unavailable: no-such-redis-server"):
            shape()


def test_a_stamped_payload_gives_its_index_and_one_way_latency_in_microseconds() -> None:
    latencies: list[float] = []
    assert unstamp([7, 1_000_000], 1_250_000, latencies) == 7
    assert unstamp(b"8 2000000", 2_100_000, latencies) == 8
    assert latencies == [250.0, 100.0]


def test_a_flood_that_lost_or_reordered_a_message_is_an_error() -> None:
    for payloads in ([0, 1, 3], [0, 2, 1, 3], [0, 1, 1, 2], [1, 2, 3, 4]):
        tally = Tally()
        for i, payload in enumerate(payloads):
            tally.add(payload, now=float(i))
        with pytest.raises(MeasurementError, match="of 4 messages"):
            check_stream(tally.result(), 4, "subscriber")
    tally = Tally()
    for i in range(4):
        tally.add(i, now=float(i))
    assert check_stream(tally.result(), 4, "subscriber") == 3.0


def test_a_child_that_ends_before_its_ready_line_is_an_error_quoting_its_log() -> None:
    code = "import sys; print('no port for you', file=sys.stderr); sys.exit(3)"
    with Processes() as processes:
        child = processes.start("quitter", [sys.executable, "-c", code])
        with pytest.raises(MeasurementError, match=r"(?s)quitter exited .*exit status 3.*no port"):
            child.expect("ready", 10)


def test_a_child_that_says_an_error_raises_it_and_lines_after_a_key_wait_their_turn() -> None:
    code = 'print(\'{"ready": 1}\'); print(\'{"result": 2}\'); print(\'{"error": "boom"}\')'
    with Processes() as processes:
        child = processes.start("talker", [sys.executable, "-c", code])
        assert child.expect("ready", 10) == 1
        assert child.expect("result", 10) == 2
        with pytest.raises(MeasurementError, match="talker failed: boom"):
            child.expect("result", 10)


def test_stopping_a_child_also_ends_what_it_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("perf.procs.STOP_TIMEOUT", 1.0)
    # The child ignores SIGTERM and leaves a grandchild in its process group.
    marker = f"grandchild-{uuid.uuid4().hex}"
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}]); "
        "print('{\"ready\": %d}' % p.pid, flush=True); time.sleep(60)"
    )
    with Processes() as processes:
        child = processes.start("stubborn", [sys.executable, "-c", code])
        grandchild = child.expect("ready", 10)
        started = time.monotonic()
    assert child.proc.returncode is not None
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5  # SIGKILL takes effect when the process next runs
    while _alive(grandchild, marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(grandchild, marker)


def _alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` is still the process whose command line has ``marker``, not a zombie."""
    try:
        if marker not in Path(f"/proc/{pid}/cmdline").read_text():
            return False
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_cluster_metric_puts_two_topic_roots_on_each_master() -> None:
    from redis.crc import key_slot

    from perf.cluster import MASTERS, PER_MASTER, ROOTS, SLOTS

    assert len(set(ROOTS)) == len(ROOTS) == MASTERS * PER_MASTER
    thirds = [key_slot(root.encode()) * MASTERS // SLOTS for root in ROOTS]
    assert sorted(thirds) == sorted(list(range(MASTERS)) * PER_MASTER)
