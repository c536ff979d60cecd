"""One WebSocket connection driven by gevent: a reader and a writer greenlet.

A thin driver around the ``websockets`` library's sans-I/O protocol objects
(``ServerProtocol``/``ClientProtocol``): the reader greenlet feeds socket
bytes in and hands complete text messages to a callback; the writer greenlet
is the only one that writes to the socket, so two senders can never
interleave frames.  It drains the connection's
:class:`~greenbus.bridge.outbox.Outbox` in batches: everything queued when it
wakes (up to a bound) is framed and written with one ``sendall``.

It knows no routing and no JSON: what it writes was encoded by whoever
queued it in the outbox, which also holds the limits.

Close codes follow RFC 6455 section 7.4.1: invalid UTF-8 1007, a binary
message 1003, a message over ``max_size`` 1009 (enforced by ``websockets``).
"""

from __future__ import annotations

import logging
import socket
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

import gevent
import gevent.event
from gevent import Timeout
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.typing import BytesLike

from .._attrs import readonly
from ..exceptions import EndOfChannel
from .outbox import Outbox, OutboxState

__all__ = ["Connection"]

logger = logging.getLogger("greenbus.bridge.connection")

#: Bytes read from the socket per recv().
READ_SIZE = 65536
#: A read at least this big makes the reader yield before reading again.
YIELD_AFTER = 4096
#: Queued frames written per ``sendall``, at most.
MAX_BATCH = 1024
#: Bytes framed per ``sendall``, at most (a batch stops growing past it), so a
#: peer that stops reading holds at most this much (plus one frame) in its writer.
MAX_BATCH_BYTES = 256 * 1024


class _NoFrameLogging(logging.LoggerAdapter):  # type: ignore[type-arg]
    # websockets logs every frame at DEBUG, hello tokens included: never let
    # it (our own logs say what happened, without the payloads).
    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


def wire_logger(name: str) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """A logger for a ``websockets`` protocol object that never logs frames."""
    return _NoFrameLogging(logging.getLogger(name), {})


class Connection:
    """Drive ``protocol`` over ``sock`` with one reader and one writer greenlet.

    Args:
        sock: a connected gevent socket, past the opening handshake.
        protocol: the ``websockets`` protocol object, in state OPEN.
        on_text: called in the reader greenlet with each complete text message.
        on_close: called once, in the reader greenlet, when the connection is
            over (with the close code the peer saw or sent, or 1006).
        outbox: what the writer drains; its limits are the owner's (the
            hub's peers are bounded).  Default: a new unbounded one.
        name: for logs and repr.
        ping_interval: send a ping after this many idle seconds (None: never).
        ping_timeout: close with 1011 if no data arrives this long after a ping.
        close_timeout: how long to wait for the peer's close frame / EOF;
            also how long :meth:`close` waits for its close frame to be
            written before it aborts the TCP connection (a peer that stopped
            reading never frees room in the socket buffer).
        recv: reads up to n bytes (default ``sock.recv``); e.g. a buffered
            reader's ``read1`` when a server read ahead during the handshake.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: Protocol,
        *,
        on_text: Callable[[str], None],
        on_close: Callable[[int], None],
        outbox: Outbox | None = None,
        name: str = "connection",
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 5.0,
        recv: Callable[[int], bytes] | None = None,
    ) -> None:
        self.sock = sock
        self._read_buffer = _read_buffer()
        self._recv_bytes = recv if recv is not None else self._recv_copy
        self.protocol = protocol
        self.name = name
        self._on_text = on_text
        self._on_close = on_close
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        #: The frames waiting for the writer.  Its state moves with the
        #: connection's: it closes when the reader ends, so nothing is
        #: queued for a connection that can no longer write.
        self.outbox = outbox if outbox is not None else Outbox(name=name)
        self._fragments: list[BytesLike] = []
        self._idle_timer: Timeout | None = None
        self._reader: gevent.Greenlet | None = None
        self._writer: gevent.Greenlet | None = None
        self._closed_event = gevent.event.Event()
        self._close_timer: gevent.Greenlet | None = None
        self._close_framed = False
        self._close_written = False
        #: Why the connection was given up on, if it timed out: "keepalive"
        #: (no pong) or "close" (the close frame could not be written).
        self.timed_out: str | None = None
        self.received = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.close_code: int | None = None
        #: What the writer never took, once the connection is over (oldest
        #: first): the owner resends or counts it.
        self.unsent: list[tuple[bytes, bytes | None]] = []

    def __repr__(self) -> str:
        return (
            f"<Connection {self.name} {self.protocol.state.name.lower()} "
            f"queued={self.outbox.pending_frames} sent={self.sent} received={self.received}>"
        )

    @property
    def open(self) -> bool:
        """True while frames can still be queued and written."""
        return self.protocol.state is State.OPEN and self.outbox.state is OutboxState.OPEN

    @property
    def closed_by_peer(self) -> bool:
        """True once over if the peer started the closing handshake (its close code counts)."""
        protocol = self.protocol
        return protocol.close_rcvd is not None and (
            protocol.close_sent is None or bool(protocol.close_rcvd_then_sent)
        )

    sent = readonly[int](
        "outbox.written_frames", "Frames written to the socket (not proof that the peer read them)."
    )

    pending = readonly[int](
        "outbox.pending_frames",
        "Frames queued and not yet written (including the writer's current batch).",
    )

    def start(self, initial_events: Sequence[Any] = ()) -> None:
        """Start the reader and writer greenlets.

        Args:
            initial_events: frames the protocol already parsed (data that
                arrived with the handshake), handled first.
        """
        self._writer = gevent.spawn(self._write_loop)
        self._reader = gevent.spawn(self._read_loop, list(initial_events))

    def run(self) -> None:
        """Start, then wait until the connection is over (for a server handler)."""
        self.start()
        self.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the connection is over; True if it is."""
        return bool(self._closed_event.wait(timeout))

    # -- sending ---------------------------------------------------------------

    def send(self, text: str) -> bool:
        """Queue a text frame as a control frame (never dropped); never blocks.

        Returns False if it was not queued: the connection is closing or
        over, or the frame took the outbox over its limits.
        """
        if self.protocol.state is not State.OPEN:
            return False
        return self.outbox.put_control(text.encode())

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake after what is already queued.  Idempotent.

        If the close frame is not written within ``close_timeout`` (the
        peer stopped reading and the socket buffer is full), the TCP
        connection is aborted: the peer then sees no close frame (1006).
        A no-op once the connection is over.
        """
        if self.protocol.state is State.OPEN and self.outbox.request_close(code, reason):
            self._close_timer = gevent.spawn_later(self._close_timeout, self._close_overdue, code)

    def _close_overdue(self, code: int) -> None:
        if self._close_written or self._closed_event.is_set():
            return
        self.timed_out = "close"
        logger.warning(
            "%s: close frame (%d) not written within %s s (the peer is not reading); aborting",
            self.name,
            code,
            self._close_timeout,
        )
        self.abort()

    def abort(self) -> None:
        """Close the TCP connection at once."""
        try:
            self.sock.close()
        except OSError:
            pass

    # -- the writer ------------------------------------------------------------

    def _write_loop(self) -> None:
        outbox = self.outbox
        protocol = self.protocol
        try:
            while True:
                try:
                    batch = outbox.take(MAX_BATCH, MAX_BATCH_BYTES)
                except EndOfChannel:
                    return
                # Frame the batch and write it with one sendall.  Once the
                # protocol is closing (the peer sent a close frame) no data
                # frame may follow: the batch is lost, and counted so.
                framed = protocol.state is State.OPEN
                if framed:
                    for head, body in batch:
                        protocol.send_text(head if body is None else head + body)
                    close = outbox.close_due()
                    if close is not None:
                        protocol.send_close(*close)
                        self._close_framed = True
                written = self._flush()
                outbox.done(written and (framed or not batch))
                if not written:
                    return
        except Exception:
            logger.exception("%s: writer failed", self.name)
            outbox.done(False)
            self.abort()

    def _flush(self) -> bool:
        # Write what the protocol has queued, in one sendall.  Returns False
        # once the write side is finished (EOF sent or socket broken).
        chunks = self.protocol.data_to_send()
        if not chunks:
            return True
        data = b"".join(chunks)
        eof = chunks[-1] == b""
        try:
            if data:
                self.sock.sendall(data)
                self.bytes_out += len(data)
                if self._close_framed:
                    self._close_written = True
            if eof:
                self.sock.shutdown(socket.SHUT_WR)
                return False
        except OSError as exc:
            logger.debug("%s: write failed: %s", self.name, exc)
            self.abort()
            return False
        return True

    # -- the reader ------------------------------------------------------------

    def _read_loop(self, initial_events: list[Any]) -> None:
        protocol = self.protocol
        try:
            for event in initial_events:
                self._handle(event)
            while True:
                data = self._recv()
                if data:
                    self.bytes_in += len(data)
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                for event in cast("list[Frame]", protocol.events_received()):
                    self._handle(event)
                if protocol.writes:  # pong, close: the writer must flush them
                    self._protocol_frames_pending()
                if not data or protocol.state is State.CLOSED:
                    break
                if protocol.close_expected():
                    self._wait_for_eof()
                    break
                # A publisher that keeps the socket full never makes recv()
                # block, so after a big read yield once: the writers of the
                # peers we just routed to must get to run, or their queues
                # only grow.  (A small read means recv() will block soon
                # anyway; skipping the yield keeps the round trip short.)
                if len(data) >= YIELD_AFTER:
                    gevent.sleep(0)
        except Exception:
            logger.exception("%s: reader failed", self.name)
        finally:
            self._finish()

    def _protocol_frames_pending(self) -> None:
        # The protocol framed something by itself (a pong, the close reply):
        # count it toward the outbox's limits (a peer that pings and never
        # reads must not grow them without bound), and have it written.
        writes = self.protocol.writes
        self.outbox.note_unqueued(len(writes), sum(map(len, writes)))
        self.outbox.request_flush()

    def _recv(self) -> bytes:
        # Idle keepalive: after ping_interval seconds without data, ping, and
        # give up after ping_timeout more (close 1011, as websockets does).
        interval = self._ping_interval
        if interval is None:
            return self._recv_raw(None)
        # One timer, re-armed per read, instead of a new Timeout per read.
        timer = self._idle_timer
        if timer is None:
            timer = self._idle_timer = Timeout(interval)
        timer.start()
        try:
            return self._recv_raw(None)
        except Timeout as exc:
            if exc is not timer:
                raise
            # The timer is reused: its traceback would keep this frame, and
            # so this connection, alive in a cycle.
            exc.__traceback__ = None
        finally:
            timer.cancel()
        if self.protocol.state is State.OPEN:
            self.protocol.send_ping(b"greenbus")
            self.outbox.request_flush()
        with Timeout(self._ping_timeout, False):
            return self._recv_raw(None)
        logger.info("%s: no pong within %s s; closing", self.name, self._ping_timeout)
        self.timed_out = "keepalive"
        if self.protocol.state is State.OPEN:
            self.protocol.fail(1011, "keepalive ping timeout")
            self.outbox.request_flush()
        return self._recv_raw(self._close_timeout)

    def _recv_raw(self, timeout: float | None) -> bytes:
        try:
            if timeout is None:
                return self._recv_bytes(READ_SIZE)
            with Timeout(timeout, False):
                return self._recv_bytes(READ_SIZE)
            return b""
        except OSError:
            return b""

    def _recv_copy(self, n: int) -> bytes:
        # recv_into the hub's shared buffer, then copy out exactly what came.
        # sock.recv(65536) would allocate 64 KiB and shrink it in place for
        # every read: over hours the C heap fills with holes (RSS grows
        # while live memory does not).  No greenlet switch can happen
        # between the read and the copy, so one buffer serves every reader.
        view = self._read_buffer
        got = self.sock.recv_into(view, n)
        return view[:got].tobytes()

    def _wait_for_eof(self) -> None:
        # We sent a close frame (or failed the connection): the peer should
        # close the TCP stream; don't wait for it forever.
        # Keep feeding the protocol (RFC 6455 5.5.1 lets data frames precede
        # the close reply) and stop as soon as it says the handshake is done.
        self.outbox.request_flush()
        timer = Timeout(self._close_timeout)
        timer.start()
        try:
            self._read_until_closed()
        except Timeout as exc:
            if exc is not timer:
                raise
            exc.__traceback__ = None  # or its frames keep this connection alive in a cycle
            self.timed_out = "close"
            logger.info(
                "%s: no end to the closing handshake within %s s; closing the TCP connection",
                self.name,
                self._close_timeout,
            )
        finally:
            timer.close()

    def _read_until_closed(self) -> None:
        protocol = self.protocol
        while protocol.state is not State.CLOSED:
            data = self._recv_raw(None)
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for event in cast("list[Frame]", protocol.events_received()):
                self._handle(event)
            if protocol.writes:
                self._protocol_frames_pending()
            if not data:
                break
            # A peer that keeps sending keeps recv() from blocking: yield, or
            # the close timeout (a hub timer) could never fire.
            if len(data) >= YIELD_AFTER:
                gevent.sleep(0)

    def _handle(self, frame: Frame) -> None:
        protocol = self.protocol
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.CONT:
            if opcode is Opcode.TEXT and self._fragments:
                return  # websockets already failed the connection
            if not frame.fin:
                self._fragments.append(frame.data)
                return
            data: BytesLike
            if self._fragments:
                self._fragments.append(frame.data)
                data = b"".join(self._fragments)
                self._fragments.clear()
            else:
                data = frame.data
            try:
                text = str(data, "utf-8")
            except UnicodeDecodeError as exc:
                protocol.fail(1007, f"invalid UTF-8 at position {exc.start}")
                return
            self.received += 1
            # Not gated on the state: a message parsed in the same read as
            # the peer's close frame came before it and must be delivered.
            self._on_text(text)
        elif opcode is Opcode.BINARY:
            protocol.fail(1003, "binary messages are not supported; send JSON text")

    def _finish(self) -> None:
        protocol = self.protocol
        self.close_code = (
            protocol.close_rcvd.code
            if protocol.close_rcvd is not None
            else protocol.close_sent.code
            if protocol.close_sent is not None
            else 1006
        )
        # The outbox closes with the connection: from now on nothing can be
        # queued, and what the writer never took goes back to the owner.
        self.unsent = self.outbox.close()
        if self._close_timer is not None:
            self._close_timer.kill(block=False)
        if self._writer is not None:
            self._writer.join(timeout=self._close_timeout)
            if not self._writer.dead:
                self._writer.kill(block=True)
                self.outbox.done(False)  # the batch it was writing is lost
        self.abort()
        try:
            self._on_close(self.close_code)
        except Exception:
            logger.exception("%s: on_close callback failed", self.name)
        self._closed_event.set()
        self._release()

    def _release(self) -> None:
        # Break the reference cycles of a finished connection (its greenlets
        # and callbacks point back at it and at its owner; the protocol's
        # parser generator at the protocol), so its buffers are freed now
        # rather than at the next full garbage collection: a hub that sees
        # thousands of connections come and go keeps a flat memory profile.
        self._reader = self._writer = self._close_timer = None
        self._on_text = _ignore
        self._on_close = _ignore
        self._recv_bytes = _read_nothing
        self._idle_timer = None
        protocol = self.protocol
        parser = getattr(protocol, "parser", None)
        if parser is not None and hasattr(parser, "close"):
            parser.close()
        # websockets keeps why parsing stopped (EOF, a bad frame) with its
        # traceback, whose frames refer back to the protocol.
        parser_exc = getattr(protocol, "parser_exc", None)
        if parser_exc is not None:
            parser_exc.__traceback__ = None


def _ignore(_: Any) -> None:
    # The callbacks of a finished connection (see Connection._release).
    pass


def _read_nothing(_: int) -> bytes:
    return b""


_read_buffers: weakref.WeakKeyDictionary[object, memoryview] = weakref.WeakKeyDictionary()


def _read_buffer() -> memoryview:
    # One READ_SIZE buffer per gevent hub (per OS thread), made on first use.
    hub = gevent.get_hub()
    buffer = _read_buffers.get(hub)
    if buffer is None:
        buffer = _read_buffers[hub] = memoryview(bytearray(READ_SIZE))
    return buffer
