"""greenbus.bridge.http: which plain-HTTP paths are the hub's, under which dashboard prefix."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

import greenbus
from greenbus.bridge.http import NOT_FOUND, WEB_DIR, check_prefix, http_answer


@pytest.fixture
def hub(local_hub: Callable[..., greenbus.HubServer]) -> greenbus.HubServer:
    return local_hub()


def test_health_and_metrics_are_answered_whatever_the_dashboard(hub: greenbus.HubServer) -> None:
    for prefix in ("/", "/greenbus/", None):
        health = http_answer(hub, "/health", prefix)
        assert health is not None and json.loads(health.body)["status"] == "ok"
        metrics = http_answer(hub, "/metrics", prefix)
        assert metrics is not None and b"greenbus_connections " in metrics.body


def test_the_dashboard_is_served_under_its_prefix_only(hub: greenbus.HubServer) -> None:
    index = (WEB_DIR / "index.html").read_bytes()
    page = http_answer(hub, "/greenbus/", "/greenbus/")
    assert page is not None and page.body == index
    assert page.content_type == "text/html; charset=utf-8"
    assert http_answer(hub, "/", "/greenbus/") is None
    assert http_answer(hub, "/greenbus/", None) is None
    assert http_answer(hub, "/greenbus/health", "/greenbus/") is not None
    assert http_answer(hub, "/greenbus/nothing", "/greenbus/") is None


def test_every_answer_is_counted_and_what_is_not_the_hubs_is_not(hub: greenbus.HubServer) -> None:
    before = hub.counters.http_requests
    http_answer(hub, "/health", "/")
    http_answer(hub, "/not-ours", "/")
    assert hub.counters.http_requests == before + 1


def test_an_answer_becomes_a_response_that_closes_the_connection() -> None:
    response = NOT_FOUND.response()
    assert response.status_code == 404
    assert response.headers["Connection"] == "close"
    assert response.headers["Content-Length"] == str(len(NOT_FOUND.body))


@pytest.mark.parametrize("prefix", ["x", "/x", "x/", ""])
def test_a_prefix_must_start_and_end_with_a_slash(prefix: str) -> None:
    with pytest.raises(greenbus.InvalidOption):
        check_prefix(prefix)
