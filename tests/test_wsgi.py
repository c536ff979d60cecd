"""The WSGI adapter, in process: which paths are the hub's, and which the caller's app's.

A real ``gevent.pywsgi.WSGIServer`` with gevent-websocket's handler on a free
port of 127.0.0.1, plain HTTP over gevent sockets, and the Python client for
the WebSocket side.  The conformance of the WebSocket protocol through the
adapter is tested with every hub-process test (``--transport wsgi``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from gevent import socket as gsocket
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

import greenbus
from greenbus.bridge.http import WEB_DIR
from greenbus.bridge.wsgi import hub_app

Served = Callable[..., str]


def users_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The caller's own app: says which path it got."""
    body = f"app:{environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def get(port: int, path: str) -> tuple[int, str]:
    """``GET path`` on 127.0.0.1:port over a gevent socket: (status, body)."""
    with gsocket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[int, Any]]]:
    """``serve(**hub_app_options)``: a WSGI server on a free port; (port, app)."""
    servers: list[tuple[WSGIServer, greenbus.Bus]] = []

    def start(**options: Any) -> tuple[int, Any]:
        bus = greenbus.Bus("wsgi")
        app = hub_app(bus, stats_interval=None, **options)
        server = WSGIServer(("127.0.0.1", 0), app, handler_class=WebSocketHandler, log=None)
        server.start()
        servers.append((server, bus))
        return server.server_port, app

    yield start
    for server, bus in servers:
        server.stop(timeout=2)
        bus.close(timeout=2)


HUB_PATHS = ("/health", "/metrics")
DASHBOARD_FILES = ("", "index.html", "greenbus.js", "dashboard.js", "dashboard.css")


def test_with_a_fallback_the_hub_keeps_health_and_metrics_and_the_rest_is_the_apps(
    serve: Callable[..., tuple[int, Any]],
) -> None:
    # Issue 12: /, /index.html, /greenbus.js and /dashboard.js went to the
    # dashboard although the docs said "/health, /metrics, else my_wsgi_app".
    port, _ = serve(fallback=users_app)
    for path in HUB_PATHS:
        status, body = get(port, path)
        assert status == 200 and not body.startswith("app:"), path
    for name in (*DASHBOARD_FILES, "elsewhere", "greenbus/"):
        assert get(port, "/" + name) == (200, f"app:/{name}")


def test_the_caller_may_put_the_dashboard_under_a_prefix_beside_its_app(
    serve: Callable[..., tuple[int, Any]],
) -> None:
    port, _ = serve(fallback=users_app, dashboard="/greenbus/")
    for name in DASHBOARD_FILES:
        file = "index.html" if name == "" else name
        assert get(port, "/greenbus/" + name) == (200, (WEB_DIR / file).read_text("utf-8"))
    # The page links to health and metrics relatively: they are there too.
    assert get(port, "/greenbus/health")[0] == 200
    assert "greenbus_connections" in get(port, "/greenbus/metrics")[1]
    assert get(port, "/") == (200, "app:/")
    assert get(port, "/greenbus/other") == (200, "app:/greenbus/other")


def test_without_a_fallback_the_dashboard_is_at_the_root_and_the_rest_is_404(
    serve: Callable[..., tuple[int, Any]],
) -> None:
    port, _ = serve()
    assert get(port, "/") == (200, (WEB_DIR / "index.html").read_text("utf-8"))
    assert get(port, "/elsewhere") == (404, "not found\n")


@pytest.mark.parametrize("prefix", ["greenbus", "/greenbus", "", 5])
def test_a_bad_dashboard_prefix_is_refused_with_invalid_option(prefix: object) -> None:
    bus = greenbus.Bus("wsgi")
    try:
        with pytest.raises(greenbus.InvalidOption) as caught:
            hub_app(bus, dashboard=prefix)  # type: ignore[arg-type]
        assert caught.value.name == "dashboard"
    finally:
        bus.close()


def test_the_websocket_side_works_beside_the_callers_app(
    serve: Callable[..., tuple[int, Any]],
) -> None:
    port, app = serve(fallback=users_app)
    got = app.hub.bus.subscribe("a.>", maxsize=None)
    with greenbus.connect(f"ws://127.0.0.1:{port}/", name="through-wsgi") as remote:
        remote.publish("a.b", 1, timeout=5)
    assert got.get(timeout=5).data == 1
