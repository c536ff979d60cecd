"""The federation envelope (greenbus/federation/envelope.py): pure, no Redis.

What one node publishes and every other node decodes: ``encode_envelope``
writes the short field names of docs/scaling.md, ``decode_envelope`` takes
back exactly what it wrote and refuses anything else with a
``RemoteProtocolError`` (code ``bad_frame``), since a bad envelope comes from
another node.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from greenbus import LocalProtocolError, RemoteProtocolError
from greenbus.federation import Envelope, decode_envelope, encode_envelope
from greenbus.federation.envelope import pack_envelope, parse_envelope

FULL = Envelope(
    origin="a1b2c3/0",
    seq=42,
    ts=1764000000.25,
    topic="sensors.room1.temp",
    data={"celsius": 21.5, "tags": ["a", None, True]},
    headers={"trace": "t-1", "n": 3},
    reply_to="_INBOX.1xabc.7",
)


def wire(**fields: object) -> bytes:
    """A version 1 envelope with good defaults, ``fields`` replacing or adding keys."""
    obj: dict[str, object] = {"v": 1, "o": "n/0", "q": 1, "ts": 1.5, "t": "a.b", "d": None}
    obj.update(fields)
    return json.dumps(obj).encode()


def without(key: str) -> bytes:
    obj = json.loads(wire())
    del obj[key]
    return json.dumps(obj).encode()


# -- encoding ------------------------------------------------------------------


def test_an_envelope_survives_encoding_and_decoding_with_every_field() -> None:
    assert decode_envelope(encode_envelope(FULL)) == FULL


def test_the_wire_uses_the_documented_short_field_names() -> None:
    assert json.loads(encode_envelope(FULL)) == {
        "v": 1,
        "o": "a1b2c3/0",
        "q": 42,
        "ts": 1764000000.25,
        "t": "sensors.room1.temp",
        "d": {"celsius": 21.5, "tags": ["a", None, True]},
        "h": {"trace": "t-1", "n": 3},
        "r": "_INBOX.1xabc.7",
    }


def test_an_envelope_without_headers_or_reply_to_leaves_them_off_the_wire() -> None:
    bare = Envelope("n/0", 1, 2.0, "a.b", [1, 2])

    assert set(json.loads(encode_envelope(bare))) == {"v", "o", "q", "ts", "t", "d"}
    assert decode_envelope(encode_envelope(bare)) == bare


def test_empty_headers_are_left_off_the_wire_and_come_back_as_none() -> None:
    env = Envelope("n/0", 1, 2.0, "a.b", headers={})

    assert "h" not in json.loads(encode_envelope(env))
    assert decode_envelope(encode_envelope(env)).headers is None


def test_the_encoding_is_compact_utf8_with_non_ascii_text_unescaped() -> None:
    raw = encode_envelope(Envelope("n/0", 1, 2.0, "météo.zürich", "21 °C ☀"))

    assert isinstance(raw, bytes)
    assert b" " not in raw.replace("21 °C ☀".encode(), b"")
    assert "météo.zürich".encode() in raw and "☀".encode() in raw
    assert decode_envelope(raw).data == "21 °C ☀"


@pytest.mark.parametrize(
    "data",
    [object(), {1, 2}, b"bytes", math.nan, math.inf, {"nested": [-math.inf]}],
    ids=["object", "set", "bytes", "nan", "inf", "nested-inf"],
)
def test_data_that_json_cannot_carry_is_a_local_protocol_error_naming_the_topic(
    data: object,
) -> None:
    with pytest.raises(LocalProtocolError, match=r"'orders\.new'"):
        encode_envelope(Envelope("n/0", 1, 2.0, "orders.new", data))


def test_headers_that_json_cannot_carry_are_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_envelope(Envelope("n/0", 1, 2.0, "a.b", headers={"when": object()}))


# -- decoding ------------------------------------------------------------------


def test_decoding_takes_text_as_well_as_bytes() -> None:
    raw = encode_envelope(FULL)

    assert decode_envelope(raw.decode()) == decode_envelope(raw) == FULL


def test_whitespace_around_an_envelope_is_allowed_as_json_allows_it() -> None:
    assert decode_envelope(b" \n" + encode_envelope(FULL) + b"\r\n\t") == FULL


def test_the_field_functions_write_and_read_what_the_envelope_functions_do() -> None:
    fields = dataclasses.astuple(FULL)
    raw = encode_envelope(FULL)

    assert pack_envelope(*fields[:8]) == raw
    assert parse_envelope(raw) == fields


def test_an_integer_timestamp_is_read_as_a_float() -> None:
    env = decode_envelope(wire(ts=1764000000))

    assert env.ts == 1764000000.0 and isinstance(env.ts, float)


def test_data_may_be_any_json_value_including_null_and_a_missing_d() -> None:
    assert decode_envelope(wire(d=[1, "x", {"y": None}])).data == [1, "x", {"y": None}]
    assert decode_envelope(without("d")).data is None


BAD_ENVELOPES = {
    "not-json": b"{not json",
    "invalid-utf8": b'{"v":1,"o":"\xff","q":1,"ts":1,"t":"a"}',
    "an-array": b"[1, 2]",
    "a-string": b'"envelope"',
    "version-2": wire(v=2),
    "version-true": wire(v=True),
    "no-version": without("v"),
    "no-origin": without("o"),
    "no-seq": without("q"),
    "no-ts": without("ts"),
    "no-topic": without("t"),
    "origin-not-a-string": wire(o=7),
    "seq-a-boolean": wire(q=True),
    "seq-a-float": wire(q=1.0),
    "seq-a-string": wire(q="1"),
    "ts-a-string": wire(ts="now"),
    "ts-a-boolean": wire(ts=True),
    "ts-nan": b'{"v":1,"o":"n/0","q":1,"ts":NaN,"t":"a.b"}',
    "ts-1e999": b'{"v":1,"o":"n/0","q":1,"ts":1e999,"t":"a.b"}',
    "ts-an-integer-too-big-for-a-float": (
        b'{"v":1,"o":"n/0","q":1,"ts":1' + b"0" * 400 + b',"t":"a.b"}'
    ),
    "data-nan": b'{"v":1,"o":"n/0","q":1,"ts":1,"t":"a.b","d":NaN}',
    "topic-a-wildcard": wire(t="a.*"),
    "topic-empty-token": wire(t="a..b"),
    "topic-not-a-string": wire(t=["a"]),
    "headers-a-list": wire(h=["x"]),
    "reply-to-a-pattern": wire(r="_INBOX.>"),
    "reply-to-not-a-string": wire(r=5),
    "empty": b"",
    "trailing-data": wire() + b"x",
    "two-envelopes": wire() + wire(),
}


@pytest.mark.parametrize("raw", list(BAD_ENVELOPES.values()), ids=list(BAD_ENVELOPES))
def test_anything_but_a_version_1_envelope_is_a_remote_protocol_error_bad_frame(
    raw: bytes,
) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_envelope(raw)

    assert caught.value.code == "bad_frame"
    assert "bad federation envelope" in caught.value.reason
