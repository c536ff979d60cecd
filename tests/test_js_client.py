"""greenbus.js, the JavaScript client the hub serves, passes its tests in Node.

``tests/node/client.test.mjs`` (Node's test runner) starts its own hubs,
``python -m greenbus serve`` child processes run by the interpreter named in
``PYTHON``, and restarts one on the same port.  This module runs it twice:
with the ``ws`` package passed in as the WebSocket class (``[ws]``), and with
Node's own WebSocket (``[global]``: Node >= 22 has it, Node 20 with
``--experimental-websocket``), the browsers' kind.  Each run has a process
group of its own and a deadline (the group is killed at the deadline, hubs
included); this module reads its TAP report and checks each Node test by
name, so that a failure names the behaviour and the WebSocket that broke.

Node and ``ws`` are required, not optional: when either is missing the tests
fail and say to run ``npm install --prefix tests/node``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from nodejs import NODE_DIR, node_executable

TEST_FILE = NODE_DIR / "client.test.mjs"

#: Seconds the whole Node run may take (it takes about 4).
DEADLINE = 60.0

# A top-level TAP test line of Node's reporter: "ok 3 - name" or "not ok 3 - name # SKIP why".
TAP_LINE = re.compile(r"^(ok|not ok) \d+ - (.*?)(?: # (SKIP|TODO)\b.*)?$")


@dataclass
class Result:
    ok: bool
    directive: str | None
    details: list[str] = field(default_factory=list)


@dataclass
class NodeRun:
    returncode: int
    output: str
    results: dict[str, Result]

    def check(self, name: str, *, may_skip: bool = False) -> None:
        """Assert that the Node test called ``name`` passed (or was skipped, if allowed)."""
        result = self.results.get(name)
        if result is None:
            pytest.fail(f"the Node run reported no test named {name!r}; its output:\n{self.output}")
        if result.directive == "SKIP" and not may_skip:
            pytest.fail(f"the Node test {name!r} was skipped")
        assert result.ok, f"the Node test {name!r} failed:\n" + "\n".join(result.details)


def parse_tap(output: str) -> dict[str, Result]:
    results: dict[str, Result] = {}
    current: Result | None = None
    for line in output.splitlines():
        match = TAP_LINE.match(line)
        if match:
            status, name, directive = match.groups()
            current = results[name.replace("\\#", "#")] = Result(status == "ok", directive)
        elif current is not None and line.startswith(" "):
            current.details.append(line)
        else:
            current = None
    return results


def global_websocket_flags(node: str) -> list[str]:
    """What ``node`` needs for a global WebSocket: nothing from Node 22 on."""
    probe = [node, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"]
    if subprocess.run(probe, timeout=30).returncode == 0:
        return []
    return ["--experimental-websocket"]


@pytest.fixture(scope="module", params=["ws", "global"])
def node_run(request: pytest.FixtureRequest) -> NodeRun:
    """``node --test-reporter=tap client.test.mjs``, once per WebSocket implementation."""
    node = node_executable("ws")
    env = dict(os.environ)
    env["PYTHON"] = sys.executable
    env["GREENBUS_JS_WEBSOCKET"] = request.param
    env.pop("GREENBUS_TOKEN", None)
    flags = global_websocket_flags(node) if request.param == "global" else []
    proc = subprocess.Popen(
        [node, *flags, "--test-reporter=tap", str(TEST_FILE)],
        cwd=NODE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        # Its own process group, so that the hubs it started die with it at the deadline.
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the Node tests did not finish within {DEADLINE} s; output:\n{output}")
    return NodeRun(proc.returncode, output, parse_tap(output))


def test_the_node_run_passes_as_a_whole_and_reports_every_test_checked_here(
    node_run: NodeRun,
) -> None:
    assert node_run.returncode == 0, node_run.output
    assert set(node_run.results) == CHECKED, node_run.output


def test_a_js_client_is_welcomed_by_the_hub_and_reports_open(node_run: NodeRun) -> None:
    node_run.check("a client is welcomed by the hub and reports open")


def test_a_js_subscriber_receives_what_another_client_publishes_in_order_intact(
    node_run: NodeRun,
) -> None:
    node_run.check(
        "a subscriber receives what another client publishes, in order, data and headers intact"
    )


def test_unsubscribing_in_js_stops_delivery_and_other_subscriptions_go_on(
    node_run: NodeRun,
) -> None:
    node_run.check("unsubscribing stops delivery, other subscriptions go on")


def test_a_js_request_resolves_with_the_reply_to_its_private_inbox(node_run: NodeRun) -> None:
    node_run.check("a request resolves with the reply that comes to its private inbox")


def test_a_js_request_nobody_answers_rejects_after_its_timeout(node_run: NodeRun) -> None:
    node_run.check("a request nobody answers rejects with RequestTimeoutError after its timeout")


def test_bad_topics_patterns_and_data_throw_in_js_before_anything_is_sent(
    node_run: NodeRun,
) -> None:
    node_run.check("bad topics, patterns and data are refused at once, and nothing is sent")


def test_a_lone_surrogate_in_a_js_frame_throws_local_protocol_error_and_nothing_is_sent(
    node_run: NodeRun,
) -> None:
    node_run.check(
        "a lone surrogate anywhere in a frame throws LocalProtocolError, and nothing is sent"
    )


def test_a_throwing_js_handler_is_reported_to_onerror_and_delivery_goes_on(
    node_run: NodeRun,
) -> None:
    node_run.check("a handler that throws is reported to onerror and delivery goes on")


def test_hub_error_frames_reach_onerror_and_a_refused_subscription_is_dropped(
    node_run: NodeRun,
) -> None:
    node_run.check("the hub's error frames reach onerror, and a refused subscription is dropped")


def test_a_wrong_token_closes_the_js_client_for_good(node_run: NodeRun) -> None:
    node_run.check(
        "a wrong token is fatal: onerror gets unauthorized, then the client closes for good"
    )


def test_the_js_client_resubscribes_reports_the_gap_and_sends_what_waited_after_a_hub_restart(
    node_run: NodeRun,
) -> None:
    node_run.check(
        "after a hub restart, the client resubscribes, reports the gap and sends what waited"
    )


def test_a_js_request_that_ends_while_disconnected_takes_its_publish_back(
    node_run: NodeRun,
) -> None:
    node_run.check("a request that ends while disconnected takes its publish back, never sent")


def test_closing_the_js_client_rejects_pending_work_and_stops_reconnecting(
    node_run: NodeRun,
) -> None:
    node_run.check("close() rejects what is pending, reports a final close, and stops reconnecting")


def test_a_publish_the_hub_refuses_is_never_resent_and_its_request_rejects_with_the_hub_error(
    node_run: NodeRun,
) -> None:
    node_run.check(
        "a refused publish is never sent again, and its request rejects with the HubError"
    )


def test_through_cuts_every_js_message_arrives_once_in_order_and_every_publish_is_confirmed(
    node_run: NodeRun,
) -> None:
    node_run.check(
        "through cut after cut, each message arrives once, in order, and every publish is confirmed"
    )


def test_js_publishes_applied_but_unacknowledged_before_a_cut_are_applied_once(
    node_run: NodeRun,
) -> None:
    node_run.check(
        "publishes the hub applied but whose acks were cut off are sent again and applied once"
    )


def test_a_gap_the_hub_cannot_replay_is_reported_to_js_onerror_counted_and_warned(
    node_run: NodeRun,
) -> None:
    node_run.check(
        "a gap the hub cannot replay goes to onerror as a RecoveryFailedError, counted and warned"
    )


def test_a_js_subscription_resumes_from_a_position_kept_by_another_client(
    node_run: NodeRun,
) -> None:
    node_run.check(
        "a subscription resumes from a position kept by another client, with what it missed first"
    )


def test_without_a_websocket_class_connect_says_what_to_pass(node_run: NodeRun) -> None:
    # Skipped where there is a global WebSocket.
    node_run.check(
        "without a WebSocket class, connect() says to pass the one from ws", may_skip=True
    )


#: Every Node test name checked above.
CHECKED = {
    "a client is welcomed by the hub and reports open",
    "a subscriber receives what another client publishes, in order, data and headers intact",
    "unsubscribing stops delivery, other subscriptions go on",
    "a request resolves with the reply that comes to its private inbox",
    "a request nobody answers rejects with RequestTimeoutError after its timeout",
    "bad topics, patterns and data are refused at once, and nothing is sent",
    "a lone surrogate anywhere in a frame throws LocalProtocolError, and nothing is sent",
    "a handler that throws is reported to onerror and delivery goes on",
    "the hub's error frames reach onerror, and a refused subscription is dropped",
    "a wrong token is fatal: onerror gets unauthorized, then the client closes for good",
    "after a hub restart, the client resubscribes, reports the gap and sends what waited",
    "a request that ends while disconnected takes its publish back, never sent",
    "close() rejects what is pending, reports a final close, and stops reconnecting",
    "a refused publish is never sent again, and its request rejects with the HubError",
    "through cut after cut, each message arrives once, in order, and every publish is confirmed",
    "publishes the hub applied but whose acks were cut off are sent again and applied once",
    "a gap the hub cannot replay goes to onerror as a RecoveryFailedError, counted and warned",
    "a subscription resumes from a position kept by another client, with what it missed first",
    "without a WebSocket class, connect() says to pass the one from ws",
}
