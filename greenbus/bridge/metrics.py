"""The hub's counters, and ``/metrics``: what they read as Prometheus text.

:class:`HubCounters` is one typed object, shared by the hub's listener, peers
and outboxes: every limit, drop and disconnect is counted there.  Plain
integer fields, so the hot paths add to them with one attribute store; the
labelled families are dicts keyed by their label.  :func:`metric_families`
lists them and :func:`render_families` writes them out (see
``docs/protocol.md`` for each metric).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..history import HistoryStatistics
    from .peer import PeerStatistics

__all__ = [
    "PER_PEER_LABEL",
    "TIMEOUT_KINDS",
    "Family",
    "HubCounters",
    "metric_families",
    "render_families",
    "resident_bytes",
]

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
    #: Connections whose bytes were no valid HTTP request (not HTTP, malformed,
    #: too large, TLS on a plain port): answered 400/414/431, or closed.
    bad_requests: int = 0
    #: Subs with ``since`` whose gap the history covered, and those it could
    #: not (answered ``recovered: false``); messages replayed for them.
    recoveries: int = 0
    recoveries_failed: int = 0
    replayed: int = 0
    #: Peers closed with 1013 because the history in Redis could not be
    #: reached, and peers closed with 1012 because the hub lost its feed.
    unavailable: int = 0
    feed_lost: int = 0
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


#: The plain counters of ``/metrics``: (metric, HubCounters field, help).
COUNTERS = (
    ("connections_total", "connections_total", "WebSocket connections accepted."),
    ("connections_refused_total", "connections_refused", "Connections refused by max_connections."),
    (
        "bad_requests_total",
        "bad_requests",
        "Connections that sent no valid HTTP request (not HTTP, malformed, too large, TLS on "
        "a plain port): answered 400, 414 or 431, or closed.",
    ),
    ("messages_in_total", "messages_in", "pub messages received from peers."),
    ("messages_out_total", "messages_out", "msg messages written to peers."),
    (
        "dropped_total",
        "dropped",
        "Messages to peers never written: dropped or refused (slow consumers), or cut off "
        "by a disconnect.",
    ),
    ("slow_consumers_total", "slow_consumers", "Peers closed with 1013 as slow consumers."),
    ("encode_errors_total", "encode_errors", "Messages not JSON-encodable, not sent."),
    (
        "too_big_total",
        "too_big",
        "Messages not sent to a peer: their frame is over max_message_size.",
    ),
    (
        "internal_errors_total",
        "internal_errors",
        "Frames whose handling failed inside the hub (answered error internal, close 1011).",
    ),
    ("recoveries_total", "recoveries", "Subs with since whose gap was replayed (recovered)."),
    (
        "recoveries_failed_total",
        "recoveries_failed",
        "Subs with since the history could not cover (recovered: false, nothing replayed).",
    ),
    ("replayed_total", "replayed", "Messages replayed to recovering subscriptions."),
    (
        "unavailable_total",
        "unavailable",
        "Subs refused (error unavailable, close 1013): the history in Redis was unreachable.",
    ),
    (
        "feed_lost_total",
        "feed_lost",
        "Peers closed with 1012 because the hub lost its feed from Redis (they resume).",
    ),
)

#: The history's gauges and counters: (metric, kind, HistoryStatistics field, help).
HISTORY = (
    ("history_messages", "gauge", "messages", "Messages kept in the history."),
    ("history_topics", "gauge", "topics", "Topics with messages kept in the history."),
    (
        "history_trimmed_total",
        "counter",
        "trimmed",
        "Messages dropped from the history by --history or --history-ttl.",
    ),
    (
        "history_forgotten_topics_total",
        "counter",
        "forgotten_topics",
        "Topics forgotten by --history-topics (positions before them cannot be recovered).",
    ),
)

#: Per-peer gauges and counters: (metric, kind, PeerStatistics field, help).
PER_PEER = (
    (
        "queue_depth",
        "gauge",
        "pending",
        "Frames queued to each peer and not yet written (messages and answers).",
    ),
    (
        "queue_bytes",
        "gauge",
        "pending_bytes",
        "UTF-8 bytes of the frames queued to each peer (max_pending_bytes bounds it).",
    ),
    (
        "peer_dropped_total",
        "counter",
        "dropped",
        "Messages to each peer never written (dropped, refused, cut off).",
    ),
)

#: A sample: its labels as written (``""``, or ``'{code="limit"}'``) and its value.
Samples = list[tuple[str, float]]
#: One metric family: (name without ``greenbus_``, ``"counter"``/``"gauge"``, help, samples).
Family = tuple[str, str, str, Samples]
#: The label of the per-peer families (:data:`PER_PEER`): one series per connection.
PER_PEER_LABEL = "peer"


def metric_families(
    c: HubCounters,
    peers: Sequence[PeerStatistics],
    *,
    local_subscriptions: int,
    history: HistoryStatistics | None = None,
    duplicate_pubs: int = 0,
) -> list[Family]:
    """Every metric family of one hub, in the order ``/metrics`` lists them.

    Args:
        c: the hub's counters.
        peers: a snapshot of each connected peer.
        local_subscriptions: in-process subscriptions on the hub's bus.
        history: the hub's history, if it keeps one.
        duplicate_pubs: pubs sent again after a cut and dropped (the hub's
            :class:`~greenbus.history.Publishers`).
    """
    families: list[Family] = [
        ("connections", "gauge", "Open WebSocket connections.", [("", len(peers))]),
        *((name, "counter", text, [("", getattr(c, field))]) for name, field, text in COUNTERS),
        (
            "remote_subscriptions",
            "gauge",
            "Subscriptions held by remote peers.",
            [("", sum(len(p.subscriptions) for p in peers))],
        ),
        (
            "local_subscriptions",
            "gauge",
            "In-process subscriptions on the hub's bus.",
            [("", local_subscriptions)],
        ),
        (
            "duplicate_pubs_total",
            "counter",
            "Pubs a client sent again after a cut, recognised as applied already and dropped.",
            [("", duplicate_pubs)],
        ),
        (
            "errors_total",
            "counter",
            "Error frames sent to peers, by code (limit, forbidden, bad_json, ...).",
            _labelled("code", sorted(c.errors.items())),
        ),
        (
            "timeouts_total",
            "counter",
            "Connections given up on: handshake (HTTP upgrade or TLS), hello (no token in "
            "time), keepalive (no pong), close (the closing handshake not done in time).",
            _labelled("kind", [(kind, c.timeouts.get(kind, 0)) for kind in TIMEOUT_KINDS]),
        ),
        (
            "closes_total",
            "counter",
            "WebSocket connections ended, by close code (1006: no close frame).",
            _labelled("code", sorted(c.closes.items())),
        ),
        *(
            (
                name,
                kind,
                text,
                _labelled(PER_PEER_LABEL, [(p.id, getattr(p, field)) for p in peers]),
            )
            for name, kind, field, text in PER_PEER
        ),
    ]
    if history is not None:
        families.extend(
            (name, kind, text, [("", getattr(history, field))])
            for name, kind, field, text in HISTORY
        )
    rss = resident_bytes()
    if rss is not None:
        families.append(
            (
                "process_resident_memory_bytes",
                "gauge",
                "The hub process's resident set size (what the OS counts, allocator "
                "high-water marks included).",
                [("", rss)],
            )
        )
    families.append(
        (
            "python_allocated_blocks",
            "gauge",
            "Memory blocks the interpreter has allocated now (live objects; a leak "
            "makes it climb, allocator high-water marks do not).",
            [("", sys.getallocatedblocks())],
        )
    )
    return families


def render_families(families: Sequence[Family]) -> str:
    """``families`` as Prometheus text (exposition format 0.0.4), names prefixed ``greenbus_``."""
    lines: list[str] = []
    for name, kind, text, samples in families:
        lines.append(f"# HELP greenbus_{name} {text}")
        lines.append(f"# TYPE greenbus_{name} {kind}")
        lines.extend(f"greenbus_{name}{labels} {value}" for labels, value in samples)
    return "\n".join(lines) + "\n"


def _labelled(label: str, values: Sequence[tuple[object, float]]) -> Samples:
    return [(f'{{{label}="{key}"}}', value) for key, value in values]


def resident_bytes() -> int | None:
    """The process's resident set size in bytes (Linux, /proc/self/statm); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
