"""greenbus.bridge.server in process: the hub's configuration and plain HTTP."""

from __future__ import annotations

from typing import Any

import pytest

import greenbus
from greenbus.bridge.server import HubConfig


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


def test_the_defaults_are_a_valid_config() -> None:
    config = HubConfig()
    assert (config.host, config.port, config.max_message_size) == ("127.0.0.1", 8765, 1 << 20)
