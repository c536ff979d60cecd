"""greenbus.bridge.metrics: the counters, and /metrics as Prometheus reads it."""

from __future__ import annotations

import re
from typing import Any

from greenbus.bridge.metrics import (
    COUNTERS,
    TIMEOUT_KINDS,
    HubCounters,
    metric_families,
    render_families,
)
from greenbus.bridge.peer import PeerStatistics


def prometheus_text(*args: Any, **options: Any) -> str:
    """The ``/metrics`` text of one hub, as ``HubServer.metrics`` renders it alone."""
    return render_families(metric_families(*args, **options))


SAMPLE = re.compile(r"^greenbus_[a-z_]+(\{[a-z]+=\"[^\"]*\"\})? -?[0-9.e+]+$")


def peer(id_: str, pending: int) -> PeerStatistics:
    return PeerStatistics(id_, None, "127.0.0.1:1", ("a.>",), pending, 10 * pending, 0, 0, 1, 0)


def test_every_family_has_help_and_type_and_every_sample_is_well_formed() -> None:
    text = prometheus_text(HubCounters(), [peer("p1", 2)], local_subscriptions=3)
    assert text.endswith("\n")
    families = set()
    for line in text.splitlines():
        if line.startswith("# HELP greenbus_"):
            families.add(line.split()[2])
        elif line.startswith("# TYPE "):
            assert line.split()[3] in ("counter", "gauge"), line
        else:
            assert SAMPLE.match(line), line
    for name, _, _ in COUNTERS:
        assert f"greenbus_{name}" in families


def test_counters_labels_and_per_peer_gauges_show_their_values() -> None:
    c = HubCounters()
    c.dropped = 5
    c.errors["forbidden"] = 2
    c.timed_out("close")
    c.closed(1013)
    text = prometheus_text(c, [peer("p1", 2), peer("p2", 0)], local_subscriptions=0)
    lines = set(text.splitlines())
    assert "greenbus_dropped_total 5" in lines
    assert 'greenbus_errors_total{code="forbidden"} 2' in lines
    assert 'greenbus_closes_total{code="1013"} 1' in lines
    assert 'greenbus_queue_depth{peer="p1"} 2' in lines
    assert 'greenbus_queue_bytes{peer="p1"} 20' in lines
    assert "greenbus_remote_subscriptions 2" in lines
    for kind in TIMEOUT_KINDS:  # every kind shows, even at zero
        assert f'greenbus_timeouts_total{{kind="{kind}"}} {int(kind == "close")}' in lines
