"""The hub's counters: one typed object, shared by its listener, peers and outboxes.

Every limit, drop and disconnect is counted here and shown by ``/metrics``
(see ``docs/protocol.md`` for each metric).  Plain integer fields, so the hot
paths add to them with one attribute store; the labelled families are dicts
keyed by their label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TIMEOUT_KINDS", "HubCounters"]

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
