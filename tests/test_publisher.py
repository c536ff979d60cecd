"""The federation's writer (greenbus/federation/publisher.py), against a real redis-server.

A :class:`Publisher` runs in a greenlet of the test on an outbound
:class:`~greenbus.channel.Channel`, as a federation runs it.  Its
connection is a :class:`~greenbus.federation._redis.Link` that also
records what the writer asks of it (``send``, ``send_nowait``, ``read``),
so a test can say "one send, then N replies".  What reaches Redis is read
by a redis-py subscriber on a blocking socket: its waits do not yield to
the gevent hub, so the writer stays exactly where it is meanwhile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import hiredis
import pytest
import redis
from conftest import RedisServer
from waiting import wait_until

from greenbus.channel import Channel
from greenbus.federation import Envelope, decode_envelope, publisher
from greenbus.federation._redis import Link
from greenbus.federation.arrivals import Arrivals
from greenbus.federation.history import RedisHistory
from greenbus.federation.outbound import Durable, Packer

PREFIX = "app"
Pools = Callable[..., redis.ConnectionPool]


def names(data: bytes) -> list[str]:
    """The command names in ``data`` (packed commands, one after the other); ``["..."]``
    for the rest of a command of which a write took only a part."""
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    try:
        while (command := reader.gets()) is not False:
            out.append(command[0].decode())
    except hiredis.ProtocolError:
        return ["..."]
    return out


@dataclasses.dataclass
class Writer:
    """A publisher, its outbound queue, its greenlet, and what it asked of its links."""

    publisher: publisher.Publisher
    out: Channel[Any]
    greenlet: gevent.Greenlet
    #: ``("send", [names])``, ``("send_nowait", [names], taken all)``, ``("read", count)``.
    calls: list[tuple[Any, ...]]
    #: Reads, from now on, that break the connection once Redis has answered.
    break_reads: int = 0
    stopping: bool = False

    def put(self, topic: str, data: Any) -> bool:
        """A local emit, as the federation hands it over."""
        return self.publisher.put(self.out, (topic, data, None, None))

    def wait_published(self, count: int) -> None:
        wait_until(lambda: self.publisher.published == count, 10, f"{count} published")


@pytest.fixture
def writer(
    redis_pools: Pools, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Writer]]:
    """``make(url=None, history=False, maxsize=None, max_backoff=5.0)``: a running
    :class:`Writer`; stopped afterwards."""
    made: list[Writer] = []

    class RecordingLink(Link):
        writer: Writer

        def send(self, data: bytes) -> None:
            self.writer.calls.append(("send", names(data)))
            super().send(data)

        def send_nowait(self, data: bytes) -> int:
            taken = super().send_nowait(data)
            self.writer.calls.append(("send_nowait", names(data), taken == len(data)))
            return taken

        def read(self, count: int) -> list[Any]:
            self.writer.calls.append(("read", count))
            replies = super().read(count)
            if self.writer.break_reads:
                self.writer.break_reads -= 1
                raise redis.ConnectionError("broken after Redis answered (test)")
            return replies

    def make(
        url: str | None = None,
        *,
        history: bool = False,
        maxsize: int | None = None,
        max_backoff: float = 5.0,
    ) -> Writer:
        pool = redis_pools(url or f"{redis_server.url}?client_name=writer")
        log = RedisHistory(redis.Redis(connection_pool=pool), PREFIX, 10, 120, 1000)
        pub = publisher.Publisher(
            pool, Packer("n1", PREFIX, log if history else None), 1000, max_backoff
        )
        out: Channel[Any] = Channel(maxsize, "drop_oldest")
        w = Writer(pub, out, gevent.Greenlet(pub.run, out, lambda: w.stopping), [])
        RecordingLink.writer = w
        made.append(w)
        w.greenlet.start()
        return w

    monkeypatch.setattr(publisher, "Link", RecordingLink)
    yield make
    for w in made:
        w.out.close()
        w.stopping = True
        w.greenlet.kill(block=True, timeout=5)


class Receiver:
    """A redis-py subscriber to one topic's channel, on a blocking socket."""

    def __init__(self, r: redis.Redis, topic: str) -> None:
        self.r = r
        self.channel = f"{PREFIX}:{topic}"
        self.pubsub = r.pubsub()
        self.pubsub.subscribe(self.channel)
        assert self.pubsub.get_message(timeout=5)["type"] == "subscribe"

    def take(self, count: int) -> list[Envelope]:
        """The next ``count`` envelopes, each waited for (without yielding) up to 5 s."""
        out = []
        for _ in range(count):
            msg = self.pubsub.get_message(timeout=5)
            assert msg is not None and msg["type"] == "message", msg
            out.append(decode_envelope(msg["data"]))
        return out

    def rest(self) -> list[Envelope]:
        """Every envelope that arrived before now: a fence published after them ends it."""
        self.r.publish(self.channel, "fence")
        out = []
        while (msg := self.pubsub.get_message(timeout=5)) is not None and msg["data"] != "fence":
            out.append(decode_envelope(msg["data"]))
        assert msg is not None, "the fence never came"
        return out


@pytest.fixture
def receiver(redis_cli: redis.Redis) -> Iterator[Callable[[str], Receiver]]:
    made: list[Receiver] = []

    def make(topic: str) -> Receiver:
        made.append(Receiver(redis_cli, topic))
        return made[-1]

    yield make
    for rx in made:
        rx.pubsub.close()


def warm(w: Writer) -> None:
    """One message through, so that the writer is connected and parked; calls forgotten."""
    w.put("warm.up", "warm")
    w.wait_published(1)
    w.calls.clear()


# -- batches ----------------------------------------------------------------------------


def test_a_burst_goes_out_in_one_send_and_its_replies_are_read_together_in_order(
    writer: Callable[..., Writer], receiver: Callable[[str], Receiver]
) -> None:
    w, rx = writer(), receiver("b.x")
    told: list[tuple[int, str | None]] = []
    for n in range(50):  # queued without a yield: the writer finds them all at once
        w.out.put(Durable(("b.x", n, None, None), None, None, lambda e, n=n: told.append((n, e))))
    w.wait_published(50)

    assert w.calls == [("send", ["PUBLISH"] * 50), ("read", 50)]
    assert told == [(n, None) for n in range(50)]
    assert [(env.seq, env.data) for env in rx.rest()] == [(n + 1, n) for n in range(50)]
    assert (w.publisher.dropped, w.publisher.in_hand, w.publisher.reconnects) == (0, 0, 0)


def test_the_writer_ends_with_its_queue_having_published_everything_and_closes_its_connection(
    writer: Callable[..., Writer], redis_cli: redis.Redis
) -> None:
    w = writer()
    for n in range(5):
        w.put("e.x", n)
    w.out.close()
    w.greenlet.join(timeout=10)

    assert w.greenlet.successful() and w.publisher.published == 5
    wait_until(
        lambda: "writer" not in [c["name"] for c in redis_cli.client_list()],
        5,
        "the writer's connection closed",
    )


# -- the direct write from put() --------------------------------------------------------


def test_the_first_emit_after_an_idle_spell_is_written_from_put_and_arrives_once(
    writer: Callable[..., Writer], receiver: Callable[[str], Receiver]
) -> None:
    w, rx = writer(), receiver("i.x")
    warm(w)

    assert w.put("i.x", 1)
    # No yield since: the writer has not run, yet Redis has the message.
    assert w.calls == [("send_nowait", ["PUBLISH"], True)]
    assert [env.data for env in rx.take(1)] == [1]
    w.put("i.x", 2)  # the writer is awake now: this one waits for it
    w.put("i.x", 3)
    w.wait_published(4)

    # The writer read the direct write's reply with its batch, sent nothing twice.
    assert w.calls[1:] == [("send", ["PUBLISH", "PUBLISH"]), ("read", 3)]
    assert [(env.seq, env.data) for env in rx.rest()] == [(2, 2), (3, 3)]
    assert (w.publisher.dropped, w.out.dropped) == (0, 0)


def test_a_message_written_from_put_then_pushed_out_of_a_full_queue_is_not_counted_dropped(
    writer: Callable[..., Writer], receiver: Callable[[str], Receiver]
) -> None:
    w, rx = writer(maxsize=2), receiver("f.x")
    warm(w)
    for n in range(3):  # 0 goes out from put, then 2 pushes it out of the queue
        w.put("f.x", n)
    assert w.out.dropped == 1
    w.wait_published(4)

    assert [env.data for env in rx.rest()] == [0, 1, 2]
    # What a federation reports as dropped: the queue's and the writer's.
    assert w.out.dropped + w.publisher.dropped == 0


def test_a_message_bigger_than_the_socket_takes_at_once_is_finished_by_the_writer(
    writer: Callable[..., Writer], receiver: Callable[[str], Receiver]
) -> None:
    w, rx = writer(), receiver("g.x")
    warm(w)
    big = "x" * 6_000_000  # more than a loopback socket's largest send buffer
    w.put("g.x", big)
    w.put("g.x", "after")
    w.wait_published(3)

    assert w.calls == [
        ("send_nowait", ["PUBLISH"], False),  # put wrote what the socket took
        ("send", ["..."]),  # the writer the rest, and "after"
        ("read", 2),
    ]
    assert [env.data for env in rx.rest()] == [big, "after"]
    assert w.publisher.reconnects == 0


# -- faults -----------------------------------------------------------------------------


def test_after_a_reconnect_the_writer_sends_all_it_held_again_and_receivers_drop_repeats(
    writer: Callable[..., Writer], receiver: Callable[[str], Receiver]
) -> None:
    w, rx = writer(), receiver("r.x")
    warm(w)
    w.break_reads = 1  # the batch's replies read, then the connection breaks
    for n in range(10):
        w.out.put(("r.x", n, None, None))
    w.wait_published(11)

    assert w.calls == [("send", ["PUBLISH"] * 10), ("read", 10)] * 2
    assert w.publisher.reconnects == 1
    arrived = rx.rest()
    assert [env.data for env in arrived] == [*range(10), *range(10)]
    arrivals = Arrivals("receiver")
    kept = [env.data for env in arrived if arrivals.is_new(env)]
    assert kept == list(range(10))
    assert (arrivals.duplicates, arrivals.gaps) == (10, 0)


def test_with_history_noscript_after_a_script_flush_loads_it_and_sends_those_once_more(
    writer: Callable[..., Writer], receiver: Callable[[str], Receiver], redis_cli: redis.Redis
) -> None:
    w, rx = writer(history=True), receiver("k.x")
    w.put("k.x", 1)
    w.wait_published(1)
    redis_cli.script_flush()
    w.calls.clear()
    w.out.put(("k.x", 2, None, None))
    w.out.put(("k.x", 3, None, None))
    w.wait_published(3)

    assert w.calls == [
        ("send", ["EVALSHA", "EVALSHA"]),
        ("read", 2),  # NOSCRIPT, twice
        ("send", ["SCRIPT"]),
        ("read", 1),
        ("send", ["EVALSHA", "EVALSHA"]),
        ("read", 2),
    ]
    stats = w.publisher
    assert (stats.script_errors, stats.duplicates_dropped, stats.reconnects) == (0, 0, 0)
    assert [env.data for env in rx.rest()] == [1, 2, 3]
    assert redis_cli.xlen(f"{PREFIX}:stream:k.x") == 3


def test_with_history_a_script_redis_refuses_to_load_fails_those_messages_once_without_a_loop(
    writer: Callable[..., Writer], redis_cli: redis.Redis, redis_server: RedisServer
) -> None:
    redis_cli.acl_setuser(
        "pub",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-script"],
    )
    w = writer(f"redis://pub:pw@127.0.0.1:{redis_server.port}/0", history=True)
    told: list[str | None] = []
    for n in range(2):
        w.out.put(Durable(("k.x", n, None, None), None, None, told.append))
    w.wait_published(2)

    assert w.calls == [
        ("send", ["SCRIPT"]),  # on connecting: refused
        ("read", 1),
        ("send", ["EVALSHA", "EVALSHA"]),
        ("read", 2),
        ("send", ["SCRIPT"]),
        ("read", 1),
        ("send", ["EVALSHA", "EVALSHA"]),
        ("read", 2),
    ]
    assert w.publisher.script_errors == 2
    assert len(told) == 2 and all("NOSCRIPT" in str(error) for error in told)


def test_stopping_while_redis_is_unreachable_gives_up_what_it_holds_and_counts_it_dropped(
    writer: Callable[..., Writer], redis_server: RedisServer
) -> None:
    w = writer(max_backoff=0.2)
    warm(w)
    redis_server.kill()
    for n in range(3):
        w.put("s.x", n)
    wait_until(lambda: w.publisher.reconnects >= 2, 10, "the writer retrying")
    assert w.publisher.in_hand == 3 and not w.greenlet.dead  # it keeps trying until told

    w.out.close()
    w.stopping = True
    w.greenlet.join(timeout=10)

    assert w.greenlet.successful()
    assert (w.publisher.published, w.publisher.dropped, w.publisher.in_hand) == (1, 3, 0)
