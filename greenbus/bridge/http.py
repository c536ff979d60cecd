"""The hub's plain-HTTP routes, for its own listener and the WSGI adapter alike.

A request without ``Upgrade: websocket`` on the hub's port gets:

* ``GET /health``: the hub's health, JSON;
* ``GET /metrics``: Prometheus text (:func:`~greenbus.bridge.metrics.prometheus_text`);
* the dashboard, under a prefix: ``<prefix>`` (and ``<prefix>index.html``),
  ``<prefix>greenbus.js``, ``<prefix>dashboard.js``, ``<prefix>dashboard.css``;
  and, when the prefix is not ``/``, ``<prefix>health`` and
  ``<prefix>metrics`` too (the page links to them relatively).

The hub's own listener serves the dashboard at ``/``; the WSGI adapter
where its caller says (:func:`greenbus.bridge.wsgi.hub_app`).  Anything else
is not the hub's: :func:`http_answer` returns None.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from websockets.datastructures import Headers
from websockets.http11 import Response

from .._version import __version__
from ..exceptions import InvalidOption

if TYPE_CHECKING:
    from .server import HubServer

__all__ = ["NOT_FOUND", "WEB_DIR", "WEB_FILES", "HttpAnswer", "check_prefix", "http_answer"]

logger = logging.getLogger("greenbus.bridge.http")

#: The static files of the dashboard (greenbus/web), by their path under the prefix.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
WEB_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "greenbus.js": ("greenbus.js", "text/javascript; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}

_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """One plain-HTTP answer: status, reason, content type and body."""

    status: int
    reason: str
    content_type: str
    body: bytes

    def response(self) -> Response:
        """As a ``websockets`` HTTP response (the listener closes the connection after it)."""
        headers = Headers(
            [
                ("Content-Type", self.content_type),
                ("Content-Length", str(len(self.body))),
                ("Connection", "close"),
                ("Server", f"greenbus/{__version__}"),
            ]
        )
        return Response(self.status, self.reason, headers, self.body)


#: What a path that is not the hub's gets from its own listener.
NOT_FOUND = HttpAnswer(404, "Not Found", _TEXT, b"not found\n")


def check_prefix(prefix: str | None) -> str | None:
    """A dashboard prefix: None (no dashboard), or a path that starts and ends with ``/``.

    Raises:
        InvalidOption: anything else.
    """
    if prefix is None or (
        isinstance(prefix, str) and prefix.startswith("/") and prefix.endswith("/")
    ):
        return prefix
    raise InvalidOption("dashboard", prefix, "None, or a path that starts and ends with '/'")


def http_answer(hub: HubServer, path: str, dashboard: str | None) -> HttpAnswer | None:
    """The hub's answer to a plain ``GET path`` (no query string); None if the path is not its.

    Every answer is counted in ``http_requests``.

    Args:
        hub: the hub whose health and metrics are asked for.
        path: the request's path.
        dashboard: where the dashboard is served (see :func:`check_prefix`).
    """
    answer = _route(hub, path, dashboard)
    if answer is not None:
        hub.counters.http_requests += 1
    return answer


def _route(hub: HubServer, path: str, dashboard: str | None) -> HttpAnswer | None:
    if dashboard is not None and dashboard != "/" and path.startswith(dashboard):
        rest = path[len(dashboard) :]
        if rest in ("health", "metrics"):
            path = "/" + rest
    if path == "/health":
        return HttpAnswer(200, "OK", "application/json", json.dumps(hub.health()).encode())
    if path == "/metrics":
        content_type = "text/plain; version=0.0.4; charset=utf-8"
        return HttpAnswer(200, "OK", content_type, hub.metrics().encode())
    if dashboard is None or not path.startswith(dashboard):
        return None
    web = WEB_FILES.get(path[len(dashboard) :])
    if web is None:
        return None
    name, content_type = web
    try:
        return HttpAnswer(200, "OK", content_type, (WEB_DIR / name).read_bytes())
    except OSError:
        logger.error("dashboard file %s is missing from %s", name, WEB_DIR)
        return HttpAnswer(500, "Internal Server Error", _TEXT, b"missing file\n")
