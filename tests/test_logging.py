"""greenbus._logging: log lines a flood cannot multiply."""

from __future__ import annotations

import logging

import pytest

from greenbus._logging import LogLimiter


def test_a_burst_goes_through_then_the_rate_and_the_next_line_says_what_was_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("test.limiter"), rate=2, burst=3, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="test.limiter"):
        passed = [limiter.log(logging.INFO, "event %d", n) for n in range(10)]
        now[0] += 1.0  # two more lines' worth of tokens
        passed += [limiter.log(logging.INFO, "event %d", n) for n in range(10, 13)]
    assert passed == [True] * 3 + [False] * 7 + [True, True, False]
    assert [r.getMessage() for r in caplog.records] == [
        "event 0",
        "event 1",
        "event 2",
        "event 10 (7 similar line(s) held back)",
        "event 11",
    ]
    assert limiter.held_back == 1


def test_a_disabled_level_is_neither_logged_nor_counted() -> None:
    logger = logging.getLogger("test.limiter.quiet")
    logger.setLevel(logging.ERROR)
    limiter = LogLimiter(logger, burst=1)
    assert not limiter.log(logging.INFO, "nothing")
    assert limiter.held_back == 0
