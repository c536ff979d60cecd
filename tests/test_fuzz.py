"""Fuzzing the hub: hostile frames against a real hub process, then the sans-I/O core.

**Over sockets.**  Hypothesis generates at least ``GREENBUS_FUZZ_FRAMES``
frames (10,000 by default, the CI size) and sends them to one
``greenbus serve`` process (per transport) over a few raw connections, reconnecting
whenever the hub closes one: malformed JSON, wrong types, huge numbers and
strings (within the size limit), deep nesting, unknown ops, invalid topics,
random bytes as text and as binary frames, invalid UTF-8, fragmented
messages (with control frames between the fragments) and invalid
continuations, floods of ``ping`` ops and of WebSocket pings.

Every answer is checked as it arrives.  A model of each connection, the
sans-I/O ``HubSession`` fed the same text, says which frames the hub must
answer with, byte for byte, and when and how it must close; so the check is
on everything around the session (framing, reassembly, UTF-8, routing,
acks, close codes).  Independently, every ``error`` code and every close
code must be one that ``docs/protocol.md`` lists.  Throughout, the hub's
``/health`` must answer, a well-behaved client must keep receiving its own
messages in order, and the hub's RSS must stay under its baseline + 100 MB.
Problems are collected rather than raised, so one run reports them all (and
Hypothesis never replays a live hub to shrink).

**Sans-I/O.**  ``HubSession.receive``, ``validate_topic``/``validate_pattern``
and ``TopicIndex`` against the documented rules: 2,500 + 4,000 + 3,200 + 300
(state machine runs of 20 steps) = 10,000 examples in all.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import json_strategies
import pytest
from conftest import ROOT
from gevent import socket as gsocket
from hubclient import HubLauncher, LaunchedHub, RawClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from websockets.frames import Frame, Opcode

from greenbus.acl import Acl, InboxOwners, is_inbox
from greenbus.exceptions import InvalidTopic, RemoteProtocolError
from greenbus.protocol import (
    Ack,
    Error,
    ErrorCode,
    Ping,
    Pong,
    Welcome,
    encode,
    parse_server,
)
from greenbus.session import HubSession, SessionLimits, SessionState
from greenbus.topics import (
    TopicIndex,
    pattern_matches,
    validate_cached,
    validate_pattern,
    validate_topic,
)

#: How many frames the socket fuzz sends at least (the CI size by default).
FRAMES = int(os.environ.get("GREENBUS_FUZZ_FRAMES", "10000"))

PROTOCOL_MD = ROOT / "docs" / "protocol.md"


def documented_error_codes() -> set[str]:
    """The codes of the table under "### Error codes" in docs/protocol.md."""
    section = PROTOCOL_MD.read_text(encoding="utf-8").split("### Error codes", 1)[1]
    section = section.split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


def documented_close_codes() -> set[int]:
    """The codes of the table under "## Closing" in docs/protocol.md."""
    section = PROTOCOL_MD.read_text(encoding="utf-8").split("\n## Closing", 1)[1]
    section = section.split("\n## ", 1)[0]
    return {int(code) for code in re.findall(r"^\| (\d{4}) \|", section, re.MULTILINE)}


ERROR_CODES = documented_error_codes()
CLOSE_CODES = documented_close_codes()


def test_the_documented_codes_are_read_from_the_protocol_page() -> None:
    assert {"bad_json", "bad_frame", "unknown_op", "forbidden", "internal"} <= ERROR_CODES
    assert {1000, 1003, 1007, 1008, 1009, 1013} <= CLOSE_CODES


# -- what to send: message texts ---------------------------------------------------------------

json_scalars = json_strategies.json_scalars(max_text=8)
json_values = json_strategies.json_values(json_scalars, max_key=4, max_leaves=10)
#: Characters at the edges of the topic grammar (docs/protocol.md, "Topics").
EDGE_CHARS = ".*> \t\n\x00\x1f\x7f\x85\x9f\xa0\u1680\u2000\u2028\u202f\u3000\ufeffé€𝄞"
valid_topics = st.sampled_from(["a", "a.b", "sensors.room1.temp", "_INBOX.x.1", "héllo.wörld"])
valid_patterns = valid_topics | st.sampled_from([">", "a.>", "*", "a.*", "*.b", "*.*.>"])
edge_topics = st.text(alphabet="ab" + EDGE_CHARS, max_size=8)
ids = st.text(max_size=6) | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False)
OPS = ("hello", "sub", "unsub", "pub", "ping")
FIELDS = {
    "hello": {"protocol": st.just(1), "token": st.text(max_size=6), "name": st.text(max_size=6)},
    "sub": {"sid": ids, "topic": valid_patterns},
    "unsub": {"sid": ids},
    "pub": {
        "topic": valid_topics,
        "data": json_values,
        "headers": st.dictionaries(st.text(max_size=3), json_values, max_size=3),
        "reply_to": valid_topics,
    },
    "ping": {},
}
REQUIRED = {"hello": {"protocol"}, "sub": {"sid", "topic"}, "unsub": {"sid"}, "pub": {"topic"}}
#: Values of the wrong type (or the wrong value) for any field.
wrong_values = json_values | edge_topics | st.sampled_from([True, None, 1.5, "1", [], {}])


@st.composite
def valid_frames(draw: Any) -> dict[str, Any]:
    op = draw(st.sampled_from(OPS))
    frame: dict[str, Any] = {"op": op}
    for name, values in FIELDS[op].items():
        if name in REQUIRED.get(op, ()) or draw(st.booleans()):
            frame[name] = draw(values)
    if draw(st.booleans()):
        frame["id"] = draw(ids)
    return frame


@st.composite
def near_valid_frames(draw: Any) -> dict[str, Any]:
    """A valid frame with one thing wrong: a field dropped, added, retyped or an op renamed."""
    frame = draw(valid_frames())
    change = draw(st.sampled_from(["drop", "add", "retype", "op", "topic"]))
    if change == "drop":
        del frame[draw(st.sampled_from(sorted(frame)))]
    elif change == "add":
        frame[draw(st.sampled_from(["extra", "qos", "reply-to", "sid", "data", "id"]))] = draw(
            wrong_values
        )
    elif change == "retype":
        frame[draw(st.sampled_from(sorted(frame)))] = draw(wrong_values)
    elif change == "op":
        frame["op"] = draw(
            st.sampled_from(["PUB", "publish", "msg", "welcome", "ack", "", "pub "])
            | st.text(max_size=60)
        )
    else:
        frame["op"] = draw(st.sampled_from(["pub", "sub"]))
        frame.setdefault("sid", 1)
        frame[draw(st.sampled_from(["topic", "reply_to"]))] = draw(edge_topics)
    return frame


#: Where :func:`huge_numbers` puts its number: at the ``{}`` of one of these frames.
NUMBER_FRAMES = [
    '{{"op":"pub","topic":"num","data":{}}}',
    '{{"op":"ping","id":{}}}',
    '{{"op":"sub","sid":{},"topic":"num"}}',
    '{{"op":"hello","protocol":{}}}',
]


@st.composite
def huge_numbers(draw: Any) -> str:
    digits = draw(st.integers(1, 6000))  # the hub refuses more than 4,300
    sign = draw(st.sampled_from(["", "-"]))
    number = draw(
        st.sampled_from(
            [
                sign + "9" * digits,
                f"{sign}1e{draw(st.integers(-400, 400))}",
                f"{sign}{'1' * min(digits, 400)}.5e{draw(st.integers(-20, 20))}",
                "1e999",
                "-0.0",
                "1E+2",
            ]
        )
    )
    return draw(st.sampled_from(NUMBER_FRAMES)).format(number)


#: Where :func:`huge_strings` puts its string: at the ``{}`` of one of these frames.
STRING_FRAMES = [
    '{{"op":"pub","topic":"big","data":"{}","id":1}}',
    '{{"op":"pub","topic":"{}"}}',
    '{{"op":"{}"}}',
    '{{"op":"sub","sid":"{}","topic":"big","id":"s"}}',
]


@st.composite
def huge_strings(draw: Any) -> str:
    size = draw(st.integers(1_000, 400_000))  # within the 1 MiB limit, even as UTF-8
    char = draw(st.sampled_from(["x", "é", "€", "𝄞", "\\n", '\\"', "\\u00e9"]))
    body = char * (size // max(1, len(char.encode())))
    return draw(st.sampled_from(STRING_FRAMES)).format(body)


#: Where :func:`deep_nesting` puts its value: at the ``{}`` of one of these (or as the frame).
NESTING_FRAMES = [
    '{{"op":"pub","topic":"deep","data":{},"id":"d"}}',
    '{{"op":"pub","topic":"deep","headers":{{"h":{}}},"id":"h"}}',
    "{}",
]


@st.composite
def deep_nesting(draw: Any, deepest: int = 100_000) -> str:
    depth = draw(st.integers(28, 36) | st.integers(36, deepest))
    kind = draw(st.sampled_from(["list", "dict", "mixed", "unclosed"]))
    if kind == "list":
        value = "[" * depth + "]" * depth
    elif kind == "dict":
        value = '{"k":' * depth + "1" + "}" * depth
    elif kind == "mixed":
        value = '[{"k":' * (depth // 2) + "0" + "}]" * (depth // 2)
    else:
        value = "[" * depth
    return draw(st.sampled_from(NESTING_FRAMES)).format(value)


@st.composite
def malformed_json(draw: Any) -> str:
    text = json.dumps(draw(valid_frames()))
    how = draw(
        st.sampled_from(["truncate", "trailing", "bom", "nan", "quotes", "comment", "empty"])
    )
    if how == "truncate":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if how == "trailing":
        return text + draw(st.sampled_from(["}", ",", " x", "\x00", "{}", "\n\n1"]))
    if how == "bom":
        return "\ufeff" + text
    if how == "nan":
        return (
            text[:-1] + ',"data":' + draw(st.sampled_from(["NaN", "Infinity", "-Infinity"])) + "}"
        )
    if how == "quotes":
        return text.replace('"', "'")
    if how == "comment":
        return text[:-1] + "/* c */}"
    return draw(st.sampled_from(["", " ", "\n", "null", "1", '"op"', "[]", "{}", "{"]))


@st.composite
def surrogate_escapes(draw: Any) -> str:
    # A JSON escape of a UTF-16 surrogate, alone or paired.
    unit = draw(st.integers(0xD800, 0xDFFF))
    other = draw(st.sampled_from(["", "\\udc00", "\\ud800", "x"]))
    return f'{{"op":"pub","topic":"s","data":"\\u{unit:04x}{other}","id":"u"}}'


message_texts = st.one_of(
    valid_frames().map(json.dumps),
    near_valid_frames().map(json.dumps),
    near_valid_frames().map(lambda f: json.dumps(f, ensure_ascii=False, separators=(",", ":"))),
    malformed_json(),
    huge_numbers(),
    huge_strings(),
    deep_nesting(),
    surrogate_escapes(),
    json_values.map(json.dumps),
    st.text(max_size=40),
)

# -- what to send: frames ---------------------------------------------------------------------

#: Byte sequences that are never valid UTF-8 (RFC 3629).
INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc3\x28",
    b"\xe2\x82",
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xc0\xaf",  # overlong
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xf0\x9d\x84",  # cut short
]


@dataclass
class Unit:
    """Frames sent with one write, and what they carry."""

    kind: str
    frames: list[Frame]
    #: The text messages the frames carry, in order (when they are text).
    texts: list[str] = field(default_factory=list)
    #: For a message the hub must refuse by closing: (code, reason), or None
    #: when any documented code will do.
    close: tuple[int, str] | None = None
    closes: bool = False
    #: Payloads of the WebSocket pings among the frames.
    pings: list[bytes] = field(default_factory=list)


def split(draw: Any, data: bytes) -> list[bytes]:
    """``data`` in 2 to 6 pieces, some possibly empty."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), min_size=1, max_size=5)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def fragments(draw: Any, data: bytes) -> tuple[list[Frame], list[bytes]]:
    """A text message as a TEXT frame and CONT frames, pings maybe between them."""
    pieces = split(draw, data)
    frames, pings = [], []
    for i, piece in enumerate(pieces):
        if i and draw(st.integers(0, 3)) == 0:
            payload = draw(st.binary(max_size=125))
            frames.append(Frame(Opcode.PING, payload))
            pings.append(payload)
        opcode = Opcode.TEXT if i == 0 else Opcode.CONT
        frames.append(Frame(opcode, piece, fin=i == len(pieces) - 1))
    return frames, pings


@st.composite
def text_units(draw: Any) -> Unit:
    text = draw(message_texts)
    data = text.encode("utf-8", "surrogatepass")
    kind = "text"
    if draw(st.integers(0, 9)) == 0:  # invalid UTF-8 somewhere in it
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(INVALID_UTF8)) + data[at:]
        kind = "invalid-utf8"
    if draw(st.integers(0, 4)) == 0:
        frames, pings = fragments(draw, data)
        kind += "-fragmented"
    else:
        frames, pings = [Frame(Opcode.TEXT, data)], []
    try:
        texts = [data.decode("utf-8")]
        return Unit(kind, frames, texts=texts, pings=pings)
    except UnicodeDecodeError as exc:
        close = (1007, f"invalid UTF-8 at position {exc.start}")
        return Unit(kind, frames, close=close, closes=True, pings=pings)


@st.composite
def random_bytes_units(draw: Any) -> Unit:
    data = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        close = (1003, "binary messages are not supported; send JSON text")
        return Unit("binary", [Frame(Opcode.BINARY, data)], close=close, closes=True)
    try:
        return Unit("random-bytes-text", [Frame(Opcode.TEXT, data)], texts=[data.decode()])
    except UnicodeDecodeError as exc:
        close = (1007, f"invalid UTF-8 at position {exc.start}")
        return Unit("random-bytes-text", [Frame(Opcode.TEXT, data)], close=close, closes=True)


@st.composite
def bad_continuation_units(draw: Any) -> Unit:
    first = Frame(Opcode.TEXT, b'{"op":', fin=False)
    variant = draw(st.sampled_from(["orphan", "text-in-text", "binary-in-text"]))
    if variant == "orphan":  # a continuation of nothing
        frames = [Frame(Opcode.CONT, b'{"op":"ping"}', fin=draw(st.booleans()))]
    elif variant == "text-in-text":  # a new message before the last one ended
        frames = [first, Frame(Opcode.TEXT, b'"ping"}')]
    else:
        frames = [first, Frame(Opcode.BINARY, b'"ping"}')]
    return Unit(f"bad-continuation-{variant}", frames, closes=True)


@st.composite
def ping_floods(draw: Any) -> Unit:
    count = draw(st.integers(10, 100))
    if draw(st.booleans()):
        texts = [json.dumps({"op": "ping", "id": n}) for n in range(count)]
        return Unit("ping-op-flood", [Frame(Opcode.TEXT, t.encode()) for t in texts], texts=texts)
    payloads = [n.to_bytes(2, "big") for n in range(count)]
    frames = [Frame(Opcode.PING, p) for p in payloads]
    return Unit("websocket-ping-flood", frames, pings=payloads)


#: Mostly messages: what closes the connection costs a reconnect, and a flood
#: is many frames of one kind.
units = st.integers(0, 27).flatmap(
    lambda n: (
        text_units()
        if n < 24
        else random_bytes_units()
        if n < 26
        else bad_continuation_units()
        if n < 27
        else ping_floods()
    )
)

# -- the fuzzer -----------------------------------------------------------------------------------


class Closed(Exception):
    """The hub ended the connection: ``code`` and ``reason`` of its close frame (None: none)."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Connection:
    """One fuzzing connection and its model: the session the hub should be in."""

    def __init__(self, url: str, name: str, inboxes: InboxOwners) -> None:
        self.raw = RawClient(url, timeout=5)
        self.raw.sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        self.raw.send_json(op="hello", protocol=1, name=name, id=0)
        welcome = self.raw.recv_json()
        assert welcome["op"] == "welcome", welcome
        # The hub's connections share one InboxOwners: so do the models.
        self.model = HubSession(server=welcome["server"], peer=welcome["peer"], inboxes=inboxes)
        self.sids: set[Any] = set()  # every sid ever subscribed: a msg may lag an unsub

    def expect(self, text: str) -> list[str]:
        """Feed the model a message the hub gets; the frames the hub must answer with."""
        event = self.model.receive(text)
        if event is not None:
            self.model.ack(event)
            if type(event).__name__ == "Sub":
                self.sids.add(event.sid)  # type: ignore[union-attr]
        return self.model.take_outbox()

    def read(self) -> tuple[str, Any]:
        """The next frame: ("text", str), ("pong", bytes); raises Closed at the end."""
        while True:
            try:
                frame = self.raw.next_frame()
            except EOFError:
                close = self.raw.protocol.close_rcvd
                raise Closed(
                    close.code if close else None, close.reason if close else None
                ) from None
            if frame.opcode is Opcode.TEXT:
                return "text", frame.data.decode()
            if frame.opcode is Opcode.PONG:
                return "pong", frame.data

    def close(self) -> None:
        self.raw.sock.close()


#: The hub's answer when its JSON parser hits the interpreter's recursion limit.
TOO_DEEP = encode(Error(ErrorCode.BAD_JSON, "JSON nested too deeply"))


def nested_deeply(unit: Unit) -> bool:
    """True if a message of ``unit`` has enough brackets to reach a recursion limit."""
    return any(text.count("[") + text.count("{") > 500 for text in unit.texts)


def agree(unit: Unit, answers: list[str], expected: list[str]) -> bool:
    """The hub's answers are the model's; or, for JSON nested deeply, the hub's
    parser gave up first and said so with one documented ``bad_json`` error.

    The hub parses within the interpreter's recursion limit, which Hypothesis
    raises in the test process: past ~1,000 levels the hub's parser stops
    where the model's goes on to its answer (the max_depth check, or
    bad_frame for an array).  Either is one error, counted alike.
    """
    if answers == expected:
        return True
    return (
        nested_deeply(unit)
        and answers == [TOO_DEEP]
        and len(expected) == 1
        and '"op":"error"' in expected[0]
    )


class Fuzzer:
    """Plays units against one hub and records every departure from the documented answers."""

    def __init__(self, hub: LaunchedHub, connections: int = 3) -> None:
        self.hub = hub
        self.url = hub.url
        self.slots: list[Connection | None] = [None] * connections
        self.inboxes = InboxOwners()
        self.connects = 0
        self.turn = 0
        self.frames = 0
        self.units = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[str] = collections.Counter()
        self.problems: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self.baseline_rss = hub.rss_kib()
        self.peak_rss = self.baseline_rss
        self.observer = RawClient(self.url)
        self.observer.sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        self.topic = f"observer.{uuid.uuid4().hex}"
        self.observer.send_json(op="sub", sid="own", topic=self.topic, id="sub")
        assert self.observer.recv_json() == {"op": "ack", "id": "sub"}
        self.observed = 0

    def problem(self, unit: Unit, what: str, detail: str = "") -> None:
        """Record a problem: ``what`` is its signature (counted), ``detail`` the example."""
        signature = f"{unit.kind}: {what}"
        self.problems[signature] += 1
        if signature not in self.examples:
            shown = repr([(f.opcode.name, f.fin, bytes(f.data[:120])) for f in unit.frames[:4]])
            self.examples[signature] = f"{detail}\n    frames: {shown}"

    def connection(self) -> Connection:
        self.turn = (self.turn + 1) % len(self.slots)
        conn = self.slots[self.turn]
        if conn is None:
            self.connects += 1
            conn = self.slots[self.turn] = Connection(
                self.url, f"fuzz{self.connects}", self.inboxes
            )
        return conn

    def play(self, unit: Unit) -> None:
        if len(self.problems) > 30:
            return  # enough kinds of problem to report; do not bury them
        conn = self.connection()
        self.units += 1
        self.frames += len(unit.frames)
        self.kinds[unit.kind] += 1
        expected: list[str] = []
        for text in unit.texts:
            expected += conn.expect(text)
        closing = unit.closes or conn.model.state is SessionState.CLOSING
        close = unit.close
        if conn.model.close_code is not None:
            close = (int(conn.model.close_code), conn.model.close_reason)
        marker = None
        data = b"".join(f.serialize(mask=True, extensions=[]) for f in unit.frames)
        if not closing:  # a ping of our own, in the same write, ends the answer
            marker = encode(Ping(f"sync-{self.units}"))
            expected_marker = conn.expect(marker)
            assert expected_marker == [encode(Pong(f"sync-{self.units}"))]
            data += Frame(Opcode.TEXT, marker.encode()).serialize(mask=True, extensions=[])
        try:
            conn.raw.send_raw(data)
            self.collect(conn, unit, expected, marker, closing, close)
        except (OSError, TimeoutError) as exc:
            self.problem(unit, f"no answer: {type(exc).__name__}", repr(exc))
            self.drop(conn)
        if self.units % 100 == 0:
            self.check_the_hub(unit)

    def drop(self, conn: Connection) -> None:
        conn.close()
        self.slots[self.turn] = None
        held = any(is_inbox(topic) for topic in conn.model.sids.values())
        conn.model.end()
        if held:
            # The hub frees the inboxes it held once it has seen it go:
            # wait for that, or a next connection's sub to one of them
            # would race it.
            live = 1 + sum(slot is not None for slot in self.slots)  # and the observer
            deadline = time.monotonic() + 5
            while self.hub.metrics()["greenbus_connections"] > live:
                assert time.monotonic() < deadline, "the hub did not see a connection go"
                gevent.sleep(0.005)

    def collect(
        self,
        conn: Connection,
        unit: Unit,
        expected: list[str],
        marker: str | None,
        closing: bool,
        close: tuple[int, str] | None,
    ) -> None:
        """Read up to our marker's pong (or to the end), then judge what came."""
        answers: list[str] = []
        pongs: list[bytes] = []
        pong_text = None if marker is None else encode(Pong(json.loads(marker)["id"]))
        ended = None
        try:
            while True:
                kind, value = conn.read()
                if kind == "pong":
                    pongs.append(value)
                elif value == pong_text:
                    break
                elif not self.is_msg(conn, unit, value):
                    answers.append(value)
        except Closed as exc:
            ended = exc
        self.compare(unit, answers, expected, pongs)
        if ended is not None:
            self.closed(conn, unit, ended, closing, close)

    def is_msg(self, conn: Connection, unit: Unit, text: str) -> bool:
        frame = json.loads(text)
        if frame.get("op") != "msg":
            return False
        try:
            parse_server(text)
        except RemoteProtocolError as exc:
            self.problem(unit, "the hub sent an invalid msg", f"{exc} {text[:200]!r}")
        if frame.get("sid") not in conn.sids:
            self.problem(unit, "a msg for a sid never subscribed", text[:200])
        return True

    def compare(
        self, unit: Unit, answers: list[str], expected: list[str], pongs: list[bytes]
    ) -> None:
        for text in answers:
            frame = json.loads(text)
            if frame.get("op") == "error" and frame.get("code") not in ERROR_CODES:
                self.problem(unit, f"undocumented error code {frame.get('code')!r}", text[:300])
        if not agree(unit, answers, expected):
            self.problem(
                unit,
                "answers differ from the model's",
                f"answered {[a[:200] for a in answers]}, expected {[e[:200] for e in expected]}",
            )
        if pongs != unit.pings:
            self.problem(unit, "pongs differ from pings", f"{len(pongs)} for {len(unit.pings)}")

    def closed(
        self,
        conn: Connection,
        unit: Unit,
        exc: Closed,
        expected: bool,
        close: tuple[int, str] | None,
    ) -> None:
        self.drop(conn)
        self.closes[f"{exc.code} {exc.reason}"] += 1
        if exc.code not in CLOSE_CODES:
            self.problem(unit, f"closed with an undocumented code: {exc.code} {exc.reason!r}")
        elif not expected:
            self.problem(unit, f"closed unexpectedly: {exc.code}", repr(exc.reason))
        elif close is not None and (exc.code, exc.reason) != close:
            self.problem(
                unit, f"closed with {exc.code}, expected {close[0]}", f"{exc.reason!r} != {close}"
            )

    def check_the_hub(self, unit: Unit) -> None:
        if self.hub.proc.poll() is not None:
            self.problem(unit, f"the hub exited with {self.hub.proc.returncode}")
            return
        status = self.hub.http_get("/health", timeout=5)[0]
        if status != 200:
            self.problem(unit, f"/health answered {status}")
        self.peak_rss = max(self.peak_rss, self.hub.rss_kib())
        self.observe(unit)

    def observe(self, unit: Unit) -> None:
        """The well-behaved client publishes one message and must get exactly it back."""
        n = self.observed
        self.observed += 1
        self.observer.send_json(op="pub", topic=self.topic, data=n, id=f"o{n}")
        try:
            got = [self.observer.recv_json(), self.observer.recv_json()]
        except (OSError, EOFError) as exc:
            self.problem(unit, "the well-behaved client lost its connection", repr(exc))
            return
        want = [
            {"op": "msg", "sid": "own", "topic": self.topic, "data": n},
            {"op": "ack", "id": f"o{n}"},
        ]
        if got != want:
            self.problem(unit, "the well-behaved client got something else", f"{got} != {want}")

    def report(self) -> str:
        return (
            f"{self.frames} frames in {self.units} units over {self.connects} connections; "
            f"kinds {dict(self.kinds)}; closes {dict(self.closes)}; "
            f"RSS {self.baseline_rss} -> peak {self.peak_rss} KiB"
        )

    def stop(self) -> None:
        for conn in self.slots:
            if conn is not None:
                conn.close()
        self.observer.sock.close()


@pytest.fixture
def fuzz_hub(tmp_path: Path, hub_transport: str, codec: str) -> Iterator[LaunchedHub]:
    """One hub process for the whole fuzz run (per transport and codec)."""
    launcher = HubLauncher(tmp_path, hub_transport)
    yield launcher.start(env={"GREENBUS_PURE_PYTHON": "1" if codec == "pure" else "0"})
    launcher.stop_all()


def test_the_hub_answers_every_hostile_frame_as_documented_and_stays_up(
    fuzz_hub: LaunchedHub,
) -> None:
    fuzzer = Fuzzer(fuzz_hub)

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # never replay a live hub to shrink
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(units, min_size=5, max_size=25))
    def play(batch: list[Unit]) -> None:
        for unit in batch:
            fuzzer.play(unit)

    started = time.monotonic()
    try:
        while fuzzer.frames < FRAMES and len(fuzzer.problems) <= 30:
            play()
        fuzzer.check_the_hub(Unit("final check", []))
    finally:
        fuzzer.stop()
    took = time.monotonic() - started
    print(f"{fuzzer.report()}; {took:.1f} s")
    grown_mib = (fuzzer.peak_rss - fuzzer.baseline_rss) / 1024
    assert fuzzer.frames >= FRAMES
    assert not fuzzer.problems, f"problems, by kind ({fuzzer.report()}):\n" + "\n".join(
        f"{count} x {signature}{fuzzer.examples[signature]}"
        for signature, count in fuzzer.problems.most_common(15)
    )
    assert grown_mib < 100, f"the hub's RSS grew by {grown_mib:.0f} MiB"
    assert {"text", "binary", "websocket-ping-flood", "ping-op-flood"} <= set(fuzzer.kinds)


# == sans-I/O ====================================================================================


def strict_json(text: str) -> Any:
    """``json.loads`` as strict as the hub (raises ValueError where the hub says bad_json)."""

    def refuse(name: str) -> None:
        raise ValueError(name)

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return value

    value = json.loads(text, parse_constant=refuse, parse_float=finite)
    json.dumps(value, ensure_ascii=False).encode()  # no lone surrogate
    return value


def readable_id(text: str) -> tuple[bool, Any]:
    """(True, id) when ``text`` is a JSON object whose ``id`` is a valid id."""
    try:
        obj = strict_json(text)
    except (ValueError, RecursionError, UnicodeEncodeError):
        return False, None
    if not isinstance(obj, dict) or "id" not in obj:
        return False, None
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False, None
    return True, value


small_texts = st.one_of(
    valid_frames().map(json.dumps),
    near_valid_frames().map(json.dumps),
    malformed_json(),
    surrogate_escapes(),
    deep_nesting(deepest=300),
    json_values.map(json.dumps),
    st.text(max_size=20),
)

TOKEN = "s3cret"


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token=st.booleans(), max_errors=st.integers(0, 3), texts=st.lists(small_texts, max_size=6))
def test_a_hub_session_answers_each_message_with_at_most_one_documented_frame(
    codec: str, token: bool, max_errors: int, texts: list[str]
) -> None:
    authenticate = Acl.single_token(TOKEN).authenticate if token else None
    session = HubSession(
        server="hub",
        peer="p1",
        authenticate=authenticate,
        limits=SessionLimits(max_errors=max_errors, max_subscriptions=3),
    )
    errors = 0
    for text in texts:
        was = session.state
        event = session.receive(text)
        if event is not None:
            session.ack(event)
        answers = session.take_outbox()
        if was is SessionState.CLOSING:
            assert event is None and answers == []  # "ignores whatever else the client sends"
            continue
        assert len(answers) <= 1, answers
        for answer in answers:
            frame = parse_server(answer)
            answer.encode("utf-8")
            if isinstance(frame, Error):
                assert frame.code.value in ERROR_CODES
                errors += frame.code is not ErrorCode.UNAUTHORIZED
            else:
                assert isinstance(frame, (Ack, Pong, Welcome)), frame
            readable, id = readable_id(text)
            if readable:  # "error (with the id when it could be read)", and every answer
                assert frame.id == id, (text, answer)
        if was is SessionState.AWAITING_HELLO and session.state is not SessionState.OPEN:
            assert session.close_code == 1008  # anything but the right hello first
        assert (session.close_code is None) == (session.state is not SessionState.CLOSING)
    assert session.errors == errors
    if session.close_code is not None and session.close_reason != "unauthorized":
        assert session.close_code == 1008
        assert session.errors == max_errors + 1


def doc_token_ok(token: str) -> bool:
    # docs/protocol.md "Topics and wildcards": any character except ".", "*",
    # ">", whitespace (str.isspace), U+0000-U+001F and U+007F-U+009F; and no
    # lone surrogate (greenbus/topics.py: it could not be sent as UTF-8).
    return bool(token) and not any(
        c in ".*>"
        or c.isspace()
        or ord(c) <= 0x1F
        or 0x7F <= ord(c) <= 0x9F
        or 0xD800 <= ord(c) <= 0xDFFF
        for c in token
    )


def doc_topic_ok(value: str) -> bool:
    return all(doc_token_ok(t) for t in value.split("."))


def doc_pattern_ok(value: str) -> bool:
    tokens = value.split(".")
    return all(
        t == "*" or (t == ">" and i == len(tokens) - 1) or doc_token_ok(t)
        for i, t in enumerate(tokens)
    )


#: Mostly the edges of the grammar, sometimes any character at all.
topic_texts = st.text(
    alphabet=st.sampled_from(list("ab" + EDGE_CHARS + "\ud800\udfff\x1c\x1d\x1e\u180e\u200b"))
    | st.characters(codec=None),
    max_size=10,
)


def assert_validated_as_documented(value: str, *, pattern: bool) -> None:
    """``validate_pattern`` (or ``validate_topic``) accepts ``value``, returning it as is,
    exactly when the documented rule does, and a refusal names it and says why;
    ``validate_cached`` agrees."""
    validate, documented = (
        (validate_pattern, doc_pattern_ok) if pattern else (validate_topic, doc_topic_ok)
    )
    try:
        assert validate(value) is value
        accepted = True
    except InvalidTopic as exc:
        assert exc.topic == value and exc.problem
        accepted = False
    assert accepted is documented(value), value
    try:
        accepted_cached = validate_cached(value, pattern=pattern) == value
    except InvalidTopic:
        accepted_cached = False
    assert accepted_cached is accepted


@settings(max_examples=4000, deadline=None)
@given(topic_texts)
def test_validate_topic_accepts_exactly_the_documented_topics(value: str) -> None:
    assert_validated_as_documented(value, pattern=False)


@settings(max_examples=3200, deadline=None)
@given(topic_texts)
def test_validate_pattern_accepts_exactly_the_documented_patterns(value: str) -> None:
    assert_validated_as_documented(value, pattern=True)


fuzz_tokens = st.sampled_from(["a", "b", "é"])
fuzz_topics = st.lists(fuzz_tokens, min_size=1, max_size=4).map(".".join)
fuzz_patterns = st.lists(fuzz_tokens | st.just("*"), min_size=0, max_size=3).flatmap(
    lambda tokens: (
        st.just(".".join(tokens) or ">")
        | st.just(".".join([*tokens, ">"]))
        | st.just(".".join(tokens) or "a")
    )
)
VALUES = [object() for _ in range(3)]


class TopicIndexMachine(RuleBasedStateMachine):
    """A small-cache TopicIndex against the obvious model: a list of (pattern, value)."""

    @initialize(cache_size=st.integers(1, 4))
    def start(self, cache_size: int) -> None:
        self.index: TopicIndex[object] = TopicIndex(cache_size=cache_size)
        self.cache_size = cache_size
        self.entries: list[tuple[str, object]] = []

    @rule(pattern=fuzz_patterns, value=st.sampled_from(VALUES))
    def add(self, pattern: str, value: object) -> None:
        self.index.add(pattern, value)
        self.entries.append((pattern, value))

    @rule(pattern=fuzz_patterns, value=st.sampled_from(VALUES))
    def remove(self, pattern: str, value: object) -> None:
        held = next((i for i, e in enumerate(self.entries) if e == (pattern, value)), None)
        assert self.index.remove(pattern, value) is (held is not None)
        if held is not None:
            del self.entries[held]

    @rule(topic=fuzz_topics)
    def match(self, topic: str) -> None:
        want = tuple(v for p, v in self.entries if pattern_matches(p, topic))
        assert self.index.match(topic) == want
        assert self.index.match(topic) == want  # again, from the cache
        assert self.index.match_uncached(topic) == want

    @rule(value=st.text(alphabet="a.*> ", max_size=5))
    def refuse(self, value: str) -> None:
        if not doc_topic_ok(value):
            with pytest.raises(InvalidTopic):
                self.index.match(value)
        if not doc_pattern_ok(value):
            with pytest.raises(InvalidTopic):
                self.index.add(value, VALUES[0])

    @invariant()
    def counts_agree(self) -> None:
        assert len(self.index) == len(self.entries)
        assert self.index.patterns() == dict(collections.Counter(p for p, _ in self.entries))
        assert sorted(map(id_pair, self.index)) == sorted(map(id_pair, self.entries))
        assert len(self.index.cache) <= self.cache_size


def id_pair(entry: tuple[str, object]) -> tuple[str, int]:
    return entry[0], id(entry[1])


TestATopicIndexAgreesWithAListOfPatternsThroughAddsRemovesAndMatches = TopicIndexMachine.TestCase
TestATopicIndexAgreesWithAListOfPatternsThroughAddsRemovesAndMatches.settings = settings(
    max_examples=300, stateful_step_count=20, deadline=None
)
