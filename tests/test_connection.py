"""One Connection over a socket pair: the reader, the writers, the outbox, the end.

No hub and no routing: a gevent ``socketpair``, the ``websockets`` sans-I/O
protocol in state OPEN on both ends, and a test-side peer that frames and
reads by hand.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket
from greenlet import greenlet
from waiting import wait_until
from websockets.frames import Frame, Opcode
from websockets.protocol import CLIENT, SERVER, Protocol, State

from greenbus.bridge.connection import Connection
from greenbus.bridge.deadlines import call_later, deadlines
from greenbus.bridge.outbox import Outbox, OutboxLimits, OutboxState


class Peer:
    """The far end: a client-side protocol over the other socket of the pair."""

    def __init__(self, sock: gsocket.socket) -> None:
        self.sock = sock
        self.protocol = Protocol(CLIENT, state=State.OPEN, max_size=None)

    def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def send_frame(self, frame: Frame, times: int = 1) -> None:
        data = frame.serialize(mask=True, extensions=[])
        self.sock.sendall(data * times)

    def frames(self, count: int) -> list[Frame]:
        got: list[Frame] = []
        while len(got) < count:
            data = self.sock.recv(65536)
            if not data:
                self.protocol.receive_eof()
            else:
                self.protocol.receive_data(data)
            got.extend(self.protocol.events_received())
            if not data:
                break
        return got


@pytest.fixture
def pair() -> Iterator[tuple[gsocket.socket, gsocket.socket]]:
    a, b = gsocket.socketpair()
    yield a, b
    a.close()
    b.close()


def make(
    sock: gsocket.socket, on_text: Any = None, outbox: Outbox | None = None, **options: Any
) -> tuple[Connection, list[int]]:
    closed: list[int] = []
    conn = Connection(
        sock,
        Protocol(SERVER, state=State.OPEN, max_size=1 << 20),
        on_text=on_text or (lambda text: None),
        on_close=closed.append,
        outbox=outbox,
        name="test",
        **{"ping_interval": None, **options},
    )
    return conn, closed


def test_queued_text_is_written_in_order_and_counted_as_sent(
    pair: tuple[gsocket.socket, gsocket.socket],
) -> None:
    conn, _ = make(pair[0])
    peer = Peer(pair[1])
    conn.start()
    for n in range(5):
        assert conn.send(f"frame {n}")
    frames = peer.frames(5)
    assert [f.data.decode() for f in frames] == [f"frame {n}" for n in range(5)]
    wait_until(lambda: conn.sent == 5, 5, "the writer to count what it wrote")
    assert conn.pending == 0


def test_after_the_reader_crashes_send_and_close_refuse_quietly_and_the_state_says_so(
    pair: tuple[gsocket.socket, gsocket.socket],
) -> None:
    # Issue 11: the reader's failure closed the outbound queue while the
    # state stayed OPEN, so send() and close() (from the hello timer, say)
    # raised ChannelClosed.  Both now change together.
    def crash(text: str) -> None:
        raise RuntimeError("a bug in the owner")

    conn, closed = make(pair[0], on_text=crash)
    peer = Peer(pair[1])
    conn.start()
    peer.send_text("boom")
    assert conn.wait(5)
    assert closed == [1006]
    assert not conn.open
    assert conn.outbox.state is OutboxState.CLOSED
    assert conn.send("late") is False
    conn.close(1008, "unauthorized")  # no ChannelClosed, no effect
    assert conn.outbox.state is OutboxState.CLOSED


def test_what_the_writer_never_took_is_handed_back_when_the_connection_ends(
    pair: tuple[gsocket.socket, gsocket.socket],
) -> None:
    # A writer stuck on a full socket: what is still queued at the end goes
    # back to the owner (the client sends it again), never counted as sent.
    pair[0].setsockopt(gsocket.SOL_SOCKET, gsocket.SO_SNDBUF, 4096)
    pair[1].setsockopt(gsocket.SOL_SOCKET, gsocket.SO_RCVBUF, 4096)
    conn, _ = make(pair[0])
    conn.start()
    payload = b"x" * 100_000
    for _ in range(50):
        conn.outbox.put_message(payload, b"")
    wait_until(lambda: conn.outbox.statistics().in_flight, 5, "the writer to take a batch")
    pair[1].close()  # the peer vanishes
    assert conn.wait(5)
    unsent = [body for _, body in conn.unsent if body is not None]
    assert unsent, "nothing was left queued"
    # Each of the 50 is accounted for exactly once: written, lost in the
    # cut-off batch, or handed back.
    outbox = conn.outbox
    assert outbox.written_messages + outbox.dropped + len(unsent) == 50


def test_a_flood_of_websocket_pings_that_are_never_read_turns_the_outbox_slow(
    pair: tuple[gsocket.socket, gsocket.socket],
) -> None:
    # The protocol answers each ping with a pong of its own, outside the
    # outbox: those count toward its limits too, or a peer that pings and
    # never reads would grow them without bound while the writer is stuck.
    pair[0].setsockopt(gsocket.SOL_SOCKET, gsocket.SO_SNDBUF, 4096)
    pair[1].setsockopt(gsocket.SOL_SOCKET, gsocket.SO_RCVBUF, 4096)
    reasons: list[str] = []
    outbox = Outbox(OutboxLimits(max_frames=100, max_bytes=1 << 20), on_slow=reasons.append)
    conn, _ = make(pair[0], outbox=outbox)
    peer = Peer(pair[1])
    conn.start()
    ping = Frame(Opcode.PING, b"p" * 100)
    sent = 0
    while not reasons:
        assert sent < 200_000, "never found slow"
        peer.send_frame(ping, 100)
        sent += 100
        gevent.sleep(0)
    assert reasons == ["more than 100 frames pending"]
    assert outbox.pending_frames <= 100 + 100  # the limit, plus one read's worth


def live_greenlets() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead)


def test_writers_come_and_go_with_the_work_and_never_lose_or_reorder_a_frame(
    pair: tuple[gsocket.socket, gsocket.socket],
) -> None:
    # No writer waits on an idle connection: one starts when a frame is
    # queued and ends when the outbox is empty.  Frames queued while a
    # writer runs, is ending, or has just ended all go out, in order.
    conn, _ = make(pair[0])
    peer = Peer(pair[1])
    baseline = live_greenlets()
    conn.start()
    rng = random.Random(7)
    expected = []
    for burst in range(200):
        for n in range(rng.randrange(1, 5)):
            expected.append(f"{burst}.{n}")
            assert conn.send(expected[-1])
        for _ in range(rng.randrange(3)):
            gevent.sleep(0)
    frames = peer.frames(len(expected))
    assert [f.data.decode() for f in frames] == expected
    wait_until(lambda: conn.sent == len(expected), 5, "the writer to count what it wrote")
    # Idle: the reader is the connection's only greenlet.
    wait_until(lambda: live_greenlets() <= baseline + 1, 5, "the writer to end")


def test_run_reads_in_the_calling_greenlet(
    pair: tuple[gsocket.socket, gsocket.socket],
) -> None:
    # The hub's handler greenlet is the reader: no reader greenlet of its own.
    readers: list[Any] = []
    conn, closed = make(pair[0], on_text=lambda text: readers.append(gevent.getcurrent()))
    peer = Peer(pair[1])
    runner = gevent.spawn(conn.run)
    peer.send_text("hello")
    wait_until(lambda: readers, 5, "the message to be read")
    assert readers == [runner]
    pair[1].close()
    runner.join(5)
    assert runner.dead
    assert closed == [1006]


def test_a_close_whose_reply_never_comes_ends_the_connection_after_close_timeout(
    pair: tuple[gsocket.socket, gsocket.socket],
) -> None:
    # The close frame is written, but the peer neither answers nor closes
    # the TCP connection: the hub gives up after close_timeout more (it
    # used to wait for the keepalive, or forever without one).
    conn, closed = make(pair[0], close_timeout=0.2)
    peer = Peer(pair[1])
    conn.start()
    conn.close(1000, "bye")
    (frame,) = peer.frames(1)
    assert frame.opcode is Opcode.CLOSE
    assert conn.wait(5)
    assert conn.timed_out == "close"
    assert closed == [1000]


def test_an_idle_connection_is_pinged_and_one_that_answers_nothing_is_closed_with_1011(
    pair: tuple[gsocket.socket, gsocket.socket],
) -> None:
    conn, closed = make(pair[0], close_timeout=0.2, ping_interval=0.05, ping_timeout=0.1)
    peer = Peer(pair[1])
    conn.start()
    frames = peer.frames(2)  # the peer's protocol queues pongs; none is sent
    assert [f.opcode for f in frames] == [Opcode.PING, Opcode.CLOSE]
    assert conn.wait(5)
    assert conn.timed_out == "keepalive"
    assert closed == [1011]


# -- the hub's deadlines ------------------------------------------------------------


def test_deadlines_run_in_time_order_and_a_cancelled_one_never_runs() -> None:
    ran: list[str] = []
    timers = deadlines()
    timers.call_later(0.03, lambda: ran.append("third"))
    timers.call_later(0.01, lambda: ran.append("first"))
    timers.call_later(0.02, lambda: ran.append("cancelled")).cancel()
    timers.call_later(0.02, lambda: ran.append("second"))
    wait_until(lambda: len(ran) == 3, 5, "the deadlines to run")
    assert ran == ["first", "second", "third"]


def test_a_failing_deadline_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def fail() -> None:
        raise RuntimeError("a bug in a callback")

    call_later(0.01, fail)
    call_later(0.01, lambda: ran.append("after"))
    wait_until(lambda: ran, 5, "the second deadline")
    assert "a bug in a callback" in caplog.text


def test_cancelled_deadlines_do_not_pile_up() -> None:
    timers = deadlines()
    before = len(timers._heap)
    entries = [timers.call_later(3600, lambda: None) for _ in range(1000)]
    for entry in entries:
        entry.cancel()
    assert len(timers._heap) - before < 100


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 65537])
@pytest.mark.parametrize("split", [False, True])
def test_the_server_frames_texts_byte_for_byte_as_websockets_does(
    pair: tuple[gsocket.socket, gsocket.socket], size: int, split: bool
) -> None:
    # _frame writes server text frames itself; the bytes must be exactly
    # those of websockets' Frame.serialize (RFC 6455 5.2, unmasked).
    conn, _ = make(pair[0])
    data = bytes(random.choices(b"abc{}", k=size))
    entry = (data[: size // 2], data[size // 2 :]) if split else (data, None)
    framed, eof, ok = conn._frame([entry, (b"after", None)])
    expected = Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])
    after = Frame(Opcode.TEXT, b"after").serialize(mask=False, extensions=[])
    assert framed == expected + after
    assert (eof, ok) == (False, True)


def test_a_pong_the_protocol_queued_goes_out_before_later_frames(
    pair: tuple[gsocket.socket, gsocket.socket],
) -> None:
    conn, _ = make(pair[0])
    conn.protocol.send_pong(b"p")  # as the reader does when a ping arrives
    framed, eof, _ = conn._frame([(b"later", None), (b"", None)])
    pong = Frame(Opcode.PONG, b"p").serialize(mask=False, extensions=[])
    later = Frame(Opcode.TEXT, b"later").serialize(mask=False, extensions=[])
    empty = Frame(Opcode.TEXT, b"").serialize(mask=False, extensions=[])
    assert framed == pong + later + empty
    assert not eof  # an empty last text is not the end of the stream


def test_a_close_due_after_the_batch_is_framed_after_it(
    pair: tuple[gsocket.socket, gsocket.socket],
) -> None:
    conn, _ = make(pair[0])
    assert conn.outbox.put_control(b"last")
    conn.close(1001, "bye")
    batch = conn.outbox.take(10, 1 << 20, wait=False)
    assert batch is not None
    framed, eof, ok = conn._frame(batch)
    last = Frame(Opcode.TEXT, b"last").serialize(mask=False, extensions=[])
    assert framed.startswith(last)
    assert framed[len(last) :] == Frame(Opcode.CLOSE, b"\x03\xe9bye").serialize(
        mask=False, extensions=[]
    )
    assert (eof, ok) == (False, True)
