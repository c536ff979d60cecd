"""greenbus.bridge.dial: opening a client connection, and telling retryable failures apart."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gevent
import pytest
from gevent import Timeout
from gevent import socket as gsocket

import greenbus
from greenbus.bridge.dial import HandshakeFailed, Refused, check_url, dial


def http_server(answer: bytes) -> tuple[int, gevent.Greenlet]:
    """A server on 127.0.0.1 that answers one request with ``answer`` and closes."""
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        with listener:
            sock, _ = listener.accept()
            with sock:
                sock.recv(65536)
                sock.sendall(answer)

    return listener.getsockname()[1], gevent.spawn(serve)


def open_to(port: int, timeout: float = 5) -> greenbus.bridge.connection.Connection:
    """``dial`` a plain ws:// connection to 127.0.0.1:port."""
    return dial(
        check_url(f"ws://127.0.0.1:{port}/"),
        tls=None,
        timeout=timeout,
        max_size=1 << 20,
        on_text=lambda text: None,
        name="test",
    )


@pytest.fixture
def hub(local_hub: Callable[..., greenbus.HubServer]) -> Iterator[greenbus.HubServer]:
    yield local_hub()


def test_dial_returns_a_started_connection_to_a_hub(hub: greenbus.HubServer) -> None:
    conn = open_to(hub.address[1])
    try:
        assert conn.open
        assert conn.send('{"op":"ping","id":1}')
    finally:
        conn.close()
        conn.wait(5)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_4xx_answer_to_the_upgrade_is_refused_for_good(status: int) -> None:
    port, server = http_server(f"HTTP/1.1 {status} No\r\nContent-Length: 0\r\n\r\n".encode())
    with pytest.raises(Refused) as caught:
        open_to(port)
    assert str(status) in str(caught.value.cause)
    server.join(5)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_5xx_or_429_answer_is_a_failed_attempt_another_may_pass(status: int) -> None:
    port, server = http_server(f"HTTP/1.1 {status} No\r\nContent-Length: 0\r\n\r\n".encode())
    with pytest.raises(HandshakeFailed):
        open_to(port)
    server.join(5)


def test_a_closed_port_and_a_silent_server_are_failed_attempts() -> None:
    probe = gsocket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(OSError):
        open_to(port)
    silent = gsocket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        with pytest.raises(Timeout):
            open_to(silent.getsockname()[1], timeout=0.2)
    finally:
        silent.close()
