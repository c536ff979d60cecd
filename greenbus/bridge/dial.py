"""Open a client WebSocket connection to a hub: TCP, TLS, the HTTP upgrade.

:func:`dial` returns a started :class:`~greenbus.bridge.connection.Connection`,
or says why not in a way its caller can act on: :class:`Refused` when
another attempt would get the same answer (a certificate that does not
verify, an HTTP 4xx other than 429), and ``OSError``, ``gevent.Timeout`` or
:class:`HandshakeFailed` when trying again later may work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from gevent import Timeout, socket
from gevent import ssl as gssl
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.http11 import Response
from websockets.uri import WebSocketURI, parse_uri

from ..exceptions import InvalidOption
from .connection import Connection, wire_logger

__all__ = ["HandshakeFailed", "Refused", "check_url", "dial"]

_WIRE_LOGGER = wire_logger("websockets.client")


class HandshakeFailed(Exception):
    """The upgrade did not complete; another attempt may."""


class Refused(Exception):
    """The upgrade was refused in a way another attempt cannot change.

    Attributes:
        cause: the TLS verification error, or websockets' ``InvalidStatus``.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def check_url(url: object) -> WebSocketURI:
    """Parse a hub URL (``ws://host:port/`` or ``wss://``); return websockets' ``WebSocketURI``.

    Raises:
        InvalidOption: not a string, another scheme, no host, or a bad port.
    """
    expected = "a hub URL, ws://HOST:PORT/ or wss://HOST:PORT/"
    if not isinstance(url, str):
        raise InvalidOption("url", url, expected)
    try:
        uri = parse_uri(url)
        port = urlsplit(url).port  # websockets takes port 0 for "no port": 80
    except (InvalidURI, ValueError) as exc:
        raise InvalidOption("url", url, f"{expected} ({exc})") from None
    if port == 0:
        raise InvalidOption("url", url, f"{expected} (port 0 cannot be connected to)")
    return uri


def dial(
    uri: WebSocketURI,
    *,
    tls: gssl.SSLContext | None,
    timeout: float,
    max_size: int,
    on_text: Callable[[str], None],
    name: str,
) -> Connection:
    """Connect to ``uri`` within ``timeout`` seconds; return the started connection.

    Args:
        tls: the context for ``wss://`` (gevent's, so TLS waits yield).
        max_size: the largest frame accepted from the hub, in bytes.
        on_text: called with each text message (see :class:`Connection`).
        name: for logs.

    Raises:
        Refused: another attempt would be refused the same way.
        HandshakeFailed, OSError, gevent.Timeout: this attempt failed.
    """
    with Timeout(timeout):
        sock = socket.create_connection((uri.host, uri.port))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                try:
                    sock = tls.wrap_socket(sock, server_hostname=uri.host)
                except gssl.SSLCertVerificationError as exc:
                    raise Refused(exc) from None
            protocol = ClientProtocol(uri, max_size=max_size, logger=_WIRE_LOGGER)
            protocol.send_request(protocol.connect())
            sock.sendall(b"".join(protocol.data_to_send()))
            events: list[Any] = []
            while not events:
                data = sock.recv(65536)
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                events = protocol.events_received()
                if not data and not events:
                    raise HandshakeFailed("connection closed during the handshake")
            response = events[0]
            failure = protocol.handshake_exc
            if isinstance(failure, InvalidStatus):
                status = failure.response.status_code
                if 400 <= status < 500 and status != 429:
                    raise Refused(failure)  # another try gets the same answer
            if not isinstance(response, Response) or failure is not None:
                raise HandshakeFailed(str(failure or response))
        except BaseException:
            sock.close()
            raise
    conn = Connection(
        sock,
        protocol,
        on_text=on_text,
        on_close=_ignore_code,
        name=name,
        ping_interval=20.0,
        ping_timeout=20.0,
    )
    conn.start(initial_events=events[1:])
    return conn


def _ignore_code(code: int) -> None:
    # The client reads the close code from the connection once it is over.
    pass
