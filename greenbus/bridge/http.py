"""The hub's plain-HTTP routes, for its own listener and the WSGI adapter alike.

A request without ``Upgrade: websocket`` on the hub's port gets:

* ``GET /health``: the hub's health, JSON;
* ``GET /metrics``: Prometheus text (:func:`~greenbus.bridge.metrics.render_families`);
* the dashboard, under a prefix: ``<prefix>`` (and ``<prefix>index.html``),
  ``<prefix>greenbus.js``, ``<prefix>dashboard.js``, ``<prefix>dashboard.css``;
  and, when the prefix is not ``/``, ``<prefix>health`` and
  ``<prefix>metrics`` too (the page links to them relatively).

The hub's own listener serves the dashboard at ``/``; the WSGI adapter
where its caller says (:func:`greenbus.bridge.wsgi.hub_app`).  Anything else
is not the hub's: :func:`http_answer` returns None.

The hub's own listener reads each connection's request with
:func:`receive_request`: bytes that are no HTTP request it can take are
answered 400, 414 or 431 (or not at all: a TLS handshake), counted and
logged, never raised.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gevent import Timeout
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from .._version import __version__
from ..exceptions import InvalidOption

if TYPE_CHECKING:
    from .._logging import LogLimiter
    from .metrics import HubCounters
    from .server import HubServer

__all__ = [
    "BAD_REQUEST",
    "NOT_FOUND",
    "WEB_DIR",
    "WEB_FILES",
    "HttpAnswer",
    "check_prefix",
    "http_answer",
    "receive_request",
]

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
#: What bytes that are not a valid HTTP/1.1 request get from the hub's own listener.
BAD_REQUEST = HttpAnswer(400, "Bad Request", _TEXT, b"bad request\n")

#: After an answer to a bad request: how long, and how many bytes, the hub
#: reads and discards what the client still sends (see :func:`_answer_and_close`).
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 18
#: The longest reason :class:`_BadRequest` keeps (they quote the client's bytes).
MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class _BadRequest:
    """Bytes that are no HTTP request the hub can take.

    Attributes:
        reason: what was wrong, for the log (at most :data:`MAX_REASON` characters).
        status: the answer's status (400, 414 or 431), or None for no answer
            (the client speaks TLS: it could not read one).
        answer: the HTTP response to send, or ``b""``.
    """

    reason: str
    status: int | None
    answer: bytes


def receive_request(
    sock: socket.socket,
    protocol: ServerProtocol,
    where: str,
    timeout: float,
    counters: HubCounters,
    log: LogLimiter,
) -> tuple[Request, int] | None:
    """Read the opening request of a connection, for at most ``timeout`` seconds.

    Args:
        sock: the connection.
        protocol: a fresh ``websockets`` server protocol, fed what is read.
        where: the client's address, for the log.
        timeout: the hub's ``handshake_timeout``.
        counters: where a bad request (``bad_requests``) or a timeout is counted.
        log: the rate-limited log of refusals: one line each.

    Returns:
        the request and how many bytes came after it (a client must wait for
        the 101 before it sends a frame: RFC 6455 section 4.1); or None, with
        ``sock`` closed: the connection failed, ended before its first byte (a
        bare TCP connect, as port checks do), took too long, or sent bytes
        that are no request (answered if the client can read an answer).
    """
    got: tuple[Request, int] | _BadRequest | None = None
    with Timeout(timeout, False):
        got = _read(sock, protocol)
        if not isinstance(got, _BadRequest):
            if got is None:
                sock.close()
            return got
    if isinstance(got, _BadRequest):
        counters.bad_requests += 1
        answered = "closed" if got.status is None else f"answered {got.status}"
        log.log(logging.INFO, "%s: not a valid HTTP request (%s): %s", where, answered, got.reason)
        _answer_and_close(sock, got.answer)
        return None
    counters.timed_out("handshake")
    log.log(logging.INFO, "%s: no complete HTTP request within %s s", where, timeout)
    sock.close()
    return None


def _read(
    sock: socket.socket, protocol: ServerProtocol
) -> tuple[Request, int] | _BadRequest | None:
    # The request; a _BadRequest (nothing sent yet); or None: the connection
    # failed or ended before its first byte.  The caller bounds the time.
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return None
        if data:
            if not received and data[0] == 0x16:
                # A TLS record of type handshake (RFC 8446 section 5.1), a
                # byte no HTTP method starts with: the client wants wss://.
                return _BadRequest(
                    "a TLS handshake: the client wants wss://, this port serves ws://", None, b""
                )
            received += data
            protocol.receive_data(data)
        elif received:
            protocol.receive_eof()  # half a request: the parser says what is missing
        else:
            return None
        for event in protocol.events_received():
            if isinstance(event, Request):
                # websockets ends the request at its first empty line (CRLF only).
                return event, len(received) - received.find(b"\r\n\r\n") - 4
        exc = protocol.handshake_exc
        if exc is not None:
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            # websockets answers a line too long (414) or too many or too
            # long headers (431) itself, and anything else with no answer.
            answer = b"".join(protocol.data_to_send()) or BAD_REQUEST.response().serialize()
            status = int(answer[9:12])  # b"HTTP/1.1 414 ..."
            # The reason quotes the client's bytes: escaped, so that a log line stays one line.
            reason = f"{exc}{cause}"[:MAX_REASON].encode("unicode_escape").decode("ascii")
            return _BadRequest(reason, status, answer)
        if not data:
            return None


def _answer_and_close(sock: socket.socket, answer: bytes) -> None:
    # Send the answer (if any), then close so that the client can read it:
    # closing a socket with unread bytes resets the connection, and the
    # client would lose the answer.  So stop writing, then read and discard
    # what the client still sends until it closes, for at most LINGER_SECONDS
    # and LINGER_BYTES (the "lingering close" of RFC 9112 section 9.6).
    try:
        if answer:
            sock.sendall(answer)
            sock.shutdown(socket.SHUT_WR)
            left = LINGER_BYTES
            with Timeout(LINGER_SECONDS, False):
                while left > 0:
                    data = sock.recv(65536)
                    if not data:
                        break
                    left -= len(data)
    except OSError:
        pass
    finally:
        sock.close()


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
