"""Tests for greenbus.bridge.framing: read ahead of websockets' parser, and agree with it exactly.

Two protocols of one side (the hub's server, or a client), past the same
opening handshake, get the same bytes, split at the same points: one
directly, one through a :class:`TextFrameReader`.  After every read they
must have produced the same frames (a text read ahead counts as its TEXT
frame), the same bytes to send (pongs, close frames), the same state and
the same parser error: whatever the frames, valid or not (a server's frames
reach the client unmasked, a client's reach the server masked: either one
masked the other way is invalid), and wherever the reads split them.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from websockets.utils import accept_key, apply_mask

from greenbus.bridge.framing import TextFrameReader

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MAX_SIZE = 300


each_side = pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT], ids=["server", "client"])


def open_protocol(
    side: Side, leftover: bytes = b"", max_size: int | None = MAX_SIZE
) -> tuple[Protocol, list[Frame]]:
    """A protocol past its opening handshake, and the frames parsed with it.

    Args:
        leftover: bytes that came in the same read as the handshake (the
            client's request to a server, the hub's response to a client).
    """
    protocol: Protocol
    if side is Side.SERVER:
        protocol = server = ServerProtocol(max_size=max_size)
        server.receive_data(HANDSHAKE + leftover)
        [request, *_] = server.events_received()
        server.send_response(server.accept(request))
        frames: list[Frame] = []
    else:
        # As websockets' own tests do: the request, then a 101 response
        # computed from its key.
        protocol = client = ClientProtocol(parse_uri("ws://hub/"), max_size=max_size)
        request = client.connect()
        client.send_request(request)
        response = Response(
            101,
            "Switching Protocols",
            Headers(
                Upgrade="websocket",
                Connection="Upgrade",
                **{"Sec-WebSocket-Accept": accept_key(request.headers["Sec-WebSocket-Key"])},
            ),
        )
        client.receive_data(response.serialize() + leftover)
        [accepted, *frames] = client.events_received()
        assert isinstance(accepted, Response) and client.handshake_exc is None
    protocol.data_to_send()
    # (A client parses the leftover at once: it may have failed already.)
    assert protocol.state is State.OPEN or leftover
    return protocol, frames


def as_frame(item: str | Frame) -> tuple[Any, ...]:
    if isinstance(item, str):
        return (Opcode.TEXT, item.encode(), True, False, False, False)
    return (item.opcode, bytes(item.data), item.fin, item.rsv1, item.rsv2, item.rsv3)


def unmasked_write(write: bytes) -> bytes:
    """One write of a protocol (a frame, or b"" for EOF), its masking key removed.

    A client masks what it sends with random keys (RFC 6455, 5.3): two
    clients that agree send the same frames, not the same bytes.
    """
    if not write or not write[1] & 0x80:
        return write
    start = 2 + {126: 2, 127: 8}.get(write[1] & 0x7F, 0)
    head = bytes([write[0], write[1] & 0x7F]) + write[2:start]
    return head + apply_mask(write[start + 4 :], write[start : start + 4])


def observe(protocol: Protocol) -> tuple[Any, ...]:
    exc = protocol.parser_exc
    return (
        protocol.state,
        [unmasked_write(write) for write in protocol.data_to_send()],
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
    """A frame as a client sends it (or, with ``masked=False``, as a server does)."""
    if not options.get("masked", True):
        return header(opcode, len(payload), **options) + payload
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header(opcode, len(payload), **options) + key + body


def sent_to(side: Side, opcode: int, payload: bytes, key: bytes, **options: Any) -> bytes:
    """A frame as the peer of ``side`` sends it: masked to a server, unmasked to a client."""
    return masked(opcode, payload, key, masked=side is Side.SERVER, **options)


TEXTS = st.text(max_size=40).map(str.encode) | st.sampled_from(
    [b"\xff", b"a\xc3", b"\xed\xa0\x80", b"x" * 200, b"y" * (MAX_SIZE + 1), b"\xc3\xa9" * 70]
)
keys = st.binary(min_size=4, max_size=4)


@st.composite
def frames(draw: Any, side: Side) -> bytes:
    """One frame the peer of ``side`` might send: mostly whole texts, and every kind of trouble."""
    kind = draw(
        st.sampled_from(
            ["text"] * 6
            + ["binary", "ping", "pong", "close", "fragments", "cont", "rsv", "wrong-mask"]
            + ["opcode", "long-ping", "huge", "text-126", "unfinished"]
        )
    )
    key = draw(keys)
    payload = draw(TEXTS)

    def frame(opcode: int, payload: bytes, **options: Any) -> bytes:
        return sent_to(side, opcode, payload, key, **options)

    if kind == "text":
        return frame(1, payload)
    if kind == "binary":
        return frame(2, payload)
    if kind in ("ping", "pong"):
        return frame(9 if kind == "ping" else 10, payload[:125])
    if kind == "close":
        return frame(8, draw(st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8bye", b"\x00"])))
    if kind == "fragments":
        cut = draw(st.integers(0, len(payload)))
        middle = frame(9, b"p") if draw(st.booleans()) else b""
        return frame(1, payload[:cut], fin=False) + middle + frame(0, payload[cut:])
    if kind == "unfinished":  # a first fragment, and no continuation
        return frame(1, payload, fin=False)
    if kind == "cont":
        return frame(0, payload)
    if kind == "rsv":
        return frame(1, payload, rsv=draw(st.integers(1, 7)))
    if kind == "wrong-mask":  # unmasked to a server, masked to a client
        return masked(1, payload, key, masked=side is Side.CLIENT)
    if kind == "opcode":
        return frame(draw(st.sampled_from([3, 7, 11, 15])), payload)
    if kind == "long-ping":
        return frame(9, b"p" * 126)
    if kind == "huge":
        length = draw(st.sampled_from([MAX_SIZE + 1, 70_000, 1 << 40]))
        head = header(1, length, masked=side is Side.SERVER)
        return head + (key if side is Side.SERVER else b"") + b"xx"
    return frame(1, b"t" * draw(st.integers(126, MAX_SIZE)))  # a 2-byte length


@st.composite
def streams(draw: Any, side: Side) -> tuple[bytes, list[int]]:
    """Frames back to back, and the points where reads split them."""
    data = b"".join(draw(st.lists(frames(side), max_size=12)))
    if draw(st.booleans()):
        data += draw(st.binary(max_size=20))  # and then garbage
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return data, cuts


def reads(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def run_both(side: Side, data: bytes, cuts: list[int], leftover: bytes = b"") -> int:
    """Feed both; assert they agree after every read; return how many texts were read ahead."""
    direct, direct_first = open_protocol(side, leftover)
    through, through_first = open_protocol(side, leftover)
    reader = TextFrameReader(through)
    assert as_frames(direct_first) == as_frames(through_first)
    assert observe(through) == observe(direct)
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


EXAMPLES = int(os.environ.get("GREENBUS_FRAMING_EXAMPLES", "1000"))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.data())
@each_side
def test_the_reader_agrees_with_websockets_on_any_frames_split_anywhere(side, data):
    run_both(side, *data.draw(streams(side)))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.binary(max_size=8))
@each_side
def test_the_reader_agrees_when_the_handshake_left_part_of_a_frame_behind(side, data, leftover):
    run_both(side, *data.draw(streams(side)), leftover=leftover)


@settings(max_examples=300, deadline=None)
@given(st.data())
@each_side
def test_the_reader_agrees_when_frames_came_with_the_handshake(side, data):
    # Frames, whole or cut anywhere, in the handshake's read: the protocol
    # parsed some, and may be mid-frame when the reader starts.
    stream, cuts = data.draw(streams(side))
    cut = data.draw(st.integers(0, len(stream)))
    run_both(side, stream[cut:], [c - cut for c in cuts if c > cut], leftover=stream[:cut])


@each_side
def test_whole_texts_are_read_ahead_and_a_control_frame_goes_through_the_protocol(side):
    key = b"\x01\x02\x03\x04"
    texts = [f"message {i}".encode() for i in range(50)]
    data = b"".join(sent_to(side, 1, text, key) for text in texts)
    data += sent_to(side, 9, b"hi", key) + sent_to(side, 1, "é".encode(), key)
    protocol, _ = open_protocol(side)
    got = TextFrameReader(protocol).receive_data(data[:-3])
    assert got[:50] == [text.decode() for text in texts]
    assert as_frame(got[50]) == (Opcode.PING, b"hi", True, False, False, False)
    assert len(got) == 51  # the last text waits for its last 3 bytes
    [pong] = protocol.data_to_send()
    assert unmasked_write(pong) == Frame(Opcode.PONG, b"hi").serialize(mask=False)


@each_side
def test_a_text_split_across_reads_is_read_ahead_once_whole(side):
    frame = sent_to(side, 1, b"x" * 200, b"abcd")
    assert run_both(side, frame, list(range(1, len(frame)))) == 1


def test_a_client_reads_the_hubs_unmasked_texts_ahead_of_its_protocol():
    # The client's protocol parses nothing of them: its parser still waits
    # for a frame, with nothing buffered.
    protocol, _ = open_protocol(Side.CLIENT)
    data = sent_to(Side.CLIENT, 1, b'{"op":"msg"}', b"") * 3
    assert TextFrameReader(protocol).receive_data(data) == ['{"op":"msg"}'] * 3
    assert protocol.events_received() == [] and not protocol.reader.buffer


def test_a_client_hands_a_masked_text_from_the_server_to_its_protocol_and_fails():
    protocol, _ = open_protocol(Side.CLIENT)
    data = masked(1, b"hello", b"abcd") + sent_to(Side.CLIENT, 1, b"later", b"")
    assert TextFrameReader(protocol).receive_data(data) == []
    assert protocol.state is State.CLOSING
    assert protocol.close_sent is not None and protocol.close_sent.code == 1002
    assert str(protocol.parser_exc) == "incorrect masking"


@each_side
def test_a_frame_over_the_size_limit_is_refused_by_its_header_as_websockets_does(side):
    protocol, _ = open_protocol(side)
    head = header(1, MAX_SIZE + 1, masked=side is Side.SERVER)
    got = TextFrameReader(protocol).receive_data(head + b"abcd")
    assert got == []
    assert protocol.state is State.CLOSING
    assert protocol.close_sent is not None and protocol.close_sent.code == 1009


@each_side
def test_invalid_utf8_is_left_to_the_protocol_as_a_frame(side):
    protocol, _ = open_protocol(side)
    [frame] = TextFrameReader(protocol).receive_data(sent_to(side, 1, b"a\xff", b"abcd"))
    assert isinstance(frame, Frame) and frame.data == b"a\xff"


@each_side
@pytest.mark.parametrize("cut", [0, 1, 2, 5, 8])
def test_once_the_protocol_is_closing_everything_goes_through_it(side, cut):
    key = b"abcd"
    data = sent_to(side, 8, b"\x03\xe8", key) + sent_to(side, 1, b"late", key)
    assert run_both(side, data, [cut]) == 0
