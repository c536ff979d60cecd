"""greenbus.history: what a hub keeps for recovery, and what it can replay."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenbus import InvalidOption
from greenbus.history import History, Position, Publishers
from greenbus.topics import pattern_matches


class Clock:
    """Seconds since the Unix epoch, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def record(history: History[Any], topic: str, n: Any) -> Position | None:
    seq = history.record(topic, (topic, n))
    return Position.parse(history.position_text(seq)) if seq else None


def made(size: int = 100, ttl: float = 60, topics: int = 1000) -> tuple[History[Any], Clock]:
    clock = Clock()
    return History(size, ttl, max_topics=topics, epoch="e1", clock=clock), clock


def data(replayed: list[Any] | None) -> list[Any]:
    assert replayed is not None, "the history said it cannot cover the gap"
    return [r.value for r in replayed]


def test_every_message_gets_the_next_position_whatever_its_topic() -> None:
    history, clock = made()
    first = record(history, "a", 1)
    clock.now += 0.5
    second = record(history, "b", 2)
    assert first == Position("e1", 1, 1_700_000_000_000)
    assert second == Position("e1", 2, 1_700_000_000_500)
    assert history.head() == second


def test_a_position_round_trips_through_its_text_and_malformed_text_is_refused() -> None:
    position = Position("9fa3", 42, 1_700_000_000_123)
    assert str(position) == "9fa3:42:1700000000123"
    assert Position.parse(str(position)) == position
    for bad in ["", "9fa3:42", "9fa3:-1:5", "XYZ:1:2", "9fa3:01:2", 42, None, "a:1:2:3"]:
        with pytest.raises(ValueError):
            Position.parse(bad)


def test_a_replay_gives_every_matching_message_after_the_position_in_order() -> None:
    history, _ = made()
    record(history, "chat.a", 0)
    since = history.head()
    for n, topic in enumerate(["chat.a", "news.x", "chat.b", "chat.a", "chat.new"], 1):
        record(history, topic, n)
    assert data(history.replay("chat.>", since)) == [
        ("chat.a", 1),
        ("chat.b", 3),
        ("chat.a", 4),
        ("chat.new", 5),  # a topic first seen after the position
    ]
    assert data(history.replay("news.x", since)) == [("news.x", 2)]
    assert data(history.replay("chat.a", history.head())) == []


def test_the_head_at_subscription_time_recovers_before_any_message_arrived() -> None:
    history, _ = made()
    start = history.head()  # what a sub's ack carries
    record(history, "t", "missed")
    assert data(history.replay("t", start)) == [("t", "missed")]


def test_a_gap_trimmed_by_size_is_refused_not_replayed_in_part() -> None:
    history, _ = made(size=3)
    since = history.head()
    for n in range(5):
        record(history, "t", n)
    assert history.replay("t", since) is None
    assert data(history.replay("t", Position("e1", 2, since.ms))) == [("t", 2), ("t", 3), ("t", 4)]


def test_a_busy_topic_trimming_itself_does_not_refuse_another_topics_replay() -> None:
    history, _ = made(size=2)
    record(history, "quiet", 0)
    since = history.head()
    record(history, "quiet", 1)
    for n in range(10):
        record(history, "busy", n)
    assert data(history.replay("quiet", since)) == [("quiet", 1)]
    assert history.replay(">", since) is None  # busy lost messages after it


def test_a_position_whose_messages_expired_or_of_another_epoch_or_the_future_is_refused() -> None:
    history, clock = made(ttl=10)
    since = history.head()
    record(history, "t", 1)
    assert history.replay("t", Position("other", since.seq, since.ms)) is None
    assert history.replay("t", Position("e1", 99, since.ms)) is None
    clock.now += 11
    assert history.replay("t", since) is None
    stats = history.statistics()
    assert (stats.replays, stats.replays_refused) == (3, 3)


def test_messages_older_than_ttl_are_dropped_and_their_topics_remembered() -> None:
    history, clock = made(ttl=10)
    record(history, "old", 1)
    clock.now += 5
    record(history, "new", 2)
    clock.now += 6
    assert history.sweep() == 1
    stats = history.statistics()
    assert (stats.messages, stats.topics, stats.recorded, stats.trimmed) == (1, 1, 2, 1)
    assert stats.remembered_topics == 2


def test_dollar_topics_and_inboxes_are_never_kept_and_a_replay_of_them_is_refused() -> None:
    history, _ = made()
    assert record(history, "$greenbus.stats", {}) is None
    assert record(history, "_INBOX.4f2a", "reply") is None
    assert history.head().seq == 0
    assert history.statistics().messages == 0
    # recovered: true would be a lie about what was never kept.
    assert history.replay("$greenbus.stats", history.head()) is None
    assert history.replay("_INBOX.4f2a", history.head()) is None


def test_a_quiet_topic_recovers_long_after_ttl_when_nothing_was_lost() -> None:
    history, clock = made(ttl=10)
    record(history, "quiet", 0)
    since = history.head()
    for n in range(5):
        record(history, "busy", n)
        clock.now += 30
    # Nothing was published on "quiet" after `since`: nothing is missing.
    assert data(history.replay("quiet", since)) == []
    assert data(history.replay("qu*", since)) == []
    # "busy" dropped messages published after it: a replay covering it is refused.
    assert history.replay(">", since) is None


def test_forgetting_a_topic_moves_the_horizon_past_its_last_message() -> None:
    history, _ = made(topics=2)
    before = history.head()
    record(history, "a", 1)
    after_a = history.head()
    record(history, "b", 2)
    record(history, "c", 3)  # "a", the least recently published, is forgotten
    stats = history.statistics()
    assert (stats.remembered_topics, stats.forgotten_topics, stats.messages) == (2, 1, 2)
    assert history.replay("b", before) is None  # "a" may have matched: cannot vouch
    assert data(history.replay(">", after_a)) == [("b", 2), ("c", 3)]


def test_memory_is_bounded_by_size_per_topic_and_by_ttl() -> None:
    history, clock = made(size=5, ttl=10, topics=50)
    for n in range(10_000):
        record(history, f"t.{n % 20}", n)
        clock.now += 0.001
    stats = history.statistics()
    assert stats.messages == 20 * 5
    assert stats.trimmed == 10_000 - 100
    clock.now += 11
    record(history, "t.0", "last")
    assert history.statistics().messages == 1  # the rest expired
    for n in range(200):
        record(history, f"many.{n}", n)
    assert history.statistics().remembered_topics == 50


def test_positions_never_go_back_in_time_when_the_clock_does() -> None:
    history, clock = made()
    first = record(history, "t", 1)
    clock.now -= 30
    second = record(history, "t", 2)
    assert second is not None and first is not None and second.ms == first.ms


@pytest.mark.parametrize(("size", "ttl"), [(0, 10), (-1, 10), (10, 0), (10, float("nan"))])
def test_bad_sizes_and_ttls_are_refused(size: int, ttl: float) -> None:
    with pytest.raises(InvalidOption):
        History(size, ttl)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["a.x", "a.y", "b.x", "a.x.deep"]), max_size=40),
    st.integers(1, 6),
    st.integers(0, 40),
    st.sampled_from(["a.*", "a.>", ">", "b.x", "*.x"]),
)
def test_a_replay_is_all_or_nothing_against_a_model_that_keeps_everything(
    topics: list[str], size: int, cut: int, pattern: str
) -> None:
    # The model keeps every message; the history keeps `size` per topic.
    # Whenever the history answers, it answers exactly what the model does.
    history, _ = made(size=size)
    model: list[tuple[int, str]] = []
    since = history.head()
    for n, topic in enumerate(topics):
        if n == cut:
            since = history.head()
        record(history, topic, n)
        model.append((n, topic))
    if cut >= len(topics):
        since = history.head()
    after = [(t, n) for n, t in model[cut:] if pattern_matches(pattern, t)]
    # A topic lost a message after the cut when more than `size` came after it.
    lost = any(sum(1 for t, _ in after if t == topic) > size for topic, _ in after)
    replayed = history.replay(pattern, since)
    if lost:
        assert replayed is None
    else:
        assert data(replayed) == after


class Monotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_resent_pub_is_recognised_until_its_session_is_forgotten() -> None:
    clock = Monotonic()
    publishers = Publishers(ttl=10, max_sessions=2, clock=clock)
    assert [publishers.seen("s1", n) for n in (1, 2, 3)] == [False, False, False]
    # The connection dropped before acks 2 and 3 arrived: both come again.
    assert [publishers.seen("s1", n) for n in (2, 3, 4)] == [True, True, False]
    assert publishers.duplicates == 2
    clock.now += 11  # past the window: the session is new again
    assert publishers.seen("s1", 4) is False
    publishers.seen("s2", 1)
    publishers.seen("s3", 1)  # s1, idle longest, is forgotten
    assert len(publishers) == 2
    assert publishers.seen("s1", 4) is False
