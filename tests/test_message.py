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


def test_every_subscriber_of_an_emit_gets_the_same_message_object_and_a_new_one_per_emit(bus):
    # Built once per emit: a delivery is only handler(msg).
    subs = [bus.subscribe("a.b"), bus.subscribe("a.*"), bus.subscribe(">")]
    bus.emit("a.b", 1)
    bus.emit("a.b", 2)

    firsts, seconds = zip(*((s.get(timeout=5), s.get(timeout=5)) for s in subs), strict=True)
    assert all(m is firsts[0] for m in firsts)
    assert all(m is seconds[0] for m in seconds)
    assert firsts[0] is not seconds[0]
    assert (firsts[0].data, seconds[0].data) == (1, 2)
    assert type(firsts[0]) is bus.message_class


def test_a_lone_subscriber_and_then_a_shared_one_gets_every_message_of_its_bus_in_order(bus):
    # Alone, a subscription is queued the plain fields and makes the Message
    # on delivery; shared, it is queued the emit's Message: both are the same
    # to its consumer, in emission order.
    sub = bus.subscribe("a")
    bus.emit("a", 1, reply_to="inbox.1")
    other = bus.subscribe("a")
    bus.emit("a", 2, reply_to="inbox.2")
    other.close()
    bus.emit("a", 3)

    got = [sub.get_nowait(), sub.get(timeout=5), sub.get_nowait()]
    assert [m.data for m in got] == [1, 2, 3]
    assert all(type(m) is bus.message_class for m in got)
    replies = bus.subscribe("inbox.*")
    assert got[0].reply("r1") == 1 and got[1].reply("r2") == 1
    assert [(m.topic, m.data) for m in (replies.get_nowait(), replies.get_nowait())] == [
        ("inbox.1", "r1"),
        ("inbox.2", "r2"),
    ]


@pytest.mark.parametrize("field", ["topic", "data", "headers", "reply_to"])
def test_a_message_field_cannot_be_assigned(bus, field):
    sub = bus.subscribe("a")
    bus.emit("a", 1)
    msg = sub.get(timeout=5)

    with pytest.raises(AttributeError):
        setattr(msg, field, 2)
    assert (msg.topic, msg.data) == ("a", 1)


def test_message_fields_are_documented():
    for field in ("topic", "data", "reply_to"):
        assert getattr(Message, field).__doc__


def test_reply_on_a_message_that_is_not_a_request_raises_no_reply_to(bus):
    sub = bus.subscribe("a")
    bus.emit("a", 1)
    msg = sub.get(timeout=5)

    with pytest.raises(NoReplyTo) as info:
        msg.reply(2)
    assert isinstance(info.value, ValueError)
    assert "'a'" in str(info.value)
