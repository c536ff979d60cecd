"""Whole text frames read ahead of ``websockets``' parser, sans-I/O.

A client floods the hub with small, complete, unfragmented, masked text
frames, and the hub floods each client with unmasked ones (RFC 6455,
section 5.2; 5.1: a client masks every frame, a server none).
``websockets``' protocol object parses each through a chain of generators
and builds a ``Frame`` for it; for those frames, :class:`TextFrameReader`
reads the header, unmasks the payload on a server with ``websockets``' own
``apply_mask`` (its C speedup) and decodes it as UTF-8, straight from the
bytes received.  Everything else goes to the protocol object, which stays
the one authority on the connection:

- a control frame, a fragment, a continuation, a frame with a reserved bit,
  a text that is not valid UTF-8: handed to it whole, exactly one frame at
  a time, so its parser is at a frame boundary again when it returns;
- a header it would refuse (unknown opcode, masked the wrong way for its
  side, over the size limit), or anything once the connection is no longer
  OPEN: handed to it with all that follows, as it would have been without
  this reader.

The protocol object therefore sees every frame it would have seen, whole or
as a prefix of the stream, and its events come back in stream order, among
the texts read here.  A partial frame at the end of a read waits here (its
header already checked as the protocol would) until the rest arrives.
"""

from __future__ import annotations

from typing import Any

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover (no C compiler where websockets was built)
    from websockets.utils import apply_mask

__all__ = ["SHORT_TEXT", "TextFrameReader", "text_header"]

#: FIN set, no reserved bit, opcode 1 (text): the first byte of a whole text frame.
_WHOLE_TEXT = 0x80 | Opcode.TEXT.value
_OPCODES = frozenset(opcode.value for opcode in Opcode)
_AT_EOF = StreamReader.at_eof.__code__
_PARSE = Protocol.parse.__code__
#: The protocol's attributes the fast path reads.
_STATE = ("current_size", "max_message_size", "max_fragment_size", "reader", "parser")


class TextFrameReader:
    """Reads the peer's whole text frames itself, and the rest through ``protocol``.

    Args:
        protocol: a ``websockets`` protocol object with no extension: a
            server's (it reads masked frames) or a client's (unmasked ones).
            Created once per connection.
    """

    __slots__ = ("_enabled", "_head_size", "_mask_bit", "_protocol", "_tail")

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol
        #: The fast path reads websockets' parser state (websockets 14 and
        #: newer have these); with any of it missing, every byte goes to
        #: the protocol.
        self._enabled = all(hasattr(protocol, name) for name in _STATE)
        #: The frames' MASK bit as this side's parser requires it (RFC 6455,
        #: 5.1): a server reads only masked frames, a client only unmasked
        #: ones; and the bytes before a payload with a 7-bit length (the
        #: header, and a server's 4-byte masking key).
        masked = protocol.side is Side.SERVER
        self._mask_bit = 0x80 if masked else 0
        self._head_size = 6 if masked else 2
        #: The start of a frame whose end has not arrived (bytes received
        #: here and not yet handed to the protocol).
        self._tail = b""

    def receive_data(self, data: bytes) -> list[str | Frame]:
        """Take ``data`` from the network; return what arrived, in order.

        Returns:
            each whole text message read here as its text, and each event of
            the protocol object (``Frame``) where it came in the stream.
        """
        protocol = self._protocol
        if self._tail:
            data = self._tail + data
            self._tail = b""
        if not self._usable():
            protocol.receive_data(data)
            return protocol.events_received()  # type: ignore[return-value]
        out: list[Any] = []
        limit = _size_limit(protocol)
        mask_bit = self._mask_bit
        head_size = self._head_size
        end = len(data)
        pos = 0
        while end - pos >= 2:
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            start = pos + head_size
            if length >= 126:
                if length == 126:
                    start += 2
                    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                else:
                    start += 8
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if end < start - head_size + 2:  # the length is not all here yet
                    if _refused_early(first, second, mask_bit):
                        break
                    self._tail = data[pos:]
                    return out
            stop = start + length
            if (
                first == _WHOLE_TEXT
                and second & 0x80 == mask_bit
                and length <= limit
                and protocol.state is State.OPEN
                and protocol.current_size is None
            ):
                if stop > end:
                    self._tail = data[pos:]
                    return out
                payload = data[start:stop]
                if mask_bit:
                    payload = apply_mask(payload, data[start - 4 : start])
                try:
                    out.append(payload.decode())
                except UnicodeDecodeError:
                    pass  # the protocol's frame, and the connection's answer
                else:
                    pos = stop
                    continue
            elif (
                protocol.state is not State.OPEN
                or _refused_early(first, second, mask_bit)
                or length > _size_limit(protocol)
            ):
                break  # the protocol refuses it (or discards): all of it, as it would
            if stop > end:
                self._tail = data[pos:]
                return out
            protocol.receive_data(data[pos:stop])  # exactly one frame
            out += protocol.events_received()
            pos = stop
        if pos < end:
            if end - pos < 2 and self._usable():
                self._tail = data[pos:]
            else:
                protocol.receive_data(data[pos:])
                out += protocol.events_received()
        return out

    def receive_eof(self) -> list[Frame]:
        """The network stream ended: the protocol gets what waited here, then the EOF.

        Returns:
            the protocol object's events.
        """
        protocol = self._protocol
        if self._tail:
            protocol.receive_data(self._tail)
            self._tail = b""
        protocol.receive_eof()
        return protocol.events_received()  # type: ignore[return-value]

    def _usable(self) -> bool:
        # Only where the protocol's parser waits for a new frame with nothing
        # buffered (it may start mid-frame: bytes that came with the
        # handshake) and would read it as this reader does.
        protocol = self._protocol
        if (
            not self._enabled
            or protocol.state is not State.OPEN
            or protocol.reader.buffer
            or protocol.extensions
        ):
            return False
        # Its innermost generators: parse() waiting in at_eof() (not discard()).
        outer, parser = None, protocol.parser
        while (inner := getattr(parser, "gi_yieldfrom", None)) is not None:
            outer, parser = parser, inner
        return (
            getattr(parser, "gi_code", None) is _AT_EOF
            and getattr(outer, "gi_code", None) is _PARSE
        )


def _refused_early(first: int, second: int, mask_bit: int) -> bool:
    # What websockets refuses from the first two bytes: an unknown opcode or
    # a frame masked the wrong way for this side (RFC 6455, 5.1: a client
    # masks every frame, a server none).
    return (first & 0x0F) not in _OPCODES or second & 0x80 != mask_bit


def _size_limit(protocol: Protocol) -> int:
    # The payload size websockets' parser allows for the next frame.
    limit = 1 << 63
    if protocol.max_message_size is not None:
        limit = protocol.max_message_size - (protocol.current_size or 0)
    if protocol.max_fragment_size is not None:
        limit = min(limit, protocol.max_fragment_size)
    return limit


#: Headers of unmasked final text frames of 0-125 bytes (RFC 6455 5.2): what
#: a server writes before each text it sends.
SHORT_TEXT = [bytes((0x81, n)) for n in range(126)]


def text_header(n: int) -> bytes:
    """The header of an unmasked final text frame of ``n`` bytes, ``n`` over 125."""
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big")
    return b"\x81\x7f" + n.to_bytes(8, "big")
