"""Tests for greenbus.bridge.framing: read ahead of websockets' parser, and agree with it exactly.

Two server protocols past the same opening handshake get the same bytes,
split at the same points: one directly, one through a
:class:`TextFrameReader`.  After every read they must have produced the
same frames (a text read ahead counts as its TEXT frame), the same bytes to
send (pongs, close frames), the same state and the same parser error:
whatever the frames, valid or not, and wherever the reads split them.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from greenbus.bridge.framing import TextFrameReader

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MAX_SIZE = 300


def open_protocol(leftover: bytes = b"", max_size: int | None = MAX_SIZE) -> ServerProtocol:
    """A server protocol past its opening handshake (``leftover``: bytes that came with it)."""
    protocol = ServerProtocol(max_size=max_size)
    protocol.receive_data(HANDSHAKE + leftover)
    [request, *_] = protocol.events_received()
    protocol.send_response(protocol.accept(request))
    protocol.data_to_send()
    assert protocol.state is State.OPEN
    return protocol


def as_frame(item: str | Frame) -> tuple[Any, ...]:
    if isinstance(item, str):
        return (Opcode.TEXT, item.encode(), True, False, False, False)
    return (item.opcode, bytes(item.data), item.fin, item.rsv1, item.rsv2, item.rsv3)


def observe(protocol: ServerProtocol) -> tuple[Any, ...]:
    exc = protocol.parser_exc
    return (
        protocol.state,
        b"".join(protocol.data_to_send()),
        protocol.close_rcvd,
        protocol.close_sent,
        None if exc is None else (type(exc), str(exc)),
    )


def header(
    opcode: int, length: int, *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = bytes([first, mask_bit | length])
    elif length < 1 << 16:
        head = bytes([first, mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + length.to_bytes(8, "big")
    return head


def masked(opcode: int, payload: bytes, key: bytes, **options: Any) -> bytes:
    """A frame as a client sends it (or, with ``masked=False``, as it must not)."""
    if not options.get("masked", True):
        return header(opcode, len(payload), **options) + payload
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header(opcode, len(payload), **options) + key + body


TEXTS = st.text(max_size=40).map(str.encode) | st.sampled_from(
    [b"\xff", b"a\xc3", b"\xed\xa0\x80", b"x" * 200, b"y" * (MAX_SIZE + 1), b"\xc3\xa9" * 70]
)
keys = st.binary(min_size=4, max_size=4)


@st.composite
def frames(draw: Any) -> bytes:
    """One frame a client might send: mostly whole texts, and every kind of trouble."""
    kind = draw(
        st.sampled_from(
            ["text"] * 6
            + ["binary", "ping", "pong", "close", "fragments", "cont", "rsv", "unmasked"]
            + ["opcode", "long-ping", "huge", "text-126", "unfinished"]
        )
    )
    key = draw(keys)
    payload = draw(TEXTS)
    if kind == "text":
        return masked(1, payload, key)
    if kind == "binary":
        return masked(2, payload, key)
    if kind in ("ping", "pong"):
        return masked(9 if kind == "ping" else 10, payload[:125], key)
    if kind == "close":
        return masked(8, draw(st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8bye", b"\x00"])), key)
    if kind == "fragments":
        cut = draw(st.integers(0, len(payload)))
        middle = masked(9, b"p", key) if draw(st.booleans()) else b""
        return masked(1, payload[:cut], key, fin=False) + middle + masked(0, payload[cut:], key)
    if kind == "unfinished":  # a first fragment, and no continuation
        return masked(1, payload, key, fin=False)
    if kind == "cont":
        return masked(0, payload, key)
    if kind == "rsv":
        return masked(1, payload, key, rsv=draw(st.integers(1, 7)))
    if kind == "unmasked":
        return masked(1, payload, key, masked=False)
    if kind == "opcode":
        return masked(draw(st.sampled_from([3, 7, 11, 15])), payload, key)
    if kind == "long-ping":
        return masked(9, b"p" * 126, key)
    if kind == "huge":
        return header(1, draw(st.sampled_from([MAX_SIZE + 1, 70_000, 1 << 40]))) + key + b"xx"
    return masked(1, b"t" * draw(st.integers(126, MAX_SIZE)), key)  # a 2-byte length


@st.composite
def streams(draw: Any) -> tuple[bytes, list[int]]:
    """Frames back to back, and the points where reads split them."""
    data = b"".join(draw(st.lists(frames(), max_size=12)))
    if draw(st.booleans()):
        data += draw(st.binary(max_size=20))  # and then garbage
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return data, cuts


def reads(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def run_both(data: bytes, cuts: list[int], leftover: bytes = b"") -> int:
    """Feed both; assert they agree after every read; return how many texts were read ahead."""
    direct = open_protocol(leftover)
    through = open_protocol(leftover)
    reader = TextFrameReader(through)
    assert as_frames(direct.events_received()) == as_frames(through.events_received())
    ahead = 0
    for chunk in reads(data, cuts):
        if direct.state is State.CLOSED:
            break
        direct.receive_data(chunk)
        expected = as_frames(direct.events_received())
        got = reader.receive_data(chunk)
        ahead += sum(isinstance(item, str) for item in got)
        assert as_frames(got) == expected
        assert observe(through) == observe(direct)
    if direct.state is not State.CLOSED:
        direct.receive_eof()
        assert as_frames(reader.receive_eof()) == as_frames(direct.events_received())
        assert observe(through) == observe(direct)
    return ahead


def as_frames(items: list[Any]) -> list[tuple[Any, ...]]:
    return [as_frame(item) for item in items]


@settings(max_examples=int(os.environ.get("GREENBUS_FRAMING_EXAMPLES", "3000")), deadline=None)
@given(streams())
def test_the_reader_agrees_with_websockets_on_any_frames_split_anywhere(stream):
    run_both(*stream)


@settings(max_examples=300, deadline=None)
@given(streams(), st.binary(max_size=8))
def test_the_reader_agrees_when_the_handshake_left_part_of_a_frame_behind(stream, leftover):
    run_both(*stream, leftover=leftover)


def test_whole_texts_are_read_ahead_and_a_control_frame_goes_through_the_protocol():
    key = b"\x01\x02\x03\x04"
    texts = [f"message {i}".encode() for i in range(50)]
    data = b"".join(masked(1, text, key) for text in texts)
    data += masked(9, b"hi", key) + masked(1, "é".encode(), key)
    protocol = open_protocol()
    got = TextFrameReader(protocol).receive_data(data[:-3])
    assert got[:50] == [text.decode() for text in texts]
    assert as_frame(got[50]) == (Opcode.PING, b"hi", True, False, False, False)
    assert len(got) == 51  # the last text waits for its last 3 bytes
    assert b"".join(protocol.data_to_send()) == Frame(Opcode.PONG, b"hi").serialize(mask=False)


def test_a_text_split_across_reads_is_read_ahead_once_whole():
    frame = masked(1, b"x" * 200, b"abcd")
    assert run_both(frame, list(range(1, len(frame)))) == 1


def test_a_frame_over_the_size_limit_is_refused_by_its_header_as_websockets_does():
    protocol = open_protocol()
    got = TextFrameReader(protocol).receive_data(header(1, MAX_SIZE + 1) + b"abcd")
    assert got == []
    assert protocol.state is State.CLOSING
    assert protocol.close_sent is not None and protocol.close_sent.code == 1009


def test_invalid_utf8_is_left_to_the_protocol_as_a_frame():
    protocol = open_protocol()
    [frame] = TextFrameReader(protocol).receive_data(masked(1, b"a\xff", b"abcd"))
    assert isinstance(frame, Frame) and frame.data == b"a\xff"


@pytest.mark.parametrize("cut", [0, 1, 2, 5, 8])
def test_once_the_protocol_is_closing_everything_goes_through_it(cut):
    key = b"abcd"
    data = masked(8, b"\x03\xe8", key) + masked(1, b"late", key)
    assert run_both(data, [cut]) == 0
