"""greenbus.message: the message every subscriber receives, and its reply()."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from greenbus import (
    Message,
    NoReplyTo,
)

# -- Message -------------------------------------------------------------------


def test_a_message_carries_its_topic_data_headers_and_reply_to(bus):
    sub = bus.subscribe("a.*")
    payload = {"k": [1, 2]}

    bus.emit("a.b", payload, headers={"h": 1}, reply_to="inbox.1")

    msg = sub.get(timeout=5)
    assert isinstance(msg, Message)
    assert msg.topic == "a.b"
    assert msg.data is payload
    assert dict(msg.headers) == {"h": 1}
    assert msg.reply_to == "inbox.1"


def test_message_headers_are_an_empty_mapping_when_none_were_given(bus):
    sub = bus.subscribe("a")
    bus.emit("a", 1)
    bus.emit("a", 2, headers={})

    for msg in (sub.get(timeout=5), sub.get(timeout=5)):
        assert isinstance(msg.headers, Mapping)
        assert dict(msg.headers) == {}
        assert msg.reply_to is None


def test_message_headers_are_read_only(bus):
    sub = bus.subscribe("a")
    bus.emit("a", headers={"h": 1})
    msg = sub.get(timeout=5)

    with pytest.raises(TypeError):
        msg.headers["h"] = 2  # type: ignore[index]
    assert msg.headers["h"] == 1


def test_the_emitter_mutating_its_headers_dict_later_is_not_seen(bus):
    sub = bus.subscribe("a")
    headers = {"h": 1}
    bus.emit("a", headers=headers)

    headers["h"] = 2
    headers["new"] = True

    assert dict(sub.get(timeout=5).headers) == {"h": 1}


def test_every_subscriber_sees_the_same_payload_object(bus):
    first = bus.subscribe("a")
    second = bus.subscribe("a")
    payload = object()
    bus.emit("a", payload)

    assert first.get(timeout=5).data is payload
    assert second.get(timeout=5).data is payload


def test_reply_on_a_message_that_is_not_a_request_raises_no_reply_to(bus):
    sub = bus.subscribe("a")
    bus.emit("a", 1)
    msg = sub.get(timeout=5)

    with pytest.raises(NoReplyTo) as info:
        msg.reply(2)
    assert isinstance(info.value, ValueError)
    assert "'a'" in str(info.value)
