"""Arrivals: which federation envelopes are new; repeats dropped, gaps counted (pure)."""

from __future__ import annotations

import logging

import pytest

from greenbus.federation.arrivals import MAX_TRACKED, Arrivals
from greenbus.federation.envelope import Envelope


def numbered(origin: str, seq: int, topic: str = "t") -> Envelope:
    return Envelope(origin=origin, seq=seq, ts=0.0, topic=topic)


def positioned(seq: int, prev: int, topic: str = "t") -> Envelope:
    return Envelope(origin="any", seq=0, ts=0.0, topic=topic, pos=f"ab12:{seq}:1000", prev=prev)


def test_without_history_repeats_per_origin_and_topic_are_dropped_and_counted() -> None:
    arrivals = Arrivals("n1")
    verdicts = [
        arrivals.is_new(e)
        for e in (
            numbered("a", 1),
            numbered("a", 2),
            numbered("a", 2),  # a second Redis subscription matched it
            numbered("b", 1),  # another origin counts on its own
            numbered("a", 1, topic="u"),  # and so does another topic
            numbered("a", 1),  # an old one, sent again after a reconnect
            numbered("a", 3),
        )
    ]
    assert verdicts == [True, True, False, True, True, False, True]
    assert (arrivals.duplicates, arrivals.gaps) == (2, 0)


def test_without_history_a_jump_counts_each_missing_message_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    arrivals = Arrivals("n1")
    with caplog.at_level(logging.WARNING, logger="greenbus.federation"):
        assert arrivals.is_new(numbered("a", 1))
        assert arrivals.is_new(numbered("a", 5))
    assert arrivals.gaps == 3
    assert "3 message(s) from a on 't' lost" in caplog.text


def test_with_history_repeats_are_dropped_whoever_published_and_a_missed_predecessor_is_a_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    arrivals = Arrivals("n1")
    with caplog.at_level(logging.WARNING, logger="greenbus.federation"):
        assert arrivals.is_new(positioned(10, prev=0))
        assert arrivals.is_new(positioned(14, prev=10))  # 11..13 were other topics
        assert not arrivals.is_new(positioned(14, prev=10))
        assert not arrivals.is_new(positioned(10, prev=0))
        assert arrivals.gaps == 0
        assert arrivals.is_new(positioned(20, prev=17))  # 17 never came
    assert (arrivals.duplicates, arrivals.gaps) == (2, 1)
    assert "some message(s) from the history on 't' lost" in caplog.text


def test_the_tables_are_bounded_and_a_cleared_table_only_ever_admits_repeats() -> None:
    arrivals = Arrivals("n1")
    for n in range(MAX_TRACKED + 2):
        assert arrivals.is_new(numbered("a", 1, topic=f"t{n}"))
    # Cleared when full: an old repeat is taken for new (never a new one for a repeat).
    assert arrivals.is_new(numbered("a", 1, topic="t0"))
    assert arrivals.duplicates == 0
