"""The Python client (``greenbus.connect``) against hubs that misbehave or vanish.

In-process hubs and servers on 127.0.0.1 and the gevent client: what the
client counts, resends and reports when a connection ends under it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import gevent
import pytest
from gevent import socket as gsocket
from waiting import wait_until
from websockets.http11 import Request
from websockets.server import ServerProtocol

import greenbus
from greenbus import RemoteBus


class StallingServer:
    """Completes one WebSocket upgrade on 127.0.0.1, then never reads again.

    A client's writer soon blocks on the full socket, with frames still
    queued behind it; :meth:`abort` then resets the connection (RST).
    """

    def __init__(self) -> None:
        self.listener = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        self.listener.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        # Inherited by the accepted socket: a small window fills fast.
        self.listener.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port: int = self.listener.getsockname()[1]
        self.sock: gsocket.socket | None = None
        self._accepting = gevent.spawn(self._accept)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        protocol = ServerProtocol()
        request = None
        while request is None:
            protocol.receive_data(sock.recv(65536))
            request = next((e for e in protocol.events_received() if isinstance(e, Request)), None)
        protocol.send_response(protocol.accept(request))
        sock.sendall(b"".join(protocol.data_to_send()))
        self.sock = sock

    def abort(self) -> None:
        """Reset the connection and stop listening (the port is free again).  Idempotent."""
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        self._accepting.kill()
        self.listener.close()


@pytest.fixture
def stalling() -> Iterator[StallingServer]:
    server = StallingServer()
    yield server
    server.abort()


@pytest.fixture
def clients() -> Iterator[Callable[..., RemoteBus]]:
    made: list[RemoteBus] = []

    def connect(url: str, **options: object) -> RemoteBus:
        remote = greenbus.connect(url, **options)  # type: ignore[arg-type]
        made.append(remote)
        return remote

    yield connect
    for remote in made:
        remote.close(timeout=2)


def test_messages_queued_on_a_connection_that_dies_are_sent_again_never_counted_as_sent(
    stalling: StallingServer, clients: Callable[..., RemoteBus]
) -> None:
    # Issue 11: emit() counted a message as sent once it was queued on the
    # connection; if the connection then died, it was lost.  Now: written
    # ones are sent, the batch cut off mid-write is counted as dropped, and
    # the ones never written go back to the buffer and out on the next hub.
    count = 200
    remote = clients(stalling.url, name="publisher", max_backoff=0.1)
    assert remote.wait_connected(5)
    payload = "x" * 50_000
    for n in range(count):
        assert remote.emit("bulk.data", {"n": n, "pad": payload}) == 1
    conn = remote._conn
    assert conn is not None
    wait_until(lambda: conn.outbox.statistics().in_flight, 5, "the client's writer to block")
    stalling.abort()
    wait_until(lambda: not remote.connected and remote.statistics().buffered, 5, "the drop")
    before = remote.statistics()
    assert before.sent + before.dropped_on_disconnect + before.buffered == count
    assert before.buffered > 0
    assert before.sent < count - before.buffered

    bus = greenbus.Bus("second hub")
    got = bus.subscribe("bulk.>", maxsize=None)
    hub = greenbus.serve(bus, port=stalling.port).start()
    try:
        assert remote.wait_connected(10), remote
        numbers = [got.get(timeout=5).data["n"] for _ in range(before.buffered)]
        assert numbers == list(range(count - before.buffered, count))  # in order, none twice
        remote.emit("bulk.data", {"n": count})
        assert got.get(timeout=5).data["n"] == count
        after = remote.statistics()
        assert after.buffered == 0
        assert after.sent == before.sent + before.buffered + 1
        assert after.dropped_on_disconnect == before.dropped_on_disconnect
    finally:
        hub.stop(timeout=2)
        bus.close(timeout=2)
