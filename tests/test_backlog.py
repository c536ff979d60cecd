"""greenbus.bridge.backlog: the client's publishes waiting for a connection."""

from __future__ import annotations

import pytest

from greenbus.bridge.backlog import Backlog


def test_past_its_limit_the_oldest_frame_is_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backlog = Backlog(3, "c1")
    with caplog.at_level("WARNING", logger="greenbus.bridge.client"):
        for n in range(5):
            backlog.append(b"%d" % n)
    assert backlog.take_all() == [b"2", b"3", b"4"]
    assert backlog.dropped == 2
    assert "c1: disconnected and the backlog is full (3)" in caplog.text


def test_requeued_frames_go_back_in_front_in_their_order() -> None:
    backlog = Backlog(10, "c1")
    backlog.append(b"new")
    backlog.requeue([b"old1", b"old2"])
    assert backlog.take_all() == [b"old1", b"old2", b"new"]
    assert len(backlog) == 0


def test_withdraw_takes_back_that_very_frame_and_counts_it() -> None:
    backlog = Backlog(10, "c1")
    first, twin = b"same", bytes(bytearray(b"same"))  # equal, not the same object
    assert first == twin and first is not twin
    backlog.append(first)
    backlog.append(twin)
    assert backlog.withdraw(twin)
    assert not backlog.withdraw(b"never queued")
    assert backlog.take_all() == [b"same"]
    assert backlog.withdrawn == 1
