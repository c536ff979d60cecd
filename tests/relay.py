"""A TCP relay on 127.0.0.1 that cuts every connection through it on demand.

Clients connect to the relay instead of the hub; it forwards bytes both
ways.  :meth:`Relay.cut` resets every connection at once (RST, both sides),
as a dropped network would: the recovery tests cut a publisher and a
subscriber mid-stream, several times.

In process (gevent)::

    relay = Relay(hub_port).start()
    ...; relay.cut(); ...; relay.stop()

As a process, for the Node and browser suites::

    python tests/relay.py HUB_PORT [--cut-every SECONDS]

prints ``relay listening on ws://127.0.0.1:PORT/`` once it listens; SIGUSR1
cuts every connection now (and prints ``relay cut N``); SIGUSR2 mutes it, or
unmutes it if it was muted (and prints ``relay muted`` or ``relay unmuted``),
see :meth:`Relay.mute`; SIGTERM stops it (it prints how many cuts it made).
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys

import gevent
import gevent.event
from gevent import socket as gsocket
from gevent.server import StreamServer

__all__ = ["Relay"]


class Relay:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:``target``; :meth:`cut` resets every connection."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.cuts = 0
        self.connections = 0
        #: While True, every connection is refused (reset at once): the hub
        #: is unreachable through the relay.
        self.down = False
        #: Set unless muted: what the hub sends flows to the clients.
        self._flowing = gevent.event.Event()
        self._flowing.set()
        self._pairs: set[tuple[gsocket.socket, gsocket.socket]] = set()
        self._server = StreamServer(("127.0.0.1", 0), self._handle)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> Relay:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.close()
        self._reset_all()
        self._server.stop(timeout=1)

    def cut(self) -> int:
        """Reset every connection through the relay now; how many were cut."""
        self.cuts += 1
        return self._reset_all()

    def _reset_all(self) -> int:
        pairs = list(self._pairs)
        self._pairs.clear()
        for pair in pairs:
            for sock in pair:
                _reset(sock)
        return len(pairs)

    def go_down(self) -> None:
        """Cut every connection and refuse new ones until :meth:`come_back`."""
        self.down = True
        self.cut()

    def come_back(self) -> None:
        self.down = False

    @property
    def muted(self) -> bool:
        return not self._flowing.is_set()

    def mute(self) -> None:
        """Hold everything the hub sends (its acks, its messages) until :meth:`unmute`,
        while what clients send still reaches it; refuse new connections meanwhile.

        A cut while muted loses what was held: the hub applied the clients'
        frames, and they never learn it.
        """
        self._flowing.clear()

    def unmute(self) -> None:
        self._flowing.set()

    def _handle(self, downstream: gsocket.socket, address: object) -> None:
        if self.down or self.muted:
            _reset(downstream)
            return
        try:
            upstream = gsocket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            _reset(downstream)
            return
        upstream.settimeout(None)
        self.connections += 1
        pair = (downstream, upstream)
        self._pairs.add(pair)
        pumps = [
            gevent.spawn(_pump, downstream, upstream),
            gevent.spawn(_pump, upstream, downstream, self._flowing),
        ]
        gevent.joinall(pumps, count=1)
        self._pairs.discard(pair)
        for sock in pair:
            _reset(sock)
        gevent.killall(pumps)


def _pump(
    source: gsocket.socket, sink: gsocket.socket, gate: gevent.event.Event | None = None
) -> None:
    try:
        while data := source.recv(65536):
            if gate is not None:
                gate.wait()  # held while muted
            sink.sendall(data)
    except OSError:
        pass


def _reset(sock: gsocket.socket) -> None:
    # Close with an RST, as a dropped connection looks to both ends.
    try:
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=int, help="the hub's port on 127.0.0.1")
    parser.add_argument("--cut-every", type=float, default=0, help="seconds between cuts (0: none)")
    args = parser.parse_args()
    relay = Relay(args.target).start()
    done = gevent.event.Event()

    def cut() -> None:
        print(f"relay cut {relay.cut()}", flush=True)

    def toggle_mute() -> None:
        if relay.muted:
            relay.unmute()
            print("relay unmuted", flush=True)
        else:
            relay.mute()
            print("relay muted", flush=True)

    gevent.signal_handler(signal.SIGUSR1, cut)
    gevent.signal_handler(signal.SIGUSR2, toggle_mute)
    gevent.signal_handler(signal.SIGTERM, done.set)
    gevent.signal_handler(signal.SIGINT, done.set)
    print(f"relay listening on {relay.url}", flush=True)

    def cut_forever(every: float) -> None:
        while True:
            gevent.sleep(every)
            relay.cut()

    cutter = gevent.spawn(cut_forever, args.cut_every) if args.cut_every > 0 else None
    done.wait()
    if cutter is not None:
        cutter.kill()
    relay.stop()
    print(f"relay made {relay.cuts} cut(s) of {relay.connections} connection(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
