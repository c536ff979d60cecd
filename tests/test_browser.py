"""The dashboard and greenbus.js work in a real browser, against a real hub.

A headless Chromium (the system's ``/usr/bin/chromium``, driven by
``tests/node/browser.mjs`` through ``playwright-core``; no browser is ever
downloaded) opens the page a ``greenbus serve`` process serves, while Python
clients (:func:`greenbus.connect`, in this process) publish and subscribe on
the same hub.  Each wait is on a condition in the page (Playwright's
``waitFor``) or on a message, never on the clock.

Chromium, Node and ``playwright-core`` are required, not optional: when one
is missing the tests fail and say how to install it.  With
``GREENBUS_SCREENSHOT=PATH`` set, the first test saves a screenshot of the
dashboard there (``docs/dashboard.png`` is made that way).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from conftest import ROOT, HubProcess, child_env
from nodejs import NODE_DIR, LineReader, node_executable, wait_for_exit
from relay import Relay
from waiting import wait_until

import greenbus
from greenbus.bridge.http import WEB_DIR, WEB_FILES

DRIVER = NODE_DIR / "browser.mjs"
CHROMIUM = "/usr/bin/chromium"

#: Seconds a browser command may take (page waits included).
COMMAND_TIMEOUT = 15.0
#: Seconds to start Chromium.
START_TIMEOUT = 40.0

INSTALL_CHROMIUM = "apt-get update && apt-get install -y chromium chromium-driver"

# The hub's own listener only: under --transport wsgi the hub publishes no
# $greenbus.stats (hub_app never starts them), so the dashboard has no figures.
pytestmark = pytest.mark.parametrize("hub_transport", ["websockets"], indirect=True)


def require_browser_tools() -> str:
    """The path of ``node`` once Chromium and playwright-core are known to be there."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} not found: the browser tests drive the system's Chromium; "
            f"install it with `{INSTALL_CHROMIUM}`",
            pytrace=False,
        )
    return node_executable("playwright-core")


class Browser:
    """``node browser.mjs``: one JSON command per line in, one JSON answer per line out."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self._lines = LineReader(proc, self.describe)

    def describe(self) -> str:
        try:
            stderr = self.stderr_path.read_text(errors="replace").strip()
        except FileNotFoundError:
            stderr = ""
        return f"browser.mjs (exit code {self.proc.poll()}); its stderr: {stderr or '(nothing)'}"

    def read_answer(self, timeout: float) -> dict[str, Any]:
        """The next JSON line, waiting in gevent so that the Python clients keep running."""
        line = self._lines.readline(time.monotonic() + timeout)
        if line is None:
            pytest.fail(f"the browser driver exited: {self.describe()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def _send(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        return self.read_answer(timeout + 5)

    def do(self, cmd: str, *, timeout: float = COMMAND_TIMEOUT, **args: Any) -> dict[str, Any]:
        """Run one command in the page; its answer.  Fails the test if the command failed."""
        answer = self._send({"cmd": cmd, "timeout": int(timeout * 1000), **args}, timeout)
        if not answer.get("ok"):
            shown = {k: v for k, v in args.items() if k != "body"}
            log = self._send({"cmd": "console"}, COMMAND_TIMEOUT)
            pytest.fail(
                f"browser {cmd} {shown}: {answer.get('error')}\n"
                f"the page's console: {log.get('messages')}\nits errors: {log.get('errors')}"
            )
        return answer

    def wait_for(self, selector: str, text: str | None = None, **args: Any) -> str:
        """Wait until an element matches ``selector`` (and contains ``text``); its text."""
        if text is not None:
            args["text"] = text
        return str(self.do("wait_for", selector=selector, **args)["text"])

    def console(self) -> dict[str, list[Any]]:
        answer = self.do("console")
        return {"messages": answer["messages"], "errors": answer["errors"]}

    def assert_no_page_errors(self, allowed: str | None = None) -> None:
        """No uncaught exception, and no console error but those matching ``allowed``."""
        log = self.console()
        assert log["errors"] == [], log
        errors = [m["text"] for m in log["messages"] if m["type"] == "error"]
        assert [e for e in errors if allowed is None or not re.search(allowed, e)] == [], log

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if wait_for_exit(self.proc, time.monotonic() + 10) is None:
            self.proc.kill()
            self.proc.wait(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One Chromium for the module (a fresh profile); each test opens a new page."""
    node = require_browser_tools()
    home = tmp_path_factory.mktemp("browser")
    stderr_path = home / "browser.stderr"
    env = child_env()
    # Chromium keeps crash reports and caches under these, whatever its profile.
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["XDG_CACHE_HOME"] = str(home / "cache")
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [node, str(DRIVER), "--executable", CHROMIUM],
            cwd=NODE_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    driver = Browser(proc, stderr_path)
    try:
        ready = driver.read_answer(START_TIMEOUT)
        assert ready.get("ready"), f"{ready}: {driver.describe()}"
        yield driver
    finally:
        driver.close()


@pytest.fixture
def page(browser: Browser) -> Browser:
    """The browser, on a fresh page."""
    browser.do("new_page")
    return browser


@pytest.fixture
def python_client(
    hub_process: HubProcess, remote_bus: Callable[..., greenbus.RemoteBus]
) -> Callable[[str], greenbus.RemoteBus]:
    """``connect(name)``: a :func:`greenbus.connect` client of ``hub_process`` called ``name``."""
    return lambda name: remote_bus(hub_process.url, name=name)


def dashboard_url(hub: HubProcess) -> str:
    return f"http://{hub.host}:{hub.port}/"


def open_dashboard(page: Browser, hub: HubProcess) -> None:
    assert page.do("goto", url=dashboard_url(hub))["status"] == 200
    page.wait_for('#status[data-state="open"]')


def run_page(page: Browser, hub: HubProcess, name: str, body: str, last: str) -> dict[str, Any]:
    """Serve ``body`` as the page ``name`` at the hub's origin, open it, wait until its
    console logs ``last``, and return the console (see :meth:`Browser.console`).

    At the hub's origin, "/greenbus.js" and ``location.host`` are the hub's.  A
    routed page does not come from the network, so Chromium's Local Network Access
    checks count it as public and would block its WebSocket to 127.0.0.1 but for
    the grant (the dashboard itself comes from 127.0.0.1 and needs no such grant).
    """
    url = dashboard_url(hub) + name
    page.do("grant", permissions=["local-network-access"])
    page.do("route", url=url, body=body)
    page.do("goto", url=url)
    page.do("wait_console", text=last)
    return page.console()


def subscribed(client: greenbus.RemoteBus, pattern: str, probe_topic: str) -> greenbus.Subscription:
    """Subscribe, and return once the hub has the subscription in place."""
    sub = client.subscribe(pattern, maxsize=None)
    # The hub handles one connection's frames in order: once the probe comes
    # back, the subscription is in place for everyone else's messages too.
    client.emit(probe_topic, "probe")
    assert sub.get(timeout=10).data == "probe"
    return sub


#: What the sensors of the first test publish: topic -> reading number n -> data.
READINGS: dict[str, Callable[[int], Any]] = {
    "sensors.hall.humidity": lambda n: {"pct": 41 + n % 3},
    "sensors.kitchen.temp": lambda n: {"celsius": round(21.5 + (n % 5) * 0.1, 1)},
    "sensors.porch.lux": lambda n: {"lux": 320 + 5 * (n % 4)},
}


@contextlib.contextmanager
def feed(client: greenbus.RemoteBus) -> Iterator[None]:
    """Publish READINGS every 0.1 s (live rates for the page)."""

    def run() -> None:
        n = 0
        while True:
            for topic, reading in READINGS.items():
                client.emit(topic, reading(n))
            n += 1
            gevent.sleep(0.1)

    greenlet = gevent.spawn(run)
    try:
        yield
    finally:
        greenlet.kill()


def test_the_hub_serves_every_dashboard_file_and_the_page_loads_nothing_from_elsewhere(
    hub_process: HubProcess,
) -> None:
    for path, (name, content_type) in WEB_FILES.items():
        status, served_type, body = hub_process.http_get("/" + path)
        assert (status, served_type) == (200, content_type), path
        assert body == (WEB_DIR / name).read_text(encoding="utf-8"), path
    index = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"]*)"', index)
    assert links and all(re.match(r"^(data:|[a-z]+(\.[a-z]+)?$)", link) for link in links), links
    script = (WEB_DIR / "dashboard.js").read_text(encoding="utf-8")
    assert re.findall(r'^import .* from "(.*)";$', script, re.M) == ["./greenbus.js"]
    client = (WEB_DIR / "greenbus.js").read_text(encoding="utf-8")
    assert re.findall(r"^import ", client, re.M) == [], "greenbus.js has no dependencies"


def test_the_dashboard_shows_python_peers_and_their_messages_and_publishes_from_its_form(
    page: Browser, hub_process: HubProcess, python_client: Callable[[str], greenbus.RemoteBus]
) -> None:
    sensors = python_client("py-sensors")
    lamp = python_client("py-lamp")
    commands = subscribed(lamp, "commands.>", "commands.probe")

    open_dashboard(page, hub_process)
    page.do("fill", selector="#sub-pattern", value="sensors.>")
    page.do("click", selector="#sub-form button")
    # The hub's statistics list the page's own subscription once it is in place.
    page.wait_for("#peers tbody tr.self", "sensors.>")

    sensors.emit("sensors.kitchen.temp", {"celsius": 21.5}, headers={"unit": "C"})
    line = page.wait_for("#messages li", "sensors.kitchen.temp")
    assert '{"celsius":21.5}' in line
    assert '{"unit":"C"}' in line

    row = page.wait_for("#peers tbody tr", "py-sensors")
    assert re.search(r"127\.0\.0\.1:\d+", row), row
    lamp_row = page.wait_for("#peers tbody tr", "py-lamp")
    assert "commands.>" in lamp_row

    page.do("fill", selector="#pub-topic", value="commands.lamp.kitchen")
    page.do("fill", selector="#pub-data", value='{"on": true, "level": 0.8}')
    page.do("fill", selector="#pub-headers", value='{"from": "dashboard"}')
    page.do("click", selector="#pub-form button[type=submit]")
    assert page.wait_for("#pub-status", "Published") == "Published to commands.lamp.kitchen"
    msg = commands.get(timeout=10)
    assert (msg.topic, msg.data, msg.headers) == (
        "commands.lamp.kitchen",
        {"on": True, "level": 0.8},
        {"from": "dashboard"},
    )

    with feed(sensors):
        page.wait_for("#topics tbody tr", "sensors.hall.humidity")
        page.wait_for("#total-messages-in-sub", "/s")
        totals = page.do("texts", selector=".totals .card")["texts"]
        assert " ".join(totals[0].split()) == "Connections 3 3 since start", totals
        screenshot = os.environ.get("GREENBUS_SCREENSHOT")
        if screenshot:
            page.do("screenshot", path=str(Path(screenshot).resolve()))

    page.assert_no_page_errors()


def test_the_publish_form_refuses_invalid_json_with_a_clear_error_and_sends_nothing(
    page: Browser, hub_process: HubProcess, python_client: Callable[[str], greenbus.RemoteBus]
) -> None:
    commands = subscribed(python_client("py-lamp"), "commands.>", "commands.probe")
    open_dashboard(page, hub_process)

    page.do("fill", selector="#pub-topic", value="commands.lamp")
    page.do("fill", selector="#pub-data", value="{on: true}")
    page.do("click", selector="#pub-form button[type=submit]")
    error = page.wait_for("#pub-error", "not valid JSON")
    assert error.startswith("Data is not valid JSON: "), error
    assert page.do("attribute", selector="#pub-data", name="aria-invalid")["value"] == "true"

    # Valid JSON for JSON.parse, but a lone surrogate: greenbus.js refuses the
    # frame itself (LocalProtocolError) instead of sending what the hub refuses.
    page.do("fill", selector="#pub-data", value='"\\ud800"')
    page.do("click", selector="#pub-form button[type=submit]")
    error = page.wait_for("#pub-error", "surrogate")
    assert "lone UTF-16 surrogate U+D800" in error, error

    page.do("fill", selector="#pub-data", value='"fixed"')
    page.do("click", selector="#pub-form button[type=submit]")
    page.wait_for("#pub-status", "Published")
    assert page.do("attribute", selector="#pub-data", name="aria-invalid")["value"] is None
    # One order of routing: had an invalid one been sent, it would come first.
    assert commands.get(timeout=10).data == "fixed"

    page.do("fill", selector="#pub-topic", value="commands.*")
    page.do("click", selector="#pub-form button[type=submit]")
    assert "Invalid topic" in page.wait_for("#pub-error", "wildcard")
    page.assert_no_page_errors()


def test_the_dashboard_reconnects_after_the_hub_restarts_and_watches_again(
    page: Browser,
    hub_factory: Callable[..., HubProcess],
    remote_bus: Callable[..., greenbus.RemoteBus],
) -> None:
    hub = hub_factory()
    open_dashboard(page, hub)
    page.do("fill", selector="#sub-pattern", value="alerts.>")
    page.do("click", selector="#sub-form button")
    page.wait_for("#peers tbody tr.self", "alerts.>")

    hub.stop()
    assert "reconnecting" in page.wait_for('#status[data-state="reconnecting"]')
    again = hub_factory(port=hub.port)
    page.wait_for('#status[data-state="open"]')
    # The browser's client subscribed again by itself.
    page.wait_for("#peers tbody tr.self", "alerts.>")
    alarm = remote_bus(again.url, name="py-alarm")
    alarm.emit("alerts.door", {"open": True})
    assert '{"open":true}' in page.wait_for("#messages li", "alerts.door")
    # Chromium logs each refused attempt while the hub is down.
    page.assert_no_page_errors(allowed=r"^WebSocket connection to .* net::ERR_CONNECTION_REFUSED$")


@pytest.mark.parametrize("hub_process", [("--token", "s3cret")], indirect=True)
def test_the_dashboard_asks_for_the_token_of_a_hub_that_requires_one(
    page: Browser, hub_process: HubProcess
) -> None:
    assert page.do("goto", url=dashboard_url(hub_process))["status"] == 200
    page.wait_for('#status[data-state="closed"]')
    assert "token" in page.wait_for("#connect-note", "token")

    page.do("fill", selector="#token", value="s3cret")
    page.do("click", selector="#connect-form button")
    page.wait_for('#status[data-state="open"]')
    page.wait_for("#peers tbody tr.self", "dashboard")
    log = page.console()
    assert log["errors"] == [], log


def test_the_dashboard_shows_what_an_acl_user_may_not_do(
    page: Browser, hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    acl = tmp_path / "acl.toml"
    acl.write_text(
        '[users.viewer]\ntoken = "v-token"\npublish = []\nsubscribe = ["sensors.>"]\n',
        encoding="utf-8",
    )
    hub = hub_factory("--acl", str(acl))
    page.do("goto", url=dashboard_url(hub))
    page.wait_for("#connect-note", "token")
    page.do("fill", selector="#token", value="v-token")
    page.do("click", selector="#connect-form button")
    page.wait_for('#status[data-state="open"]')
    note = page.wait_for("#stats-note", "No statistics")
    assert note.startswith("No statistics for this token: ") and "$greenbus.stats" in note, note

    page.do("fill", selector="#sub-pattern", value="commands.>")
    page.do("click", selector="#sub-form button")
    assert "commands.> refused" in page.wait_for("#sub-error", "refused")
    page.do("fill", selector="#pub-topic", value="commands.lamp")
    page.do("fill", selector="#pub-data", value="true")
    page.do("click", selector="#pub-form button[type=submit]")
    assert "forbidden" in page.wait_for("#messages li.hub-error")
    page.assert_no_page_errors()


def test_the_readme_browser_example_runs_in_chromium_against_the_hub(
    page: Browser, hub_process: HubProcess, python_client: Callable[[str], greenbus.RemoteBus]
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```html\n(.*?)```", readme, re.S)
    assert len(blocks) == 1, "the README's browser example is the one html block"
    responder = python_client("py-math")
    responder.subscribe("math.double", lambda msg: msg.reply(msg.data * 2))
    subscribed(responder, "math.probe", "math.probe")

    body = f"<!doctype html>\n<title>README example</title>\n{blocks[0]}"
    log = run_page(page, hub_process, "readme-example.html", body, last="42")
    assert [m["text"] for m in log["messages"]] == ["chat.room1 hi", "42"], log
    page.assert_no_page_errors()


#: A page that imports greenbus.js from the hub, publishes what protocol v1
#: cannot carry, then a valid message and a ping, and logs each outcome.
REFUSALS_PAGE = r"""<!doctype html>
<title>greenbus.js refusals</title>
<script type="module">
  import { GreenbusError, LocalProtocolError, connect } from "/greenbus.js";
  const bus = connect(`ws://${location.host}/`, { name: "js-refusals" });
  bus.onerror = (error) => console.error(`onerror: ${error.message}`);
  const cycle = {};
  cycle.self = cycle;
  const refused = [
    ["lone surrogate in data", "\ud800", undefined],
    ["lone surrogate in a header key", 1, { "k\udc00": 1 }],
    ["NaN", NaN, undefined],
    ["BigInt", 1n, undefined],
    ["cycle", cycle, undefined],
  ];
  bus.onopen = async () => {
    for (const [what, data, headers] of refused) {
      try {
        bus.publish("browser.refusals", data, { headers });
        console.log(`${what}: published`);
      } catch (error) {
        const ours = error instanceof LocalProtocolError && error instanceof GreenbusError;
        console.log(`${what}: ${error.name} ${ours}`);
      }
    }
    bus.publish("browser.refusals", ["\ud83d\ude8c", "\\ud800"]);
    await bus.ping(); // the hub's answer to a refused frame would come before the pong
    console.log("done");
  };
</script>
"""


def test_greenbus_js_in_chromium_throws_local_protocol_error_for_frames_v1_cannot_carry(
    page: Browser, hub_process: HubProcess, python_client: Callable[[str], greenbus.RemoteBus]
) -> None:
    sub = subscribed(python_client("py-listener"), "browser.refusals", "browser.refusals")

    log = run_page(page, hub_process, "refusals.html", REFUSALS_PAGE, last="done")
    assert [m["text"] for m in log["messages"]] == [
        "lone surrogate in data: LocalProtocolError true",
        "lone surrogate in a header key: LocalProtocolError true",
        "NaN: LocalProtocolError true",
        "BigInt: LocalProtocolError true",
        "cycle: LocalProtocolError true",
        "done",
    ], log
    # One connection, one routing order: a refused frame, had it gone out, would come first.
    msg = sub.get(timeout=10)
    assert (msg.topic, msg.data) == ("browser.refusals", ["\U0001f68c", "\\ud800"])
    page.assert_no_page_errors()


#: A page that subscribes and publishes through a relay the test cuts: each of
#: its COUNT messages must come back to it once and in order, and be confirmed.
STEADY_PAGE = """<!doctype html>
<script type="module">
  import { connect } from "/greenbus.js";
  const COUNT = %(count)d;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const options = { name: "chromium-steady", reconnectDelay: 10, maxReconnectDelay: 50 };
  const bus = connect("%(url)s", options);
  const got = [];
  const errors = [];
  bus.onerror = (error) => errors.push(`${error.name}: ${error.message}`);
  bus.subscribe("browser.steady.>", (msg) => got.push([msg.topic, msg.data]));
  await bus.ping();
  console.log("subscribed");
  for (let n = 0; n < COUNT; n++) {
    bus.publish(`browser.steady.${n %% 3}`, n);
    await sleep(4);
  }
  // Bounded by the test's wait for "done".
  while (got.length < COUNT || bus.statistics().unconfirmed > 0) await sleep(20);
  bus.publish("browser.steady.end", "end");
  while (got.length < COUNT + 1) await sleep(20);
  console.log(JSON.stringify({ got, errors, stats: bus.statistics() }));
  await bus.close();
  console.log("done");
</script>
"""


def test_greenbus_js_in_chromium_resumes_through_cuts_each_message_once_in_order(
    page: Browser, hub_process: HubProcess, python_client: Callable[[str], greenbus.RemoteBus]
) -> None:
    count = 300
    listener = subscribed(python_client("py-steady"), "browser.steady.>", "browser.steady.probe")
    relay = Relay(hub_process.port).start()

    def cut_while_publishing() -> None:
        wait_until(lambda: listener.pending > 0, timeout=COMMAND_TIMEOUT, what="the first publish")
        for _ in range(5):
            relay.cut()
            gevent.sleep(0.15)

    cutter = gevent.spawn(cut_while_publishing)
    try:
        body = STEADY_PAGE % {"count": count, "url": relay.url}
        log = run_page(page, hub_process, "steady.html", body, last="done")
        cutter.get(timeout=COMMAND_TIMEOUT)
    finally:
        cutter.kill()
        relay.stop()

    texts = [m["text"] for m in log["messages"] if m["type"] == "log"]
    assert texts[0] == "subscribed" and texts[-1] == "done", log
    report = json.loads(texts[-2])
    expected = [[f"browser.steady.{n % 3}", n] for n in range(count)]
    assert report["got"] == [*expected, ["browser.steady.end", "end"]], "once each, in order"
    assert report["errors"] == []
    stats = report["stats"]
    assert stats["reconnects"] >= 1 and stats["recoveriesFailed"] == 0, stats
    assert stats["dropped"] == 0 and stats["unconfirmed"] == 0, stats
    assert relay.cuts == 5
    # The hub applied each publish once, resent or not: a direct subscriber agrees.
    heard = [(m.topic, m.data) for m in (listener.get(timeout=10) for _ in range(count + 1))]
    assert heard == [*map(tuple, expected), ("browser.steady.end", "end")]
    assert listener.pending == 0
    page.assert_no_page_errors()
