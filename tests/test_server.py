"""greenbus.bridge.server in process: the hub's configuration, plain HTTP, and its cost per peer."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from typing import Any

import pytest
from greenlet import greenlet
from hubclient import RawClient
from waiting import wait_until
from websockets.http11 import Request

import greenbus
from greenbus.bridge.server import HubConfig, HubServer


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"port": 99999}, "port"),
        ({"port": "80"}, "port"),
        ({"max_message_size": 10}, "max_message_size"),
        ({"max_connections": 0}, "max_connections"),
        ({"close_timeout": 0}, "close_timeout"),
        ({"handshake_timeout": float("nan")}, "handshake_timeout"),
        ({"ping_interval": -1}, "ping_interval"),
        ({"stats_interval": 0}, "stats_interval"),
        ({"certfile": "cert.pem"}, "certfile"),
        ({"max_pending": 0}, "max_pending"),
        ({"max_pending_bytes": 0}, "max_pending_bytes"),
        ({"slow_policy": "block"}, "slow_policy"),
        ({"max_subscriptions": 0}, "max_subscriptions"),
        ({"max_errors": -1}, "max_errors"),
        ({"max_depth": 0}, "max_depth"),
        ({"token": 5}, "token"),
        ({"token": ""}, "token"),
        ({"acl": "users.toml"}, "acl"),
        ({"certfile": 5, "keyfile": 5}, "certfile"),
        ({"allow_origins": "https://example.com"}, "allow_origins"),
        ({"reuse_port": "yes"}, "reuse_port"),
    ],
)
def test_bad_serve_options_raise_invalid_option_naming_the_option(
    options: dict[str, Any], name: str
) -> None:
    # Issue 12: bad serve()/HubConfig values raised a bare ValueError.
    bus = greenbus.Bus("config")
    try:
        with pytest.raises(greenbus.InvalidOption) as caught:
            greenbus.serve(bus, **options)
        assert caught.value.name == name
        assert isinstance(caught.value, ValueError)
    finally:
        bus.close()


def test_a_token_that_is_no_text_is_refused_without_showing_it() -> None:
    # Issue 12: serve(bus, token=...) failed later, in the ACL, naming no option.
    secret = "s3cret\ud800"  # a lone surrogate: not text UTF-8 can carry
    with pytest.raises(greenbus.InvalidOption) as caught:
        HubConfig(token=secret)
    assert caught.value.name == "token"
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda bus: HubConfig(peer=5), "peer"),
        (lambda bus: HubServer("bus"), "bus"),
        (lambda bus: HubServer(bus, {"port": 1}), "config"),
    ],
    ids=["peer", "bus", "config"],
)
def test_bad_hub_arguments_raise_invalid_option_naming_them(
    make: Callable[[greenbus.Bus], object], name: str
) -> None:
    bus = greenbus.Bus("config")
    try:
        with pytest.raises(greenbus.InvalidOption) as caught:
            make(bus)
        assert caught.value.name == name
    finally:
        bus.close()


def test_the_defaults_are_a_valid_config() -> None:
    config = HubConfig()
    assert (config.host, config.port, config.max_message_size) == ("127.0.0.1", 8765, 1 << 20)


def live(kind: type) -> int:
    gc.collect()
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, kind) and not (isinstance(obj, greenlet) and obj.dead)
    )


def test_an_idle_subscribed_peer_costs_the_hub_one_greenlet_and_keeps_no_handshake(
    local_hub: Callable[..., HubServer],
) -> None:
    # The handler greenlet reads; a writer exists only while there is
    # something to write; timers are the hub's, not the connection's; and
    # the HTTP request of the upgrade is not kept (it held over 2 KiB).
    hub = local_hub(ping_interval=20.0, ping_timeout=20.0)
    greenlets, requests = live(greenlet), live(Request)
    with contextlib.ExitStack() as stack:
        raws = [stack.enter_context(RawClient(hub.url)) for _ in range(3)]
        for n, raw in enumerate(raws):
            assert raw.ask_json(op="sub", sid=1, topic=f"t.{n}", id=1) == {"op": "ack", "id": 1}
        hub.bus.emit("t.0", "one message, written by a writer that then ends")
        assert raws[0].recv_json()["data"].startswith("one message")
        wait_until(lambda: live(greenlet) <= greenlets + 3, 5, "one greenlet per peer")
        assert live(Request) == requests
