"""The Python client (``greenbus.connect``) against hubs that misbehave or vanish.

In-process hubs and servers on 127.0.0.1 and the gevent client: what the
client counts, resends and reports when a connection ends under it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pytest
from conftest import HubProcess
from gevent import pool
from gevent import socket as gsocket
from waiting import call_in_thread, wait_until
from websockets.http11 import Request
from websockets.server import ServerProtocol

import greenbus
import greenbus.acl
import greenbus.bridge.client
from greenbus import RemoteBus


class StallingServer:
    """Completes one WebSocket upgrade on 127.0.0.1, welcomes, then never reads again.

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
        # Welcome the client (it counts as connected from then on), then
        # never read what it sends.
        protocol.send_text(b'{"op":"welcome","protocol":1,"server":"stall","peer":"p1"}')
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


def test_messages_a_dead_connection_never_confirmed_go_again_to_the_next_hub_in_order(
    stalling: StallingServer, clients: Callable[..., RemoteBus]
) -> None:
    # Issue 11: emit() counted a message as sent once it was queued on the
    # connection; if the connection then died, it was lost.  Issue 14: every
    # pub the hub has not acknowledged is kept, written or not, cut off
    # mid-write or not, and sent again on the next connection, in order.
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
    wait_until(lambda: not remote.connected, 5, "the drop")
    before = remote.statistics()
    assert before.unconfirmed == count  # the stalling hub acknowledged nothing
    assert 0 < before.sent < count

    bus = greenbus.Bus("second hub")
    got = bus.subscribe("bulk.>", maxsize=None)
    hub = greenbus.serve(bus, port=stalling.port).start()
    try:
        assert remote.wait_connected(10), remote
        numbers = [got.get(timeout=5).data["n"] for _ in range(count)]
        assert numbers == list(range(count))  # in order, none twice
        remote.publish("bulk.data", {"n": count}, timeout=5)
        assert got.get(timeout=5).data["n"] == count
        after = remote.statistics()
        assert (after.unconfirmed, after.resent) == (0, count)
        assert after.sent == before.sent + count + 1
        assert after.dropped_while_disconnected == after.dropped_at_close == 0
    finally:
        hub.stop(timeout=2)
        bus.close(timeout=2)


# -- bad arguments are refused up front (issue 12, item 10) ---------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8765/", "scheme isn't ws or wss"),
        ("ws://127.0.0.1:99999/", "Port out of range"),
        ("ws:///", "hostname isn't provided"),
        ("ws://127.0.0.1:0/", "port 0"),
        (8765, "a hub URL"),
    ],
)
def test_connect_to_a_bad_url_raises_invalid_option_at_once(url: object, problem: str) -> None:
    with pytest.raises(greenbus.InvalidOption) as caught:
        greenbus.connect(url, timeout=1)  # type: ignore[arg-type]
    assert caught.value.name == "url"
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"timeout": "x"}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"max_buffer": 0}, "max_buffer"),
        ({"max_message_size": 10}, "max_message_size"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"max_backoff": float("inf")}, "max_backoff"),
        ({"token": 5}, "token"),
        ({"on_error": "print"}, "on_error"),
    ],
)
def test_connect_with_a_bad_option_raises_invalid_option_before_it_starts(
    stalling: StallingServer, options: dict[str, object], name: str
) -> None:
    # Issue 12: connect(timeout="x") raised a TypeError after its connection
    # greenlet had started.
    with pytest.raises(greenbus.InvalidOption) as caught:
        greenbus.connect(stalling.url, **options)  # type: ignore[arg-type]
    assert caught.value.name == name
    gevent.sleep(0.05)
    assert stalling.sock is None  # nothing ever connected


@pytest.fixture
def hub(local_hub: Callable[..., greenbus.HubServer]) -> greenbus.HubServer:
    return local_hub()


def test_remote_emit_refuses_what_the_in_process_emit_refuses(
    hub: greenbus.HubServer, clients: Callable[..., RemoteBus]
) -> None:
    remote = clients(hub.url)
    for call in (
        lambda bus: bus.emit("a.b", 1, headers=[("a", 1)]),
        lambda bus: bus.emit("a..b", 1),
        lambda bus: bus.emit("a.b", 1, reply_to="x y"),
    ):
        with pytest.raises(greenbus.GreenbusError) as remote_error:
            call(remote)
        with pytest.raises(greenbus.GreenbusError) as local_error:
            call(hub.bus)
        assert type(remote_error.value) is type(local_error.value)


def test_remote_emit_of_a_lone_surrogate_raises_local_protocol_error(
    hub: greenbus.HubServer, clients: Callable[..., RemoteBus]
) -> None:
    remote = clients(hub.url)
    with pytest.raises(greenbus.LocalProtocolError, match="lone surrogate"):
        remote.emit("a.b", "\ud800")
    with pytest.raises(greenbus.LocalProtocolError):
        remote.emit("a.b", float("nan"))


def test_on_with_a_bad_pattern_raises_at_once_even_as_a_decorator(
    hub: greenbus.HubServer, clients: Callable[..., RemoteBus]
) -> None:
    # Issue 12: bus.on("a..b") failed only when the decorator was applied.
    for bus in (hub.bus, clients(hub.url)):
        with pytest.raises(greenbus.InvalidTopic):
            bus.on("a..b")
        with pytest.raises(greenbus.InvalidOption):
            bus.once("a.b", maxsize=0)


# -- oversized messages are refused, never lost silently (item 4) -----------------


def test_an_emit_over_max_message_size_raises_message_too_big_and_sends_nothing(
    hub: greenbus.HubServer, clients: Callable[..., RemoteBus]
) -> None:
    # Issue 12: emit() returned 1, the hub closed with 1009, the client
    # reconnected, and nothing said so.
    remote = clients(hub.url)
    got = hub.bus.subscribe("big.>", maxsize=None)
    with pytest.raises(greenbus.MessageTooBig) as caught:
        remote.emit("big.one", "x" * 2_000_000)
    assert caught.value.limit == 1 << 20
    assert caught.value.size > 2_000_000
    remote.emit("big.two", "fits")
    assert got.get(timeout=5).data == "fits"
    assert remote.statistics().reconnects == 0
    assert hub.counters.closes == {}


def test_a_hub_side_message_over_the_limit_is_not_sent_and_the_next_one_arrives(
    hub: greenbus.HubServer, clients: Callable[..., RemoteBus]
) -> None:
    # Issue 12: a 2 MB hub-side emit made the client close with 1009, and the
    # next message was lost with the connection.
    remote = clients(hub.url)
    sub = remote.subscribe("big.>", maxsize=None)
    wait_until(lambda: hub.bus.interest() == ["big.>"], 5, "the subscription")
    hub.bus.emit("big.one", "x" * 2_000_000)
    hub.bus.emit("big.two", "next")
    assert sub.get(timeout=5).data == "next"
    assert hub.counters.too_big == 1
    assert hub.counters.dropped == 1
    assert remote.statistics().reconnects == 0


def test_a_frame_over_the_clients_own_limit_is_reported_and_the_client_reconnects(
    hub: greenbus.HubServer, clients: Callable[..., RemoteBus]
) -> None:
    errors: list[BaseException] = []
    remote = clients(hub.url, max_message_size=1000, on_error=lambda e, s, m: errors.append(e))
    sub = remote.subscribe("big.>", maxsize=None)
    wait_until(lambda: hub.bus.interest() == ["big.>"], 5, "the subscription")
    hub.bus.emit("big.one", "x" * 200_000)  # the hub's limit takes it; the client's does not
    wait_until(lambda: errors, 5, "the report")
    assert isinstance(errors[0], greenbus.MessageTooBig)
    wait_until(lambda: remote.connected and hub.bus.interest() == ["big.>"], 10, "a reconnect")
    hub.bus.emit("big.two", "next")
    assert sub.get(timeout=5).data == "next"


# -- refusals are typed errors, never silent (item 5) ------------------------------


@pytest.fixture
def token_hub(local_hub: Callable[..., greenbus.HubServer]) -> greenbus.HubServer:
    return local_hub(token="s3cret")


def test_connect_with_a_refused_token_raises_client_closed_with_the_hubs_reason(
    token_hub: greenbus.HubServer,
) -> None:
    # Issue 12: connect() returned with connected=True; after the 1008 close
    # the client gave up silently, emit returned 1 and buffered forever.
    errors: list[BaseException] = []
    with pytest.raises(greenbus.ClientClosed) as caught:
        greenbus.connect(
            token_hub.url, token="guess", timeout=5, on_error=lambda e, s, m: errors.append(e)
        )
    cause = caught.value.cause
    assert isinstance(cause, greenbus.RemoteError)
    assert cause.code == "unauthorized"
    assert cause.fatal
    assert any(isinstance(e, greenbus.ClientClosed) for e in errors)


def test_after_a_refusal_every_call_raises_client_closed(
    token_hub: greenbus.HubServer,
) -> None:
    remote = greenbus.connect(token_hub.url, token="guess", timeout=None)
    try:
        assert not remote.wait_connected(5)
        assert remote.state is greenbus.bridge.client.ClientState.CLOSED
        sub = remote.subscriptions()
        assert sub == []
        for call in (
            lambda: remote.emit("a", 1),
            lambda: remote.subscribe("a"),
            lambda: remote.request("a", timeout=1),
            lambda: remote.publish("a", 1),
        ):
            with pytest.raises(greenbus.ClientClosed) as caught:
                call()
            assert isinstance(caught.value.cause, greenbus.RemoteError)
    finally:
        remote.close(timeout=1)


def test_a_subscription_made_before_the_refusal_ends_with_it(
    token_hub: greenbus.HubServer,
) -> None:
    remote = greenbus.connect(token_hub.url, token="guess", timeout=None)
    try:
        sub = remote.subscribe("a.>")
        with pytest.raises(greenbus.ClientClosed):
            for _ in sub:
                pass
    finally:
        remote.close(timeout=1)


@pytest.fixture
def acl_hub(
    local_hub: Callable[..., greenbus.HubServer], tmp_path: Path
) -> Callable[[str], greenbus.HubServer]:
    """``start(permissions)``: an in-process hub whose one user, token "t", has them (TOML)."""

    def start(permissions: str) -> greenbus.HubServer:
        acl = tmp_path / "users.toml"
        acl.write_text(f'[users.a]\ntoken = "t"\n{permissions}\n', encoding="utf-8")
        return local_hub(acl=greenbus.acl.Acl.load(acl))

    return start


def test_a_subscription_the_hub_forbids_ends_with_its_remote_error(
    acl_hub: Callable[[str], greenbus.HubServer],
) -> None:
    hub = acl_hub('subscribe = ["a.>"]')
    errors: list[BaseException] = []
    remote = greenbus.connect(hub.url, token="t", on_error=lambda e, s, m: errors.append(e))
    try:
        allowed = remote.subscribe("a.>")
        refused = remote.subscribe("b.>")
        with pytest.raises(greenbus.RemoteError) as caught:
            refused.get(timeout=5)
        assert caught.value.code == "forbidden"
        assert not refused.active
        assert refused.error is caught.value
        assert errors == [caught.value]
        assert allowed.active
        hub.bus.emit("a.x", 1)
        assert allowed.get(timeout=5).data == 1
    finally:
        remote.close(timeout=1)


def test_publish_waits_for_the_hubs_answer_and_raises_its_refusal(
    acl_hub: Callable[[str], greenbus.HubServer],
) -> None:
    hub = acl_hub('publish = ["a.>"]')
    got = hub.bus.subscribe(">", maxsize=None)
    remote = greenbus.connect(hub.url, token="t")
    try:
        remote.publish("a.b", 1, timeout=5)
        assert got.get_nowait().data == 1  # in the hub's bus before the ack came back
        with pytest.raises(greenbus.RemoteError) as caught:
            remote.publish("b.c", 2, timeout=5)
        assert caught.value.code == "forbidden"
    finally:
        remote.close(timeout=1)


# -- abandoned requests are never sent later (item 6) -------------------------------


def test_a_request_that_timed_out_while_disconnected_is_never_sent(
    clients: Callable[..., RemoteBus],
) -> None:
    first = greenbus.serve(greenbus.Bus("first"), port=0).start()
    port = first.address[1]
    remote = clients(first.url, max_backoff=0.05)
    assert remote.wait_connected(5)
    first.stop(timeout=2)
    first.bus.close(timeout=2)
    wait_until(lambda: not remote.connected, 5, "the client to see the hub go")
    with pytest.raises(greenbus.RequestTimeout):
        remote.request("svc.act", "given up", timeout=0.05)
    remote.emit("svc.act", "after the timeout")
    assert remote.statistics().unconfirmed == 1
    assert remote.statistics().withdrawn == 1

    bus = greenbus.Bus("second")
    seen = bus.subscribe("svc.>", maxsize=None)
    second = greenbus.serve(bus, port=port).start()
    try:
        assert remote.wait_connected(10)
        assert seen.get(timeout=5).data == "after the timeout"
        remote.publish("svc.end", "marker", timeout=5)  # everything before it arrived
        assert seen.get(timeout=5).data == "marker"
        assert seen.pending == 0
    finally:
        second.stop(timeout=2)
        bus.close(timeout=2)


# -- closing (item 3) -----------------------------------------------------------------


def test_close_from_another_thread_raises_wrong_thread_and_leaves_the_client_working(
    hub: greenbus.HubServer, clients: Callable[..., RemoteBus]
) -> None:
    # Issue 12: it raised WrongThread but marked the client closed, so the
    # socket and the hub's subscription stayed open for good.
    remote = clients(hub.url)
    sub = remote.subscribe("a.>")
    wait_until(lambda: hub.bus.interest() == ["a.>"], 5, "the subscription")
    with pytest.raises(greenbus.WrongThread):
        call_in_thread(remote.close)
    assert remote.connected
    hub.bus.emit("a.b", 1)
    assert sub.get(timeout=5).data == 1
    with pytest.raises(greenbus.InvalidOption):
        remote.close(timeout="x")  # type: ignore[arg-type]
    assert remote.connected
    remote.close(timeout=5)
    wait_until(lambda: not hub.peers and hub.bus.interest() == [], 5, "the hub to forget it")


@pytest.mark.parametrize("call", ["emit", "publish", "request", "subscribe"])
def test_a_call_from_another_thread_raises_wrong_thread_naming_that_call_truthfully(
    hub: greenbus.HubServer, clients: Callable[..., RemoteBus], call: str
) -> None:
    # Issue 12: publish() and request() raised WrongThread("emit()"), whose
    # message said emit() and request() may be called from other threads:
    # not so for a RemoteBus.
    remote = clients(hub.url)
    with pytest.raises(greenbus.WrongThread) as caught:
        call_in_thread(getattr(remote, call), "a.b")
    assert caught.value.what == f"{call}()"
    message = str(caught.value)
    assert message.startswith(f"{call}() must be called from the OS thread that owns the client")
    assert "(only statistics() may be called from other threads)" in message
    assert call_in_thread(remote.statistics).sent == 0  # nothing was sent


# -- any other refusal retrying cannot fix ends the client too (item 5) -----------------


class RefusingHub:
    """Answers every WebSocket upgrade on 127.0.0.1 with a refusal, counting the attempts.

    With ``code``, it accepts the upgrade and closes with that code as the
    client's hello arrives (no ``welcome``), or, ``at_once``, in the same
    write as the 101; with ``status``, it answers the upgrade with that HTTP
    status instead.  ``replies`` are the codes of the clients' close replies.
    """

    def __init__(
        self, *, code: int | None = None, status: int | None = None, at_once: bool = False
    ) -> None:
        self.code, self.status, self.at_once = code, status, at_once
        self.attempts = 0
        self.replies: list[int] = []
        self.listener = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/"
        self._group = pool.Group()
        self._group.spawn(self._accept)

    def _accept(self) -> None:
        while True:
            sock, _ = self.listener.accept()
            self.attempts += 1
            self._group.spawn(self._refuse, sock)

    def _refuse(self, sock: gsocket.socket) -> None:
        with sock, gevent.Timeout(10, False):
            protocol = ServerProtocol()
            request = None
            while request is None:
                data = sock.recv(65536)
                if not data:
                    return
                protocol.receive_data(data)
                request = next(
                    (e for e in protocol.events_received() if isinstance(e, Request)), None
                )
            if self.status is not None:
                protocol.send_response(protocol.reject(self.status, "refused by the test\n"))
            else:
                assert self.code is not None
                protocol.send_response(protocol.accept(request))
                if not self.at_once:
                    sock.sendall(b"".join(protocol.data_to_send()))
                    # Close once the client's first frame (its hello) came: it
                    # has read the 101 by then, so the close comes in a read of
                    # its own.
                    if not sock.recv(65536):
                        return
                protocol.send_close(self.code, "refused by the test")
            sock.sendall(b"".join(protocol.data_to_send()))
            # Until the client answers the close (then the server closes
            # the TCP connection first: RFC 6455 section 7.1.1), or closes.
            while protocol.close_rcvd is None:
                data = sock.recv(65536)
                if not data:
                    return
                protocol.receive_data(data)
            self.replies.append(protocol.close_rcvd.code)

    def stop(self) -> None:
        self._group.kill()
        self.listener.close()


@pytest.mark.parametrize("code", [1002, 1003, 1007])
def test_a_close_retrying_cannot_fix_ends_the_client_with_client_closed(code: int) -> None:
    # Issue 12: a refused token, a failed TLS verification "and any other
    # close that retrying cannot fix must surface as a typed greenbus error".
    hub = RefusingHub(code=code)
    errors: list[BaseException] = []
    try:
        with pytest.raises(greenbus.ClientClosed) as caught:
            greenbus.connect(
                hub.url, timeout=5, max_backoff=0.05, on_error=lambda e, s, m: errors.append(e)
            )
        cause = caught.value.cause
        assert isinstance(cause, greenbus.HubClosed)
        assert (cause.code, cause.fatal) == (code, True)
        assert hub.attempts == 1  # given up at once, never retried
        assert any(isinstance(e, greenbus.ClientClosed) for e in errors)
    finally:
        hub.stop()


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_4xx_answer_to_the_upgrade_ends_the_client_with_client_closed(status: int) -> None:
    hub = RefusingHub(status=status)
    try:
        with pytest.raises(greenbus.ClientClosed) as caught:
            greenbus.connect(hub.url, timeout=5, max_backoff=0.05)
        assert str(status) in str(caught.value)
        assert hub.attempts == 1
    finally:
        hub.stop()


# -- the codec: C or pure, the same messages -------------------------------------------------

SHAPES = [
    (None, None, None),
    (0, {"k": "v"}, None),
    (-(2**70), None, "_INBOX.shape"),
    (1.5, {}, None),
    (1e16, None, None),  # json.dumps writes 1e+16: the pure codec writes it
    ('é\u2028\x00"\\', None, None),
    ({"a": [1, {"b": None}], "c": True, "[": "{"}, {"h": [1.0]}, "r.x"),
    (list(range(300)), None, None),  # past the C path's budget
    ([[[[[[[[1]]]]]]]], None, None),
]


@pytest.mark.parametrize("c", [True, False], ids=["c", "pure"])
def test_every_shape_of_message_goes_through_the_hub_alike_with_either_codec(
    hub: greenbus.HubServer,
    clients: Callable[..., RemoteBus],
    monkeypatch: pytest.MonkeyPatch,
    c: bool,
) -> None:
    if not c:
        monkeypatch.setattr(greenbus.bridge.client, "_fast_frame", None)
        monkeypatch.setattr(greenbus.bridge.client, "_fast_pub", None)
    remote = clients(hub.url)
    local = hub.bus.subscribe("shape.>", maxsize=None)
    back = remote.subscribe("shape.>", maxsize=None)
    wait_until(lambda: len(hub.bus.interest()) == 1, 5, "the remote subscription")
    for n, (data, headers, reply_to) in enumerate(SHAPES):
        remote.publish(f"shape.{n}", data, headers=headers, reply_to=reply_to, timeout=5)
    for n, (data, headers, reply_to) in enumerate(SHAPES):
        for msg in (local.get(timeout=5), back.get(timeout=5)):
            assert (msg.topic, repr(msg.data), msg.headers or None, msg.reply_to) == (
                f"shape.{n}",
                repr(data),
                headers or None,
                reply_to,
            )
    assert remote.statistics().unconfirmed == 0


# -- a close in the same read as the 101 (issue 12, audit D5) -------------------------


def test_a_refusal_in_the_same_read_as_the_101_ends_the_client_with_client_closed() -> None:
    # The close frame reached Connection as an event parsed with the 101: its
    # reply was never flushed and the client sat in CONNECTING until keepalive.
    hub = RefusingHub(code=1008, at_once=True)
    try:
        with pytest.raises(greenbus.ClientClosed) as caught:
            greenbus.connect(hub.url, timeout=5, max_backoff=0.05)
        cause = caught.value.cause
        assert isinstance(cause, greenbus.HubClosed)
        assert cause.code == 1008
        wait_until(lambda: hub.replies == [1008], 5, "the client's close reply")
        assert hub.attempts == 1
    finally:
        hub.stop()


def test_a_try_again_later_in_the_same_read_as_the_101_is_answered_and_retried() -> None:
    hub = RefusingHub(code=1013, at_once=True)
    remote = greenbus.connect(hub.url, timeout=None, max_backoff=0.05)
    try:
        wait_until(lambda: len(hub.replies) >= 3, 5, "three close replies")
        assert set(hub.replies) == {1013}
        assert remote.state is not greenbus.bridge.client.ClientState.CLOSED
        assert remote.error is None
    finally:
        remote.close(timeout=2)
        hub.stop()


# -- a hub whose max_message_size is below the client's (issue 12, audit D3) -----------


def test_a_pub_over_the_hubs_lower_limit_is_refused_once_and_the_rest_go_on(
    local_hub: Callable[..., greenbus.HubServer], clients: Callable[..., RemoteBus]
) -> None:
    # The hub closed with 1009, the client reconnected at once and resent the
    # same pub, forever: later emits never arrived, publish() timed out.
    hub = local_hub(max_message_size=1000)
    got = hub.bus.subscribe("a.>", maxsize=None)
    errors: list[BaseException] = []
    remote = clients(hub.url, timeout=5, on_error=lambda e, s, m: errors.append(e))
    with pytest.raises(greenbus.MessageTooBig) as caught:
        remote.publish("a.big", "x" * 5000, timeout=5)
    assert caught.value.limit == 1000
    assert caught.value.size > 5000
    remote.emit("a.after", "fits")
    assert got.get(timeout=5).data == "fits"
    with pytest.raises(greenbus.MessageTooBig):  # the hub's limit is known now: at once
        remote.emit("a.big", "x" * 5000)
    wait_until(lambda: remote.statistics().unconfirmed == 0, 5, "the ack of the next one")
    stats = remote.statistics()
    assert (stats.too_big, stats.reconnects) == (1, 1)
    assert [type(e) for e in errors] == [greenbus.MessageTooBig]
    assert hub.counters.closes == {1009: 1}
    assert got.pending == 0


def test_a_hub_whose_limit_is_below_the_hello_ends_the_client_with_client_closed(
    local_hub: Callable[..., greenbus.HubServer],
) -> None:
    hub = local_hub(max_message_size=64)
    with pytest.raises(greenbus.ClientClosed) as caught:
        greenbus.connect(hub.url, timeout=5)
    cause = caught.value.cause
    assert isinstance(cause, greenbus.MessageTooBig)
    assert cause.limit == 64
    assert "hello" in str(caught.value)
    wait_until(lambda: hub.counters.closes == {1009: 1}, 5, "the hub's count of the one close")


# -- a hub that closes every connection at once (issue 12, audit D4) --------------------


@pytest.mark.parametrize("hub_transport", ["websockets", "wsgi"], indirect=True)
def test_a_hub_at_max_connections_sees_the_documented_backoff(
    hub_factory: Callable[..., HubProcess], clients: Callable[..., RemoteBus]
) -> None:
    # The wsgi transport accepts the upgrade, then closes with 1013: the
    # client reconnected without waiting, ~500 times a second.
    hub = hub_factory("--max-connections", "1", "--stats-interval", "0")
    first = clients(hub.url, timeout=5)
    assert first.connected
    second = clients(hub.url, timeout=None)

    def refusals() -> int:
        return hub.log().count("(max_connections)")

    wait_until(lambda: refusals() >= 1, 5, "a refusal")
    gevent.sleep(2.0)  # a window to count in: 50 ms doubling allows ~6 attempts
    assert refusals() <= 10
    assert not second.connected
    assert second.error is None  # still trying
