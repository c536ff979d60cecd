"""One WebSocket connection driven by gevent: a reader, and a writer while there is work.

A thin driver around the ``websockets`` library's sans-I/O protocol objects
(``ServerProtocol``/``ClientProtocol``): the reader feeds socket bytes in and
hands complete text messages to a callback.  It runs in the greenlet that
calls :meth:`Connection.run` (the server's handler greenlet), or in one of
its own (:meth:`Connection.start`).

One writer at a time drains the connection's
:class:`~greenbus.bridge.outbox.Outbox` in batches (everything queued, up to
a bound, framed and written at once), so two senders can never interleave
frames; it exists only while there is something to write.  When work
arrives the outbox starts it: on a plain TCP socket, a hub callback that
writes without blocking (most bursts fit in the socket buffer: no greenlet,
no switch); on TLS, or for what did not fit, a writer greenlet, which parks
between bursts and ends after ``WRITER_LINGER`` idle seconds.  An idle
connection therefore holds one parked greenlet (the reader), not three.

Timers are per gevent hub, not per connection: the keepalive, and the
deadline of a close the hub started, are entries in one heap served by one
libev timer (:mod:`~greenbus.bridge.deadlines`); a read only notes the time.

It knows no routing and no JSON: what it writes was encoded by whoever
queued it in the outbox, which also holds the limits.

Close codes follow RFC 6455 section 7.4.1: invalid UTF-8 1007, a binary
message 1003, a message over ``max_size`` 1009 (enforced by ``websockets``).
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

import gevent
import gevent.event
import gevent.socket
from gevent import Timeout, getcurrent
from websockets.frames import Frame, Opcode
from websockets.protocol import SERVER, Protocol, State
from websockets.typing import BytesLike

from .._attrs import readonly
from ..exceptions import EndOfChannel
from .deadlines import Deadline, deadlines
from .framing import SHORT_TEXT, TextFrameReader, text_header
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


class _Phase(enum.IntEnum):
    """What a connection's one deadline is for.  Transitions in :class:`Connection` only.

    NONE -> IDLE <-> PING -> FAILED; IDLE/PING -> CLOSING -> CLOSE_SENT;
    any -> NONE (the connection is over, or its reader awaits the end).
    """

    #: Nothing due.
    NONE = 0
    #: Keepalive: a ping is due ``ping_interval`` after the last read.
    IDLE = 1
    #: A ping is out: data is due ``ping_timeout`` after it (or close 1011).
    PING = 2
    #: No pong: closed with 1011; the TCP connection ends ``close_timeout`` later.
    FAILED = 3
    #: The hub asked to close: its close frame is due out within ``close_timeout``.
    CLOSING = 4
    #: The close frame is out: the end of the handshake is due within ``close_timeout``.
    CLOSE_SENT = 5


class Connection:
    """Drive ``protocol`` over ``sock``: a reader, and a writer while there is work.

    Args:
        sock: a connected gevent socket, past the opening handshake.
        protocol: the ``websockets`` protocol object, in state OPEN.
        on_text: called in the reader's greenlet with each complete text message.
        on_close: called once, in the reader's greenlet, when the connection is
            over (with the close code the peer saw or sent, or 1006).
        outbox: what the writer drains; its limits are the owner's (the
            hub's peers are bounded).  Default: a new unbounded one.
        name: for logs and repr.
        ping_interval: send a ping after this many idle seconds (None: never).
        ping_timeout: close with 1011 if no data arrives this long after a ping
            (None: wait for it forever).
        close_timeout: how long to wait for the peer's close frame / EOF;
            also how long :meth:`close` waits for its close frame to be
            written before it aborts the TCP connection (a peer that stopped
            reading never frees room in the socket buffer), and then for
            the end of the closing handshake.
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
        #: Reads the peer's whole text frames ahead of the protocol's parser.
        self._frames = TextFrameReader(protocol)
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
        self._fragments: list[BytesLike] | None = None
        # A server without extensions writes its text frames itself (_frame).
        self._raw_text = protocol.side is SERVER and not protocol.extensions
        # A plain gevent socket (not TLS) is written from the hub first,
        # without blocking (see _write_now).
        self._direct = type(sock) is gevent.socket.socket
        self._reader: gevent.Greenlet | None = None
        #: The writer, while there is something to write (see _start_writer).
        self._writer: gevent.Greenlet | None = None
        self._closed_event: gevent.event.Event | None = None
        self._over = False
        # The one deadline (keepalive or close), on the hub's shared timer.
        self._deadlines = deadlines()
        self._deadline: Deadline | None = None
        self._phase = _Phase.NONE
        self._last_read = 0.0
        self._ping_at = 0.0
        self._close_framed = False
        self._close_written = False
        #: Why the connection was given up on, if it timed out: "keepalive"
        #: (no pong) or "close" (the closing handshake did not end in time).
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
        """Start reading in a greenlet of its own (writers start as frames are queued).

        Args:
            initial_events: frames the protocol already parsed (data that
                arrived with the handshake), handled first.
        """
        self._begin()
        self._reader = gevent.spawn(self._read_loop, list(initial_events))

    def run(self) -> None:
        """Read in the calling greenlet until the connection is over (for a server handler).

        The handler's greenlet is the reader: a connection costs no greenlet
        of its own while it is idle.
        """
        self._begin()
        self._read_loop([])

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the connection is over; True if it is."""
        if self._over:
            return True
        event = self._closed_event
        if event is None:
            event = self._closed_event = gevent.event.Event()
        return bool(event.wait(timeout))

    def _begin(self) -> None:
        # Frames queued so far (a welcome, a hello) go out now.
        self.outbox.bind_writer(self._start_writer)
        if self._ping_interval is not None and self._phase is _Phase.NONE:
            self._last_read = self._deadlines.now()
            self._schedule(_Phase.IDLE, self._last_read + self._ping_interval)

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
        If it is, but the handshake does not end within ``close_timeout``
        more (no close reply, no EOF), the TCP connection is aborted too.
        Either counts as ``timed_out == "close"``.  A no-op once the
        connection is over.
        """
        if self.protocol.state is State.OPEN and self.outbox.request_close(code, reason):
            self._schedule(_Phase.CLOSING, self._deadlines.now() + self._close_timeout)

    def abort(self) -> None:
        """Close the TCP connection at once."""
        try:
            self.sock.close()
        except OSError:
            pass

    # -- deadlines (run in the hub greenlet: never block) ------------------------

    def _schedule(self, phase: _Phase, when: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._phase = phase
        self._deadline = self._deadlines.call_at(when, self._deadline_due)

    def _unschedule(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = _Phase.NONE

    def _deadline_due(self) -> None:
        self._deadline = None
        if self._over:
            return
        phase = self._phase
        now = self._deadlines.now()
        protocol = self.protocol
        interval = self._ping_interval
        if phase is _Phase.IDLE:
            # Idle keepalive: ping_interval seconds without data, then ping;
            # a read only noted its time, so look at it now.
            assert interval is not None
            due = self._last_read + interval
            if due > now:
                self._schedule(_Phase.IDLE, due)
            elif protocol.state is State.OPEN:
                protocol.send_ping(b"greenbus")
                self.outbox.request_flush()
                self._ping_at = now
                wait = self._ping_timeout
                self._schedule(_Phase.PING, now + (wait if wait is not None else interval))
        elif phase is _Phase.PING:
            assert interval is not None
            if self._last_read > self._ping_at:  # data came: idle again
                self._schedule(_Phase.IDLE, self._last_read + interval)
            elif self._ping_timeout is None:
                self._schedule(_Phase.PING, now + interval)  # one ping, no timeout
            else:
                # Give up, as websockets does: close 1011, and end the TCP
                # connection if the peer does not within close_timeout.
                logger.info("%s: no pong within %s s; closing", self.name, self._ping_timeout)
                self.timed_out = "keepalive"
                if protocol.state is State.OPEN:
                    protocol.fail(1011, "keepalive ping timeout")
                    self.outbox.request_flush()
                self._schedule(_Phase.FAILED, now + self._close_timeout)
        elif phase is _Phase.FAILED:
            self.abort()
        elif phase is _Phase.CLOSING:
            if self._close_written:
                self._schedule(_Phase.CLOSE_SENT, now + self._close_timeout)
                return
            self.timed_out = "close"
            logger.warning(
                "%s: close frame not written within %s s (the peer is not reading); aborting",
                self.name,
                self._close_timeout,
            )
            self.abort()
        elif phase is _Phase.CLOSE_SENT:
            self.timed_out = "close"
            logger.info(
                "%s: no end to the closing handshake within %s s; closing the TCP connection",
                self.name,
                self._close_timeout,
            )
            self.abort()

    # -- the writer ------------------------------------------------------------

    def _start_writer(self) -> None:
        # The outbox's hook: work arrived and there is no writer.  Only
        # scheduled here; the producer never switches.
        if self._direct:
            gevent.get_hub().loop.run_callback(self._write_now)
        else:
            self._writer = gevent.spawn(self._write_loop)

    def _write_now(self) -> None:
        # In the hub: frame what is queued and write it with a non-blocking
        # write(2), batch after batch.  Most bursts fit in the socket
        # buffer: no greenlet, no switch.  What does not fit goes to a
        # writer greenlet, which waits for room and then goes on as the
        # writer (parking between bursts).  Only one of the two runs at a
        # time: the outbox starts this only when there is no writer.
        outbox = self.outbox
        try:
            while True:
                try:
                    batch = outbox.take(MAX_BATCH, MAX_BATCH_BYTES, wait=False)
                except EndOfChannel:
                    return
                if batch is None:
                    return
                data, eof, ok = self._frame(batch)
                sent = 0
                if data:
                    try:
                        sent = os.write(self.sock.fileno(), data)
                    except BlockingIOError:
                        pass
                if sent < len(data):
                    self.bytes_out += sent
                    self._writer = gevent.spawn(self._write_loop, data[sent:], eof, ok)
                    return
                if data:
                    self._wrote(len(data))
                if eof:
                    self.sock.shutdown(socket.SHUT_WR)
                    outbox.done(False)
                    return
                outbox.done(ok)
        except OSError as exc:
            logger.debug("%s: write failed: %s", self.name, exc)
            outbox.done(False)
            self.abort()
        except Exception:
            logger.exception("%s: writer failed", self.name)
            outbox.done(False)
            self.abort()

    def _write_loop(self, data: bytes = b"", eof: bool = False, ok: bool = True) -> None:
        # The writer greenlet: first the rest of a batch the hub could not
        # write at once (if any), then batch after batch, parked in take()
        # between bursts until the outbox lets it go (take() returns None).
        outbox = self.outbox
        try:
            if data or eof:
                written = self._send(data, eof)
                outbox.done(written and ok)
                if not written:
                    return
            while True:
                try:
                    batch = outbox.take(MAX_BATCH, MAX_BATCH_BYTES)
                except EndOfChannel:
                    return
                if batch is None:
                    return
                data, eof, ok = self._frame(batch)
                written = self._send(data, eof)
                outbox.done(written and ok)
                if not written:
                    return
        except Exception:
            logger.exception("%s: writer failed", self.name)
            outbox.done(False)
            self.abort()
        finally:
            if self._writer is getcurrent():
                self._writer = None

    def _frame(self, batch: list[tuple[bytes, bytes | None]]) -> tuple[bytes, bool, bool]:
        # Frame a batch: (the bytes to write, then EOF?, counts as written?).
        # Once the protocol is closing (the peer sent a close frame) no data
        # frame may follow: the batch is lost, and counted so.
        protocol = self.protocol
        framed = protocol.state is State.OPEN
        chunks: list[bytes] = []
        if framed:
            if self._raw_text:
                # RFC 6455 5.2, without send_text's Frame per message; after
                # what the protocol framed by itself (a pong): it is older.
                chunks = protocol.data_to_send()
                append = chunks.append
                for head, body in batch:
                    n = len(head) if body is None else len(head) + len(body)
                    append(SHORT_TEXT[n] if n < 126 else text_header(n))
                    append(head)
                    if body is not None:
                        append(body)
            else:
                for head, body in batch:
                    protocol.send_text(head if body is None else head + body)
            close = self.outbox.close_due()
            if close is not None:
                protocol.send_close(*close)
                self._close_framed = True
        tail = protocol.data_to_send()  # the close frame, then EOF (b"")?
        eof = bool(tail) and tail[-1] == b""
        chunks += tail
        return b"".join(chunks), eof, framed or not batch

    def _send(self, data: bytes, eof: bool) -> bool:
        # Write with one sendall (blocking: the writer greenlet only).
        # Returns False once the write side is finished (EOF sent or
        # socket broken).
        try:
            if data:
                self.sock.sendall(data)
                self._wrote(len(data))
            if eof:
                self.sock.shutdown(socket.SHUT_WR)
                return False
        except OSError as exc:
            logger.debug("%s: write failed: %s", self.name, exc)
            self.abort()
            return False
        return True

    def _wrote(self, n: int) -> None:
        self.bytes_out += n
        if self._close_framed:
            self._close_written = True

    # -- the reader ------------------------------------------------------------

    def _read_loop(self, initial_events: list[Any]) -> None:
        protocol = self.protocol
        try:
            for event in initial_events:
                self._handle(event)
            if protocol.writes:  # a close that came with the 101: reply as to any
                self._protocol_frames_pending()
            while not protocol.close_expected():
                data = self._recv()
                if data:
                    self.bytes_in += len(data)
                self._receive(data)
                if protocol.writes:  # pong, close: the writer must flush them
                    self._protocol_frames_pending()
                if not data or protocol.state is State.CLOSED:
                    break
                # A publisher that keeps the socket full never makes recv()
                # block, so after a big read yield once: the writers of the
                # peers we just routed to must get to run, or their queues
                # only grow.  (A small read means recv() will block soon
                # anyway; skipping the yield keeps the round trip short.)
                if len(data) >= YIELD_AFTER:
                    gevent.sleep(0)
            else:
                self._unschedule()  # _wait_for_eof bounds the rest
                self._wait_for_eof()
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
        # The keepalive (a deadline on the hub's timer) reads the time of
        # the last read: noting it is all a read costs.
        data = self._recv_raw()
        self._last_read = self._deadlines.now()
        return data

    def _recv_raw(self) -> bytes:
        try:
            return self._recv_bytes(READ_SIZE)
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
            data = self._recv_raw()
            self._receive(data)
            if protocol.writes:
                self._protocol_frames_pending()
            if not data:
                break
            # A peer that keeps sending keeps recv() from blocking: yield, or
            # the close timeout (a hub timer) could never fire.
            if len(data) >= YIELD_AFTER:
                gevent.sleep(0)

    def _receive(self, data: bytes) -> None:
        # Feed what was read (b"": EOF) and handle what it completes, in
        # stream order: whole texts read ahead of the protocol's parser
        # (framing.py), and the protocol's own frames.
        frames = self._frames
        for item in frames.receive_data(data) if data else frames.receive_eof():
            if type(item) is str:
                self.received += 1
                self._on_text(item)
            else:
                self._handle(cast("Frame", item))

    def _handle(self, frame: Frame) -> None:
        protocol = self.protocol
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.CONT:
            fragments = self._fragments
            if opcode is Opcode.TEXT and fragments:
                return  # websockets already failed the connection
            if not frame.fin:
                if fragments is None:
                    fragments = self._fragments = []
                fragments.append(frame.data)
                return
            data: BytesLike
            if fragments:
                fragments.append(frame.data)
                data = b"".join(fragments)
                self._fragments = None
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
        self._unschedule()
        self.close_code = (
            protocol.close_rcvd.code
            if protocol.close_rcvd is not None
            else protocol.close_sent.code
            if protocol.close_sent is not None
            else 1006
        )
        # The outbox closes with the connection: from now on nothing can be
        # queued, no writer starts, and what the writer never took goes
        # back to the owner.
        self.unsent = self.outbox.close()
        try:
            writer = self._writer
            if writer is not None:
                writer.join(timeout=self._close_timeout)
                if not writer.dead:
                    writer.kill(block=True)
                    self.outbox.done(False)  # the batch it was writing is lost
        finally:
            self.abort()
            self._over = True
            try:
                self._on_close(self.close_code)
            except Exception:
                logger.exception("%s: on_close callback failed", self.name)
            if self._closed_event is not None:
                self._closed_event.set()
            self._release()

    def _release(self) -> None:
        # Break the reference cycles of a finished connection (its greenlets
        # and callbacks point back at it and at its owner; the protocol's
        # parser generator at the protocol), so its buffers are freed now
        # rather than at the next full garbage collection: a hub that sees
        # thousands of connections come and go keeps a flat memory profile.
        self._reader = self._writer = None
        self._on_text = _ignore
        self._on_close = _ignore
        self._recv_bytes = _read_nothing
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
