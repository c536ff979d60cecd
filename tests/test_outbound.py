"""What a node sends Redis (greenbus/federation/outbound.py): numbered, enveloped, packed.

Pure: no Redis.  A packed command is read back with ``hiredis.Reader`` (not
the federation's own reader) and compared with redis-py's packing of the
same arguments; the envelope inside with the envelope module's parser.
"""

from __future__ import annotations

import logging
from typing import Any

import hiredis
import pytest
import redis

from greenbus.federation import outbound
from greenbus.federation.envelope import parse_envelope
from greenbus.federation.history import RedisHistory
from greenbus.federation.interest import InterestView
from greenbus.federation.outbound import Durable, Job, Packer

PREFIX = "app"


def unpack(job: Job) -> list[bytes]:
    """The arguments of ``job``'s one command, checked to be exactly redis-py's packing."""
    reader = hiredis.Reader()
    reader.feed(job.command)
    args = reader.gets()
    assert reader.gets() is False, "more than one command"
    assert job.command == b"".join(redis.Connection().pack_command(*args))
    return list(args)


def envelope(job: Job) -> tuple[Any, ...]:
    """The envelope a PUBLISH job carries, parsed."""
    name, channel, payload = unpack(job)
    assert name == b"PUBLISH"
    fields = parse_envelope(payload)
    assert channel.decode() == f"{PREFIX}:{fields[3]}"
    return fields


def emit(topic: str, data: Any = None) -> tuple[Any, ...]:
    """A local emit as the bus hands it to the federation."""
    return (topic, data, None, None)


def history() -> RedisHistory:
    # register_script only hashes the script: no connection is made.
    return RedisHistory(redis.Redis(), PREFIX, 10, 120.0, 1000)


def test_each_topic_is_numbered_from_one_across_batches_under_the_nodes_first_origin() -> None:
    packer = Packer("n1", PREFIX, None)
    first = packer.pack([emit("a.x"), emit("b.x"), emit("a.x")])
    second = packer.pack([emit("b.x"), emit("a.x")])
    numbered = [(f[0], f[3], f[1]) for f in map(envelope, first + second)]
    assert numbered == [
        ("n1/0", "a.x", 1),
        ("n1/0", "b.x", 1),
        ("n1/0", "a.x", 2),
        ("n1/0", "b.x", 2),
        ("n1/0", "a.x", 3),
    ]


def test_an_envelope_carries_the_message_whole_and_says_whether_it_was_delivered_locally() -> None:
    packer = Packer("n1", PREFIX, None)
    done_calls: list[str | None] = []
    item = ("t.x", {"k": ["caf\u00e9", 1.5]}, {"h": "1"}, "_INBOX.r")
    local, durable = packer.pack([item, Durable(item, None, None, done_calls.append)])
    assert [job.topic for job in (local, durable)] == ["t.x", "t.x"]
    for job, seq, delivered in ((local, 1, True), (durable, 2, False)):
        origin, q, _ts, topic, data, headers, reply_to, was_local, pos, prev = envelope(job)
        assert (origin, q, topic, was_local) == ("n1/0", seq, "t.x", delivered)
        assert (data, headers, reply_to, pos, prev) == (item[1], item[2], item[3], None, 0)
    assert local.done is None and durable.done == done_calls.append
    assert done_calls == []  # told by the writer once Redis answers, not by the packer


def test_an_unencodable_message_is_skipped_counted_logged_and_leaves_no_gap_in_the_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    packer = Packer("n1", PREFIX, None)
    told: list[str | None] = []
    bad = ("u.x", object(), None, None)
    with caplog.at_level(logging.ERROR, logger="greenbus.federation"):
        jobs = packer.pack(
            [emit("u.x", 1), bad, Durable(bad, None, None, told.append), emit("u.x", 2)]
        )
    assert [(f[1], f[4]) for f in map(envelope, jobs)] == [(1, 1), (2, 2)]
    assert packer.unencodable == 2
    assert len(told) == 1 and "'u.x'" in str(told[0])
    assert sum("'u.x'" in r.getMessage() for r in caplog.records) == 2


def test_past_the_tracked_topics_numbering_starts_over_under_a_new_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbound, "MAX_TRACKED", 2)
    packer = Packer("n1", PREFIX, None)
    before = packer.pack([emit("a.x"), emit("b.x"), emit("c.x"), emit("a.x")])
    after = packer.pack([emit("a.x"), emit("d.x")])
    assert [(f[0], f[3], f[1]) for f in map(envelope, before)] == [
        ("n1/0", "a.x", 1),
        ("n1/0", "b.x", 1),
        ("n1/0", "c.x", 1),
        ("n1/0", "a.x", 2),
    ]
    # A new origin: receivers start a fresh table rather than take 1 for a repeat.
    assert [(f[0], f[3], f[1]) for f in map(envelope, after)] == [
        ("n1/1", "a.x", 1),
        ("n1/1", "d.x", 1),
    ]


def test_with_history_each_message_is_the_scripts_evalsha_numbered_in_a_publisher_session() -> None:
    packer = Packer("n1", PREFIX, history())
    done: list[str | None] = []
    jobs = packer.pack(
        [
            emit("k.x", 1),
            Durable(emit("k.x", 2), "peer-s", 41, done.append),  # a v2 client's own numbering
            Durable(emit("k.x", 3), None, None, done.append),  # numbered by the node
            emit("k.y", 4),
        ]
    )
    sessions = []
    for job in jobs:
        args = unpack(job)
        assert args[:8] == [
            b"EVALSHA",
            RedisHistory.publish_sha.encode(),
            b"5",
            f"{PREFIX}:history".encode(),
            f"{PREFIX}:stream:{job.topic}".encode(),
            f"{PREFIX}:topics".encode(),
            args[6],
            f"{{{PREFIX}}}:registry".encode(),
        ]
        topic, payload, number, channel = args[8], args[9], args[14], args[15]
        assert args[18:] == [b"1", b"0", b"PUBLISH"]  # no view: fanned out, whatever the version
        assert (topic.decode(), channel.decode()) == (job.topic, f"{PREFIX}:{job.topic}")
        fields = parse_envelope(payload)
        sessions.append((args[6].decode(), int(number), fields[1], fields[4]))
    own = f"{PREFIX}:session:{packer.session}"
    assert packer.session.startswith("n1-")
    assert sessions == [
        (own, 1, 1, 1),
        (f"{PREFIX}:session:peer-s", 41, 2, 2),
        (own, 2, 3, 3),
        (own, 3, 1, 4),
    ]


def test_without_history_a_durable_pub_is_a_plain_publish_that_keeps_its_done() -> None:
    told: list[str | None] = []
    [job] = Packer("n1", PREFIX, None).pack([Durable(emit("d.x", 7), "s", 3, told.append)])
    assert envelope(job)[4] == 7
    assert job.done == told.append


def test_two_packers_of_one_node_have_different_sessions() -> None:
    # A restarted node must not have its first messages taken for repeats
    # of the last run's by the script.
    assert Packer("n1", PREFIX, None).session != Packer("n1", PREFIX, None).session


def test_with_history_the_view_decides_each_messages_fanout_under_its_version() -> None:
    view = InterestView("n1", count_own=True)
    packer = Packer("n1", PREFIX, history(), view)
    view.load([7, b"n2", 1, b"wanted.*"])
    view.live = True
    view.hold("mine.x")  # this node's own peers want it (history: counted)
    jobs = packer.pack(
        [emit("wanted.a"), emit("quiet.a"), emit("mine.x"), emit("_INBOX.abc.1"), emit("quiet.b")]
    )
    assert [(job.topic, unpack(job)[18:20]) for job in jobs] == [
        ("wanted.a", [b"1", b"7"]),
        ("quiet.a", [b"0", b"7"]),
        ("mine.x", [b"1", b"7"]),
        ("_INBOX.abc.1", [b"1", b"7"]),  # a reply always goes
        ("quiet.b", [b"0", b"7"]),
    ]
    assert packer.unwanted == 2


def test_a_view_that_is_not_live_fans_everything_out() -> None:
    view = InterestView("n1", count_own=True)
    view.load([7])
    packer = Packer("n1", PREFIX, history(), view)
    [job] = packer.pack([emit("quiet.a")])
    assert unpack(job)[18:20] == [b"1", b"7"]
    assert packer.unwanted == 0
