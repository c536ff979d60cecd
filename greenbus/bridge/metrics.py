"""The hub's counters, and ``/metrics``: what they read as Prometheus text.

:class:`HubCounters` is one typed object, shared by the hub's listener, peers
and outboxes: every limit, drop and disconnect is counted there.  Plain
integer fields, so the hot paths add to them with one attribute store; the
labelled families are dicts keyed by their label.  :func:`prometheus_text`
renders them (see ``docs/protocol.md`` for each metric).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .peer import PeerStatistics

__all__ = ["TIMEOUT_KINDS", "HubCounters", "prometheus_text", "resident_bytes"]

#: The kinds of timeout counted in ``greenbus_timeouts_total``.
TIMEOUT_KINDS = ("handshake", "hello", "keepalive", "close")


@dataclass(slots=True)
class HubCounters:
    """Totals since the hub started.  Mutated in place, on the hub's thread only."""

    #: WebSocket connections accepted, and refused by ``max_connections``.
    connections_total: int = 0
    connections_refused: int = 0
    #: ``pub`` frames received from peers, and ``msg`` frames written to them.
    messages_in: int = 0
    messages_out: int = 0
    #: Messages to peers that were never written (refused, dropped, cut off).
    dropped: int = 0
    #: Peers found to be slow consumers (closed with 1013).
    slow_consumers: int = 0
    #: Messages that could not be encoded as JSON, so not sent.
    encode_errors: int = 0
    #: Messages not sent to a peer: their msg frame is over max_message_size
    #: (a client with the same limit would close with 1009).
    too_big: int = 0
    #: Frames whose handling failed inside the hub (answered with 1011).
    internal_errors: int = 0
    #: Plain HTTP requests (``/health``, ``/metrics``, the dashboard).
    http_requests: int = 0
    #: Error frames sent to peers, by code (``HubSession`` adds to it).
    errors: dict[str, int] = field(default_factory=dict)
    #: Connections given up on, by kind (one of :data:`TIMEOUT_KINDS`).
    timeouts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIMEOUT_KINDS, 0))
    #: Connections ended, by WebSocket close code (1006: no close frame).
    closes: dict[int, int] = field(default_factory=dict)

    def timed_out(self, kind: str) -> None:
        """Count one timeout of ``kind`` (see :data:`TIMEOUT_KINDS`)."""
        self.timeouts[kind] = self.timeouts.get(kind, 0) + 1

    def closed(self, code: int) -> None:
        """Count one connection ended with close code ``code``."""
        self.closes[code] = self.closes.get(code, 0) + 1


def prometheus_text(
    c: HubCounters, peers: Sequence[PeerStatistics], *, local_subscriptions: int
) -> str:
    """The ``/metrics`` document, Prometheus exposition format 0.0.4.

    Args:
        c: the hub's counters.
        peers: a snapshot of each connected peer.
        local_subscriptions: in-process subscriptions on the hub's bus.
    """
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP greenbus_{name} {help_}")
        lines.append(f"# TYPE greenbus_{name} {kind}")
        for labels, value in samples:
            lines.append(f"greenbus_{name}{labels} {value}")

    metric("connections", "gauge", "Open WebSocket connections.", [("", len(peers))])
    metric(
        "connections_total",
        "counter",
        "WebSocket connections accepted.",
        [("", c.connections_total)],
    )
    metric(
        "connections_refused_total",
        "counter",
        "Connections refused by max_connections.",
        [("", c.connections_refused)],
    )
    metric(
        "remote_subscriptions",
        "gauge",
        "Subscriptions held by remote peers.",
        [("", sum(len(p.subscriptions) for p in peers))],
    )
    metric(
        "local_subscriptions",
        "gauge",
        "In-process subscriptions on the hub's bus.",
        [("", local_subscriptions)],
    )
    metric(
        "messages_in_total",
        "counter",
        "pub messages received from peers.",
        [("", c.messages_in)],
    )
    metric(
        "messages_out_total",
        "counter",
        "msg messages written to peers.",
        [("", c.messages_out)],
    )
    metric(
        "dropped_total",
        "counter",
        "Messages to peers never written: dropped or refused (slow consumers), or cut off "
        "by a disconnect.",
        [("", c.dropped)],
    )
    metric(
        "slow_consumers_total",
        "counter",
        "Peers closed with 1013 as slow consumers.",
        [("", c.slow_consumers)],
    )
    metric(
        "encode_errors_total",
        "counter",
        "Messages not JSON-encodable, not sent.",
        [("", c.encode_errors)],
    )
    metric(
        "too_big_total",
        "counter",
        "Messages not sent to a peer: their frame is over max_message_size.",
        [("", c.too_big)],
    )
    metric(
        "internal_errors_total",
        "counter",
        "Frames whose handling failed inside the hub (answered error internal, close 1011).",
        [("", c.internal_errors)],
    )
    metric(
        "errors_total",
        "counter",
        "Error frames sent to peers, by code (limit, forbidden, bad_json, ...).",
        [(f'{{code="{code}"}}', v) for code, v in sorted(c.errors.items())],
    )
    timeouts = {kind: c.timeouts.get(kind, 0) for kind in TIMEOUT_KINDS}
    metric(
        "timeouts_total",
        "counter",
        "Connections given up on: handshake (HTTP upgrade or TLS), hello (no token in "
        "time), keepalive (no pong), close (close frame not written: peer not reading).",
        [(f'{{kind="{kind}"}}', v) for kind, v in timeouts.items()],
    )
    closes = sorted(c.closes.items())
    metric(
        "closes_total",
        "counter",
        "WebSocket connections ended, by close code (1006: no close frame).",
        [(f'{{code="{code}"}}', v) for code, v in closes],
    )
    metric(
        "queue_depth",
        "gauge",
        "Frames queued to each peer and not yet written (messages and answers).",
        [(f'{{peer="{p.id}"}}', p.pending) for p in peers],
    )
    metric(
        "queue_bytes",
        "gauge",
        "UTF-8 bytes of the frames queued to each peer (max_pending_bytes bounds it).",
        [(f'{{peer="{p.id}"}}', p.pending_bytes) for p in peers],
    )
    metric(
        "peer_dropped_total",
        "counter",
        "Messages to each peer never written (dropped, refused, cut off).",
        [(f'{{peer="{p.id}"}}', p.dropped) for p in peers],
    )
    rss = resident_bytes()
    if rss is not None:
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "The hub process's resident set size (what the OS counts, allocator "
            "high-water marks included).",
            [("", rss)],
        )
    metric(
        "python_allocated_blocks",
        "gauge",
        "Memory blocks the interpreter has allocated now (live objects; a leak "
        "makes it climb, allocator high-water marks do not).",
        [("", sys.getallocatedblocks())],
    )
    return "\n".join(lines) + "\n"


def resident_bytes() -> int | None:
    """The process's resident set size in bytes (Linux, /proc/self/statm); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
