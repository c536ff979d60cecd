"""Tests for greenbus.protocol: wire protocol v1, sans-I/O.

Plain strings in, events and strings out: no sockets, no gevent.  The frames
are checked against ``docs/protocol.schema.json`` too, so the schema, the
parser and the encoder cannot drift apart.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import json_strategies
import pytest
from frames import TOKEN, anonymous, nested, with_token
from hypothesis import given, settings
from hypothesis import strategies as st

from greenbus.exceptions import LocalProtocolError, ProtocolError, RemoteProtocolError
from greenbus.protocol import (
    DEFAULT_MAX_DEPTH,
    PROTOCOL_VERSION,
    PROTOCOL_VERSIONS,
    Ack,
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Msg,
    Ping,
    Pong,
    Pub,
    Sub,
    Unsub,
    Welcome,
    encode,
    encode_msg,
    encode_msg_body,
    msg_prefix,
    parse_client,
    parse_server,
)
from greenbus.session import SessionState

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.schema.json"


#: Every test here runs with both codecs (conftest's ``codec``).
pytestmark = pytest.mark.usefixtures("codec")


def rejection(text: Any, parse: Any = parse_client, **options: Any) -> RemoteProtocolError:
    """The RemoteProtocolError that ``parse(text)`` raises."""
    with pytest.raises(RemoteProtocolError) as info:
        parse(text, **options)
    return info.value


# -- parse_client: every op ---------------------------------------------------

CLIENT_FRAMES = [
    pytest.param('{"op":"hello","protocol":1}', Hello(1), id="hello"),
    pytest.param(
        '{"op":"hello","protocol":1,"token":"s3cret","name":"alice","id":"h1"}',
        Hello(1, "s3cret", "alice", "h1"),
        id="hello-all-fields",
    ),
    pytest.param(
        '{"op":"hello","protocol":1,"token":null,"name":null}', Hello(1), id="hello-null-optionals"
    ),
    pytest.param(
        '{"op":"sub","sid":"temps","topic":"sensors.*.temp"}',
        Sub("temps", "sensors.*.temp"),
        id="sub-string-sid",
    ),
    pytest.param(
        '{"op":"sub","sid":7,"topic":"sensors.>","id":1}', Sub(7, "sensors.>", 1), id="sub-int-sid"
    ),
    pytest.param(
        '{"op":"sub","sid":2.5,"topic":">","id":"s"}', Sub(2.5, ">", "s"), id="sub-float-sid"
    ),
    pytest.param('{"op":"sub","sid":"","topic":"a"}', Sub("", "a"), id="sub-empty-string-sid"),
    pytest.param('{"op":"unsub","sid":"temps"}', Unsub("temps"), id="unsub"),
    pytest.param('{"op":"unsub","sid":7,"id":-3}', Unsub(7, -3), id="unsub-numeric-ids"),
    pytest.param('{"op":"pub","topic":"a.b"}', Pub("a.b"), id="pub-without-data"),
    pytest.param('{"op":"pub","topic":"a.b","data":null}', Pub("a.b"), id="pub-null-data"),
    pytest.param(
        '{"op":"pub","topic":"a.b","data":{"x":[1,2.5,"s",true,null]}}',
        Pub("a.b", {"x": [1, 2.5, "s", True, None]}),
        id="pub-structured-data",
    ),
    pytest.param(
        '{"op":"pub","topic":"svc.echo","data":"hi","headers":{"trace":"t1"},'
        '"reply_to":"_INBOX.x.1","id":9}',
        Pub("svc.echo", "hi", {"trace": "t1"}, "_INBOX.x.1", 9),
        id="pub-all-fields",
    ),
    pytest.param(
        '{"op":"pub","topic":"a","headers":null,"reply_to":null}', Pub("a"), id="pub-null-optionals"
    ),
    pytest.param(
        '{"op":"pub","topic":"héllo.wörld","data":"日本"}',
        Pub("héllo.wörld", "日本"),
        id="pub-non-ascii",
    ),
    pytest.param('{"op":"ping"}', Ping(), id="ping"),
    pytest.param('{"op":"ping","id":"p1"}', Ping("p1"), id="ping-string-id"),
    pytest.param('{"op":"ping","id":0}', Ping(0), id="ping-zero-id"),
    pytest.param('{"op":"ping","id":1.5e3}', Ping(1500.0), id="ping-float-id"),
    pytest.param(' \n{ "id" : "x" , "op" : "ping" }\t', Ping("x"), id="whitespace-and-key-order"),
]


@pytest.mark.parametrize(("text", "event"), CLIENT_FRAMES)
def test_every_client_op_parses_to_its_event(text, event):
    assert parse_client(text) == event


def test_an_id_keeps_its_json_type():
    assert parse_client('{"op":"ping","id":"1"}').id == "1"
    assert type(parse_client('{"op":"ping","id":1}').id) is int
    assert type(parse_client('{"op":"ping","id":1.0}').id) is float


def test_a_number_up_to_the_int_string_limit_is_accepted():
    digits = "9" * sys.get_int_max_str_digits()
    assert parse_client(f'{{"op":"pub","topic":"a","data":{digits}}}').data == int(digits)


# -- parse_client: every error code -------------------------------------------

#: Bad client frames with no id the hub can read, so it echoes none: ``{code: {test id: text}}``.
WITHOUT_ID = {
    ErrorCode.BAD_JSON: {
        # not JSON at all
        "bad_json-word": "hello",
        "bad_json-empty": "",
        "bad_json-truncated": '{"op":"ping"',
        "bad_json-trailing-data": '{"op":"ping"} {}',
        "bad_json-single-quotes": "{'op':'ping'}",
        "bad_json-bom": '\ufeff{"op":"ping"}',
    },
    ErrorCode.BAD_FRAME: {
        # JSON, but not an object
        "bad_frame-array": "[]",
        "bad_frame-string": '"ping"',
        "bad_frame-number": "42",
        "bad_frame-null": "null",
        "bad_frame-boolean": "true",
        # an object of the wrong shape
        "bad_frame-no-op": "{}",
        "bad_frame-op-null": '{"op":null}',
        # an id that cannot be read is not echoed
        "id-null": '{"op":"ping","id":null}',
        "id-object": '{"op":"ping","id":{"a":1}}',
        "id-array": '{"op":"ping","id":[1]}',
    },
    ErrorCode.UNKNOWN_OP: {
        "unknown_op-case": '{"op":"PUB","topic":"a"}',
        "unknown_op-empty": '{"op":""}',
        "op-msg": '{"op":"msg","sid":1,"topic":"a"}',  # the hub's own op, from a client
    },
    ErrorCode.UNSUPPORTED_PROTOCOL: {
        "protocol-0": '{"op":"hello","protocol":0}',
        "protocol-negative": '{"op":"hello","protocol":-1}',
    },
}

#: Bad client frames whose id the hub reads and echoes: ``{code: {test id: text}}``.
WITH_ID = {
    ErrorCode.BAD_FRAME: {
        "bad_frame-no-op-with-id": '{"id":3}',
        "bad_frame-op-not-string": '{"op":1,"id":"x"}',
        "sub-no-sid": '{"op":"sub","topic":"a","id":1}',
        "sub-no-topic": '{"op":"sub","sid":1,"id":1}',
        "sub-null-sid": '{"op":"sub","sid":null,"topic":"a","id":1}',
        "sub-object-sid": '{"op":"sub","sid":{},"topic":"a","id":1}',
        "sub-array-sid": '{"op":"sub","sid":[1],"topic":"a","id":1}',
        "sub-topic-not-string": '{"op":"sub","sid":1,"topic":5,"id":1}',
        "unsub-no-sid": '{"op":"unsub","id":"u"}',
        "pub-no-topic": '{"op":"pub","data":1,"id":2}',
        "pub-headers-not-object": '{"op":"pub","topic":"a","headers":[1],"id":2}',
        "pub-headers-string": '{"op":"pub","topic":"a","headers":"h","id":2}',
        "pub-reply_to-not-string": '{"op":"pub","topic":"a","reply_to":7,"id":2}',
        "hello-no-protocol": '{"op":"hello","id":4}',
        "hello-protocol-string": '{"op":"hello","protocol":"1","id":4}',
        "hello-protocol-float": '{"op":"hello","protocol":1.0,"id":4}',
        "hello-protocol-bool": '{"op":"hello","protocol":true,"id":4}',
        "hello-token-number": '{"op":"hello","protocol":1,"token":42,"id":4}',
        "hello-name-array": '{"op":"hello","protocol":1,"name":["a"],"id":4}',
    },
    ErrorCode.UNKNOWN_OP: {
        "unknown_op": '{"op":"publish","id":6}',
        "unknown_op-welcome": '{"op":"welcome","id":"w"}',  # the hub's own op, from a client
    },
    ErrorCode.BAD_TOPIC: {
        "pub-empty-topic": '{"op":"pub","topic":"","id":1}',
        "pub-empty-token": '{"op":"pub","topic":"a..b","id":1}',
        "pub-leading-dot": '{"op":"pub","topic":".a","id":1}',
        "pub-space": '{"op":"pub","topic":"a b","id":1}',
        "pub-tab": '{"op":"pub","topic":"a\\tb","id":1}',
        "pub-star": '{"op":"pub","topic":"a.*","id":1}',
        "pub-gt": '{"op":"pub","topic":"a.>","id":1}',
        "pub-wildcard-reply_to": '{"op":"pub","topic":"a","reply_to":"_INBOX.*","id":1}',
        "pub-empty-reply_to": '{"op":"pub","topic":"a","reply_to":"","id":1}',
        "sub-gt-not-last": '{"op":"sub","sid":1,"topic":"a.>.b","id":1}',
        "sub-star-in-token": '{"op":"sub","sid":1,"topic":"room*","id":1}',
        "sub-a-dot": '{"op":"sub","sid":1,"topic":"a.","id":1}',
    },
    ErrorCode.UNSUPPORTED_PROTOCOL: {
        "unsupported_protocol-3": '{"op":"hello","protocol":3,"id":"h"}',
    },
}


@pytest.mark.parametrize(
    ("text", "code", "id"),
    [
        *(
            pytest.param(text, code, None, id=name)
            for code, frames in WITHOUT_ID.items()
            for name, text in frames.items()
        ),
        *(
            pytest.param(text, code, json.loads(text)["id"], id=name)
            for code, frames in WITH_ID.items()
            for name, text in frames.items()
        ),
    ],
)
def test_a_bad_client_frame_gets_its_error_code_with_the_id_echoed_when_readable(text, code, id):
    exc = rejection(text)
    assert exc.code is code
    assert exc.id == id
    assert type(exc.id) is type(id)
    assert exc.reason


def test_a_remote_protocol_error_is_a_protocol_error_and_a_value_error():
    exc = rejection("nope")
    assert isinstance(exc, ProtocolError)
    assert isinstance(exc, ValueError)
    assert str(exc).startswith("bad_json: ")


def test_a_non_string_message_is_bad_json():
    assert rejection(b'{"op":"ping"}').code is ErrorCode.BAD_JSON


def test_an_error_reason_names_the_offending_field():
    assert "'sid'" in rejection('{"op":"sub","sid":true,"topic":"a"}').reason
    assert "'topic'" in rejection('{"op":"pub","topic":"a..b"}').reason
    assert "'headers'" in rejection('{"op":"pub","topic":"a","headers":1}').reason


def test_an_unknown_op_is_shortened_in_the_reason():
    exc = rejection(json.dumps({"op": "x" * 10_000}))
    assert exc.code is ErrorCode.UNKNOWN_OP
    assert len(exc.reason) < 200


VALID_CLIENT_OBJECTS = {
    "hello": {"op": "hello", "protocol": 1},
    "sub": {"op": "sub", "sid": 1, "topic": "a"},
    "unsub": {"op": "unsub", "sid": 1},
    "pub": {"op": "pub", "topic": "a", "data": 1},
    "ping": {"op": "ping"},
}


@pytest.mark.parametrize("op", sorted(VALID_CLIENT_OBJECTS))
@pytest.mark.parametrize("field", ["extra", "qos", "sids", "Topic"])
def test_an_unknown_field_is_a_bad_frame_naming_the_field(op, field):
    frame = {**VALID_CLIENT_OBJECTS[op], "id": 5, field: 1}
    exc = rejection(json.dumps(frame))
    assert exc.code is ErrorCode.BAD_FRAME
    assert exc.id == 5
    assert field in exc.reason


@pytest.mark.parametrize("op", ["sub", "unsub", "pub", "ping"])
def test_a_field_of_another_op_is_an_unknown_field(op):
    frame = {**VALID_CLIENT_OBJECTS[op], "protocol": 1}
    assert rejection(json.dumps(frame)).code is ErrorCode.BAD_FRAME


# -- parse_client: hostile JSON ----------------------------------------------


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    "template",
    [
        '{{"op":"pub","topic":"a","data":{}}}',
        '{{"op":"pub","topic":"a","data":[1,{{"x":{}}}]}}',
        '{{"op":"ping","id":{}}}',
        '{{"op":"sub","sid":{},"topic":"a"}}',
    ],
)
def test_nan_and_infinity_are_bad_json_wherever_they_appear(constant, template):
    assert rejection(template.format(constant)).code is ErrorCode.BAD_JSON


@pytest.mark.parametrize("where", ["id", "data", "sid"])
def test_an_int_over_the_int_string_limit_is_bad_json(where):
    huge = "9" * (sys.get_int_max_str_digits() + 1)
    frame = {
        "id": f'{{"op":"ping","id":{huge}}}',
        "data": f'{{"op":"pub","topic":"a","data":{huge},"id":1}}',
        "sid": f'{{"op":"sub","sid":{huge},"topic":"a"}}',
    }[where]
    exc = rejection(frame)
    assert exc.code is ErrorCode.BAD_JSON
    assert exc.id is None  # the JSON could not be read at all


def test_nesting_up_to_max_depth_is_accepted():
    assert parse_client(nested(DEFAULT_MAX_DEPTH)).topic == "a"


def test_nesting_past_max_depth_is_bad_json_with_the_id_echoed():
    exc = rejection(nested(DEFAULT_MAX_DEPTH + 1, id="deep"))
    assert exc.code is ErrorCode.BAD_JSON
    assert exc.id == "deep"
    assert str(DEFAULT_MAX_DEPTH) in exc.reason


def test_nesting_in_headers_counts_towards_max_depth():
    headers = {"h": [[[1]]]}  # frame 1, headers 2, list 3..5
    text = json.dumps({"op": "pub", "topic": "a", "headers": headers})
    assert parse_client(text, max_depth=5).headers == headers
    assert rejection(text, max_depth=4).code is ErrorCode.BAD_JSON


def test_max_depth_is_a_parameter():
    assert parse_client(nested(3), max_depth=3).data == [[]]
    assert rejection(nested(4), max_depth=3).code is ErrorCode.BAD_JSON


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"op":"pub","topic":"a","data":' + "[" * 100_000 + "]" * 100_000 + "}",
        "[" * 100_000,
    ],
    ids=["arrays", "objects", "inside-a-frame", "unclosed"],
)
def test_json_nested_100k_deep_is_bad_json_not_a_crash(text):
    assert rejection(text).code is ErrorCode.BAD_JSON


def test_a_boolean_id_is_rejected_and_not_echoed():
    for value in ("true", "false"):
        exc = rejection(f'{{"op":"ping","id":{value}}}')
        assert exc.code is ErrorCode.BAD_FRAME
        assert exc.id is None


def test_a_boolean_sid_is_rejected_with_the_frame_id_echoed():
    for op in ("sub", "unsub"):
        topic = ',"topic":"a"' if op == "sub" else ""
        exc = rejection(f'{{"op":"{op}","sid":true{topic},"id":"b"}}')
        assert exc.code is ErrorCode.BAD_FRAME
        assert exc.id == "b"


# -- parse_server ---------------------------------------------------------------

SERVER_FRAMES = [
    pytest.param(
        '{"op":"welcome","protocol":1,"server":"hub","peer":"p1"}',
        Welcome(1, "hub", "p1"),
        id="welcome",
    ),
    pytest.param(
        '{"op":"welcome","protocol":1,"server":"hub","peer":"p1","id":1}',
        Welcome(1, "hub", "p1", 1),
        id="welcome-with-id",
    ),
    pytest.param(
        '{"op":"msg","sid":"temps","topic":"a.b","data":21.5}',
        Msg("temps", "a.b", 21.5),
        id="msg",
    ),
    pytest.param(
        '{"op":"msg","sid":3,"topic":"svc.echo","data":null,"headers":{"k":"v"},'
        '"reply_to":"_INBOX.x.1"}',
        Msg(3, "svc.echo", None, {"k": "v"}, "_INBOX.x.1"),
        id="msg-all-fields",
    ),
    pytest.param('{"op":"ack","id":"a"}', Ack("a"), id="ack-string-id"),
    pytest.param('{"op":"ack","id":12}', Ack(12), id="ack-int-id"),
    pytest.param(
        '{"op":"error","code":"bad_topic","reason":"no","id":2}',
        Error(ErrorCode.BAD_TOPIC, "no", 2),
        id="error",
    ),
    pytest.param(
        '{"op":"error","code":"slow_consumer","reason":"too slow"}',
        Error(ErrorCode.SLOW_CONSUMER, "too slow"),
        id="error-without-id",
    ),
    pytest.param('{"op":"pong"}', Pong(), id="pong"),
    pytest.param('{"op":"pong","id":"p"}', Pong("p"), id="pong-with-id"),
]


@pytest.mark.parametrize(("text", "event"), SERVER_FRAMES)
def test_every_server_op_parses_to_its_event(text, event):
    assert parse_server(text) == event


def test_an_unknown_error_code_is_kept_as_a_plain_string():
    event = parse_server('{"op":"error","code":"quota","reason":"later"}')
    assert event == Error("quota", "later")  # type: ignore[arg-type]
    assert not isinstance(event.code, ErrorCode)


#: What a hub may not send, by the error code parse_server raises for it.
SERVER_ERRORS = {
    ErrorCode.BAD_FRAME: [
        '{"op":"ack"}',
        '{"op":"ack","id":true}',
        '{"op":"msg","topic":"a","data":1}',
        '{"op":"msg","sid":1,"data":1}',
        '{"op":"msg","sid":1,"topic":"a","headers":[]}',
        '{"op":"error","reason":"x"}',
        '{"op":"error","code":1,"reason":"x"}',
        '{"op":"error","code":"internal"}',
        '{"op":"welcome","server":"hub","peer":"p1"}',
        '{"op":"pong","extra":1}',
        "[]",
    ],
    ErrorCode.UNKNOWN_OP: ['{"op":"pub","topic":"a"}'],
    ErrorCode.BAD_JSON: ["nope"],
}


@pytest.mark.parametrize(
    ("text", "code"), [(text, code) for code, texts in SERVER_ERRORS.items() for text in texts]
)
def test_parse_server_rejects_what_a_hub_may_not_send(text, code):
    assert rejection(text, parse_server).code is code


# -- encode -------------------------------------------------------------------------

CLIENT_EVENTS = [
    Hello(),
    Hello(1, "s3cret", "alice", "h1"),
    Sub("temps", "sensors.*.temp"),
    Sub(7, "sensors.>", 1),
    Sub(2.5, ">", "s"),
    Unsub("temps"),
    Unsub(0, 0.5),
    Pub("a.b"),
    Pub("a.b", {"x": [1, 2.5, "s", True, None]}),
    Pub("svc.echo", "hi", {"trace": "t1"}, "_INBOX.x.1", 9),
    Pub("héllo.wörld", "日本 \u2028 \x00"),
    Ping(),
    Ping("p1"),
]

SERVER_EVENTS = [
    Welcome(1, "hub", "p1"),
    Welcome(1, "hub", "p1", "h1"),
    Msg("temps", "a.b", 21.5),
    Msg(3, "svc.echo", None, {"k": "v"}, "_INBOX.x.1"),
    Msg(1.5, "a", [1, {"b": None}], {}),
    Ack("a"),
    Ack(12),
    Ack(-0.25),
    Pong(),
    Pong("p"),
    *(Error(code, f"because {code}") for code in ErrorCode),
    *(Error(code, "", 7) for code in ErrorCode),
]


def event_id(event: Any) -> str:
    return type(event).__name__


@pytest.mark.parametrize("event", CLIENT_EVENTS, ids=event_id)
def test_encode_round_trips_every_client_event_through_parse_client(event):
    assert parse_client(encode(event)) == event


@pytest.mark.parametrize("event", SERVER_EVENTS, ids=event_id)
def test_encode_round_trips_every_server_event_through_parse_server(event):
    assert parse_server(encode(event)) == event


@pytest.mark.parametrize("event", CLIENT_EVENTS + SERVER_EVENTS, ids=event_id)
def test_encode_writes_op_first_and_leaves_out_optional_fields_that_are_none(event):
    frame = json.loads(encode(event))
    assert next(iter(frame)) == "op"
    assert None not in [v for k, v in frame.items() if k != "data"]


def test_encode_is_compact_and_keeps_data_null():
    assert encode(Pub("a")) == '{"op":"pub","topic":"a","data":null}'
    assert encode(Msg(1, "a")) == '{"op":"msg","sid":1,"topic":"a","data":null}'
    assert encode(Ack(3)) == '{"op":"ack","id":3}'
    assert encode(Error(ErrorCode.LIMIT, "x")) == '{"op":"error","code":"limit","reason":"x"}'


def test_encode_writes_non_ascii_text_as_is():
    assert encode(Pub("a", "日本")) == '{"op":"pub","topic":"a","data":"日本"}'


@pytest.mark.parametrize(
    ("headers", "reply_to"),
    [(None, None), ({"k": "v"}, None), (None, "_INBOX.1"), ({"k": [1]}, "r.s")],
)
def test_encode_msg_writes_the_same_text_as_encode_of_a_msg(headers, reply_to):
    fast = encode_msg("s", "a.b", {"x": 1}, headers, reply_to)
    assert fast == encode(Msg("s", "a.b", {"x": 1}, headers, reply_to))


def circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


NOT_JSON = [
    pytest.param(object(), id="object"),
    pytest.param({1, 2}, id="set"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param([1, float("-inf")], id="nested-inf"),
    pytest.param({("a", "b"): 1}, id="tuple-key"),
    pytest.param(circular(), id="circular"),
]


@pytest.mark.parametrize("data", NOT_JSON)
def test_encode_of_non_json_data_raises_local_protocol_error(data):
    for event in (Pub("a", data), Msg(1, "a", data), Pub("a", 1, {"h": data})):
        with pytest.raises(LocalProtocolError):
            encode(event)


@pytest.mark.parametrize("data", NOT_JSON)
def test_encode_msg_of_non_json_data_raises_local_protocol_error(data):
    with pytest.raises(LocalProtocolError, match=r"'a\.b'"):
        encode_msg(1, "a.b", data, None, None)


@pytest.mark.parametrize("id", [float("nan"), float("inf")])
def test_encode_of_a_non_finite_id_raises_local_protocol_error(id):
    with pytest.raises(LocalProtocolError):
        encode(Ack(id))


@pytest.mark.parametrize("thing", ["ping", {"op": "ping"}, None, RemoteProtocolError])
def test_encode_of_something_that_is_no_event_raises_local_protocol_error(thing):
    with pytest.raises(LocalProtocolError, match="not a protocol event"):
        encode(thing)


def test_a_local_protocol_error_is_a_protocol_error_and_a_value_error():
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ValueError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


# -- properties -----------------------------------------------------------------------

json_scalars = json_strategies.json_scalars(max_text=10)
json_values = json_strategies.json_values(json_scalars, max_key=5, max_leaves=12)
# Topics and patterns near the grammar's edges.  No "\n": Python's re lets "$"
# match before a final newline, so jsonschema would take "a\n" for a topic
# where the schema's (ECMA-262) regex does not.
topics = st.sampled_from(["a", "a.b", "_INBOX.x.1", "a.*", ">", "a.>", "héllo"]) | st.text(
    alphabet="ab.*> \t\u00a0\u3000é\x00", max_size=8
)
ids = st.text(max_size=4) | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
# Each field: mostly values of the right type, sometimes anything at all.
field_values = {
    "id": ids | st.booleans() | st.none() | json_values,
    "sid": ids | st.booleans() | st.none() | json_values,
    "topic": topics | json_scalars,
    "reply_to": topics | st.none() | json_scalars,
    "data": json_values,
    "headers": st.none()
    | st.dictionaries(st.text(max_size=3), json_values, max_size=3)
    | json_scalars,
    "protocol": st.just(1) | st.integers(-1, 3) | st.booleans() | st.text(max_size=2) | st.none(),
    "token": st.sampled_from([TOKEN, "guess"]) | json_scalars,
    "name": st.text(max_size=5) | json_scalars,
}
SERVER_OPS = ("welcome", "msg", "ack", "error", "pong")
#: op -> (required fields, optional fields) of the client frames.
CLIENT_FIELDS = {
    "hello": (["protocol"], ["token", "name", "id", "session"]),
    "sub": (["sid", "topic"], ["id", "since"]),
    "unsub": (["sid"], ["id"]),
    "pub": (["topic"], ["data", "headers", "reply_to", "id"]),
    "ping": ([], ["id"]),
}
valid_values = {
    "id": ids,
    "sid": ids,
    "topic": st.sampled_from(["a", "a.b", "_INBOX.x.1", "héllo.wörld"]),
    "reply_to": st.sampled_from(["_INBOX.x.1", "r"]),
    "data": json_values,
    "headers": st.dictionaries(st.text(max_size=3), json_values, max_size=3),
    "protocol": st.just(PROTOCOL_VERSION),
    "token": st.sampled_from([TOKEN, "guess"]),
    "name": st.text(max_size=5),
    "session": st.text(min_size=1, max_size=5),
    "since": st.sampled_from(["9fa3:42:1700000000123", "0:0:0"]),
}


@st.composite
def near_valid_frames(draw: Any) -> dict[str, Any]:
    """A valid client frame, then maybe one change: a field dropped, added or replaced."""
    op = draw(st.sampled_from(sorted(CLIENT_FIELDS)))
    required, optional = CLIENT_FIELDS[op]
    frame: dict[str, Any] = {"op": op}
    for name in required:
        frame[name] = draw(valid_values[name])
    for name in optional:
        if draw(st.booleans()):
            frame[name] = draw(valid_values[name])
    change = draw(st.sampled_from(["none", "drop", "add", "replace"]))
    if change == "drop":
        del frame[draw(st.sampled_from(sorted(frame)))]
    elif change == "add":
        name = draw(st.sampled_from([*field_values, "extra"]))
        frame[name] = draw(field_values.get(name, json_values))
    elif change == "replace":
        name = draw(st.sampled_from(sorted(frame)))
        frame[name] = draw(field_values.get(name, st.nothing()) | json_scalars)
    return frame


# Objects with any op and any field at all, mostly refused.
OPS = ["hello", "sub", "unsub", "pub", "ping", "welcome", "nope"]
any_frames = st.fixed_dictionaries(
    {"op": st.sampled_from(OPS) | json_scalars},
    optional={**field_values, "extra": json_values},
)
frame_objects = near_valid_frames() | any_frames
frame_texts = frame_objects.map(json.dumps)
messages = st.text() | frame_texts | json_values.map(json.dumps)


@given(st.text())
def test_parse_client_of_any_text_raises_nothing_but_remote_protocol_error(text):
    try:
        parse_client(text)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)


@given(json_values)
def test_parse_client_of_any_json_value_raises_nothing_but_remote_protocol_error(value):
    try:
        parse_client(json.dumps(value))
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)


@given(frame_objects, st.sampled_from(PROTOCOL_VERSIONS))
def test_whatever_parse_client_accepts_round_trips_through_encode(frame, version):
    try:
        event = parse_client(json.dumps(frame), version=version)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        return
    assert type(event).__name__.lower() == frame["op"]
    assert parse_client(encode(event), version=version) == event


@given(
    st.builds(
        Msg,
        sid=ids,
        topic=st.sampled_from(["a", "a.b", "_INBOX.x.1"]),
        data=json_values,
        headers=st.none() | st.dictionaries(st.text(max_size=3), json_values, max_size=3),
        reply_to=st.none() | st.just("_INBOX.r"),
    )
)
def test_any_msg_round_trips_through_encode_and_parse_server(event):
    assert parse_server(encode(event)) == event
    assert encode_msg(event.sid, event.topic, event.data, event.headers, event.reply_to) in (
        encode(event),
        encode(Msg(event.sid, event.topic, event.data, None, event.reply_to)),  # {} is left out
    )


@settings(max_examples=200)
@given(st.booleans(), st.lists(messages, max_size=25))
def test_hub_session_receive_never_raises_and_sends_only_valid_server_frames(
    validators, token, texts
):
    session = with_token(max_errors=5) if token else anonymous(max_errors=5)
    for text in texts:
        event = session.receive(text)
        assert event is None or isinstance(event, (Sub, Unsub, Pub))
        for frame in session.take_outbox():
            parse_server(frame)
            validators["server_frame"].validate(json.loads(frame))
            frame.encode("utf-8")
        assert (session.close_code is None) == (session.state is not SessionState.CLOSING)
    assert session.errors <= 6


# -- the JSON Schema (docs/protocol.schema.json) -----------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validators(schema) -> dict[str, Any]:
    """Validators for the whole schema ("frame") and for each of its $defs."""
    jsonschema = pytest.importorskip("jsonschema")
    make = jsonschema.Draft202012Validator
    make.check_schema(schema)
    out = {"frame": make(schema)}
    for name in schema["$defs"]:
        out[name] = make({"$defs": schema["$defs"], "$ref": f"#/$defs/{name}"})
    return out


def test_the_schema_is_a_valid_draft_2020_12_schema(schema, validators):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_schema_has_one_def_per_op_and_lists_them_all_at_the_top(schema):
    ops = {*CLIENT_FIELDS, *SERVER_OPS}
    assert ops <= set(schema["$defs"])
    assert {ref["$ref"] for ref in schema["oneOf"]} == {f"#/$defs/{op}" for op in ops}
    for op in ops:
        assert schema["$defs"][op]["properties"]["op"] == {"const": op}


def test_the_schema_lists_every_error_code(schema):
    codes = schema["$defs"]["error"]["properties"]["code"]["enum"]
    assert sorted(codes) == sorted(str(c) for c in ErrorCode)


def assert_valid_per_the_schema(event: Any, validators: dict[str, Any], side: str) -> None:
    """``encode(event)`` is a frame, a ``side`` frame ("client" or "server") and a frame of
    its op per the schema, and not a frame of the other side."""
    other = {"client": "server", "server": "client"}[side]
    frame = json.loads(encode(event))
    validators["frame"].validate(frame)
    validators[f"{side}_frame"].validate(frame)
    validators[frame["op"]].validate(frame)
    assert not validators[f"{other}_frame"].is_valid(frame)


@pytest.mark.parametrize("event", CLIENT_EVENTS, ids=event_id)
def test_every_encoded_client_event_is_valid_per_the_schema(event, validators):
    assert_valid_per_the_schema(event, validators, "client")


@pytest.mark.parametrize("event", SERVER_EVENTS, ids=event_id)
def test_every_encoded_server_event_is_valid_per_the_schema(event, validators):
    assert_valid_per_the_schema(event, validators, "server")


def test_a_frame_from_encode_msg_is_valid_per_the_schema(validators):
    text = encode_msg("s", "a.b", {"x": 1}, {"k": "v"}, "_INBOX.1")
    validators["msg"].validate(json.loads(text))


@pytest.mark.parametrize(
    "frame",
    [
        [],
        {},
        {"op": "publish"},
        {"op": "ping", "extra": 1},
        {"op": "ping", "id": None},
        {"op": "ping", "id": True},
        {"op": "sub", "sid": True, "topic": "a"},
        {"op": "sub", "sid": 1, "topic": "a.>.b"},
        {"op": "sub", "sid": 1, "topic": "room*"},
        {"op": "pub", "topic": "a.*"},
        {"op": "pub", "topic": "a..b"},
        {"op": "pub", "topic": "a b"},
        {"op": "pub", "topic": ""},
        {"op": "pub", "topic": "a", "headers": [1]},
        {"op": "pub", "topic": "a", "reply_to": "_INBOX.>"},
        {"op": "hello", "protocol": 3},
        {"op": "hello", "protocol": True},
        {"op": "hello"},
        {"op": "welcome", "protocol": 1, "server": "hub"},
        {"op": "msg", "sid": 1, "topic": "a"},
        {"op": "ack"},
        {"op": "error", "code": "nope", "reason": ""},
        {"op": "error", "code": "internal"},
    ],
    ids=json.dumps,
)
def test_an_invalid_frame_fails_the_schema(frame, validators):
    assert not validators["frame"].is_valid(frame)


def parser_and_schema_agree(frame: dict[str, Any], validator: Any) -> bool:
    if isinstance(frame.get("protocol"), float):
        # JSON Schema holds 1.0 == 1; the hub wants the integer 1.
        return True
    try:
        # The schema describes every field of both versions: a v2 connection's.
        parse_client(json.dumps(frame), version=2)
        accepted = True
    except RemoteProtocolError:
        accepted = False
    return validator.is_valid(frame) == accepted


#: Values tried in every field: each type, and topics on both sides of the grammar.
PROBES = [None, True, False, 0, 1, -1, 2.5, [], [1], {}, {"k": 1}]
PROBES += ["", "a", "a.b", "a.*", "a.>", ">", "a b", "a..b", "room*"]


@pytest.mark.parametrize("op", sorted(VALID_CLIENT_OBJECTS))
def test_the_schema_agrees_with_parse_client_on_every_field_of_every_op(op, validators):
    base = VALID_CLIENT_OBJECTS[op]
    variants = [{k: v for k, v in base.items() if k != name} for name in base]
    for name in [*field_values, "data", "extra"]:
        variants += [{**base, name: probe} for probe in PROBES]
    disagree = [f for f in variants if not parser_and_schema_agree(f, validators["client_frame"])]
    assert disagree == []


@given(frame_objects)
def test_the_schema_accepts_exactly_the_client_frames_parse_client_accepts(validators, frame):
    assert parser_and_schema_agree(frame, validators["client_frame"]), frame


# -- docs/protocol.md stays true -----------------------------------------------------

PROTOCOL_MD = SCHEMA_PATH.with_name("protocol.md")


def doc_blocks(language: str) -> list[str]:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_every_json_frame_example_in_the_protocol_doc_is_valid_per_the_schema(validators):
    frames = [json.loads(b) for b in doc_blocks("json") if b.startswith('{"op"')]
    assert {f["op"] for f in frames} == {*CLIENT_FIELDS, *SERVER_OPS}
    for frame in frames:
        validators["frame"].validate(frame)


def test_every_hub_line_of_the_protocol_doc_transcripts_is_a_valid_server_frame(validators):
    lines = [line for block in doc_blocks("text") for line in block.splitlines()]
    answers = [line.split("< ", 1)[1] for line in lines if re.match(r"^(?:[AB] )?< ", line)]
    assert len(answers) > 20
    for text in answers:
        parse_server(text)
        validators["server_frame"].validate(json.loads(text))


def test_the_protocol_doc_has_a_row_for_every_error_code_and_close_code():
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    for code in ErrorCode:
        assert f"| `{code}` |" in text
    for close in CloseCode:
        assert f"| {int(close)} |" in text


# -- input that once slipped through (each was a bug) ------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"op":"pub","topic":"a","data":"\\ud800"}',
        '{"op":"pub","topic":"a","data":{"\\udfff":1}}',
        '{"op":"pub","topic":"a.\\ud800"}',
        '{"op":"sub","sid":"\\ud800","topic":">"}',
    ],
    ids=["data", "data-key", "topic", "sid"],
)
def test_a_lone_surrogate_escape_is_rejected_or_re_encoded_as_valid_utf8(text):
    # JSON may escape a lone surrogate ("\ud800"); Python decodes it to a
    # str that has no UTF-8 form.  Forwarded as is, it makes the hub's
    # writer raise UnicodeEncodeError and drop every matching subscriber
    # (close 1006).  Either refuse it here or encode it escaped.
    try:
        event = parse_client(text)
    except RemoteProtocolError as exc:
        assert exc.code in (ErrorCode.BAD_JSON, ErrorCode.BAD_FRAME, ErrorCode.BAD_TOPIC)
        return
    encode(event).encode("utf-8")
    if isinstance(event, Pub):
        encode_msg(1, event.topic, event.data, event.headers, event.reply_to).encode("utf-8")


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1E400"])
def test_a_number_too_large_for_a_double_is_bad_json(number):
    # json.loads turns 1e999 into inf: the hub acks the pub, then cannot
    # encode the msg (allow_nan=False) and silently drops it.
    exc = rejection(f'{{"op":"pub","topic":"a","data":{number},"id":1}}')
    assert exc.code is ErrorCode.BAD_JSON


@pytest.mark.parametrize("protocol", ['"1"', "null", "true", "[1]"])
def test_parse_server_rejects_a_welcome_whose_protocol_is_not_an_integer(protocol):
    text = f'{{"op":"welcome","protocol":{protocol},"server":"hub","peer":"p1"}}'
    assert rejection(text, parse_server).code is ErrorCode.BAD_FRAME


def test_msg_prefix_and_body_splice_into_the_frame_encode_writes() -> None:
    body = encode_msg_body("a.b", {"x": [1, "é"]}, {"k": "v"}, "_INBOX.1")
    assert body.startswith(',"topic":')
    assert msg_prefix(7) + body == encode(Msg(7, "a.b", {"x": [1, "é"]}, {"k": "v"}, "_INBOX.1"))
    assert msg_prefix("s") + body == encode_msg("s", "a.b", {"x": [1, "é"]}, {"k": "v"}, "_INBOX.1")
