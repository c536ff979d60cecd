"""Serve the hub from a WSGI app that runs on gevent-websocket.

For apps that already serve WSGI through ``gevent.pywsgi.WSGIServer`` with
``geventwebsocket.handler.WebSocketHandler`` (the ``[wsgi]`` extra)::

    from gevent.pywsgi import WSGIServer
    from geventwebsocket.handler import WebSocketHandler
    from greenbus.bridge.wsgi import hub_app

    app = hub_app(bus, fallback=my_flask_app)
    WSGIServer(("127.0.0.1", 8765), app, handler_class=WebSocketHandler).serve_forever()

gevent-websocket performs the HTTP upgrade; from then on the adapter drives
the socket itself, with the same ``websockets`` sans-I/O protocol and the
same :class:`~greenbus.bridge.connection.Connection` as the hub's own
listener, so it keeps their guarantees where gevent-websocket 0.10.1 is weak
(measured here): close frames keep their status code, messages over
``max_message_size`` are refused with 1009 before being read, invalid UTF-8
gets 1007, pings are answered while the app is busy, and a single writer
at a time owns the socket (no ``ConcurrentObjectUseError``).  See
``docs/transports.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from websockets.protocol import SERVER, Protocol, State

from ..bus import Bus
from .connection import wire_logger
from .feed import RemoteLog
from .http import NOT_FOUND, check_prefix, http_answer
from .server import HubConfig, HubServer

__all__ = ["hub_app"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_WIRE_LOGGER = wire_logger("websockets.server")


class _Default:
    # hub_app's default dashboard: at / without a fallback app, off with one.
    def __repr__(self) -> str:
        return "<default>"


_DEFAULT = _Default()


def hub_app(
    bus: Bus,
    config: HubConfig | None = None,
    *,
    path: str | None = None,
    fallback: WSGIApp | None = None,
    dashboard: str | _Default | None = _DEFAULT,
    remote: RemoteLog | None = None,
    **overrides: Any,
) -> WSGIApp:
    """A WSGI app serving the hub's WebSocket protocol (at ``path`` only, if given).

    Plain HTTP requests get, from the hub, exactly these paths (see
    :mod:`greenbus.bridge.http`): ``/health`` and ``/metrics``, always; and
    the dashboard under ``dashboard`` (``<dashboard>``,
    ``<dashboard>greenbus.js``, ``<dashboard>dashboard.js``,
    ``<dashboard>dashboard.css``, and ``<dashboard>health``/``metrics``).
    Every other request goes to ``fallback`` (404 without one).

    Args:
        dashboard: the dashboard's prefix, a path starting and ending with
            ``/`` (``"/greenbus/"``), or None for no dashboard.  Default:
            ``"/"`` without a ``fallback``, None with one, so the hub never
            takes ``/`` from the caller's app unless asked to.
        remote: a federation with history, shared with other hubs (see
            :class:`~greenbus.bridge.server.HubServer`).

    Returns:
        the app; its ``.hub`` attribute is the :class:`HubServer` holding the
        peers, counters and limits (its own listener is never started).

    Raises:
        InvalidOption: a bad ``dashboard`` (or hub option).
    """
    prefix = ("/" if fallback is None else None) if isinstance(dashboard, _Default) else dashboard
    prefix = check_prefix(prefix)
    hub = HubServer(bus, config, remote=remote, **overrides)
    hub.start_feeds()  # the peers' feed and the dashboard's, as the hub's own listener does

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        ws = environ.get("wsgi.websocket")
        if ws is not None and (path is None or environ.get("PATH_INFO", "/") == path):
            handler = ws.handler
            where = "{}:{}".format(*handler.client_address[:2])
            if hub.refuse_if_full(where):
                # The upgrade is done already: refuse with a close frame of
                # our own (gevent-websocket's close() would lose the code).
                refusal = Protocol(SERVER, state=State.OPEN)
                refusal.send_close(1013, "too many connections")
                handler.socket.sendall(b"".join(refusal.data_to_send()))
                ws.closed = True
                return []
            protocol = Protocol(
                SERVER, state=State.OPEN, max_size=hub.config.max_message_size, logger=_WIRE_LOGGER
            )
            try:
                hub.run_peer(handler.socket, protocol, where, recv=handler.rfile.read1)
            finally:
                # The connection sent its own close frame (with its code);
                # gevent-websocket must not send another one.
                ws.closed = True
            return []
        answer = http_answer(hub, environ.get("PATH_INFO", "/"), prefix)
        if answer is None:
            if fallback is not None:
                return fallback(environ, start_response)
            answer = NOT_FOUND
        start_response(
            f"{answer.status} {answer.reason}",
            [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))],
        )
        return [answer.body]

    app.hub = hub  # type: ignore[attr-defined]
    return app
