"""The WebSocket hub, end to end: real sockets on 127.0.0.1, real processes.

Most tests run ``python -m greenbus serve --port 0`` in a child process
(the ``hub_process`` fixture) and talk to it as a third-party client would:
with the ``websockets`` sync client, or with :class:`RawClient`, a bare
socket driven by ``websockets``' sans-I/O ``ClientProtocol`` that sends
exactly the frames it is told to and reads only when asked.  Tests that need
the hub's bus in the test process (local emit, local responders,
``hello_timeout``) serve it in-process and use gevent clients only
(``greenbus.connect`` or a :class:`RawClient`), since a blocking client
would block the hub's own loop.

The sections follow the protocol: every op and answer, every error code,
every close code, ordering, request/reply, reconnecting, slow consumers,
cleanup after disconnects, the plain HTTP endpoints, and the CLI.
"""

from __future__ import annotations

import contextlib
import gc
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import gevent
import pytest
from conftest import HubProcess, child_env, run_child, start_child, stop_process
from gevent import socket as gsocket
from hubclient import (
    RawClient,
    ask,
    client,
    in_step,
    metric_eventually,
    recv,
    send,
    until_closed,
)
from waiting import OSThread, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection

import greenbus
from greenbus import HubServer, RemoteBus

TOKEN = "s3cret"


# -- 1. every op and its answer -------------------------------------------------


def test_hello_is_answered_with_a_welcome_naming_the_hub_and_the_peer(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as ws:
        welcome = ask(ws, op="hello", protocol=1, name="alice", id="h1")
    assert welcome["op"] == "welcome"
    assert welcome["protocol"] == 1
    assert welcome["server"] == "greenbus"
    assert welcome["peer"].startswith("p")
    assert welcome["id"] == "h1"


def test_each_connection_is_welcomed_as_a_different_peer(hub_process: HubProcess) -> None:
    with client(hub_process.url) as a, client(hub_process.url) as b:
        peers = {ask(ws, op="hello", protocol=1, name=n)["peer"] for ws, n in ((a, "a"), (b, "b"))}
    assert len(peers) == 2


def test_a_sub_with_an_id_is_acknowledged_with_that_id(hub_process: HubProcess) -> None:
    with client(hub_process.url) as ws:
        assert ask(ws, op="sub", sid=1, topic="chat.>", id=7) == {"op": "ack", "id": 7}
        assert ask(ws, op="sub", sid="two", topic="chat.*", id="x") == {"op": "ack", "id": "x"}


def test_a_pub_reaches_the_subscriber_as_a_msg_with_its_headers_and_reply_to(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as subscriber, client(hub_process.url) as publisher:
        ask(subscriber, op="sub", sid="s1", topic="chat.>", id=1)
        ack = ask(
            publisher,
            op="pub",
            topic="chat.room1",
            data={"text": "hi", "n": [1, 2.5, None, True]},
            headers={"trace": "abc", "n": 3},
            reply_to="inbox.42",
            id=2,
        )
        msg = recv(subscriber)
    assert ack == {"op": "ack", "id": 2}
    assert msg == {
        "op": "msg",
        "sid": "s1",
        "topic": "chat.room1",
        "data": {"text": "hi", "n": [1, 2.5, None, True]},
        "headers": {"trace": "abc", "n": 3},
        "reply_to": "inbox.42",
    }


def test_a_pub_without_data_headers_or_reply_to_arrives_with_data_null(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as subscriber, client(hub_process.url) as publisher:
        ask(subscriber, op="sub", sid=1, topic="ev", id=1)
        send(publisher, op="pub", topic="ev")
        assert recv(subscriber) == {"op": "msg", "sid": 1, "topic": "ev", "data": None}


def test_a_message_matching_two_subscriptions_of_one_peer_arrives_once_per_sid(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as ws:
        ask(ws, op="sub", sid="exact", topic="a.b", id=1)
        ask(ws, op="sub", sid="wild", topic="a.*", id=2)
        send(ws, op="pub", topic="a.b", data=1, id=3)
        got = [recv(ws), recv(ws), recv(ws)]
    # The ack shares the peer's FIFO: it follows every message routed before it.
    assert got[2] == {"op": "ack", "id": 3}
    assert sorted(m["sid"] for m in got[:2]) == ["exact", "wild"]
    assert {m["data"] for m in got[:2]} == {1}


def test_an_unsub_is_acknowledged_and_no_more_messages_arrive_on_that_sid(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as subscriber, client(hub_process.url) as publisher:
        ask(subscriber, op="sub", sid="gone", topic="news.a", id=1)
        ask(subscriber, op="sub", sid="marker", topic="marker", id=2)
        send(publisher, op="pub", topic="news.a", data="before")
        assert recv(subscriber)["data"] == "before"
        assert ask(subscriber, op="unsub", sid="gone", id=3) == {"op": "ack", "id": 3}
        # The hub routes one publisher's messages in order: had "after"
        # reached the subscriber, it would come before the marker.
        send(publisher, op="pub", topic="news.a", data="after")
        send(publisher, op="pub", topic="marker", data="end")
        assert recv(subscriber) == {"op": "msg", "sid": "marker", "topic": "marker", "data": "end"}


@pytest.mark.parametrize(
    ("ping", "pong"),
    [
        ({"op": "ping"}, {"op": "pong"}),
        ({"op": "ping", "id": 5}, {"op": "pong", "id": 5}),
        ({"op": "ping", "id": "p-1"}, {"op": "pong", "id": "p-1"}),
    ],
    ids=["without-id", "numeric-id", "string-id"],
)
def test_a_ping_is_answered_with_a_pong_echoing_its_id(
    hub_process: HubProcess, ping: dict[str, Any], pong: dict[str, Any]
) -> None:
    with client(hub_process.url) as ws:
        assert ask(ws, **ping) == pong


def test_without_a_token_peers_may_sub_and_pub_without_hello(hub_process: HubProcess) -> None:
    with client(hub_process.url) as subscriber, client(hub_process.url) as publisher:
        assert ask(subscriber, op="sub", sid=1, topic="anon", id=1) == {"op": "ack", "id": 1}
        assert ask(publisher, op="pub", topic="anon", data="x", id=1) == {"op": "ack", "id": 1}
        assert recv(subscriber)["data"] == "x"


@pytest.mark.parametrize("hub_process", [("--token", TOKEN)], indirect=True)
def test_a_token_hub_welcomes_a_hello_with_the_right_token_and_then_serves_it(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as ws:
        welcome = ask(ws, op="hello", protocol=1, token=TOKEN, name="bob", id=1)
        assert welcome["op"] == "welcome"
        assert ask(ws, op="sub", sid=1, topic="t", id=2) == {"op": "ack", "id": 2}
        send(ws, op="pub", topic="t", data=1, id=3)
        assert recv(ws) == {"op": "msg", "sid": 1, "topic": "t", "data": 1}
        assert recv(ws) == {"op": "ack", "id": 3}


def test_sids_are_json_values_so_1_and_1_0_are_one_sid_and_1_and_quoted_1_are_two(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as ws:
        assert ask(ws, op="sub", sid=1, topic="s", id="a") == {"op": "ack", "id": "a"}
        assert ask(ws, op="sub", sid="1", topic="s", id="b") == {"op": "ack", "id": "b"}
        assert ask(ws, op="sub", sid=1.0, topic="s", id="c")["code"] == "duplicate_sid"
        send(ws, op="pub", topic="s", data=0)
        sids = [recv(ws)["sid"], recv(ws)["sid"]]
    # Each comes back with the JSON type it was sent with.
    assert sorted(sids, key=repr) == ["1", 1]
    assert {type(sid) for sid in sids} == {int, str}


def test_the_hub_negotiates_no_extension_even_when_compression_is_offered(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url, compression="deflate") as ws:
        assert ws.protocol.extensions == []
        assert ws.subprotocol is None
        assert ask(ws, op="ping", id=1) == {"op": "pong", "id": 1}


def test_the_websocket_path_is_ignored(hub_process: HubProcess) -> None:
    with client(hub_process.url + "any/path?x=1") as ws:
        assert ask(ws, op="ping", id=1) == {"op": "pong", "id": 1}


# -- 2. every error code ----------------------------------------------------------

#: (case, frames sent first, the bad frame, expected code, expected id)
PROTOCOL_ERRORS = [
    ("bad_json", [], '{"op": "ping"', "bad_json", None),
    ("bad_json-nan", [], '{"op": "pub", "topic": "a", "data": NaN, "id": 1}', "bad_json", None),
    (
        "bad_json-too-deep",
        [],
        # 33 levels of nesting (the frame object is one): over the default 32.
        '{"op": "pub", "topic": "a", "id": 9, "data": ' + "[" * 32 + "]" * 32 + "}",
        "bad_json",
        9,
    ),
    ("bad_frame-not-an-object", [], "[1, 2]", "bad_frame", None),
    ("bad_frame-no-op", [], '{"id": 3}', "bad_frame", 3),
    ("bad_frame-missing-field", [], '{"op": "sub", "sid": 1, "id": 4}', "bad_frame", 4),
    (
        "bad_frame-wrong-type",
        [],
        '{"op": "sub", "sid": [1], "topic": "a", "id": 5}',
        "bad_frame",
        5,
    ),
    ("bad_frame-unknown-field", [], '{"op": "ping", "colour": "red", "id": 6}', "bad_frame", 6),
    ("unknown_op", [], '{"op": "publish", "topic": "a", "id": 7}', "unknown_op", 7),
    ("bad_topic-pub", [], '{"op": "pub", "topic": "a..b", "id": 8}', "bad_topic", 8),
    ("bad_topic-wildcard-pub", [], '{"op": "pub", "topic": "a.*", "id": 8}', "bad_topic", 8),
    ("bad_topic-sub", [], '{"op": "sub", "sid": 1, "topic": "a.>.b", "id": 9}', "bad_topic", 9),
    (
        "bad_topic-reply_to",
        [],
        '{"op": "pub", "topic": "a", "reply_to": "x y", "id": 1}',
        "bad_topic",
        1,
    ),
    (
        "unsupported_protocol",
        [],
        '{"op": "hello", "protocol": 3, "id": 10}',
        "unsupported_protocol",
        10,
    ),
    (
        "duplicate_sid",
        [{"op": "sub", "sid": "s", "topic": "a", "id": 1}],
        '{"op": "sub", "sid": "s", "topic": "b", "id": 11}',
        "duplicate_sid",
        11,
    ),
    ("unknown_sid", [], '{"op": "unsub", "sid": "nope", "id": 12}', "unknown_sid", 12),
    (
        "limit",
        [{"op": "sub", "sid": n, "topic": f"t{n}", "id": n} for n in range(3)],
        '{"op": "sub", "sid": 3, "topic": "t3", "id": 13}',
        "limit",
        13,
    ),
]


@pytest.mark.parametrize("hub_process", [("--max-subscriptions", "3")], indirect=True)
@pytest.mark.parametrize(
    ("before", "bad", "code", "id"),
    [case[1:] for case in PROTOCOL_ERRORS],
    ids=[case[0] for case in PROTOCOL_ERRORS],
)
def test_a_protocol_error_is_answered_with_its_code_and_the_connection_stays_open(
    hub_process: HubProcess, before: list[dict[str, Any]], bad: str, code: str, id: Any
) -> None:
    with client(hub_process.url) as ws:
        for frame in before:
            assert ask(ws, **frame)["op"] == "ack"
        ws.send(bad)
        error = recv(ws)
        assert error["op"] == "error"
        assert error["code"] == code
        assert error["reason"]
        assert error.get("id") == id
        assert ask(ws, op="ping", id="after") == {"op": "pong", "id": "after"}
    assert hub_process.metrics()[f'greenbus_errors_total{{code="{code}"}}'] == 1


@pytest.mark.parametrize("hub_process", [("--max-subscriptions", "3")], indirect=True)
def test_a_subscription_slot_freed_by_unsub_can_be_used_again(hub_process: HubProcess) -> None:
    with client(hub_process.url) as ws:
        for n in range(3):
            ask(ws, op="sub", sid=n, topic="t", id=n)
        assert ask(ws, op="sub", sid=3, topic="t", id=3)["code"] == "limit"
        assert ask(ws, op="unsub", sid=0, id=4) == {"op": "ack", "id": 4}
        assert ask(ws, op="sub", sid=3, topic="t", id=5) == {"op": "ack", "id": 5}


def test_more_than_max_errors_protocol_errors_close_the_connection_with_1008(
    hub_process: HubProcess,
) -> None:
    max_errors = 20  # SessionLimits' default; the CLI has no flag for it
    with client(hub_process.url) as ws:
        for n in range(max_errors):
            assert ask(ws, op="unsub", sid=n, id=n)["code"] == "unknown_sid"
        assert ask(ws, op="ping", id="still") == {"op": "pong", "id": "still"}
        send(ws, op="unsub", sid="last", id="last")
        frames, closed = until_closed(ws)
    assert [(f["code"], f["id"]) for f in frames] == [("unknown_sid", "last")]
    assert closed == (1008, "too many protocol errors (21)")
    samples = metric_eventually(hub_process, "greenbus_connections", lambda v: v == 0)
    assert samples['greenbus_closes_total{code="1008"}'] == 1


#: Ways to fail authentication on a token hub: the first frame sent, and the
#: id the error echoes (docs/protocol.md: "with its id when readable").
UNAUTHORIZED_FIRST_FRAMES = {
    "ping-first": ('{"op": "ping", "id": 1}', 1),
    "sub-first": ('{"op": "sub", "sid": 1, "topic": "a", "id": "s"}', "s"),
    "pub-first": ('{"op": "pub", "topic": "a", "data": 1, "id": 2}', 2),
    "garbage-first": ("not json", None),
    "hello-without-token": ('{"op": "hello", "protocol": 1, "id": 3}', 3),
    "hello-with-null-token": ('{"op": "hello", "protocol": 1, "token": null, "id": 3}', 3),
    "hello-with-wrong-token": ('{"op": "hello", "protocol": 1, "token": "guess", "id": 4}', 4),
    "hello-with-empty-token": ('{"op": "hello", "protocol": 1, "token": "", "id": 5}', 5),
    "hello-with-token-prefix": ('{"op": "hello", "protocol": 1, "token": "s3cre", "id": 6}', 6),
    "hello-with-token-number": ('{"op": "hello", "protocol": 1, "token": 7, "id": 7}', 7),
    "hello-protocol-3": ('{"op": "hello", "protocol": 3, "token": "s3cret", "id": 8}', 8),
    "hello-unknown-field": (
        '{"op": "hello", "protocol": 1, "token": "s3cret", "x": 0, "id": 9}',
        9,
    ),
}


@pytest.mark.parametrize("hub_process", [("--token", TOKEN)], indirect=True)
@pytest.mark.parametrize(
    ("first", "id"), UNAUTHORIZED_FIRST_FRAMES.values(), ids=UNAUTHORIZED_FIRST_FRAMES.keys()
)
def test_a_token_hub_answers_anything_but_a_good_hello_with_unauthorized_and_closes_1008(
    hub_process: HubProcess, first: str, id: Any
) -> None:
    with client(hub_process.url) as ws:
        ws.send(first)
        frames, closed = until_closed(ws)
    assert [(f["op"], f["code"], f.get("id")) for f in frames] == [("error", "unauthorized", id)]
    assert closed == (1008, "unauthorized")


@pytest.mark.parametrize("hub_process", [("--token", TOKEN)], indirect=True)
def test_a_later_hello_with_a_wrong_token_is_unauthorized_too(hub_process: HubProcess) -> None:
    with client(hub_process.url) as ws:
        assert ask(ws, op="hello", protocol=1, token=TOKEN, id=1)["op"] == "welcome"
        assert ask(ws, op="hello", protocol=1, token=TOKEN, id=2)["op"] == "welcome"
        send(ws, op="hello", protocol=1, token="guess", id=3)
        frames, closed = until_closed(ws)
    assert [(f["code"], f["id"]) for f in frames] == [("unauthorized", 3)]
    assert closed == (1008, "unauthorized")


@pytest.mark.parametrize("hub_process", [("--token", TOKEN)], indirect=True)
def test_a_peer_refused_by_a_token_hub_cannot_subscribe_to_anything(
    hub_process: HubProcess,
) -> None:
    with client(hub_process.url) as intruder:
        intruder.send('{"op": "sub", "sid": 1, "topic": ">", "id": 1}')
        until_closed(intruder)
    samples = hub_process.metrics()
    assert samples["greenbus_remote_subscriptions"] == 0
    assert samples['greenbus_closes_total{code="1008"}'] == 1


def test_a_token_hub_closes_a_peer_that_sends_no_hello_within_hello_timeout_with_1008(
    local_hub: Callable[..., HubServer],
) -> None:
    hub = local_hub(token=TOKEN, hello_timeout=0.5)
    started = time.monotonic()
    with RawClient(hub.url) as raw:
        frames, closed = raw.until_closed()
    waited = time.monotonic() - started
    assert frames == [
        {"op": "error", "code": "unauthorized", "reason": "no hello with a token in time"}
    ]
    assert closed == (1008, "unauthorized")
    assert 0.4 < waited < 4.5, waited
    wait_until(lambda: not hub.peers, 5, "the peer to be forgotten")
    assert 'greenbus_timeouts_total{kind="hello"} 1\n' in hub.metrics()
    assert 'greenbus_errors_total{code="unauthorized"} 1\n' in hub.metrics()


def test_a_hello_in_time_stops_the_hello_timeout(local_hub: Callable[..., HubServer]) -> None:
    hub = local_hub(token=TOKEN, hello_timeout=0.3)
    with RawClient(hub.url) as raw:
        raw.send_json(op="hello", protocol=1, token=TOKEN, id=1)
        assert raw.recv_json()["op"] == "welcome"
        gevent.sleep(0.6)  # past the deadline: it must not fire any more
        assert raw.ask_json(op="ping", id=2) == {"op": "pong", "id": 2}


# -- 3. every close code -------------------------------------------------------------


def test_invalid_utf8_in_a_text_message_closes_with_1007(hub_process: HubProcess) -> None:
    with RawClient(hub_process.url) as raw:
        assert raw.ask_json(op="ping", id=1) == {"op": "pong", "id": 1}
        raw.send_raw(Frame(Opcode.TEXT, b"\xff\xfe").serialize(mask=True, extensions=[]))
        frames, closed = raw.until_closed()
    assert frames == []
    assert closed == (1007, "invalid UTF-8 at position 0")


def test_invalid_utf8_split_across_fragments_closes_with_1007(hub_process: HubProcess) -> None:
    # "é" is c3 a9: a text message whose two fragments each hold half of it
    # is valid; one whose second fragment is not a continuation byte is not.
    good = [
        Frame(Opcode.TEXT, b'{"op":"ping","id":"\xc3', fin=False),
        Frame(Opcode.CONT, b'\xa9"}'),
    ]
    bad = [Frame(Opcode.TEXT, b'{"op":"ping","id":"\xc3', fin=False), Frame(Opcode.CONT, b'("}')]
    with RawClient(hub_process.url) as raw:
        for frame in good:
            raw.send_raw(frame.serialize(mask=True, extensions=[]))
        assert raw.recv_json() == {"op": "pong", "id": "é"}
        for frame in bad:
            raw.send_raw(frame.serialize(mask=True, extensions=[]))
        frames, closed = raw.until_closed()
    assert frames == []
    assert closed == (1007, "invalid UTF-8 at position 19")


def test_a_binary_message_closes_with_1003(hub_process: HubProcess) -> None:
    with client(hub_process.url) as ws:
        ws.send(b'{"op": "ping"}')
        frames, closed = until_closed(ws)
    assert frames == []
    assert closed == (1003, "binary messages are not supported; send JSON text")


@pytest.mark.parametrize("hub_process", [("--max-message-size", "1024")], indirect=True)
def test_a_message_over_max_message_size_closes_with_1009(hub_process: HubProcess) -> None:
    with client(hub_process.url) as ws:
        head = '{"op":"pub","topic":"big","id":1,"data":"'
        exactly = head + "x" * (1024 - len(head) - 2) + '"}'
        assert len(exactly.encode()) == 1024
        assert ask(ws, op="sub", sid=1, topic="big", id=0)["op"] == "ack"
        ws.send(exactly)
        assert [recv(ws)["op"], recv(ws)["op"]] == ["msg", "ack"]
        ws.send(exactly[:-2] + 'x"}')
        frames, closed = until_closed(ws)
    assert frames == []
    assert closed == (1009, "frame with 1025 bytes exceeds limit of 1024 bytes")


@pytest.mark.parametrize("hub_process", [("--max-message-size", "1024")], indirect=True)
def test_a_frame_header_announcing_too_much_closes_with_1009_before_the_payload(
    hub_process: HubProcess,
) -> None:
    # A masked text frame header announcing 2**40 bytes (RFC 6455, 5.2), and
    # no payload at all: the hub must not wait for it.
    header = bytes([0x81, 0x80 | 127]) + (2**40).to_bytes(8, "big") + b"mask"
    with RawClient(hub_process.url) as raw:
        raw.send_raw(header)
        frames, closed = raw.until_closed()
    assert frames == []
    assert closed == (1009, f"frame with {2**40} bytes exceeds limit of 1024 bytes")


@pytest.mark.parametrize("hub_process", [("--token", TOKEN)], indirect=True)
def test_an_authentication_failure_closes_with_1008(hub_process: HubProcess) -> None:
    with client(hub_process.url) as ws:
        send(ws, op="hello", protocol=1, token="wrong")
        frames, closed = until_closed(ws)
    assert [f["code"] for f in frames] == ["unauthorized"]
    assert closed == (1008, "unauthorized")


def test_the_hub_ends_the_closing_handshake_at_once_when_data_precedes_the_close_reply(
    hub_process: HubProcess,
) -> None:
    # RFC 6455, section 5.5.1: a peer may send data frames until it sends
    # its own close frame.  Once the peer's close frame arrives the server
    # closes the TCP connection (section 7.1.1), whatever came before it.
    with RawClient(hub_process.url) as raw:
        raw.replying = False
        for n in range(21):  # one more than max_errors: the hub closes with 1008
            raw.send_json(op="unsub", sid=n, id=n)
        while raw.next_frame().opcode is not Opcode.CLOSE:
            pass
        raw.send_raw(Frame(Opcode.TEXT, b'{"op":"ping"}').serialize(mask=True, extensions=[]))
        # Not a wait for a condition: it only keeps the data and the close
        # reply in separate reads, so a hub that stops parsing after its own
        # close frame is exposed.  (If they were read together, this passes.)
        gevent.sleep(0.2)
        started = time.monotonic()
        raw.reply_now()  # the close reply the protocol queued
        raw.replying = True
        with pytest.raises(EOFError):
            while True:
                raw.next_frame()
        waited = time.monotonic() - started
    assert waited < 2.0, f"the hub closed the TCP connection {waited:.1f} s after the close reply"


def test_stopping_the_hub_process_closes_every_peer_with_1001(hub_process: HubProcess) -> None:
    with client(hub_process.url) as a, client(hub_process.url) as b:
        for ws in (a, b):
            assert ask(ws, op="ping")["op"] == "pong"
        hub_process.proc.send_signal(signal.SIGTERM)
        closes = [until_closed(ws)[1] for ws in (a, b)]
    assert hub_process.proc.wait(10) == 0
    assert closes == [(1001, "hub shutting down")] * 2


def test_stopping_an_in_process_hub_closes_every_peer_with_1001(
    local_hub: Callable[..., HubServer],
) -> None:
    hub = local_hub()
    with RawClient(hub.url) as a, RawClient(hub.url) as b:
        for raw in (a, b):
            raw.send_json(op="ping", id=1)
            raw.recv_json()
        stopping = gevent.spawn(hub.stop, 5)
        closes = [raw.until_closed()[1] for raw in (a, b)]
        stopping.get(timeout=10)
    assert closes == [(1001, "hub shutting down")] * 2
    assert not hub.peers


def test_a_peer_that_answers_no_keepalive_ping_is_closed_with_1011(
    local_hub: Callable[..., HubServer],
) -> None:
    hub = local_hub(ping_interval=0.2, ping_timeout=0.3)
    started = time.monotonic()
    with RawClient(hub.url) as raw:
        raw.replying = False  # the pong the protocol queues is held back
        opcodes = [raw.next_frame().opcode for _ in range(2)]
        waited = time.monotonic() - started
        raw.reply_now()  # the pong, too late, and the close reply
        raw.replying = True
        frames, closed = raw.until_closed()
    assert opcodes == [Opcode.PING, Opcode.CLOSE]
    assert frames == []
    assert closed == (1011, "keepalive ping timeout")
    assert waited > 0.4, waited
    wait_until(lambda: not hub.peers, 5, "the peer to be forgotten")
    assert 'greenbus_timeouts_total{kind="keepalive"} 1\n' in hub.metrics()


@pytest.mark.parametrize("pinged", [False, True], ids=["busy", "pinged-when-idle"])
@pytest.mark.parametrize("ending", ["close-frame", "eof", "reset"])
def test_a_closed_connection_is_freed_at_once_without_the_garbage_collector(
    local_hub: Callable[..., HubServer], pinged: bool, ending: str
) -> None:
    # No reference cycle keeps a finished peer, its connection, its protocol
    # and their buffers alive until the next full collection, however the
    # connection went (the keepalive timer's traceback, websockets' parser
    # error and the greenlets all used to make one): a hub with connections
    # coming and going keeps a flat memory profile.
    hub = local_hub(ping_interval=0.05 if pinged else None, ping_timeout=5)
    gc.collect()
    gc.disable()
    try:
        with RawClient(hub.url) as raw:
            assert raw.ask_json(op="sub", sid=1, topic="a.>", id=1) == {"op": "ack", "id": 1}
            hub.bus.emit("a.b", {"x": 1})
            assert raw.recv_json()["data"] == {"x": 1}
            if pinged:  # idle long enough for the keepalive timer to fire
                while raw.next_frame().opcode is not Opcode.PING:
                    pass
            (peer,) = hub.peers.values()
            assert peer.connection is not None
            refs = [
                weakref.ref(peer),
                weakref.ref(peer.connection),
                weakref.ref(peer.connection.protocol),
                weakref.ref(peer.session),
            ]
            del peer
            if ending == "close-frame":
                raw.protocol.send_close(1000, "bye")
                raw.reply_now()
                raw.until_closed()
            elif ending == "eof":
                raw.sock.shutdown(gsocket.SHUT_WR)
            else:
                raw.abort()
        wait_until(lambda: not hub.peers, 5, "the peer to be forgotten")
        wait_until(lambda: all(ref() is None for ref in refs), 5, "the peer to be freed")
    finally:
        gc.enable()


def test_a_peer_that_answers_keepalive_pings_stays_open(
    local_hub: Callable[..., HubServer],
) -> None:
    hub = local_hub(ping_interval=0.1, ping_timeout=0.3)
    with RawClient(hub.url) as raw:
        pings = 0
        while pings < 5:  # each one answered as it is read
            if raw.next_frame().opcode is Opcode.PING:
                pings += 1
        assert raw.ask_json(op="ping", id="still") == {"op": "pong", "id": "still"}
    assert hub.counters.closes.get(1011, 0) == 0


@pytest.mark.parametrize(
    "request_bytes", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half-a-request"]
)
def test_a_connection_that_does_not_finish_the_http_upgrade_in_time_is_closed(
    local_hub: Callable[..., HubServer], request_bytes: bytes
) -> None:
    hub = local_hub(handshake_timeout=0.3)
    with gsocket.create_connection(hub.address, timeout=5) as sock:
        sock.sendall(request_bytes)
        assert sock.recv(1024) == b""
    assert hub.counters.connections_total == 0
    assert 'greenbus_timeouts_total{kind="handshake"} 1\n' in hub.metrics()


# -- 4. ordering ----------------------------------------------------------------------


def test_five_thousand_messages_between_two_remote_peers_arrive_complete_and_in_order(
    hub_process: HubProcess,
) -> None:
    count = 5000

    def publish() -> None:
        with client(hub_process.url) as publisher:
            ask(publisher, op="hello", protocol=1, name="publisher")
            for n in range(count):
                send(publisher, op="pub", topic="seq.a", data=n)
            assert ask(publisher, op="ping", id="done") == {"op": "pong", "id": "done"}

    with client(hub_process.url) as subscriber:
        ask(subscriber, op="sub", sid="exact", topic="seq.a", id=1)
        ask(subscriber, op="sub", sid="wild", topic="seq.>", id=2)
        publisher = OSThread(publish)
        got: dict[str, list[int]] = {"exact": [], "wild": []}
        for _ in range(2 * count):
            msg = recv(subscriber, timeout=10)
            got[msg["sid"]].append(msg["data"])
        publisher.join(timeout=30)
    assert got == {"exact": list(range(count)), "wild": list(range(count))}


def remote_subscription(hub: HubServer, remote: RemoteBus, pattern: str) -> greenbus.Subscription:
    """``remote.subscribe(pattern, maxsize=None)``, returned once the hub's bus has it."""
    sub = remote.subscribe(pattern, maxsize=None)
    wait_until(lambda: len(hub.bus.interest()) == 1, 5, "the remote subscription")
    return sub


def test_a_local_emit_reaches_a_remote_subscriber_in_order(
    local_hub: Callable[..., HubServer], remote_bus: Callable[..., RemoteBus]
) -> None:
    hub = local_hub()
    sub = remote_subscription(hub, remote_bus(hub.url), "local.>")
    count = 2000
    for n in range(count):
        assert hub.bus.emit("local.seq", n, headers={"n": n}) == 1
    got = [sub.get(timeout=5) for _ in range(count)]
    assert [m.data for m in got] == list(range(count))
    assert all(m.topic == "local.seq" and m.headers == {"n": m.data} for m in got)


def test_a_remote_publisher_reaches_a_local_subscriber_in_order(
    local_hub: Callable[..., HubServer], remote_bus: Callable[..., RemoteBus]
) -> None:
    hub = local_hub()
    local = hub.bus.subscribe("remote.>", maxsize=None)
    remote = remote_bus(hub.url)
    count = 2000
    for n in range(count):
        remote.emit("remote.seq", n, reply_to="remote.inbox" if n == 0 else None)
    got = [local.get(timeout=5) for _ in range(count)]
    assert [m.data for m in got] == list(range(count))
    assert got[0].reply_to == "remote.inbox"
    assert got[1].reply_to is None


def test_two_subscribers_see_the_messages_of_two_publishers_in_one_and_the_same_order(
    hub_process: HubProcess,
) -> None:
    count = 1000

    def publish(name: str) -> None:
        with client(hub_process.url) as publisher:
            for n in range(count):
                send(publisher, op="pub", topic=f"r.{name}", data=[name, n])
            assert ask(publisher, op="ping", id="done") == {"op": "pong", "id": "done"}

    with client(hub_process.url) as first, client(hub_process.url) as second:
        ask(first, op="sub", sid=1, topic="r.>", id=1)
        ask(second, op="sub", sid=2, topic="r.*", id=1)
        publishers = [OSThread(publish, name) for name in ("p", "q")]
        seen = [
            [tuple(recv(ws, timeout=10)["data"]) for _ in range(2 * count)]
            for ws in (first, second)
        ]
        for publisher in publishers:
            publisher.join(timeout=30)
    assert seen[0] == seen[1]
    for name in ("p", "q"):
        assert [n for who, n in seen[0] if who == name] == list(range(count))


# -- 5. request/reply -----------------------------------------------------------------


def test_a_request_between_two_remote_clients_gets_the_responders_reply(
    hub_process: HubProcess, remote_bus: Callable[..., RemoteBus]
) -> None:
    responder = remote_bus(hub_process.url, name="responder")
    responder.on("svc.upper", lambda msg: msg.reply(msg.data.upper(), headers={"by": "r"}))
    in_step(responder)
    requester = remote_bus(hub_process.url, name="requester")
    reply = requester.request("svc.upper", "hello", timeout=5)
    assert reply.data == "HELLO"
    assert reply.headers == {"by": "r"}
    # Concurrent requests each get their own reply.
    jobs = [gevent.spawn(requester.request, "svc.upper", f"w{n}", timeout=5) for n in range(20)]
    assert [job.get(timeout=10).data for job in jobs] == [f"W{n}" for n in range(20)]


def test_a_remote_request_without_a_responder_times_out(
    hub_process: HubProcess, remote_bus: Callable[..., RemoteBus]
) -> None:
    requester = remote_bus(hub_process.url)
    with pytest.raises(greenbus.RequestTimeout):
        requester.request("svc.nobody", 1, timeout=0.3)


def test_a_remote_request_is_answered_by_a_local_responder(
    local_hub: Callable[..., HubServer], remote_bus: Callable[..., RemoteBus]
) -> None:
    hub = local_hub()
    hub.bus.on("svc.add", lambda msg: msg.reply(sum(msg.data)))
    requester = remote_bus(hub.url)
    assert requester.request("svc.add", [1, 2, 3], timeout=5).data == 6


def test_a_local_request_is_answered_by_a_remote_responder(
    local_hub: Callable[..., HubServer], remote_bus: Callable[..., RemoteBus]
) -> None:
    hub = local_hub()
    responder = remote_bus(hub.url)
    responder.on("svc.echo", lambda msg: msg.reply({"echo": msg.data}))
    wait_until(lambda: len(hub.bus.interest()) == 1, 5, "the responder's subscription")
    assert hub.bus.request("svc.echo", "x", timeout=5).data == {"echo": "x"}


def test_a_local_message_whose_data_is_not_json_is_skipped_and_counted(
    local_hub: Callable[..., HubServer], remote_bus: Callable[..., RemoteBus]
) -> None:
    hub = local_hub()
    remote = remote_bus(hub.url)
    sub = remote_subscription(hub, remote, "x.>")
    hub.bus.emit("x.a", 1)
    hub.bus.emit("x.a", object())
    hub.bus.emit("x.a", float("nan"))
    hub.bus.emit("x.a", 2)
    assert [sub.get(timeout=5).data, sub.get(timeout=5).data] == [1, 2]
    assert hub.counters.encode_errors == 2
    assert "greenbus_encode_errors_total 2" in hub.metrics().splitlines()
    assert remote.connected


# -- 6. reconnecting ----------------------------------------------------------------------


def test_a_client_reconnects_to_a_restarted_hub_resubscribes_and_sends_what_it_buffered(
    hub_factory: Callable[..., HubProcess], remote_bus: Callable[..., RemoteBus]
) -> None:
    first = hub_factory()
    reported: list[BaseException] = []
    remote = remote_bus(
        first.url, max_backoff=0.5, on_error=lambda exc, sub, msg: reported.append(exc)
    )
    sub = remote.subscribe("news.>", maxsize=None)
    in_step(remote)
    remote.publish("news.a", 1, timeout=5)
    assert sub.get(timeout=5).data == 1

    first.kill()
    wait_until(lambda: not remote.connected, 5, "the client to see the hub go")
    for n in (2, 3, 4):
        remote.emit("news.a", n)
    assert remote.statistics().unconfirmed == 3

    second = hub_factory(port=first.port)
    assert remote.wait_connected(10), remote
    assert [sub.get(timeout=5).data for _ in range(3)] == [2, 3, 4]
    remote.emit("news.b", 5)
    assert sub.get(timeout=5).data == 5
    stats = remote.statistics()
    assert stats.reconnects >= 1
    assert stats.unconfirmed == 0
    assert stats.dropped_while_disconnected == 0
    assert second.metrics()["greenbus_remote_subscriptions"] == 1
    # The new hub's history is not the old one's: the resume is not
    # replayed, and the client says so (docs/recovery.md, where it stops).
    assert stats.recoveries_failed == 1
    assert any(isinstance(exc, greenbus.RecoveryFailed) for exc in reported)


# -- 7. slow consumers -----------------------------------------------------------------


class FastSubscriber:
    """A sync client reading ``flood.>`` in an OS thread, recording each ``data.n``."""

    def __init__(self, url: str, count: int) -> None:
        self.count = count
        self.got: list[int] = []
        self.error: BaseException | None = None
        self.progress = threading.Condition()
        self._ws = client(url)
        self._ws.__enter__()
        assert ask(self._ws, op="sub", sid="fast", topic="flood.>", id=1)["op"] == "ack"
        self._thread = threading.Thread(target=self._run, name="fast subscriber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for _ in range(self.count):
                frame = recv(self._ws, timeout=20)
                assert frame["op"] == "msg", f"expected a msg, got {frame}"
                n = frame["data"]["n"]
                with self.progress:
                    self.got.append(n)
                    if len(self.got) % 100 == 0 or len(self.got) == self.count:
                        self.progress.notify_all()
        except BaseException as exc:
            self.error = exc
            with self.progress:
                self.progress.notify_all()

    def wait_for(self, received: int, timeout: float = 20.0) -> None:
        with self.progress:
            ok = self.progress.wait_for(
                lambda: len(self.got) >= received or self.error is not None, timeout
            )
        if self.error is not None:
            raise AssertionError(f"the fast subscriber failed after {len(self.got)}") from (
                self.error
            )
        assert ok, f"the fast subscriber has {len(self.got)} of {received} after {timeout} s"

    def close(self) -> None:
        self._ws.__exit__(None, None, None)
        self._thread.join(5)


def flood(hub: HubProcess, fast: FastSubscriber, count: int, size: int) -> int:
    """Publish ``count`` messages of ``size`` bytes; return the hub's peak RSS (KiB).

    The publisher keeps at most ``window`` (400, under ``--max-pending``)
    messages ahead of the fast subscriber, so that one keeps up whatever the
    machine's speed: no client can outrun a hub that never pushes back on
    publishers.  The never-reading peer falls behind at once.
    """
    window = 400
    padding = "x" * size
    peak = hub.rss_kib()
    with client(hub.url) as publisher:
        for n in range(count):
            if n - len(fast.got) > window:
                fast.wait_for(n - window // 2)
            if n % 5000 == 0:
                peak = max(peak, hub.rss_kib())
            send(publisher, op="pub", topic="flood.data", data={"n": n, "pad": padding})
        fast.wait_for(count)
    return max(peak, hub.rss_kib())


def flood_past(slow: RawClient, hub: HubProcess, count: int, size: int) -> int:
    """Subscribe ``slow``, a peer that does not read, to ``flood.>``, then :func:`flood`
    the hub past it while a :class:`FastSubscriber` gets everything; the peak RSS (KiB)."""
    assert slow.ask_json(op="sub", sid="slow", topic="flood.>", id=1) == {"op": "ack", "id": 1}
    fast = FastSubscriber(hub.url, count)
    try:
        peak = flood(hub, fast, count, size)
    finally:
        fast.close()
    assert fast.got == list(range(count))
    return peak


# --close-timeout 60: the slow peer reads what it was sent only after the
# flood, and its close frame must still be waiting for it then.  With 10 KB
# messages, 300,000 bytes are about 30 of them, far below max_pending's
# 10,000: the bytes limit is the one hit.
@pytest.mark.parametrize(
    ("hub_process", "count", "size", "reason"),
    [
        (
            ("--max-pending", "1000", "--close-timeout", "60"),
            50_000,
            1000,
            "more than 1000 frames pending; closing",
        ),
        (
            ("--max-pending-bytes", "300000", "--close-timeout", "60"),
            3000,
            10_000,
            "more than 300000 bytes pending; closing",
        ),
    ],
    ids=["max_pending", "max_pending_bytes"],
    indirect=["hub_process"],
)
def test_a_peer_that_never_reads_is_closed_with_1013_and_the_fast_subscriber_gets_everything(
    hub_process: HubProcess, count: int, size: int, reason: str
) -> None:
    baseline = hub_process.rss_kib()
    with RawClient(hub_process.url, rcvbuf=4096) as slow:
        peak = flood_past(slow, hub_process, count, size)
        # Now read what the never-reading peer was sent before it was cut off.
        frames, closed = slow.until_closed()
    assert closed == (1013, "slow consumer")
    assert frames[-1] == {"op": "error", "code": "slow_consumer", "reason": reason}
    delivered = [f["data"]["n"] for f in frames[:-1]]
    assert all(f["op"] == "msg" for f in frames[:-1])
    assert delivered == list(range(len(delivered)))  # a prefix, in order
    # 30-50 MB flow past the slow peer; its queue holds at most its limit
    # (about 1 MB here), so the hub grows by a few MiB (1-2 measured), not by
    # the flood.
    assert peak - baseline < 16 * 1024, f"RSS grew by {(peak - baseline) // 1024} MiB"
    samples = metric_eventually(hub_process, "greenbus_connections", lambda v: v == 0)
    assert samples["greenbus_slow_consumers_total"] == 1
    assert samples['greenbus_errors_total{code="slow_consumer"}'] == 1
    # Nothing lost silently: what it did not get was counted as dropped.
    assert samples["greenbus_dropped_total"] == count - len(delivered)
    assert samples["greenbus_remote_subscriptions"] == 0


def test_a_peer_that_stops_reading_entirely_is_aborted_when_its_close_frame_cannot_be_written(
    local_hub: Callable[..., HubServer],
) -> None:
    # The slow peer's socket buffers fill, so the hub's close frame (1013)
    # can never be written: after close_timeout the hub aborts the TCP
    # connection instead of waiting for keepalive (20 s + 20 s) to notice.
    hub = local_hub(close_timeout=0.5, max_pending_bytes=1 << 20)
    payload = "x" * 65536
    with RawClient(hub.url, rcvbuf=4096) as slow:
        assert slow.ask_json(op="sub", sid="slow", topic="big.>", id=1) == {"op": "ack", "id": 1}
        sent = 0
        while not hub.counters.slow_consumers:
            assert sent < 2000, "128 MB sent and the peer was never found slow"
            hub.bus.emit("big.data", payload)
            sent += 1
            gevent.sleep(0)  # the peer's writer runs until its socket is full
        flagged = time.monotonic()
        wait_until(lambda: not hub.peers, 10, "the slow peer to be aborted")
        gone_after = time.monotonic() - flagged
        # What reached the peer's socket before the abort, then no close frame.
        with pytest.raises((EOFError, ConnectionError)):
            while True:
                slow.next_frame()
        assert slow.protocol.close_rcvd is None
    assert gone_after < 5, f"the peer went {gone_after:.1f} s after it was found slow"
    metrics = hub.metrics()
    assert 'greenbus_timeouts_total{kind="close"} 1\n' in metrics
    assert 'greenbus_closes_total{code="1006"} 1\n' in metrics
    assert "greenbus_slow_consumers_total 1\n" in metrics


# 10-20 MB in all: more than the socket buffers take, so the queue fills.
@pytest.mark.parametrize(("size", "count"), [(1000, 10_000), (20_000, 1000)])
def test_with_drop_oldest_max_pending_bytes_bounds_the_queue_and_every_drop_is_counted(
    local_hub: Callable[..., HubServer], size: int, count: int
) -> None:
    limit = 100_000
    hub = local_hub(max_pending_bytes=limit, slow_policy="drop_oldest")
    padding = "x" * size
    with RawClient(hub.url, rcvbuf=4096) as slow:
        assert slow.ask_json(op="sub", sid="s", topic="flood.>", id=1) == {"op": "ack", "id": 1}
        (peer,) = hub.peers.values()
        most = 0
        for n in range(count):
            hub.bus.emit("flood.data", {"n": n, "pad": padding})
            most = max(most, peer.pending_bytes)
            if n % 50 == 0:
                gevent.sleep(0)
        assert 0 < most <= limit
        slow.send_json(op="ping", id="end")
        delivered = []
        while (frame := slow.recv_json())["op"] == "msg":
            delivered.append(frame["data"]["n"])
        assert frame == {"op": "pong", "id": "end"}
        assert peer.pending_bytes == 0  # every byte counted in was counted out
    assert all(a < b for a, b in pairwise(delivered))
    assert delivered[-1] == count - 1
    assert hub.counters.dropped == peer.dropped == count - len(delivered) > 0
    assert hub.counters.slow_consumers == 0


@pytest.mark.parametrize(
    "hub_process", [("--max-pending", "1000", "--slow-policy", "drop_oldest")], indirect=True
)
def test_with_drop_oldest_a_peer_that_never_reads_stays_open_and_its_drops_are_counted(
    hub_process: HubProcess,
) -> None:
    count = 20_000
    baseline = hub_process.rss_kib()
    with RawClient(hub_process.url, rcvbuf=4096) as slow:
        peak = flood_past(slow, hub_process, count, 1000)
        # Still open, and it reads on: the newest messages were kept, in order.
        # (Its pong counts toward the limit too: queued behind a full queue,
        # it makes one more message drop.)
        slow.send_json(op="ping", id="alive")
        delivered = []
        while (frame := slow.recv_json())["op"] == "msg":
            delivered.append(frame["data"]["n"])
        assert frame == {"op": "pong", "id": "alive"}
        samples = hub_process.metrics()
    # 20 MB flow past the slow peer, whose queue holds at most 1,000 of them.
    assert peak - baseline < 16 * 1024, f"RSS grew by {(peak - baseline) // 1024} MiB"
    assert samples["greenbus_slow_consumers_total"] == 0
    dropped = [v for k, v in samples.items() if k.startswith("greenbus_peer_dropped_total")]
    assert max(dropped) >= 1
    assert samples["greenbus_dropped_total"] == count - len(delivered)
    assert all(a < b for a, b in pairwise(delivered))
    assert delivered[-1] == count - 1


@pytest.mark.parametrize(
    "hub_process", [("--max-pending", "1000", "--slow-policy", "drop_oldest")], indirect=True
)
def test_with_drop_oldest_only_messages_are_dropped_never_the_pong_queued_among_them(
    hub_process: HubProcess,
) -> None:
    padding = "x" * 1000

    def publish(publisher: ClientConnection, first: int, end: int) -> None:
        for n in range(first, end):
            send(publisher, op="pub", topic="flood.data", data={"n": n, "pad": padding})
        # Answered once the hub has routed everything before it.
        assert ask(publisher, op="ping", id=end) == {"op": "pong", "id": end}

    with RawClient(hub_process.url, rcvbuf=4096) as slow, client(hub_process.url) as publisher:
        slow.send_json(op="hello", protocol=1, name="slow")
        peer = slow.recv_json()["peer"]
        assert slow.ask_json(op="sub", sid="slow", topic="flood.>", id=1) == {"op": "ack", "id": 1}
        assert ask(publisher, op="sub", sid="m", topic="marker", id=0)["op"] == "ack"
        # Chunks with a round trip between them, so the hub's writer runs:
        # the slow peer's socket buffers fill, then its queue, then it drops.
        dropped = f'greenbus_peer_dropped_total{{peer="{peer}"}}'
        sent = 0
        while hub_process.metrics()[dropped] == 0:
            assert sent < 20_000, "the slow peer never started dropping"
            publish(publisher, sent, sent + 500)
            sent += 500
        # The hub handles the slow peer's frames in order: once its marker
        # reaches the publisher, the pong is queued to the slow peer.
        slow.send_burst([{"op": "ping", "id": "slow"}, {"op": "pub", "topic": "marker"}])
        assert recv(publisher)["topic"] == "marker"
        last = sent + 2000  # more than max_pending behind the pong
        publish(publisher, sent, last)
        frames = []
        while not frames or frames[-1] != {"op": "pong", "id": "slow"}:
            frames.append(slow.recv_json())
            if frames[-1].get("data", {}).get("n") == last - 1:
                break
    pong_arrived = {"op": "pong", "id": "slow"} in frames
    assert pong_arrived, f"the pong was dropped: {len(frames)} msgs read, up to n={last - 1}"


@pytest.mark.parametrize("hub_process", [("--max-pending", "1000")], indirect=True)
def test_a_burst_from_one_publisher_does_not_starve_a_reading_subscriber(
    hub_process: HubProcess,
) -> None:
    # 1,500 messages of 1 KB, sent with one sendall, fit in the loopback
    # socket buffers: a hub that writes to the subscriber between its reads
    # of the publisher never has more than a few dozen queued for it.  A hub
    # whose reader does not yield while data is available queues all of
    # them, and closes a subscriber that was reading all along (1013).
    count = 1500
    padding = "x" * 1000
    fast = FastSubscriber(hub_process.url, count)
    try:
        with RawClient(hub_process.url) as publisher:
            publisher.send_burst(
                [
                    {"op": "pub", "topic": "flood.data", "data": {"n": n, "pad": padding}}
                    for n in range(count)
                ]
            )
            fast.wait_for(count)
    finally:
        fast.close()
    assert fast.got == list(range(count))


class Pinger:
    """Pings the hub every 20 ms from an OS thread and records the slowest answer (s)."""

    def __init__(self, url: str) -> None:
        self.slowest = 0.0
        self.answered = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ws = client(url)
        self._ws.__enter__()
        self._thread = threading.Thread(target=self._run, name="pinger", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.02):
                started = time.monotonic()
                assert ask(self._ws, op="ping", id=self.answered)["op"] == "pong"
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.answered += 1
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._ws.__exit__(None, None, None)
        if self.error is not None:
            raise AssertionError("the pinger failed") from self.error


#: Requests whose answers a flooding peer never reads: each is answered with
#: a frame (pong, ack), queued to it.  Sub and unsub alternate on one sid.
UNREAD_REQUESTS = {
    "ping": [{"op": "ping", "id": 1}],
    "pub-with-id": [{"op": "pub", "topic": "flood.unread", "data": 1, "id": 2}],
    "sub-unsub": [
        {"op": "sub", "sid": "s", "topic": "flood.unread", "id": 3},
        {"op": "unsub", "sid": "s", "id": 4},
    ],
}


@pytest.mark.parametrize("hub_transport", ["websockets"], indirect=True)
@pytest.mark.parametrize(
    "hub_process", [("--max-pending", "1000", "--close-timeout", "1")], indirect=True
)
@pytest.mark.parametrize("requests", UNREAD_REQUESTS.values(), ids=UNREAD_REQUESTS.keys())
def test_a_peer_that_never_reads_its_answers_is_cut_off_and_the_hub_stays_bounded(
    hub_process: HubProcess, requests: list[dict[str, Any]]
) -> None:
    # Issue 11: 2,000,000 unread pings once grew a hub by ~150 MiB, because
    # only msg frames counted toward a peer's limits.  Every frame queued to
    # a peer counts now: this one is a slow consumer after max_pending
    # answers beyond what the socket buffers hold, its close frame cannot
    # be written (it reads nothing), and the hub aborts it after
    # close_timeout.  Meanwhile another peer's pings are answered promptly.
    baseline = hub_process.rss_kib()
    peak = baseline
    pinger = Pinger(hub_process.url)
    cap = 2_000_000
    sent = 0
    with RawClient(hub_process.url, rcvbuf=4096) as flooder:
        # One chunk of 10,000 frames, built once and sent again and again.
        for _ in range(10_000 // len(requests)):
            for frame in requests:
                flooder.protocol.send_text(json.dumps(frame).encode())
        chunk = b"".join(flooder.protocol.data_to_send())
        frames_per_chunk = 10_000 // len(requests) * len(requests)
        with pytest.raises(OSError):  # the hub aborts the connection
            while sent < cap:
                flooder.sock.sendall(chunk)
                sent += frames_per_chunk
                peak = max(peak, hub_process.rss_kib())
    samples = metric_eventually(hub_process, "greenbus_connections", lambda v: v == 1)
    pinger.stop()
    peak = max(peak, hub_process.rss_kib())
    assert samples["greenbus_slow_consumers_total"] == 1
    assert samples['greenbus_errors_total{code="slow_consumer"}'] == 1
    # No close reply came (it reads nothing): the closing handshake timed
    # out after close_timeout (1 s).  Whether its close frame still fit in
    # the socket buffers (1013) or never got out (1006) is up to the kernel.
    assert samples['greenbus_timeouts_total{kind="close"}'] == 1
    closes = [samples.get(f'greenbus_closes_total{{code="{code}"}}', 0) for code in (1006, 1013)]
    assert sum(closes) == 1, closes
    # The frames sent before the hub cut it off, at most about 2 MB: the
    # socket buffers, plus max_pending answers, plus what arrived in the
    # second before the abort.  Memory grows by the limits, not the flood.
    assert peak - baseline < 16 * 1024, f"RSS grew by {(peak - baseline) // 1024} MiB"
    assert pinger.answered > 0
    assert pinger.slowest < 1.0, f"a ping took {pinger.slowest:.2f} s during the flood"


# -- 8. disconnects leave nothing behind --------------------------------------------------

CHILD_CLIENT = """
import sys, time
from websockets.sync.client import connect
with connect(sys.argv[1], proxy=None, compression=None, ping_interval=None) as ws:
    for n in range(3):
        ws.send('{"op": "sub", "sid": %d, "topic": "t.%d", "id": %d}' % (n, n, n))
        ws.recv(5)
    print("ready", flush=True)
    time.sleep(60)
"""


def test_clients_that_disconnect_in_any_way_leave_no_connections_or_subscriptions(
    hub_process: HubProcess,
) -> None:
    url = hub_process.url
    # Cleanly: a close handshake.
    for n in range(15):
        with client(url) as ws:
            ask(ws, op="hello", protocol=1, name=f"clean{n}")
            for sid in range(3):
                ask(ws, op="sub", sid=sid, topic=f"clean.{sid}", id=sid)
    with contextlib.ExitStack() as stack:
        raws = [stack.enter_context(RawClient(url)) for _ in range(30)]
        for raw in raws:
            for sid in range(3):
                raw.send_json(op="sub", sid=sid, topic=f"raw.{sid}.>", id=sid)
            assert [raw.recv_json()["op"] for _ in range(3)] == ["ack"] * 3
        children = []
        for _ in range(3):
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD_CLIENT, url],
                env=child_env(),
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            stack.callback(stop_process, child)
            children.append(child)
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
        samples = metric_eventually(hub_process, "greenbus_connections", lambda v: v == 33)
        assert samples["greenbus_remote_subscriptions"] == 99
        # Abruptly: FIN without a close frame, RST, half a frame then FIN.
        half = Frame(Opcode.TEXT, b'{"op": "ping"}').serialize(mask=True, extensions=[])[:5]
        for n, raw in enumerate(raws):
            if n % 3 == 1:
                raw.abort()
            elif n % 3 == 2:
                raw.send_raw(half)
            raw.sock.close()
        # A whole client process dies: the kernel closes its socket.
        for child in children:
            child.kill()
            child.wait(5)
    # Half-done handshakes and bare TCP connections are not peers either.
    for data in (b"", b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"):
        with socket.create_connection((hub_process.host, hub_process.port), timeout=5) as sock:
            sock.sendall(data)
    samples = metric_eventually(hub_process, "greenbus_connections", lambda v: v == 0)
    assert samples["greenbus_remote_subscriptions"] == 0
    assert samples["greenbus_connections_total"] == 48
    # Every connection ended once: 15 with a close frame, 33 without (1006).
    closes = {k: v for k, v in samples.items() if k.startswith("greenbus_closes_total{")}
    assert closes == {
        'greenbus_closes_total{code="1000"}': 15,
        'greenbus_closes_total{code="1006"}': 33,
    }
    assert not [k for k in samples if k.startswith("greenbus_queue_depth{")]
    assert hub_process.health()["connections"] == 0


# -- 9. plain HTTP ----------------------------------------------------------------------


def test_health_is_200_json_with_status_ok(hub_process: HubProcess) -> None:
    with client(hub_process.url):
        status, content_type, body = hub_process.http_get("/health")
    assert status == 200
    assert content_type == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["server"] == "greenbus"
    assert health["version"] == greenbus.__version__
    assert health["connections"] == 1
    assert health["uptime_s"] >= 0


def test_health_ignores_a_query_string(hub_process: HubProcess) -> None:
    status, _, body = hub_process.http_get("/health?verbose=1")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_metrics_are_200_prometheus_text_with_the_counters(hub_process: HubProcess) -> None:
    with client(hub_process.url) as subscriber, client(hub_process.url) as publisher:
        ask(subscriber, op="sub", sid=1, topic="m.>", id=1)
        for n in range(3):
            send(publisher, op="pub", topic="m.x", data=n)
        assert [recv(subscriber)["data"] for _ in range(3)] == [0, 1, 2]
        status, content_type, body = hub_process.http_get("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    declared = set()
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge")
            declared.add(name)
        elif line and not line.startswith("# HELP "):
            name, value = line.rsplit(" ", 1)
            assert name.split("{")[0] in declared, line
            samples[name] = float(value)
    assert samples["greenbus_connections"] == 2
    assert samples["greenbus_connections_total"] == 2
    assert samples["greenbus_remote_subscriptions"] == 1
    assert samples["greenbus_messages_in_total"] == 3
    assert samples["greenbus_messages_out_total"] == 3
    assert samples["greenbus_dropped_total"] == 0
    assert samples["greenbus_slow_consumers_total"] == 0
    for name in (
        "greenbus_connections_refused_total",
        "greenbus_local_subscriptions",
        "greenbus_encode_errors_total",
    ):
        assert name in samples
    assert {"greenbus_closes_total", "greenbus_queue_depth"} <= declared
    assert len([k for k in samples if k.startswith("greenbus_queue_depth{")]) == 2


def test_an_unknown_path_is_404(hub_process: HubProcess) -> None:
    status, _, _ = hub_process.http_get("/nope")
    assert status == 404
    # and the hub still serves
    assert hub_process.http_get("/health")[0] == 200


@pytest.mark.parametrize("hub_transport", ["websockets"], indirect=True)
@pytest.mark.parametrize("hub_process", [("--max-connections", "2")], indirect=True)
def test_past_max_connections_the_upgrade_is_refused_with_503(hub_process: HubProcess) -> None:
    with client(hub_process.url) as first:
        with client(hub_process.url):
            with pytest.raises(InvalidStatus) as refused:
                with client(hub_process.url):
                    pass
            assert refused.value.response.status_code == 503
        assert ask(first, op="ping", id=1) == {"op": "pong", "id": 1}
        metric_eventually(hub_process, "greenbus_connections", lambda v: v == 1)
        with client(hub_process.url) as again:
            assert ask(again, op="ping", id=2) == {"op": "pong", "id": 2}
    samples = hub_process.metrics()
    assert samples["greenbus_connections_refused_total"] == 1
    assert samples["greenbus_connections_total"] == 3


@pytest.mark.parametrize("hub_transport", ["wsgi"], indirect=True)
@pytest.mark.parametrize("hub_process", [("--max-connections", "2")], indirect=True)
def test_past_max_connections_the_wsgi_adapter_closes_the_upgraded_socket_with_1013(
    hub_process: HubProcess,
) -> None:
    # gevent-websocket has upgraded before the app runs, so the adapter can
    # only refuse with a close frame (its own: gevent-websocket's loses codes).
    with client(hub_process.url) as first:
        with client(hub_process.url):
            with client(hub_process.url) as third:
                with pytest.raises(ConnectionClosed):
                    third.recv(timeout=5)
                assert third.close_code == 1013
        assert ask(first, op="ping", id=1) == {"op": "pong", "id": 1}
    assert hub_process.metrics()["greenbus_connections_refused_total"] == 1


#: A TLS 1.2 ClientHello's first bytes: what a wss:// client sends to a ws:// port.
CLIENT_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(40)


@pytest.mark.parametrize("hub_transport", ["websockets"], indirect=True)
@pytest.mark.parametrize(
    ("data", "half_close", "status"),
    [
        (b"GARBAGE\r\n\r\n", False, 400),
        (CLIENT_HELLO, False, None),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", True, 400),
        (b"GET /\xff HTTP/1.1\r\n\r\n", False, 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", False, 414),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", False, 431),
    ],
    ids=[
        "garbage",
        "tls-client-hello",
        "cut-short",
        "not-ascii",
        "line-too-long",
        "header-too-long",
    ],
)
def test_bytes_that_are_no_http_request_are_answered_or_closed_without_a_traceback(
    hub_process: HubProcess, data: bytes, half_close: bool, status: int | None
) -> None:
    # Issue 12: websockets had sent EOF after its parse error, so the hub's
    # own 400 hit an AssertionError (a traceback, and no answer); a TLS
    # ClientHello waited the whole handshake_timeout (10 s).
    with socket.create_connection((hub_process.host, hub_process.port), timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):  # until the hub closes
            answer += chunk
    if status is None:
        assert answer == b""
    else:
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    metric_eventually(hub_process, "greenbus_bad_requests_total", lambda v: v == 1)
    with client(hub_process.url) as ws:  # the hub still serves
        assert ask(ws, op="ping", id=1) == {"op": "pong", "id": 1}
    log = hub_process.log()
    assert log.count("not a valid HTTP request") == 1, log
    assert "Traceback" not in log, log


@pytest.mark.parametrize("hub_transport", ["websockets"], indirect=True)
def test_an_http_1_0_request_is_answered_and_is_no_bad_request(hub_process: HubProcess) -> None:
    # websockets takes HTTP/1.0 (some proxies send it): answered, then closed.
    with socket.create_connection((hub_process.host, hub_process.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
    assert b'"status": "ok"' in answer
    assert hub_process.metrics()["greenbus_bad_requests_total"] == 0
    assert "Traceback" not in hub_process.log()


# -- 10. the command line -----------------------------------------------------------------


def greenbus_command() -> list[str]:
    script = Path(sys.executable).with_name("greenbus")
    return [str(script)] if script.exists() else [sys.executable, "-m", "greenbus"]


@pytest.mark.parametrize(
    ("hub_process", "auth"),
    [((), []), (("--token", TOKEN), ["--token", TOKEN])],
    indirect=["hub_process"],
    ids=["anonymous", "token"],
)
def test_greenbus_sub_prints_the_message_greenbus_pub_publishes(
    hub_process: HubProcess, auth: list[str]
) -> None:
    url = ["--url", hub_process.url]
    sub = start_child([*greenbus_command(), "sub", "chat.>", "--count", "1", *url, *auth])
    try:
        metric_eventually(hub_process, "greenbus_remote_subscriptions", lambda v: v == 1)
        pub = run_child([*greenbus_command(), "pub", "chat.room1", '"hi"', *url, *auth])
        assert pub.returncode == 0, pub.stderr.decode()
        out, err = sub.communicate(timeout=30)
    finally:
        stop_process(sub)
    assert sub.returncode == 0, err.decode()
    assert [json.loads(line) for line in out.decode().splitlines()] == [
        {"topic": "chat.room1", "data": "hi"}
    ]


def test_greenbus_pub_without_a_hub_fails_with_a_message(hub_process: HubProcess) -> None:
    port = hub_process.port
    hub_process.stop()
    url = f"ws://127.0.0.1:{port}/"
    pub = run_child(
        [*greenbus_command(), "pub", "chat.room1", '"hi"', "--url", url, "--timeout", "0.5"]
    )
    assert pub.returncode != 0
    assert b"cannot connect" in pub.stderr
