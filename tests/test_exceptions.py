"""greenbus.exceptions: structured attributes, and messages built from them."""

from __future__ import annotations

import pickle

import greenbus
from greenbus import (
    ClientClosed,
    HubClosed,
    MessageTooBig,
    RemoteError,
    SlowConsumer,
)


def test_message_too_big_carries_the_size_and_the_limit_and_is_a_value_error() -> None:
    exc = MessageTooBig(2_000_000, 1 << 20)
    assert (exc.size, exc.limit) == (2_000_000, 1 << 20)
    assert str(exc) == "message of 2000000 bytes exceeds the limit of 1048576 bytes"
    assert isinstance(exc, ValueError)


def test_client_closed_is_bus_closed_and_says_its_cause() -> None:
    cause = RemoteError("unauthorized", "missing or wrong token", "hello")
    exc = ClientClosed("client-1", cause)
    assert isinstance(exc, greenbus.BusClosed)
    assert exc.cause is cause
    assert str(exc) == "client-1 is closed: hub error unauthorized: missing or wrong token"
    assert str(ClientClosed("client-1")) == "client-1 is closed"


def test_remote_error_is_fatal_only_for_unauthorized() -> None:
    assert RemoteError("unauthorized", "x").fatal
    assert not RemoteError("forbidden", "x").fatal
    assert RemoteError("forbidden", "x", id=7).id == 7


def test_hub_closed_is_fatal_for_the_codes_retrying_cannot_fix() -> None:
    assert {code for code in range(1000, 1016) if HubClosed(code, "").fatal} == {
        1002,
        1003,
        1007,
        1008,
    }
    assert str(HubClosed(1009, "")) == "the hub closed the connection with 1009: no reason"


def test_slow_consumer_pickles_with_its_attributes() -> None:
    exc = pickle.loads(pickle.dumps(SlowConsumer("a.>", 10, "drop_oldest", 3)))
    assert (exc.pattern, exc.maxsize, exc.overflow, exc.dropped) == ("a.>", 10, "drop_oldest", 3)
