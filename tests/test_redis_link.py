"""The federation's glue to Redis (greenbus/federation/_redis.py): RESP and ``Link``.

The RESP half is pure: packed commands against redis-py's own packing, and
the parsers (``RespReader``, and ``hiredis.Reader`` as ``new_reader`` makes
it) fed bytes by hand.  ``Link`` runs against a real ``redis-server`` on a
free port (the ``redis_server`` fixture), on the gevent sockets a
federation's pool makes (``redis_pools``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import redis
from conftest import RedisServer, free_port
from waiting import wait_until

from greenbus.federation import Envelope, encode_envelope
from greenbus.federation._redis import (
    Link,
    ReplyError,
    RespProtocolError,
    RespReader,
    hiredis,
    new_reader,
    pack_command,
    pack_publish,
)

Pools = Callable[..., redis.ConnectionPool]

# -- packing: what the federation sends Redis (pure) ------------------------------------


def test_packed_commands_are_what_redis_py_sends() -> None:
    packer = redis.Connection().pack_command
    args: tuple[str | bytes | int, ...] = ("EVALSHA", "ab", 4, b"\xff\x00 \r\n", "caf\u00e9")
    assert pack_command(*args) == b"".join(packer(*args))
    payload = encode_envelope(Envelope("n/0", 1, 1.5, "x.y", "d\u00e9"))
    assert pack_publish("p:x.y", payload) == pack_command("PUBLISH", "p:x.y", payload)


def test_an_empty_argument_and_a_negative_number_pack_as_redis_py_packs_them() -> None:
    args: tuple[str | bytes | int, ...] = ("SET", "", b"", -12, 0)
    assert pack_command(*args) == b"".join(redis.Connection().pack_command(*args))


# -- parsing: what Redis sends back (pure) -----------------------------------------------

#: Replies as Redis writes them, and what a parser gives back for each.
REPLIES = [
    (b"*3\r\n$7\r\nmessage\r\n$3\r\nx.y\r\n$2\r\nhi\r\n", [b"message", b"x.y", b"hi"]),
    (
        b"*4\r\n$8\r\npmessage\r\n$3\r\nx.*\r\n$3\r\nx.y\r\n$0\r\n\r\n",
        [b"pmessage", b"x.*", b"x.y", b""],
    ),
    (b":42\r\n", 42),
    (b"+OK\r\n", b"OK"),
    (b"$-1\r\n", None),
    (b"*2\r\n:1\r\n$7\r\nab:12:3\r\n", [1, b"ab:12:3"]),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
]


def resp_readers() -> list[Any]:
    readers: list[Any] = [pytest.param(RespReader, id="python")]
    if hiredis is not None:
        readers.append(pytest.param(new_reader, id="hiredis"))
    return readers


@pytest.mark.parametrize("make_reader", resp_readers())
def test_replies_fed_one_byte_at_a_time_come_out_whole_and_in_order(
    make_reader: Callable[[], Any],
) -> None:
    reader = make_reader()
    got = []
    for byte in b"".join(wire for wire, _ in REPLIES):
        reader.feed(bytes([byte]))
        while (reply := reader.gets()) is not False:
            got.append(reply)
    assert got == [value for _, value in REPLIES]


@pytest.mark.parametrize("make_reader", resp_readers())
def test_an_error_reply_is_returned_as_a_reply_error_not_raised(
    make_reader: Callable[[], Any],
) -> None:
    reader = make_reader()
    line = b"-NOSCRIPT No matching script\r\n"
    reader.feed(bytearray(b"xx" + line + b":1\r\n"), 2, len(line))  # a slice of a buffer
    error = reader.gets()
    assert isinstance(error, ReplyError) and str(error) == "NOSCRIPT No matching script"
    assert reader.gets() is False  # the rest was not fed
    reader.feed(b":1\r\n")
    assert reader.gets() == 1


@pytest.mark.parametrize("make_reader", resp_readers())
def test_bytes_that_are_not_resp_are_a_protocol_error(make_reader: Callable[[], Any]) -> None:
    reader = make_reader()
    reader.feed(b"?what\r\n")
    with pytest.raises(RespProtocolError):
        reader.gets()


@pytest.mark.parametrize("make_reader", resp_readers())
def test_a_long_stream_read_in_odd_chunks_keeps_every_reply_whole_past_the_buffers_reuse(
    make_reader: Callable[[], Any],
) -> None:
    # Far more than the 64 KiB after which the pure reader drops what it
    # has parsed: every reply must survive the buffer being cut.
    expected = [(f"m{n}-" + "x" * (n % 300)).encode() for n in range(3000)]
    wire = b"".join(pack_command(value) for value in expected)
    assert len(wire) > 4 * 65536
    reader = make_reader()
    got = []
    for start in range(0, len(wire), 997):
        reader.feed(wire[start : start + 997])
        while (reply := reader.gets()) is not False:
            got.append(reply)
    assert got == [[value] for value in expected]


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b"(123\r\n", 123),
        (b",1.5\r\n", 1.5),
        (b"#t\r\n", True),
        (b"_\r\n", None),
        (b"=7\r\ntxt:abc\r\n", b"txt:abc"),
        (b">2\r\n+a\r\n:1\r\n", [b"a", 1]),
        (b"~1\r\n:2\r\n", [2]),
        (b"%1\r\n+k\r\n:3\r\n", {b"k": 3}),
        (b"*-1\r\n", None),
    ],
)
def test_the_pure_reader_reads_resp3_types_as_its_docstring_says(wire: bytes, value: Any) -> None:
    reader = RespReader()
    reader.feed(wire)
    assert reader.gets() == value


def test_the_pure_reader_returns_a_resp3_blob_error_as_a_reply_error() -> None:
    reader = RespReader()
    reader.feed(b"!9\r\nERR boom!\r\n")
    error = reader.gets()
    assert isinstance(error, ReplyError) and str(error) == "ERR boom!"


# -- Link: one connection driven by hand (real redis-server) -------------------------------


@pytest.fixture
def open_link(redis_pools: Pools) -> Iterator[Callable[..., Link]]:
    """``make(url=None, subscriber=False)``: an opened :class:`Link`; closed afterwards."""
    links: list[Link] = []

    def make(url: str | None = None, *, subscriber: bool = False) -> Link:
        link = Link(redis_pools(url), subscriber=subscriber)
        links.append(link)
        link.open()
        return link

    yield make
    for link in links:
        link.close()


def test_commands_sent_in_one_write_get_their_replies_in_order_errors_in_their_place(
    open_link: Callable[..., Link],
) -> None:
    link = open_link()
    link.send(
        pack_command("SET", "k", "v")
        + pack_command("INCR", "k")  # not a number: an error reply, not an exception
        + pack_command("GET", "k")
        + pack_command("INCR", "n")
    )
    ok, error, value, number = link.read(4)
    assert (ok, value, number) == (b"OK", b"v", 1)
    assert isinstance(error, ReplyError) and "not an integer" in str(error)


def test_a_reply_bigger_than_the_read_buffer_is_read_whole(
    open_link: Callable[..., Link],
) -> None:
    link = open_link()
    big = b"\x00\xffx" * 400_000
    link.send(pack_command("SET", "big", big) + pack_command("GET", "big"))
    assert link.read(2) == [b"OK", big]


def test_send_nowait_writes_at_once_what_the_socket_takes(
    open_link: Callable[..., Link],
) -> None:
    link = open_link()
    command = pack_command("PING")
    assert link.send_nowait(command) == len(command)
    assert link.read(1) == [b"PONG"]


def test_an_unopened_link_takes_nothing_without_waiting_and_refuses_to_send_or_read(
    redis_pools: Pools,
) -> None:
    link = Link(redis_pools(), subscriber=False)
    assert link.send_nowait(pack_command("PING")) == 0
    with pytest.raises(redis.ConnectionError):
        link.send(pack_command("PING"))
    with pytest.raises(redis.ConnectionError):
        link.read(1)
    link.close()
    link.close()  # idempotent, and never raises


def test_open_runs_the_handshake_the_url_asks_for_but_always_speaks_resp2(
    open_link: Callable[..., Link], redis_server: RedisServer
) -> None:
    link = open_link(f"{redis_server.url[:-2]}/3?client_name=linked&protocol=3")
    link.send(pack_command("CLIENT", "INFO"))
    [info] = link.read(1)
    fields = dict(field.split("=", 1) for field in info.decode().split())
    assert (fields["name"], fields["db"], fields["resp"]) == ("linked", "3", "2")


def test_open_raises_a_connection_error_when_redis_cannot_be_reached(redis_pools: Pools) -> None:
    link = Link(redis_pools(f"redis://127.0.0.1:{free_port()}/0"), subscriber=False)
    with pytest.raises((redis.ConnectionError, OSError)):
        link.open()
    link.close()


def test_redis_closing_the_connection_is_a_connection_error_on_read(
    open_link: Callable[..., Link], redis_cli: redis.Redis
) -> None:
    link = open_link()
    link.send(pack_command("CLIENT", "ID"))
    [client_id] = link.read(1)
    assert redis_cli.client_kill_filter(_id=str(client_id)) == 1
    with pytest.raises(redis.ConnectionError, match="closed the connection"):
        link.replies()


def test_close_closes_the_connection_and_is_idempotent(
    open_link: Callable[..., Link], redis_server: RedisServer, redis_cli: redis.Redis
) -> None:
    link = open_link(f"{redis_server.url}?client_name=closing")
    assert [c["name"] for c in redis_cli.client_list()].count("closing") == 1
    link.close()
    link.close()
    wait_until(
        lambda: "closing" not in [c["name"] for c in redis_cli.client_list()],
        5,
        "the link's connection gone from CLIENT LIST",
    )


def test_a_subscriber_link_outwaits_the_urls_socket_timeout_that_ends_a_plain_links_read(
    open_link: Callable[..., Link], redis_server: RedisServer, redis_cli: redis.Redis
) -> None:
    url = f"{redis_server.url}?socket_timeout=0.1"
    plain = open_link(url)
    subscriber = open_link(url, subscriber=True)
    subscriber.send(pack_command("SUBSCRIBE", "ch"))
    assert subscriber.read(1) == [[b"subscribe", b"ch", 1]]
    waiting = gevent.spawn(subscriber.read, 1)
    # The plain link, waiting on a quiet connection, times out: the clock
    # for "longer than the socket timeout", without a sleep.
    with pytest.raises((redis.TimeoutError, TimeoutError)):
        plain.read(1)
    assert not waiting.ready()
    assert redis_cli.publish("ch", "late") == 1
    assert waiting.get(timeout=5) == [[b"message", b"ch", b"late"]]
