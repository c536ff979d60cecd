"""Tests for greenbus._codec: the hot frames decoded in C may only accept what the pure parser does.

msgspec's own behaviour on each hostile input is pinned first (the fast
path relies on it to refuse), then the fast decoders are checked against the
pure parser: on every text, either they are unsure (None, and the pure
parser decides) or they return the very event the pure parser returns, to
the JSON type of every value (``1``, ``1.0`` and ``true`` are equal in
Python, so events are compared by ``repr``).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import json_strategies
import msgspec
import pytest
from conftest import ROOT, child_env
from hypothesis import example, given, settings
from hypothesis import strategies as st

import greenbus.protocol as protocol
from greenbus import _codec
from greenbus.exceptions import LocalProtocolError, RemoteProtocolError
from greenbus.protocol import (
    DEFAULT_MAX_DEPTH,
    Ack,
    ErrorCode,
    Msg,
    Pub,
    encode_msg_body,
    parse_client,
    parse_server,
)

fast_pub = _codec.pub_decoder(Pub)
fast_msg = _codec.msg_decoder(Msg)
pub_frames = msgspec.json.Decoder(_codec._PubFrame | _codec._Other)


@pytest.fixture
def pure() -> Iterator[None]:
    """The pure parser alone, for the test's duration."""
    saved = protocol._fast_pub, protocol._fast_msg, protocol._fast_body
    protocol._fast_pub = protocol._fast_msg = protocol._fast_body = None
    try:
        yield
    finally:
        protocol._fast_pub, protocol._fast_msg, protocol._fast_body = saved


def outcome(parse: Callable[..., Any], text: Any, **options: Any) -> tuple[Any, ...]:
    """What ``parse`` makes of ``text``: the event's repr, or the error's every field."""
    try:
        return ("event", repr(parse(text, **options)))
    except RemoteProtocolError as exc:
        return ("error", exc.code, exc.reason, repr(exc.id))


def pure_outcome(parse: Callable[..., Any], text: Any, **options: Any) -> tuple[Any, ...]:
    saved = protocol._fast_pub, protocol._fast_msg
    protocol._fast_pub = protocol._fast_msg = None
    try:
        return outcome(parse, text, **options)
    finally:
        protocol._fast_pub, protocol._fast_msg = saved


# -- msgspec itself, on the inputs the fast path relies on it to refuse ----------------------

MSGSPEC_REFUSES = {
    "nan": '{"op":"pub","topic":"a","data":NaN}',
    "infinity": '{"op":"pub","topic":"a","data":[Infinity]}',
    "minus-infinity": '{"op":"pub","topic":"a","data":-Infinity}',
    "overflow": '{"op":"pub","topic":"a","data":1e999}',
    "overflow-long-mantissa": '{"op":"pub","topic":"a","data":1' + "0" * 400 + ".5}",
    "overflow-id": '{"op":"pub","topic":"a","id":-1E400}',
    "int-over-the-digit-limit": '{"op":"pub","topic":"a","data":'
    + "9" * (sys.get_int_max_str_digits() + 1)
    + "}",
    "lone-high-surrogate": '{"op":"pub","topic":"a","data":"\\ud800"}',
    "lone-low-surrogate": '{"op":"pub","topic":"a","data":"\\udc00"}',
    "high-surrogate-then-letter": '{"op":"pub","topic":"a","data":"\\ud800\\u0041"}',
    "unknown-field": '{"op":"pub","topic":"a","qos":1}',
    "no-op": '{"topic":"a"}',
    "op-twice-ping-first": '{"op":"ping","op":"pub","topic":"a"}',
    "op-twice-pub-first": '{"op":"pub","op":"ping","topic":"a"}',
    "null-id": '{"op":"pub","topic":"a","id":null}',
    "boolean-id": '{"op":"pub","topic":"a","id":true}',
    "object-id": '{"op":"pub","topic":"a","id":{}}',
    "topic-number": '{"op":"pub","topic":1}',
    "headers-array": '{"op":"pub","topic":"a","headers":[]}',
    "trailing-data": '{"op":"pub","topic":"a"}{}',
    "bom": '\ufeff{"op":"pub","topic":"a"}',
    "single-quotes": "{'op':'pub','topic':'a'}",
    "control-character": '{"op":"pub","topic":"a","data":"\x01"}',
    "form-feed-is-not-whitespace": '{"op":"pub","topic":"a"}\x0c',
    "leading-zero": '{"op":"pub","topic":"a","data":01}',
    "trailing-comma": '{"op":"pub","topic":"a",}',
    "raw-lone-surrogate": '{"op":"pub","topic":"a","data":"\ud800"}',
}


@pytest.mark.parametrize("text", MSGSPEC_REFUSES.values(), ids=MSGSPEC_REFUSES.keys())
def test_msgspec_refuses_each_input_the_fast_path_leaves_to_the_pure_parser(text):
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError, UnicodeEncodeError)):
        frame = pub_frames.decode(text)
        assert type(frame) is _codec._PubFrame


@pytest.mark.parametrize("text", MSGSPEC_REFUSES.values(), ids=MSGSPEC_REFUSES.keys())
def test_the_fast_path_is_unsure_of_each_and_the_error_is_the_pure_parsers(text, pure):
    assert fast_pub(text, DEFAULT_MAX_DEPTH) is None
    expected = outcome(parse_client, text)
    protocol._fast_pub = fast_pub
    assert outcome(parse_client, text) == expected


def test_msgspec_follows_the_int_digit_limit_of_the_interpreter():
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        assert pub_frames.decode('{"op":"pub","topic":"a","data":' + "9" * 640 + "}").data > 0
        text = '{"op":"pub","topic":"a","data":' + "9" * 641 + "}"
        assert fast_pub(text, DEFAULT_MAX_DEPTH) is None
        assert outcome(parse_client, text)[1] is ErrorCode.BAD_JSON
    finally:
        sys.set_int_max_str_digits(limit)


def test_msgspec_keeps_the_last_of_repeated_keys_as_json_does():
    text = '{"op":"pub","topic":"x","topic":"a","data":{"k":1,"j":2,"k":3}}'
    event = fast_pub(text, DEFAULT_MAX_DEPTH)
    assert repr(event) == repr(Pub("a", json.loads('{"k":1,"j":2,"k":3}')))


def test_msgspec_reads_integers_past_64_bits_exactly():
    for digits in ("18446744073709551616", "-9223372036854775809", "9" * 300):
        event = fast_pub(f'{{"op":"pub","topic":"a","data":{digits},"id":{digits}}}', 32)
        assert event is not None
        assert event.data == event.id == int(digits)
        assert type(event.id) is int


# -- the fast path's own gates ---------------------------------------------------------------


def test_a_surrogate_pair_escape_is_left_to_the_pure_parser_which_accepts_it():
    text = '{"op":"pub","topic":"a","data":"\\ud83d\\ude00"}'
    assert fast_pub(text, DEFAULT_MAX_DEPTH) is None
    assert parse_client(text) == Pub("a", "\U0001f600")


def test_more_brackets_than_max_depth_are_left_to_the_pure_parser():
    text = '{"op":"pub","topic":"a","data":[[]],"headers":{"k":"[{"}}'
    assert fast_pub(text, 6) is not None  # six brackets
    assert fast_pub(text, 5) is None
    assert parse_client(text, max_depth=3).data == [[]]  # the ones in a string don't nest


def test_an_invalid_topic_or_reply_to_is_left_to_the_pure_parser():
    for text in ('{"op":"pub","topic":"a.*","id":1}', '{"op":"pub","topic":"a","reply_to":""}'):
        assert fast_pub(text, DEFAULT_MAX_DEPTH) is None
        assert outcome(parse_client, text)[1] is ErrorCode.BAD_TOPIC


def test_bytes_and_other_ops_are_left_to_the_pure_parser():
    assert fast_pub(b'{"op":"pub","topic":"a"}', DEFAULT_MAX_DEPTH) is None  # type: ignore[arg-type]
    assert fast_pub('{"op":"ping"}', DEFAULT_MAX_DEPTH) is None
    assert fast_pub('{"op":"\\u0000","topic":"a"}', DEFAULT_MAX_DEPTH) is None
    assert fast_msg('{"op":"pub","topic":"a"}', DEFAULT_MAX_DEPTH) is None
    assert fast_msg('{"op":"msg","sid":true,"topic":"a"}', DEFAULT_MAX_DEPTH) is None


def test_a_pub_without_id_and_a_msg_with_one_decode_as_the_pure_parser_reads_them():
    assert fast_pub('{"op":"pub","topic":"a.b"}', 32) == Pub("a.b")
    text = '{"op":"msg","sid":"s","topic":"a","data":null,"pos":"1:2:3","id":4}'
    assert fast_msg(text, 32) == Msg("s", "a", None, pos="1:2:3")
    assert parse_server(text) == Msg("s", "a", None, pos="1:2:3")


# -- differential: generated texts, nasty ones included ---------------------------------------

json_scalars = json_strategies.json_scalars(max_text=6)
json_values = json_strategies.json_values(json_scalars, max_key=4, max_leaves=10)
#: Literals JSON encoders never write, spliced in as any field's value.
NASTY = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1E400",
    "1.5e3",
    "-0",
    "-0.0",
    "1.0",
    "1E2",
    "0.1",
    "123456789012345678901234567890",
    "9" * 4301,
    "4.9e-324",
    "1e-400",
    "true",
    "null",
    "[]",
    "{}",
    '"\\ud800"',
    '"\\udfff"',
    '"\\ud83d\\ude00"',
    '"\\u0061"',
    '"a\\u002eb"',
    '"\ud800"',
    '"\\n\\t\\"\\\\\\/"',
    '"\u2028\x7f\u00e9"',
    "[" * 40 + "]" * 40,
    '{"a":{"b":[[{}]]}}',
    "01",
    "1.",
    '"',
]
#: The fields of each op, then fields it does not have.
KEYS = {
    "pub": (["topic", "data", "headers", "reply_to", "id"], ["extra", "sid", "\\u006fp"]),
    "msg": (["sid", "topic", "data", "headers", "reply_to", "pos", "id"], ["extra", "Topic"]),
}
ids = st.text(max_size=3) | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
VALUES = {
    "op": st.sampled_from(['"pub"', '"msg"', '"ping"', '"PUB"', '"p\\u0075b"', "1", "null"]),
    "topic": st.sampled_from(
        ['"a"', '"a.b"', '"_INBOX.x.1"', '"a.*"', '"a..b"', '""', '"h\u00e9"']
    ),
    "reply_to": st.sampled_from(['"_INBOX.x.1"', "null", '"a.>"', '"r"', "7"]),
    "pos": st.sampled_from(['"1:2:3"', "null", '"nope"', "1"]),
    "headers": st.dictionaries(st.text(max_size=3), json_values, max_size=3).map(json.dumps),
    "sid": ids.map(json.dumps),
    "id": ids.map(json.dumps),
}
#: JSON whitespace; then what is not.
SPACES = ["", "", " ", "\n", "\t", "\r\n "]
NOT_SPACES = ["\x0c", "\u00a0", "x", "{}"]


@st.composite
def frame_texts(draw: Any, op: str) -> str:
    """An object's text, built token by token: valid frames of ``op``, and, one in two,
    nearly valid ones: repeated keys, nasty literals, odd whitespace, trailing data."""
    nasty = draw(st.booleans())
    known, unknown = KEYS[op]
    spaces = st.sampled_from(SPACES + NOT_SPACES if nasty else SPACES)
    fields = ["op", *known[: known.index("topic") + 1]]
    fields += draw(st.lists(st.sampled_from(known + unknown if nasty else known), max_size=4))
    if nasty and draw(st.integers(0, 5)) == 0:
        fields.remove("op")
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    parts = []
    for key in fields:
        if key == "op":
            plain = VALUES["op"] if nasty and draw(st.booleans()) else st.just(f'"{op}"')
        else:
            plain = VALUES.get(key, json_values.map(lambda v: json.dumps(v, ensure_ascii=False)))
        nasty_value = nasty and draw(st.integers(0, 3)) == 0
        value = draw(st.sampled_from(NASTY) | json_values.map(json.dumps) if nasty_value else plain)
        parts.append(f'"{key}"{draw(spaces)}:{draw(spaces)}{value}')
    return draw(spaces) + "{" + ("," + draw(spaces)).join(parts) + "}" + draw(spaces)


depths = st.sampled_from([DEFAULT_MAX_DEPTH, 1, 2, 3, 8, 100])


@settings(max_examples=1000, deadline=None)
@given(frame_texts("pub"), depths, st.sampled_from([1, 2]))
@example('{"op":"pub","topic":"a","data":1.0}', DEFAULT_MAX_DEPTH, 1)
@example('{"op":"pub","topic":"a","data":true,"id":1}', DEFAULT_MAX_DEPTH, 1)
def test_the_fast_pub_decoder_accepts_only_what_the_pure_parser_accepts_as_the_same_event(
    text, depth, version
):
    expected = pure_outcome(parse_client, text, max_depth=depth, version=version)
    event = fast_pub(text, depth)
    if event is not None:
        assert ("event", repr(event)) == expected
    assert outcome(parse_client, text, max_depth=depth, version=version) == expected


@settings(max_examples=800, deadline=None)
@given(frame_texts("msg"), depths)
def test_the_fast_msg_decoder_accepts_only_what_the_pure_parser_accepts_as_the_same_event(
    text, depth
):
    expected = pure_outcome(parse_server, text, max_depth=depth)
    event = fast_msg(text, depth)
    if event is not None:
        assert ("event", repr(event)) == expected
    assert outcome(parse_server, text, max_depth=depth) == expected


@settings(max_examples=500, deadline=None)
@given(st.text() | st.binary().map(lambda b: b.decode("latin-1")))
def test_any_text_gets_the_same_outcome_from_both_codecs(text):
    assert outcome(parse_client, text) == pure_outcome(parse_client, text)
    assert outcome(parse_server, text) == pure_outcome(parse_server, text)


@settings(max_examples=500, deadline=None)
@given(json_values, json_values, st.sampled_from([None, {}, {"k": [1]}]))
def test_a_pub_of_any_json_data_decodes_to_the_same_event_both_ways(data, id_, headers):
    frame = {"op": "pub", "topic": "a.b", "data": data, "headers": headers}
    if isinstance(id_, (str, int, float)) and not isinstance(id_, bool):
        frame["id"] = id_
    for text in (json.dumps(frame), json.dumps(frame, ensure_ascii=False, indent=1)):
        expected = pure_outcome(parse_client, text)
        assert expected[0] == "event"
        assert outcome(parse_client, text) == expected
        if "\\u" not in text:
            assert fast_pub(text, DEFAULT_MAX_DEPTH) is not None


# -- encoding: the msg body -----------------------------------------------------------------


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class Text(str):
    pass


@dataclasses.dataclass
class Point:
    x: int


def circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


#: Values msgspec writes that json.dumps refuses (or writes otherwise): never written in C.
MSGSPEC_WRITES = {
    "nan": float("nan"),
    "infinity": [1, {"x": float("inf")}],
    "set": {1, 2},
    "bytes": b"raw",
    "datetime": datetime.datetime(2026, 1, 2),
    "dataclass": Point(1),
    "enum": Colour.RED,
    "int-enum": Level.HIGH,
    "str-subclass": Text("t"),
    "int-key": {1: "a"},
    "none-key": {None: 1},
    "lone-surrogate": "\ud800",
    "circular": circular(),
    "too-many-values": list(range(300)),
    "float-1e16": 1e16,  # msgspec: 1e16; json.dumps: 1e+16
    "float-1e-5": [1e-5],  # msgspec: 0.00001; json.dumps: 1e-05
}


@pytest.mark.parametrize("data", MSGSPEC_WRITES.values(), ids=MSGSPEC_WRITES.keys())
def test_what_json_dumps_would_refuse_or_write_otherwise_is_left_to_it(data):
    assert _codec.msg_body("a", data, None, None) is None
    assert _codec.msg_body("a", 1, {"h": data}, None) is None


def test_msgspec_itself_writes_nan_as_null_and_a_set_as_an_array():
    # Why the C path looks at every value first: NaN must stay refused.
    assert msgspec.json.encode([float("nan"), {1}]) == b"[null,[1]]"


def test_a_msg_body_is_compact_with_non_ascii_text_as_is():
    body = _codec.msg_body("a.b", {"x": ["é", 1.5, None]}, {"k": True}, "_INBOX.1")
    expected = (
        ',"topic":"a.b","data":{"x":["é",1.5,null]},"headers":{"k":true},"reply_to":"_INBOX.1"}'
    )
    assert body == expected.encode()


python_values = st.recursive(
    json_scalars | st.floats() | st.sampled_from(list(MSGSPEC_WRITES.values())),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=600, deadline=None)
@given(
    python_values,
    st.none() | st.dictionaries(st.text(max_size=3), python_values, max_size=3),
    st.none() | st.just("_INBOX.r"),
)
def test_the_c_msg_body_is_the_text_json_dumps_writes_or_none(data, headers, reply_to):
    with_c = outcome_of(encode_msg_body, "a.b", data, headers, reply_to)
    saved = protocol._fast_body
    protocol._fast_body = None
    try:
        expected = outcome_of(encode_msg_body, "a.b", data, headers, reply_to)
    finally:
        protocol._fast_body = saved
    assert with_c == expected
    body = _codec.msg_body("a.b", data, headers, reply_to)
    if body is not None:
        protocol._fast_body = None
        try:
            assert body.decode() == encode_msg_body("a.b", data, headers, reply_to)  # same text
        finally:
            protocol._fast_body = saved


def outcome_of(encode: Callable[..., str], *args: Any) -> tuple[Any, ...]:
    """The JSON value ``encode`` wrote (its repr, every type kept), or that it refused."""
    try:
        text = encode(*args)
    except LocalProtocolError:
        return ("refused",)
    try:
        text.encode()
    except UnicodeEncodeError:
        return ("no utf-8",)
    return ("text", repr(json.loads("{" + text[1:])))


# -- GREENBUS_PURE_PYTHON --------------------------------------------------------------------


@pytest.mark.parametrize(("value", "pure"), [(None, False), ("0", False), ("1", True)])
def test_greenbus_pure_python_turns_the_c_decoders_off_at_import(value, pure):
    env = child_env()
    env.pop("GREENBUS_PURE_PYTHON", None)
    if value is not None:
        env["GREENBUS_PURE_PYTHON"] = value
    code = "import greenbus.protocol as p; print(p._fast_pub is None, p._fast_msg is None)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, check=True
    )
    assert out.stdout.split() == [str(pure).encode()] * 2


# -- a client's decoder: msg and ack -----------------------------------------------------------

fast_server = _codec.client_decoder(Ack)


def msg_of(frame: Any) -> Msg:
    """The Msg with a MsgFrame's fields."""
    return Msg(frame.sid, frame.topic, frame.data, frame.headers, frame.reply_to, frame.pos)


@settings(max_examples=800, deadline=None)
@given(frame_texts("msg"), depths)
def test_the_client_decoder_gives_a_msgs_fields_only_where_the_pure_parser_accepts_it(text, depth):
    expected = pure_outcome(parse_server, text, max_depth=depth)
    frame = fast_server(text, depth)
    if frame is not None:
        assert type(frame) is _codec.MsgFrame
        assert ("event", repr(msg_of(frame))) == expected


@st.composite
def ack_texts(draw: Any) -> str:
    """An ack's text: its fields (id first or not), sometimes wrong ones, repeated, or none."""
    values = {
        "id": VALUES["id"] | st.sampled_from(["true", "null", "{}", "1e999", '"\\ud800"', "-0"]),
        "pos": VALUES["pos"] | st.sampled_from(['"x"', "[]"]),
        "recovered": st.sampled_from(["true", "false", "null", "1", '"true"']),
        "extra": st.just("1"),
        "op": st.sampled_from(['"ack"', '"msg"', '"ping"', "1"]),
    }
    keys = draw(st.lists(st.sampled_from(list(values)), max_size=5))
    fields = draw(st.permutations(['"op":"ack"', *(f'"{k}":{draw(values[k])}' for k in keys)]))
    return "{" + draw(st.sampled_from([",", ", "])).join(fields) + "}"


@settings(max_examples=800, deadline=None)
@given(ack_texts(), depths | st.just(0))
@example('{"op":"ack","id":7}', DEFAULT_MAX_DEPTH)
@example('{"op":"ack","id":"s1","pos":"ab:1:2","recovered":false}', DEFAULT_MAX_DEPTH)
@example('{"op":"ack","id":7}', 0)
def test_the_client_decoder_gives_an_ack_only_where_the_pure_parser_gives_the_same(text, depth):
    expected = pure_outcome(parse_server, text, max_depth=depth)
    event = fast_server(text, depth)
    if event is not None:
        assert type(event) is Ack
        assert ("event", repr(event)) == expected
    if text in ('{"op":"ack","id":7}', '{"op":"ack","id":"s1","pos":"ab:1:2","recovered":false}'):
        assert (event is None) == (depth == 0)  # the C path took it (depth 0 refuses all)


def test_the_client_decoder_leaves_every_other_frame_to_parse_server():
    for text in (
        '{"op":"welcome","protocol":2,"server":"s","peer":"p"}',
        '{"op":"error","code":"forbidden","reason":"no","id":1}',
        '{"op":"pong"}',
        '{"op":"pub","topic":"a"}',
        '{"op":"ack","id":1,"pos":"\\ud83d\\ude00"}',
        b'{"op":"ack","id":1}',
    ):
        assert fast_server(text, DEFAULT_MAX_DEPTH) is None  # type: ignore[arg-type]


def test_brackets_in_strings_no_longer_send_a_flat_frame_to_the_pure_parser():
    # A frame whose data and headers hold no container is one level deep.
    text = '{"op":"pub","topic":"a","data":"[[[[{{{{"}'
    assert fast_pub(text, 2) == Pub("a", "[[[[{{{{")
    assert fast_pub(text, 0) is None
    msg = '{"op":"msg","sid":1,"topic":"a","data":"[[[[","reply_to":"r"}'
    assert fast_msg(msg, 1) == Msg(1, "a", "[[[[", reply_to="r")
    assert fast_msg('{"op":"msg","sid":1,"topic":"a","headers":{}}', 1) is None
    assert parse_server(msg, max_depth=1) == Msg(1, "a", "[[[[", reply_to="r")


# -- encoding: a client's pub frame -------------------------------------------------------------


def pure_pub_frame(*args: Any) -> tuple[Any, ...]:
    """What the pure codec makes of a pub: its UTF-8 frame, or that it refused."""
    try:
        return ("frame", protocol.encode(Pub(*args)).encode())
    except LocalProtocolError:
        return ("refused",)
    except UnicodeEncodeError:
        return ("no utf-8",)


@settings(max_examples=600, deadline=None)
@given(
    python_values,
    st.none() | st.dictionaries(st.text(max_size=3), python_values, max_size=3),
    st.none() | st.just("_INBOX.r"),
    st.integers() | st.booleans() | st.none() | st.just("s"),
)
@example(None, {}, None, 1)
@example('é\u2028\x7f\x00"\\', None, "r", 2**70)
def test_the_c_pub_frame_is_the_text_json_dumps_writes_or_none(data, headers, reply_to, id_):
    frame = _codec.pub_frame("a.b", data, headers, reply_to, id_)
    expected = pure_pub_frame("a.b", data, headers, reply_to, id_)
    if frame is not None:
        assert ("frame", frame) == expected
    elif type(id_) is int and expected[0] == "frame":
        # The C path declines plain JSON only for the values the module doc names.
        assert not _codec._plain(data) or not _codec._plain(headers or {})


@pytest.mark.parametrize("data", MSGSPEC_WRITES.values(), ids=MSGSPEC_WRITES.keys())
def test_a_pub_of_what_json_dumps_would_refuse_or_write_otherwise_is_left_to_it(data):
    assert _codec.pub_frame("a", data, None, None, 1) is None
    assert _codec.pub_frame("a", 1, {"h": data}, None, 1) is None


@pytest.mark.parametrize(("value", "pure"), [(None, False), ("1", True)])
def test_greenbus_pure_python_turns_the_clients_c_paths_off_at_import(value, pure):
    env = child_env()
    env.pop("GREENBUS_PURE_PYTHON", None)
    if value is not None:
        env["GREENBUS_PURE_PYTHON"] = value
    code = "import greenbus.bridge.client as c; print(c._fast_frame is None, c._fast_pub is None)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, check=True
    )
    assert out.stdout.split() == [str(pure).encode()] * 2
