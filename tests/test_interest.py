"""Interest: counted patterns, and listeners told of the first holder and the last (pure)."""

from __future__ import annotations

import logging

import pytest

from greenbus.interest import Interest


def recorder(interest: Interest) -> list[tuple[str, bool]]:
    heard: list[tuple[str, bool]] = []
    interest.add_listener(lambda pattern, present: heard.append((pattern, present)))
    return heard


def test_listeners_hear_of_a_pattern_s_first_holder_and_its_last_only() -> None:
    interest = Interest("node")
    heard = recorder(interest)
    interest.hold("chat.>")
    interest.hold("chat.>")
    interest.hold("orders.*")
    assert heard == [("chat.>", True), ("orders.*", True)]
    assert interest.patterns() == ["chat.>", "orders.*"]
    interest.release("chat.>")
    assert heard == [("chat.>", True), ("orders.*", True)]  # one holder left
    interest.release("chat.>")
    assert heard[-1] == ("chat.>", False)
    assert interest.patterns() == ["orders.*"]


def test_releasing_a_pattern_nobody_holds_changes_nothing() -> None:
    interest = Interest("node")
    heard = recorder(interest)
    interest.release("chat.>")
    interest.hold("chat.>")
    interest.release("chat.>")
    interest.release("chat.>")
    assert heard == [("chat.>", True), ("chat.>", False)]
    assert interest.patterns() == []
    interest.hold("chat.>")  # counted from zero again, not from -1
    assert heard[-1] == ("chat.>", True)


def test_a_removed_listener_hears_nothing_more_and_removing_twice_is_harmless() -> None:
    interest = Interest("node")
    heard: list[tuple[str, bool]] = []

    def listener(pattern: str, present: bool) -> None:
        heard.append((pattern, present))

    interest.add_listener(listener)
    interest.hold("a")
    interest.remove_listener(listener)
    interest.remove_listener(listener)
    interest.release("a")
    assert heard == [("a", True)]


def test_a_failing_listener_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    interest = Interest("node")

    def broken(pattern: str, present: bool) -> None:
        raise RuntimeError("boom")

    interest.add_listener(broken)
    heard = recorder(interest)
    with caplog.at_level(logging.ERROR, logger="greenbus.bus"):
        interest.hold("a")
    assert heard == [("a", True)]
    assert interest.patterns() == ["a"]
    assert "interest listener" in caplog.text and "boom" in caplog.text
