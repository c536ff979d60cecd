"""The outbox alone: limits, policies and accounting, without a socket."""

from __future__ import annotations

import gevent
import pytest
from waiting import wait_until

from greenbus import EndOfChannel, InvalidOption
from greenbus.bridge.metrics import HubCounters
from greenbus.bridge.outbox import Entry, Outbox, OutboxLimits, OutboxState, SlowPolicy


def bounded(
    max_frames: int | None = None,
    max_bytes: int | None = None,
    policy: str = "close",
    **options: object,
) -> tuple[Outbox, list[str]]:
    """An outbox with these limits, and the reasons its on_slow was called with."""
    reasons: list[str] = []
    outbox = Outbox(
        OutboxLimits(max_frames, max_bytes, SlowPolicy(policy)),
        on_slow=reasons.append,
        **options,  # type: ignore[arg-type]
    )
    return outbox, reasons


def message(n: int, size: int = 10) -> tuple[bytes, bytes]:
    body = f"{n:0{size}d}".encode()
    return b"m", body


def drain(outbox: Outbox) -> list[bytes]:
    """Take and 'write' everything queued; the frames' bytes, in order."""
    out = []
    while outbox.pending_frames:
        batch = outbox.take(1000, 1 << 30)
        assert batch is not None
        out.extend(head if body is None else head + body for head, body in batch)
        outbox.done(True)
    return out


def test_control_frames_count_toward_the_frame_limit_and_a_flood_of_them_is_a_slow_consumer() -> (
    None
):
    outbox, reasons = bounded(max_frames=3)
    assert all(outbox.put_control(b'{"op":"pong"}') for _ in range(3))
    assert not outbox.put_control(b'{"op":"pong"}')
    assert reasons == ["more than 3 frames pending"]
    assert outbox.state is OutboxState.SLOW
    assert outbox.pending_frames == 3  # the answers already queued stay


def test_control_frames_count_toward_the_byte_limit() -> None:
    outbox, reasons = bounded(max_bytes=100)
    assert outbox.put_control(b"x" * 60)
    assert not outbox.put_control(b"y" * 60)
    assert reasons == ["more than 100 bytes pending"]


def test_under_close_a_message_over_the_limit_turns_it_slow_and_drops_the_queued_messages() -> None:
    counters = HubCounters()
    outbox, reasons = bounded(max_frames=3, counters=counters)
    assert outbox.put_message(*message(1))
    assert outbox.put_control(b"ack")
    assert outbox.put_message(*message(2))
    assert not outbox.put_message(*message(3))
    assert reasons == ["more than 3 frames pending"]
    # The two queued and the refused one: never written, all counted.
    assert outbox.dropped == counters.dropped == 3
    assert drain(outbox) == [b"ack"]


def test_while_slow_messages_are_refused_and_counted_but_control_frames_still_go_in() -> None:
    outbox, reasons = bounded(max_frames=1)
    assert outbox.put_control(b"first")
    assert not outbox.put_message(*message(1))
    assert outbox.put_control(b"error slow_consumer")  # the owner's explanation
    assert not outbox.put_message(*message(2))
    assert outbox.dropped == 2
    assert len(reasons) == 1  # reported once
    assert drain(outbox) == [b"first", b"error slow_consumer"]


def test_drop_oldest_drops_the_oldest_messages_never_a_control_frame() -> None:
    outbox, reasons = bounded(max_frames=3, policy="drop_oldest")
    outbox.put_message(*message(1))
    outbox.put_control(b"ack")
    outbox.put_message(*message(2))
    for n in (3, 4):
        assert outbox.put_message(*message(n))
    assert reasons == []
    assert outbox.dropped == 2
    assert drain(outbox) == [b"ack", b"m" + message(3)[1], b"m" + message(4)[1]]


def test_drop_oldest_makes_room_for_a_control_frame_by_dropping_a_message() -> None:
    outbox, reasons = bounded(max_frames=2, policy="drop_oldest")
    outbox.put_message(*message(1))
    outbox.put_message(*message(2))
    assert outbox.put_control(b"pong")
    assert outbox.dropped == 1
    assert drain(outbox) == [b"m" + message(2)[1], b"pong"]
    assert reasons == []


def test_drop_oldest_with_nothing_but_answers_queued_is_a_slow_consumer() -> None:
    outbox, reasons = bounded(max_frames=2, policy="drop_oldest")
    assert outbox.put_control(b"pong 1")
    assert outbox.put_control(b"pong 2")
    assert not outbox.put_control(b"pong 3")
    assert reasons == ["more than 2 frames pending"]


def test_drop_oldest_keeps_the_byte_limit() -> None:
    outbox, _ = bounded(max_bytes=100, policy="drop_oldest")
    for n in range(50):
        assert outbox.put_message(*message(n, size=20))
        assert outbox.pending_bytes <= 100
    assert outbox.dropped == 50 - 4  # 21 bytes each: four fit


def test_one_frame_alone_may_exceed_the_byte_limit_or_it_could_never_be_sent() -> None:
    outbox, reasons = bounded(max_bytes=10)
    assert outbox.put_message(b"m", b"x" * 100)
    assert not outbox.put_message(b"m", b"y")
    assert reasons == ["more than 10 bytes pending"]


def test_frames_in_the_writers_hands_stay_pending_until_written() -> None:
    outbox, reasons = bounded(max_frames=2)
    outbox.put_message(*message(1))
    outbox.put_message(*message(2))
    batch = outbox.take(10, 1 << 20)
    assert len(batch) == 2
    assert outbox.pending_frames == 2
    assert not outbox.put_message(*message(3))  # still over: they are not written yet
    assert reasons


def test_a_written_batch_frees_its_room_and_counts_as_written() -> None:
    counters = HubCounters()
    outbox, _ = bounded(max_frames=2, counters=counters)
    outbox.put_message(*message(1))
    outbox.put_control(b"ack")
    outbox.take(10, 1 << 20)
    outbox.done(True)
    assert outbox.pending_frames == outbox.pending_bytes == 0
    assert outbox.written_frames == 2
    assert outbox.written_messages == counters.messages_out == 1
    assert outbox.put_message(*message(2))


def test_a_batch_whose_write_failed_counts_its_messages_as_dropped() -> None:
    outbox, _ = bounded()
    outbox.put_message(*message(1))
    outbox.put_control(b"ack")
    outbox.put_message(*message(2))
    outbox.take(10, 1 << 20)
    outbox.done(False)
    assert outbox.dropped == 2
    assert outbox.written_frames == 0


def test_take_stops_at_the_byte_bound_after_at_least_one_frame() -> None:
    outbox, _ = bounded()
    for _ in range(5):
        outbox.put_message(b"m", b"x" * 100)
    assert len(outbox.take(10, 250)) == 3  # 101 + 101 + 101 >= 250
    outbox.done(True)
    assert len(outbox.take(10, 1)) == 1


def test_frames_the_protocol_holds_outside_the_queue_count_toward_the_limits() -> None:
    outbox, reasons = bounded(max_frames=10)
    outbox.put_control(b"ack")
    assert outbox.note_unqueued(5, 50)
    assert outbox.pending_frames == 6
    assert not outbox.note_unqueued(10, 100)
    assert reasons == ["more than 10 frames pending"]


def test_after_a_close_request_nothing_is_taken_and_refused_messages_are_counted() -> None:
    outbox, _ = bounded()
    outbox.put_message(*message(1))
    assert outbox.request_close(1000, "bye")
    assert not outbox.request_close(1001, "again")
    assert not outbox.put_message(*message(2))
    assert not outbox.put_control(b"ack")
    assert outbox.dropped == 1
    assert outbox.close_due() is None  # the queued message goes first
    assert outbox.take(10, 1 << 20) == [message(1)]
    assert outbox.close_due() == (1000, "bye")
    assert outbox.close_due() is None  # due once: the writer sent it


def test_close_returns_what_the_writer_never_took_and_refuses_the_rest() -> None:
    outbox, _ = bounded()
    outbox.put_message(*message(1))
    outbox.put_control(b"ack")
    taken = outbox.take(1, 1 << 20)
    outbox.put_message(*message(2))
    assert outbox.close() == [(b"ack", None), message(2)]
    assert outbox.close() == []
    assert not outbox.put_message(*message(3))
    assert outbox.pending_frames == 1  # the batch in flight
    assert taken == [message(1)]
    with pytest.raises(EndOfChannel):
        outbox.take(10, 1 << 20)


def run_writer(outbox: Outbox) -> tuple[gevent.Greenlet, list[list[Entry]]]:
    """A writer greenlet: takes batches (and 'writes' them) until take() says to end."""
    batches: list[list[Entry]] = []

    def write() -> None:
        while (batch := outbox.take(10, 1 << 20)) is not None:
            batches.append(batch)
            outbox.done(True)

    return gevent.spawn(write), batches


def test_a_writer_is_started_when_work_arrives_and_parks_between_bursts() -> None:
    # The hook starts a writer when there is none; between bursts it parks
    # in take() and the next frame wakes it (no new greenlet per burst).
    outbox, _ = bounded()
    starts: list[str] = []
    outbox.put_control(b"early")  # before a writer is bound: only queued
    assert starts == []
    outbox.bind_writer(lambda: starts.append("writer"))
    assert starts == ["writer"]  # bound with work waiting: started at once
    outbox.put_message(*message(1))
    assert starts == ["writer"]  # one is due: the burst shares it
    writer, batches = run_writer(outbox)
    wait_until(lambda: batches == [[(b"early", None), message(1)]], 5, "the first burst")
    outbox.put_message(*message(2))
    wait_until(lambda: len(batches) == 2, 5, "the parked writer to take the next one")
    assert batches[1] == [message(2)]
    assert starts == ["writer"]
    assert not writer.dead


def test_a_parked_writer_let_go_ends_and_the_next_frame_starts_another() -> None:
    outbox, _ = bounded()
    starts: list[str] = []
    outbox.bind_writer(lambda: starts.append("writer"))
    outbox.put_control(b"hello")
    writer, batches = run_writer(outbox)
    wait_until(lambda: batches, 5, "the writer to take the frame")
    gevent.get_hub().loop.run_callback(outbox.release_writer)  # as the hub's sweep does
    writer.join(5)
    assert writer.dead
    assert outbox.take(10, 1 << 20) is None  # no writer: take() never parks
    outbox.put_message(*message(1))
    assert starts == ["writer"] * 2


def test_a_flush_or_a_close_request_starts_a_writer_with_an_empty_batch() -> None:
    outbox, _ = bounded()
    starts: list[str] = []
    outbox.bind_writer(lambda: starts.append("writer"))
    assert outbox.take(10, 1 << 20) is None
    outbox.request_flush()
    assert starts == ["writer"]
    assert outbox.take(10, 1 << 20) == []
    outbox.done(True)
    outbox.request_close(1000, "bye")
    assert outbox.take(10, 1 << 20) == []
    assert outbox.close_due() == (1000, "bye")


def test_closing_wakes_a_parked_writer_with_end_of_channel_and_starts_none() -> None:
    outbox, _ = bounded()
    starts: list[str] = []
    outbox.bind_writer(lambda: starts.append("writer"))
    outbox.put_control(b"hello")
    writer, batches = run_writer(outbox)
    wait_until(lambda: batches, 5, "the writer to take the frame")
    outbox.close()
    with pytest.raises(EndOfChannel):
        writer.get(timeout=5)
    outbox.request_flush()
    assert not outbox.put_control(b"late")
    assert starts == ["writer"]


def test_without_an_on_slow_hook_a_slow_outbox_requests_a_1013_close_itself() -> None:
    outbox = Outbox(OutboxLimits(max_frames=1))
    outbox.put_control(b"a")
    assert not outbox.put_control(b"b")
    assert outbox.state is OutboxState.CLOSING
    outbox.take(10, 1 << 20)
    assert outbox.close_due() == (1013, "slow consumer")


def test_the_episode_of_drops_is_logged_once_until_the_queue_drains_to_half(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox, _ = bounded(max_frames=4, policy="drop_oldest", name="p9")
    with caplog.at_level("WARNING", logger="greenbus.bridge.outbox"):
        for n in range(20):
            outbox.put_message(*message(n))
        drain(outbox)
        for n in range(20):
            outbox.put_message(*message(n))
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "p9: slow consumer, dropping the oldest messages (1 dropped so far)",
        "p9: slow consumer, dropping the oldest messages (17 dropped so far)",
    ]


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"max_frames": 0}, "max_frames"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"max_frames": 1.5}, "max_frames"),
        ({"max_frames": True}, "max_frames"),
        ({"policy": "block"}, "slow_policy"),
    ],
)
def test_bad_limits_are_refused_up_front_with_invalid_option(
    options: dict[str, object], name: str
) -> None:
    with pytest.raises(InvalidOption) as caught:
        OutboxLimits(**options)  # type: ignore[arg-type]
    assert caught.value.name == name


def test_every_put_counts_its_frame_bytes_and_the_high_water_mark() -> None:
    # put_message does its own accounting and writer wake-up (inlined for
    # speed): it must count exactly as put_control does.
    outbox, _ = bounded()
    starts: list[str] = []
    outbox.bind_writer(lambda: starts.append("writer"))
    assert outbox.put_message(b"ab", b"cde")
    assert outbox.put_control(b"xyz")
    assert outbox.put_message(b"a", b"b")
    assert starts == ["writer"]  # one writer for the whole burst
    assert (outbox.pending_frames, outbox.pending_bytes, outbox.high_water) == (3, 10, 3)
    assert drain(outbox) == [b"abcde", b"xyz", b"ab"]
    assert outbox.put_message(b"a", b"b")
    assert (outbox.pending_frames, outbox.pending_bytes, outbox.high_water) == (1, 2, 3)
    assert (outbox.written_frames, outbox.written_messages) == (3, 2)


def test_a_message_put_while_the_writer_is_parked_wakes_it_once_per_burst() -> None:
    outbox, _ = bounded()
    outbox.bind_writer(lambda: None)
    outbox.put_control(b"hello")
    writer, batches = run_writer(outbox)
    wait_until(lambda: outbox._waiter is not None, 5, "the writer to park")
    for n in range(3):
        assert outbox.put_message(*message(n))
    wait_until(lambda: len(batches) == 2, 5, "the writer to take the burst")
    assert batches[1] == [message(0), message(1), message(2)]  # one wake, one batch
    gevent.get_hub().loop.run_callback(outbox.release_writer)
    writer.join(5)
    assert writer.dead
