"""greenbus.session: the hub side of one connection's protocol state, sans-I/O.

Strings in, events and answer frames out: authentication, subscriptions,
every refusal and the decision to close, each fed the text a peer sends.
"""

from __future__ import annotations

import json

import pytest
from frames import TOKEN, anonymous, nested, sent, with_token

import greenbus.protocol as protocol
from greenbus.acl import InboxOwners
from greenbus.protocol import (
    CloseCode,
    ErrorCode,
    Pub,
    Sub,
    Unsub,
    parse_client,
)
from greenbus.session import HubSession, SessionLimits, SessionState

#: Every test here runs with both codecs (conftest's ``codec``).
pytestmark = pytest.mark.usefixtures("codec")


# -- HubSession: auth -----------------------------------------------------------------


def test_an_anonymous_session_is_open_and_accepts_sub_at_once():
    session = anonymous()
    assert session.state is SessionState.OPEN
    event = session.receive('{"op":"sub","sid":1,"topic":"a.>"}')
    assert event == Sub(1, "a.>")
    assert session.sids == {1: "a.>"}
    assert sent(session) == []


def test_an_anonymous_session_accepts_pub_at_once_and_returns_it():
    session = anonymous()
    assert session.receive('{"op":"pub","topic":"a","data":1}') == Pub("a", 1)
    assert sent(session) == []


def test_an_anonymous_session_still_answers_hello_with_welcome():
    session = anonymous()
    assert session.receive('{"op":"hello","protocol":1,"name":"alice","id":1}') is None
    assert sent(session) == [
        {"op": "welcome", "protocol": 1, "server": "hub", "peer": "p1", "id": 1}
    ]  # the version the client said it speaks
    assert session.name == "alice"
    assert session.state is SessionState.OPEN


def test_an_anonymous_session_ignores_a_token_in_hello():
    session = anonymous()
    session.receive('{"op":"hello","protocol":1,"token":"anything"}')
    assert [f["op"] for f in sent(session)] == ["welcome"]


def test_a_token_session_waits_for_hello():
    assert with_token().state is SessionState.AWAITING_HELLO


@pytest.mark.parametrize(
    "first",
    [
        '{"op":"sub","sid":1,"topic":"a","id":9}',
        '{"op":"pub","topic":"a","id":9}',
        '{"op":"ping","id":9}',
        '{"op":"unsub","sid":1,"id":9}',
    ],
)
def test_a_token_session_answers_anything_but_hello_first_with_unauthorized_and_1008(first):
    session = with_token()
    assert session.receive(first) is None
    assert [(f["code"], f["id"]) for f in sent(session)] == [("unauthorized", 9)]
    assert session.state is SessionState.CLOSING
    assert session.close_code is CloseCode.POLICY


@pytest.mark.parametrize("garbage", ["hello", "[]", '{"op":"nope"}', '{"op":"hello"}'])
def test_a_token_session_answers_a_bad_first_frame_with_unauthorized_and_1008(garbage):
    session = with_token()
    assert session.receive(garbage) is None
    assert [f["code"] for f in sent(session)] == ["unauthorized"]
    assert session.state is SessionState.CLOSING
    assert session.close_code is CloseCode.POLICY


@pytest.mark.parametrize(
    "hello",
    [
        '{"op":"hello","protocol":1,"token":"guess","id":1}',
        '{"op":"hello","protocol":1,"token":"S3CRET","id":1}',
        '{"op":"hello","protocol":1,"token":"","id":1}',
        '{"op":"hello","protocol":1,"token":null,"id":1}',
        '{"op":"hello","protocol":1,"id":1}',
    ],
    ids=["wrong", "wrong-case", "empty", "null", "missing"],
)
def test_a_wrong_or_missing_token_gets_unauthorized_and_1008(hello):
    session = with_token()
    assert session.receive(hello) is None
    frames = sent(session)
    assert [(f["code"], f["id"]) for f in frames] == [("unauthorized", 1)]
    assert session.state is SessionState.CLOSING
    assert session.close_code is CloseCode.POLICY
    assert session.close_code == 1008
    assert TOKEN not in frames[0]["reason"]


def test_the_right_token_gets_welcome_and_opens_the_session():
    session = with_token()
    hello = f'{{"op":"hello","protocol":1,"token":"{TOKEN}","name":"bob","id":"h"}}'
    assert session.receive(hello) is None
    assert sent(session) == [
        {"op": "welcome", "protocol": 1, "server": "hub", "peer": "p1", "id": "h"}
    ]
    assert session.state is SessionState.OPEN
    assert session.name == "bob"
    assert session.receive('{"op":"sub","sid":1,"topic":"a"}') == Sub(1, "a")


def test_a_second_hello_with_a_wrong_token_closes_an_open_session():
    session = with_token()
    session.receive(f'{{"op":"hello","protocol":1,"token":"{TOKEN}"}}')
    session.take_outbox()
    session.receive('{"op":"hello","protocol":1,"token":"guess"}')
    assert [f["code"] for f in sent(session)] == ["unauthorized"]
    assert session.close_code is CloseCode.POLICY


# -- HubSession: subscriptions and errors -------------------------------------------


def test_a_duplicate_sid_is_refused_and_the_first_subscription_kept():
    session = anonymous()
    session.receive('{"op":"sub","sid":"s","topic":"a"}')
    assert session.receive('{"op":"sub","sid":"s","topic":"b","id":2}') is None
    assert [(f["code"], f["id"]) for f in sent(session)] == [("duplicate_sid", 2)]
    assert session.sids == {"s": "a"}
    assert session.state is SessionState.OPEN


def test_a_string_sid_and_a_numeric_sid_are_different_sids():
    session = anonymous()
    assert session.receive('{"op":"sub","sid":"1","topic":"a"}') is not None
    assert session.receive('{"op":"sub","sid":1,"topic":"a"}') is not None
    assert len(session.sids) == 2


def test_unsub_of_an_unknown_sid_is_refused():
    session = anonymous()
    assert session.receive('{"op":"unsub","sid":"nope","id":8}') is None
    assert [(f["code"], f["id"]) for f in sent(session)] == [("unknown_sid", 8)]


def test_unsub_returns_the_event_and_frees_the_sid_for_reuse():
    session = anonymous()
    session.receive('{"op":"sub","sid":"s","topic":"a"}')
    assert session.receive('{"op":"unsub","sid":"s","id":1}') == Unsub("s", 1)
    assert session.sids == {}
    assert session.receive('{"op":"sub","sid":"s","topic":"b"}') == Sub("s", "b")
    assert sent(session) == []


def test_a_sub_past_max_subscriptions_gets_limit_until_one_is_unsubscribed():
    session = anonymous(max_subscriptions=2)
    session.receive('{"op":"sub","sid":1,"topic":"a"}')
    session.receive('{"op":"sub","sid":2,"topic":"b"}')
    assert session.receive('{"op":"sub","sid":3,"topic":"c","id":"x"}') is None
    frames = sent(session)
    assert [(f["code"], f["id"]) for f in frames] == [("limit", "x")]
    assert "2" in frames[0]["reason"]
    session.receive('{"op":"unsub","sid":1}')
    assert session.receive('{"op":"sub","sid":3,"topic":"c"}') == Sub(3, "c")


def test_a_protocol_error_leaves_the_session_open():
    session = anonymous()
    session.receive("not json")
    assert [f["code"] for f in sent(session)] == ["bad_json"]
    assert session.state is SessionState.OPEN
    assert session.close_code is None
    assert session.receive('{"op":"ping"}') is None


def test_errors_up_to_max_errors_keep_the_session_open():
    session = anonymous(max_errors=3)
    for _ in range(3):
        session.receive("x")
    assert session.errors == 3
    assert session.state is SessionState.OPEN


def test_one_error_past_max_errors_closes_with_1008_after_sending_that_error():
    session = anonymous(max_errors=3)
    for _ in range(4):
        session.receive('{"op":"nope","id":1}')
    frames = sent(session)
    assert [f["code"] for f in frames] == ["unknown_op"] * 4
    assert frames[-1]["id"] == 1
    assert session.state is SessionState.CLOSING
    assert session.close_code is CloseCode.POLICY
    assert "4" in session.close_reason


def test_every_kind_of_refusal_counts_towards_max_errors():
    session = anonymous(max_errors=4, max_subscriptions=1)
    session.receive('{"op":"sub","sid":1,"topic":"a"}')
    for text in [
        "x",  # bad_json
        '{"op":"sub","sid":1,"topic":"b"}',  # duplicate_sid
        '{"op":"sub","sid":2,"topic":"b"}',  # limit
        '{"op":"unsub","sid":9}',  # unknown_sid
        '{"op":"pub","topic":"a.*"}',  # bad_topic
    ]:
        session.receive(text)
    assert [f["code"] for f in sent(session)] == [
        "bad_json",
        "duplicate_sid",
        "limit",
        "unknown_sid",
        "bad_topic",
    ]
    assert session.close_code is CloseCode.POLICY


def test_max_errors_zero_closes_on_the_first_error():
    session = anonymous(max_errors=0)
    session.receive("x")
    assert session.close_code is CloseCode.POLICY


def test_the_session_uses_its_max_depth():
    session = anonymous(max_depth=3)
    assert session.receive(nested(3)) is not None
    session.receive(nested(4, id=4))
    assert [(f["code"], f["id"]) for f in sent(session)] == [("bad_json", 4)]


def test_ping_is_answered_with_pong_echoing_the_id_and_no_ack():
    session = anonymous()
    assert session.receive('{"op":"ping","id":"p1"}') is None
    assert session.receive('{"op":"ping","id":2}') is None
    assert session.receive('{"op":"ping"}') is None
    assert sent(session) == [{"op": "pong", "id": "p1"}, {"op": "pong", "id": 2}, {"op": "pong"}]


@pytest.mark.parametrize(
    "text",
    [
        '{"op":"sub","sid":2,"topic":"a","id":"i"}',
        '{"op":"pub","topic":"a","id":"i"}',
        '{"op":"unsub","sid":1,"id":"i"}',
    ],
)
def test_ack_is_sent_only_for_an_event_with_an_id(text):
    session = anonymous()
    session.sids[1] = "a"
    event = session.receive(text)
    assert event is not None
    session.ack(event)
    assert sent(session) == [{"op": "ack", "id": "i"}]
    session.ack(parse_client(text.replace(',"id":"i"', "")))
    assert sent(session) == []


@pytest.mark.parametrize("id_", [0, 7, -3, 2**70, "7", 1.5])
@pytest.mark.parametrize(("pos", "recovered"), [(None, None), ("ab:1:2", None), ("ab:1:2", True)])
def test_an_ack_is_the_text_encode_writes_whatever_its_id_and_fields(id_, pos, recovered):
    session = anonymous()
    session.receive('{"op":"hello","protocol":2}')
    session.take_outbox()
    session.ack(Sub(1, "a", id_), pos=pos, recovered=recovered)
    assert session.take_outbox() == [protocol.encode(protocol.Ack(id_, pos, recovered))]


def test_frames_leave_the_outbox_in_the_order_they_were_queued():
    session = anonymous()
    session.receive('{"op":"ping","id":1}')
    session.receive("x")
    session.receive('{"op":"hello","protocol":1,"id":3}')
    session.ack(Pub("a", id=4))
    assert [f["op"] for f in sent(session)] == ["pong", "error", "welcome", "ack"]


def test_take_outbox_returns_and_clears_the_queued_frames():
    session = anonymous()
    session.receive('{"op":"ping"}')
    assert session.take_outbox() == ['{"op":"pong"}']
    assert session.take_outbox() == []


def test_a_closing_session_ignores_all_input():
    session = anonymous(max_errors=0)
    session.receive("x")
    session.take_outbox()
    errors = session.errors
    for text in ['{"op":"ping","id":1}', '{"op":"sub","sid":1,"topic":"a"}', "x", "[]"]:
        assert session.receive(text) is None
    assert session.take_outbox() == []
    assert session.sids == {}
    assert session.errors == errors


def test_a_token_session_ignores_the_right_hello_after_deciding_to_close():
    session = with_token()
    session.receive('{"op":"ping"}')
    session.take_outbox()
    assert session.receive(f'{{"op":"hello","protocol":1,"token":"{TOKEN}"}}') is None
    assert session.take_outbox() == []
    assert session.state is SessionState.CLOSING


def test_the_first_close_decision_wins():
    session = anonymous()
    session.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
    session.close(CloseCode.POLICY, "too many errors")
    assert session.close_code is CloseCode.TRY_AGAIN_LATER
    assert session.close_reason == "slow consumer"


def test_reject_queues_an_error_frame_and_counts_it():
    session = anonymous()
    session.reject(ErrorCode.INTERNAL, "oops", "r")
    assert sent(session) == [{"op": "error", "code": "internal", "reason": "oops", "id": "r"}]
    assert session.errors == 1


def test_the_close_codes_are_the_rfc_6455_numbers():
    assert {c.name: int(c) for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "UNSUPPORTED_DATA": 1003,
        "INVALID_DATA": 1007,
        "POLICY": 1008,
        "TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "SERVICE_RESTART": 1012,
        "TRY_AGAIN_LATER": 1013,
    }


def test_the_error_codes_are_those_of_the_specification():
    assert {str(c) for c in ErrorCode} == {
        "bad_json",
        "bad_frame",
        "unknown_op",
        "bad_topic",
        "unauthorized",
        "forbidden",
        "unsupported_protocol",
        "duplicate_sid",
        "unknown_sid",
        "limit",
        "slow_consumer",
        "internal",
        "unavailable",
    }


@pytest.mark.parametrize(
    "first",
    [
        f'{{"op":"hello","protocol":3,"token":"{TOKEN}","id":7}}',
        f'{{"op":"hello","protocol":1,"token":"{TOKEN}","extra":1,"id":7}}',
        '{"op":"nope","id":7}',
    ],
    ids=["other-version", "unknown-field", "unknown-op"],
)
def test_the_unauthorized_answer_to_a_bad_first_frame_echoes_its_readable_id(first):
    session = with_token()
    session.receive(first)
    assert [(f["code"], f.get("id")) for f in sent(session)] == [("unauthorized", 7)]
    assert session.close_code is CloseCode.POLICY


def test_a_session_counts_its_error_frames_by_code_in_a_dict_it_may_share() -> None:
    shared: dict[str, int] = {}
    one = HubSession(server="hub", peer="p1", error_counts=shared)
    two = HubSession(server="hub", peer="p2", error_counts=shared)
    one.receive("not json")
    one.receive('{"op":"nope"}')
    two.receive("{")
    two.receive('{"op":"unsub","sid":"x"}')
    assert shared == {"bad_json": 2, "unknown_op": 1, "unknown_sid": 1}
    assert [f["code"] for f in sent(one)] == ["bad_json", "unknown_op"]
    assert anonymous().error_counts == {}  # its own dict by default


# -- inbox ownership in the session -------------------------------------------------


def test_a_session_claims_an_exact_inbox_and_another_session_is_forbidden_it() -> None:
    owners = InboxOwners()
    one = HubSession(server="hub", peer="p1", inboxes=owners)
    two = HubSession(server="hub", peer="p2", inboxes=owners)
    assert one.receive('{"op":"sub","sid":1,"topic":"_INBOX.x1","id":1}') == Sub(1, "_INBOX.x1", 1)
    assert two.receive('{"op":"sub","sid":1,"topic":"_INBOX.x1","id":7}') is None
    (frame,) = two.take_outbox()
    assert json.loads(frame) == {
        "op": "error",
        "code": "forbidden",
        "reason": "inbox '_INBOX.x1' belongs to another requester",
        "id": 7,
    }
    assert two.sids == {}  # refused, so not held
    assert two.errors == 1


def test_unsub_and_the_end_of_a_session_release_its_inboxes() -> None:
    owners = InboxOwners()
    one = HubSession(server="hub", peer="p1", inboxes=owners)
    one.receive('{"op":"sub","sid":1,"topic":"_INBOX.a"}')
    one.receive('{"op":"sub","sid":2,"topic":"_INBOX.b"}')
    one.receive('{"op":"unsub","sid":1}')
    assert owners.owner("_INBOX.a") is None
    assert owners.owner("_INBOX.b") == "p1"
    one.end()
    assert len(owners) == 0


def test_a_refused_sub_claims_no_inbox() -> None:
    owners = InboxOwners()
    one = HubSession(server="hub", peer="p1", inboxes=owners, limits=SessionLimits(1))
    one.receive('{"op":"sub","sid":1,"topic":"a"}')
    assert one.receive('{"op":"sub","sid":2,"topic":"_INBOX.a"}') is None  # over the limit
    assert owners.owner("_INBOX.a") is None
