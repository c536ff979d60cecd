"""greenbus.bridge.resume: what the Python client keeps to resume after a cut."""

from __future__ import annotations

import logging

import pytest

from greenbus import RecoveryFailed
from greenbus.bridge.resume import Positions, Unconfirmed


def filled(limit: int = 10, count: int = 5) -> Unconfirmed:
    pubs = Unconfirmed(limit, "c1")
    for _ in range(count):
        number = pubs.number()
        pubs.add(number, b"pub %d" % number)
    return pubs


def test_pubs_are_numbered_from_one_and_an_ack_confirms_every_one_up_to_it() -> None:
    pubs = filled()
    assert pubs.confirm(3) == 3
    assert pubs.resend()[0] == [b"pub 4", b"pub 5"]
    assert pubs.confirm(3) == 0  # an ack seen again changes nothing
    assert pubs.number() == 6


def test_a_new_connection_gets_every_unconfirmed_pub_and_counts_those_sent_before() -> None:
    pubs = filled(count=3)
    pubs.handed(2)  # 1 and 2 went to the first connection, 3 was still waiting
    frames, again = pubs.resend()
    assert (frames, again) == ([b"pub 1", b"pub 2", b"pub 3"], 2)
    assert pubs.resend()[1] == 3  # all three went to the second one


def test_a_refused_or_withdrawn_pub_is_never_sent_again() -> None:
    pubs = filled(count=3)
    assert pubs.refuse(2)
    frame = pubs.resend()[0][0]
    assert pubs.withdraw(frame) and not pubs.withdraw(frame)
    assert (pubs.resend()[0], pubs.withdrawn) == ([b"pub 3"], 1)


def test_while_disconnected_at_most_the_limit_wait_the_oldest_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "greenbus.bridge.client")
    pubs = filled(limit=2, count=5)
    assert pubs.trim() == 3
    assert (pubs.resend()[0], pubs.dropped) == ([b"pub 4", b"pub 5"], 3)
    (warning,) = [r for r in caplog.records if r.name == "greenbus.bridge.client"]
    assert "max_buffer" in warning.getMessage()


def test_a_first_subscription_asks_for_nothing_and_starts_at_its_acks_position() -> None:
    positions = Positions()
    assert positions.since(1, "t") is None
    assert positions.acked(1, "t", "e:5:1", None).failure is None
    assert positions.get(1) == "e:5:1"
    positions.received(1, "e:9:2")
    assert positions.since(1, "t") == "e:9:2"


def test_a_replayed_resume_keeps_the_position_of_the_last_message_received() -> None:
    positions = Positions()
    positions.since(1, "t")
    positions.acked(1, "t", "e:5:1", None)
    positions.since(1, "t")
    outcome = positions.acked(1, "t", "e:20:3", True)
    assert outcome.recovered and outcome.failure is None
    # The replay follows the ack: a cut before it ends resumes from here.
    assert positions.get(1) == "e:5:1"


@pytest.mark.parametrize(
    ("first_pos", "recovered", "reason"),
    [
        ("e:5:1", False, "does not cover the gap"),
        (None, None, "kept no history"),
    ],
)
def test_a_resume_that_was_not_replayed_is_a_failure_to_report(
    first_pos: str | None, recovered: bool | None, reason: str
) -> None:
    positions = Positions()
    positions.since(1, "chat.>")
    positions.acked(1, "chat.>", first_pos, None)
    since = positions.since(1, "chat.>")
    failure = positions.acked(1, "chat.>", "f:1:9" if first_pos else None, recovered).failure
    assert isinstance(failure, RecoveryFailed)
    assert (failure.pattern, failure.since) == ("chat.>", since)
    assert reason in failure.reason


def test_inboxes_and_dollar_topics_never_resume_and_never_report() -> None:
    positions = Positions()
    for pattern in ("_INBOX.4f2a", "$greenbus.stats"):
        positions.since(1, pattern)
        positions.acked(1, pattern, None, None)
        assert positions.since(1, pattern) is None
        assert positions.acked(1, pattern, None, None).failure is None


def test_lost_positions_start_afresh_and_say_why() -> None:
    positions = Positions()
    positions.since(1, "t")
    positions.acked(1, "t", "e:5:1", None)
    positions.lose("a message was too big")
    assert positions.since(1, "t") is None
    failure = positions.acked(1, "t", "e:7:1", None).failure
    assert failure is not None and failure.reason == "a message was too big"
    positions.since(1, "t")
    assert positions.acked(1, "t", "e:7:1", True).failure is None
