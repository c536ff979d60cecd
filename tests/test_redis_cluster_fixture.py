"""The Redis Cluster test infrastructure (tests/conftest.py, issue 16): a real
three-master cluster, its sharded pub/sub, slot routing and command counts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
import redis.cluster
from conftest import (
    CLUSTER_SLOTS,
    RedisCluster,
    redis_client,
    redis_pid,
    running_redis_cluster,
)


def test_cluster_is_ok_with_every_slot_on_three_masters(redis_cluster: RedisCluster) -> None:
    ports = redis_cluster.ports
    assert len(set(ports)) == 3
    assert redis_cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    for node in redis_cluster.nodes:
        assert redis_pid(node.port) == node.pid  # our own processes answer
        info = redis_cluster.cluster_info(node.port)
        assert info["cluster_state"] == "ok", info
        assert info["cluster_slots_ok"] == str(CLUSTER_SLOTS), info
        assert info["cluster_size"] == "3", info  # three masters that serve slots
        with redis_client(node.port) as client:
            slots = client.execute_command("CLUSTER SLOTS")
        # Every slot served exactly once, by one of our nodes, without replicas.
        assert sum(last - first + 1 for first, last, *_ in slots) == CLUSTER_SLOTS
        assert {int(master[1]) for _, _, master, *_ in slots} == set(ports)
        assert all(len(entry) == 3 for entry in slots), slots


def test_sharded_pubsub_through_the_cluster_client(
    redis_cluster_cli: redis.cluster.RedisCluster,
) -> None:
    pubsub = redis_cluster_cli.pubsub()
    try:
        pubsub.ssubscribe("greenbus.topic")
        assert pubsub.get_sharded_message(timeout=5) == {
            "type": "ssubscribe",
            "pattern": None,
            "channel": "greenbus.topic",
            "data": 1,
        }
        assert redis_cluster_cli.spublish("greenbus.topic", "hello") == 1
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_sharded_message(timeout=1)
        assert message == {
            "type": "smessage",
            "pattern": None,
            "channel": "greenbus.topic",
            "data": "hello",
        }
    finally:
        pubsub.close()


def test_master_of_agrees_with_the_cluster_routing(
    redis_cluster: RedisCluster, redis_cluster_cli: redis.cluster.RedisCluster
) -> None:
    # Keys until every master owns at least one (a few dozen at most).
    keys: list[str] = []
    owners: dict[str, int] = {}
    while set(owners.values()) != set(redis_cluster.ports):
        key = f"key{len(keys)}"
        keys.append(key)
        owners[key] = redis_cluster.master_of(key)
    keys += ["{user1}.a", "{user1}.b"]
    owners |= {key: redis_cluster.master_of(key) for key in keys[-2:]}
    assert owners["{user1}.a"] == owners["{user1}.b"] == redis_cluster.master_of("user1")
    for key in keys:
        assert redis_cluster_cli.set(key, "v")
    slots = [redis.cluster.key_slot(key.encode()) for key in keys]
    for key, slot in zip(keys, slots, strict=True):
        for port in redis_cluster.ports:
            with redis_client(port) as node:
                assert node.execute_command("CLUSTER KEYSLOT", key) == slot
                owner = port == owners[key]
                # Only the owner holds the slot's keys ({user1}.a and .b share one).
                expected = slots.count(slot) if owner else 0
                assert node.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == expected
                if owner:  # elsewhere EXISTS answers MOVED
                    assert node.exists(key) == 1
    for port in redis_cluster.ports:
        with redis_client(port) as node:
            assert node.dbsize() == list(owners.values()).count(port)


def test_commandstats_counts_spublish_and_not_publish(
    redis_cluster: RedisCluster, redis_cluster_cli: redis.cluster.RedisCluster
) -> None:
    spublish, publish = (
        redis_cluster.commandstats("spublish"),
        redis_cluster.commandstats("publish"),
    )
    assert redis_cluster_cli.spublish("greenbus.topic", "one") == 0  # nobody listens
    assert redis_cluster.commandstats("spublish") == spublish + 1
    assert redis_cluster.commandstats("SPUBLISH") == spublish + 1
    assert redis_cluster.commandstats("publish") == publish
    # The call landed on the channel's master.
    with redis_client(redis_cluster.master_of("greenbus.topic")) as node:
        assert node.info("commandstats")["cmdstat_spublish"]["calls"] == 1


def test_the_cluster_stops_even_when_the_test_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        with running_redis_cluster(tmp_path) as cluster:
            nodes = list(cluster.nodes)
            assert len(nodes) == 3 and all(node.running for node in nodes)
            raise RuntimeError("the test failed")
    for node in nodes:
        assert node.pid is not None and not node.running
        assert redis_pid(node.port) is None
        with pytest.raises(ProcessLookupError):
            os.kill(node.pid, 0)  # reaped: no such process left
