// Tests of greenbus/web/greenbus.js in Node, against real hubs (`python -m
// greenbus serve` child processes on free ports of 127.0.0.1).  The client
// gets the `ws` package's WebSocket class; with GREENBUS_JS_WEBSOCKET=global
// it uses Node's own instead (Node >= 22, or Node 20 with
// --experimental-websocket), the implementation browsers have.  The recovery
// tests put a TCP relay (`python tests/relay.py`, a child process) between
// the clients and the hub, and cut every connection through it on demand.
//
// Run: PYTHON=.venv/bin/python node --test-reporter=tap tests/node/client.test.mjs
// (tests/test_js_client.py does, both ways, and checks every test by name).
// PYTHON is the interpreter that runs the hubs; the checkout is put on its
// PYTHONPATH.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import {
  ClosedError,
  GreenbusError,
  HandlerError,
  HubError,
  InvalidTopicError,
  LocalProtocolError,
  MessageTooBigError,
  PROTOCOL,
  RecoveryFailedError,
  RequestTimeoutError,
  State,
  connect,
} from "../../greenbus/web/greenbus.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** The WebSocket class the clients are given (undefined: the global one). */
const IMPLEMENTATION = process.env.GREENBUS_JS_WEBSOCKET === "global" ? undefined : WebSocket;
if (IMPLEMENTATION === undefined && globalThis.WebSocket === undefined) {
  throw new Error("GREENBUS_JS_WEBSOCKET=global needs Node >= 22, or node --experimental-websocket");
}
const PYTHON = process.env.PYTHON || "python3";
/** ms to wait for anything that should happen (it normally takes a few). */
const PATIENCE = 10_000;
const RELAY = join(ROOT, "tests", "relay.py");
/** A position as the hub writes it: opaque to clients, but this is its shape. */
const POSITION = /^[0-9a-f]{1,32}:\d+:\d+$/;
/** Reconnect options for the clients the relay cuts: back within a few ms. */
const QUICK = { reconnectDelay: 10, maxReconnectDelay: 50 };

// -- hub processes ----------------------------------------------------------------

const hubs = new Set();

/** A `greenbus serve` child process. */
class Hub {
  /**
   * Start a hub and wait for its listening line.
   * @param {string[]} args extra CLI arguments
   * @param {number} port 0 picks a free one
   */
  static async start(args = [], port = 0) {
    const hub = new Hub();
    hub.proc = spawn(
      PYTHON,
      ["-m", "greenbus", "serve", "--port", String(port), "--log-level", "info", ...args],
      {
        cwd: ROOT,
        env: { ...process.env, PYTHONPATH: ROOT, PYTHONWARNINGS: "error", GREENBUS_TOKEN: "" },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    hubs.add(hub);
    hub.log = "";
    hub.proc.stderr.setEncoding("utf8");
    hub.proc.stderr.on("data", (chunk) => (hub.log = (hub.log + chunk).slice(-20_000)));
    const exited = once(hub.proc, "exit").then(([code]) => {
      throw new Error(`the hub exited with code ${code} before listening:\n${hub.log}`);
    });
    const listening = (async () => {
      for await (const line of createInterface({ input: hub.proc.stdout })) {
        const match = /greenbus hub listening on (ws:\/\/127\.0\.0\.1:(\d+)\/)/.exec(line);
        if (match) return match;
      }
      throw new Error(`the hub closed its stdout without listening:\n${hub.log}`);
    })();
    const match = await within(PATIENCE, Promise.race([listening, exited]), "the hub to listen");
    exited.catch(() => {}); // from now on, exiting is what stop() expects
    hub.url = match[1];
    hub.port = Number(match[2]);
    return hub;
  }

  /** SIGTERM (the hub closes its peers with 1001), wait; SIGKILL if it lingers. */
  async stop() {
    hubs.delete(this);
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = once(this.proc, "exit");
    this.proc.kill("SIGTERM");
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), PATIENCE);
    await exited;
    clearTimeout(timer);
  }
}

const relays = new Set();

/**
 * A `python tests/relay.py HUB_PORT` child process: clients connect to `url`,
 * and it forwards to the hub.  Each control is a signal, and resolves once the
 * relay has printed that it acted.
 */
class Relay {
  /** @param {number} hubPort */
  static async start(hubPort) {
    const relay = new Relay();
    relay.proc = spawn(PYTHON, [RELAY, String(hubPort)], {
      cwd: ROOT,
      env: { ...process.env, PYTHONPATH: ROOT, PYTHONWARNINGS: "error" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    relays.add(relay);
    relay.log = "";
    relay.proc.stderr.setEncoding("utf8");
    relay.proc.stderr.on("data", (chunk) => (relay.log = (relay.log + chunk).slice(-20_000)));
    relay.lines = createInterface({ input: relay.proc.stdout })[Symbol.asyncIterator]();
    relay.url = (await relay.expect(/^relay listening on (ws:\/\/127\.0\.0\.1:\d+\/)$/, "listening"))[1];
    return relay;
  }

  /** The relay's next line, which must match `pattern`. */
  async expect(pattern, what) {
    const { value, done } = await within(PATIENCE, this.lines.next(), `the relay to say ${what}`);
    if (done) throw new Error(`the relay exited before saying ${what}:\n${this.log}`);
    const match = pattern.exec(value);
    if (match === null) throw new Error(`the relay said ${JSON.stringify(value)}, not ${what}`);
    return match;
  }

  /** Reset every connection through the relay (RST both ways); how many it cut. */
  async cut() {
    this.proc.kill("SIGUSR1");
    return Number((await this.expect(/^relay cut (\d+)$/, "it cut"))[1]);
  }

  /** Hold everything the hub sends (acks, messages) and refuse new connections. */
  async mute() {
    this.proc.kill("SIGUSR2");
    await this.expect(/^relay muted$/, "muted");
  }

  /** Let the hub's frames through again, and new connections. */
  async unmute() {
    this.proc.kill("SIGUSR2");
    await this.expect(/^relay unmuted$/, "unmuted");
  }

  /** SIGTERM; how many cuts it made in all. */
  async stop() {
    relays.delete(this);
    const exited = once(this.proc, "exit");
    this.proc.kill("SIGTERM");
    const match = await this.expect(/^relay made (\d+) cut\(s\)/, "how many cuts it made");
    await within(PATIENCE, exited, "the relay to exit");
    return Number(match[1]);
  }
}

process.on("exit", () => {
  for (const hub of hubs) hub.proc.kill("SIGKILL");
  for (const relay of relays) relay.proc.kill("SIGKILL");
});

// -- helpers ------------------------------------------------------------------------

/** `promise`, or a rejection naming `what` after `ms`. */
function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const clients = new Set();

/** A client, closed after the tests; `opened` resolves on its first welcome. */
function open(url, options = {}) {
  const client = connect(url, { WebSocket: IMPLEMENTATION, ...options });
  clients.add(client);
  const opened = next(client, "onopen");
  return { client, opened };
}

/** The argument of the next call of `client[callback]` (onopen, onclose, onerror). */
function next(client, callback, what = callback) {
  return within(
    PATIENCE,
    new Promise((resolve) => {
      const previous = client[callback];
      client[callback] = (arg) => {
        client[callback] = previous;
        resolve(arg);
      };
    }),
    `${client.name} ${what}`,
  );
}

/** A subscription handler that keeps what it receives; take(n) waits for n in all. */
function collector() {
  const messages = [];
  let waiter = null;
  const handler = (message) => {
    messages.push(message);
    if (waiter !== null && messages.length >= waiter.n) waiter.resolve();
  };
  handler.messages = messages;
  handler.take = (n) => {
    if (messages.length >= n) return Promise.resolve(messages.slice(0, n));
    const ready = new Promise((resolve) => (waiter = { n, resolve }));
    return within(PATIENCE, ready, `${n} messages (have ${messages.length})`).then(() =>
      messages.slice(0, n),
    );
  };
  return handler;
}

/** Wait until `predicate()` holds (checked every 5 ms), or fail naming `what`. */
async function until(predicate, what) {
  const deadline = performance.now() + PATIENCE;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${PATIENCE} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** What console.warn prints until `restore()`, one string per call. */
function captureWarnings() {
  const original = console.warn;
  const lines = [];
  console.warn = (...args) => lines.push(args.join(" "));
  lines.restore = () => (console.warn = original);
  return lines;
}

/** The hub's count of pubs sent again after a cut and dropped (greenbus_duplicate_pubs_total). */
async function duplicatePubs(someHub) {
  const response = await fetch(`http://127.0.0.1:${someHub.port}/metrics`);
  const match = /^greenbus_duplicate_pubs_total (\d+)/m.exec(await response.text());
  assert.ok(match, "the hub's /metrics has greenbus_duplicate_pubs_total");
  return Number(match[1]);
}

const range = (n) => Array.from({ length: n }, (_, i) => i);

let hub;

before(async () => {
  hub = await Hub.start();
});

after(async () => {
  await Promise.all([...clients].map((c) => c.close()));
  await Promise.all([...hubs].map((h) => h.stop()));
});

// -- the tests ------------------------------------------------------------------------

test("a client is welcomed by the hub and reports open", async () => {
  const { client, opened } = open(hub.url, { name: "js-welcome" });
  assert.equal(client.state, State.CONNECTING);
  const info = await opened;
  assert.equal(info.server, "greenbus");
  assert.match(info.peer, /^p\d+$/);
  assert.equal(info.reconnects, 0);
  assert.equal(client.state, State.OPEN);
  assert.equal(client.peer, info.peer);
  assert.equal(client.statistics().state, "open");
  assert.match(String(client), /greenbus Client js-welcome ws:\/\/127\.0\.0\.1:\d+\/ open/);
  assert.ok((await client.ping()) >= 0);
  // Protocol 2, with a publisher session of 128 random bits, one per client.
  assert.equal(PROTOCOL, 2);
  assert.match(client.session, /^[0-9a-f]{32}$/);
  const other = open(hub.url);
  assert.notEqual(other.client.session, client.session);
  assert.throws(() => {
    client.session = "mine";
  }, TypeError);
  await other.opened;
});

test("a subscriber receives what another client publishes, in order, data and headers intact", async () => {
  const a = open(hub.url);
  const b = open(hub.url);
  await Promise.all([a.opened, b.opened]);
  const got = collector();
  a.client.subscribe("js.sub.>", got);
  await a.client.ping(); // the pong follows the sub: it is in place
  b.client.publish("js.sub", "not matched: '>' needs one more token");
  for (let i = 0; i < 100; i++) b.client.publish("js.sub.count", { i });
  b.client.publish("js.sub.text", { text: "héllo wörld ✓ 🚌", quote: '"' }, { headers: { trace: "t-1" } });
  b.client.publish("js.sub.none");

  const messages = await got.take(102);
  assert.deepEqual(
    messages.slice(0, 100).map((m) => m.data),
    Array.from({ length: 100 }, (_, i) => ({ i })),
  );
  assert.ok(messages.slice(0, 100).every((m) => m.topic === "js.sub.count" && m.replyTo === null));
  assert.deepEqual(messages[100].data, { text: "héllo wörld ✓ 🚌", quote: '"' });
  assert.deepEqual(messages[100].headers, { trace: "t-1" });
  assert.equal(messages[101].topic, "js.sub.none");
  assert.equal(messages[101].data, null);
  assert.deepEqual(messages[101].headers, {});
});

test("unsubscribing stops delivery, other subscriptions go on", async () => {
  const a = open(hub.url);
  const b = open(hub.url);
  await Promise.all([a.opened, b.opened]);
  const first = collector();
  const sentinel = collector();
  const unsubscribe = a.client.subscribe("js.unsub.a", first);
  a.client.subscribe("js.unsub.sentinel", sentinel);
  await a.client.ping();
  b.client.publish("js.unsub.a", 1);
  await first.take(1);

  unsubscribe();
  unsubscribe(); // idempotent
  await a.client.ping();
  b.client.publish("js.unsub.a", 2);
  b.client.publish("js.unsub.sentinel", "after");
  // One routing order: had the first subscription got 2, it would have come before this.
  await sentinel.take(1);
  assert.deepEqual(
    first.messages.map((m) => m.data),
    [1],
  );
  assert.equal(a.client.statistics().subscriptions, 1);
});

test("a request resolves with the reply that comes to its private inbox", async () => {
  const requester = open(hub.url);
  const responder = open(hub.url);
  await Promise.all([requester.opened, responder.opened]);
  const inboxes = [];
  responder.client.subscribe("js.math.double", (msg) => {
    inboxes.push(msg.replyTo);
    msg.reply(msg.data * 2, { headers: { by: "responder" } });
  });
  await responder.client.ping();

  const reply = await requester.client.request("js.math.double", 21, { timeout: PATIENCE });
  assert.equal(reply.data, 42);
  assert.deepEqual(reply.headers, { by: "responder" });
  const replies = await Promise.all([1, 2, 3].map((n) => requester.client.request("js.math.double", n)));
  assert.deepEqual(
    replies.map((r) => r.data),
    [2, 4, 6],
  );

  assert.equal(inboxes.length, 4);
  for (const inbox of inboxes) assert.match(inbox, /^_INBOX\.[0-9a-f]{32}$/);
  assert.equal(new Set(inboxes).size, 4);
  // A fresh random name per request, so a responder cannot guess the next one.
  assert.equal(new Set(inboxes.map((i) => i.split(".")[1])).size, 4, "a fresh random inbox per request");
  assert.equal(requester.client.statistics().subscriptions, 0, "inboxes are unsubscribed");
});

test("a request nobody answers rejects with RequestTimeoutError after its timeout", async () => {
  const { client, opened } = open(hub.url);
  await opened;
  const started = performance.now();
  await assert.rejects(client.request("js.nobody.home", "hello?", { timeout: 200 }), (error) => {
    assert.ok(error instanceof RequestTimeoutError);
    assert.equal(error.topic, "js.nobody.home");
    assert.equal(error.timeout, 200);
    assert.match(error.message, /no reply to the request on "js\.nobody\.home" within 200 ms/);
    return true;
  });
  assert.ok(performance.now() - started >= 190);
  assert.equal(client.statistics().subscriptions, 0);
});

test("bad topics, patterns and data are refused at once, and nothing is sent", async () => {
  const { client, opened } = open(hub.url, { maxMessageSize: 200 });
  await opened;
  const sent = client.statistics().sent;
  const invalid = (fn, problem) =>
    assert.throws(fn, (error) => error instanceof InvalidTopicError && problem.test(error.message));
  invalid(() => client.publish("js.*", 1), /wildcard '\*' is only allowed in subscription patterns/);
  invalid(() => client.publish("js..bad", 1), /empty token at position 1/);
  invalid(() => client.publish("js.a b", 1), /whitespace or control character U\+0020 at index 4/);
  invalid(() => client.publish("", 1), /must not be empty/);
  invalid(() => client.publish("js.ok", 1, { replyTo: "_INBOX.>" }), /only allowed in subscription patterns/);
  invalid(() => client.subscribe("room*", () => {}), /wildcard inside token 'room\*'/);
  invalid(() => client.subscribe("js.>.temp", () => {}), /'>' must be the last token/);
  // A frame protocol v1 cannot carry is the caller's LocalProtocolError, as in Python.
  const local = (fn, problem) =>
    assert.throws(fn, (error) => {
      assert.ok(error instanceof LocalProtocolError, `${error}`);
      assert.ok(error instanceof GreenbusError && !(error instanceof TypeError));
      assert.match(error.message, problem);
      return true;
    });
  local(() => client.publish("js.ok", NaN), /NaN is not valid JSON/);
  local(() => client.publish("js.ok", { n: Infinity }), /Infinity is not valid JSON/);
  local(() => client.publish("js.ok", 1, { headers: { n: -Infinity } }), /-Infinity is not valid JSON/);
  local(() => client.publish("js.ok", 1n), /BigInt/);
  const cycle = { name: "cycle" };
  cycle.self = cycle;
  local(() => client.publish("js.ok", [cycle]), /circular/);
  await assert.rejects(client.request("js.ok", NaN), LocalProtocolError);
  // Arguments of the wrong JS type stay TypeErrors.
  assert.throws(
    () => client.publish("js.ok", 1, { headers: ["a"] }),
    (e) => e instanceof TypeError && /headers must be an object/.test(e.message),
  );
  assert.throws(
    () => client.publish("js.ok", "x".repeat(300)),
    (e) => e instanceof MessageTooBigError && e.limit === 200,
  );
  assert.throws(() => client.subscribe("js.ok", "not a function"), TypeError);
  await assert.rejects(client.request("js.*"), InvalidTopicError);
  assert.equal(client.statistics().sent, sent);
  assert.equal(client.statistics().subscriptions, 0);
  assert.throws(() => connect("http://127.0.0.1:1/", { WebSocket: IMPLEMENTATION }), /ws:\/\/ or wss:\/\//);
  assert.throws(() => connect(hub.url, { WebSocket: IMPLEMENTATION, maxBuffer: 0 }), RangeError);
});

test("a lone surrogate anywhere in a frame throws LocalProtocolError, and nothing is sent", async () => {
  const publisher = open(hub.url);
  const subscriber = open(hub.url);
  await Promise.all([publisher.opened, subscriber.opened]);
  const reported = [];
  publisher.client.onerror = (error) => reported.push(error);
  const got = collector();
  subscriber.client.subscribe("js.surrogate.>", got);
  await subscriber.client.ping();
  const sent = publisher.client.statistics().sent;

  // [where, data, headers]: each frame holds one lone UTF-16 surrogate (or two).
  const refused = [
    ["in data", "\ud800", undefined],
    ["in a header value", 1, { trace: "t-\udfff" }],
    ["in a header key", 1, { "key-\ud83d": "v" }],
    ["in a nested array", { list: [1, ["fine", ["\udc00"]]] }, undefined],
    ["a pair in the wrong order", "\ude00\ud83d", undefined],
    ["a high surrogate at the end", "bus 🚌\ud83d", undefined],
    ["after an escaped backslash", "\\\ud800", undefined],
  ];
  for (const [where, data, headers] of refused) {
    assert.throws(
      () => publisher.client.publish("js.surrogate.bad", data, { headers }),
      (error) => {
        assert.ok(error instanceof LocalProtocolError, `${where}: ${error}`);
        assert.ok(error instanceof GreenbusError);
        assert.match(error.message, /lone UTF-16 surrogate U\+D[89A-F][0-9A-F]{2}/, where);
        return true;
      },
      where,
    );
  }
  await assert.rejects(
    publisher.client.request("js.surrogate.bad", { q: "\udbff" }, { timeout: PATIENCE }),
    LocalProtocolError,
  );
  assert.equal(publisher.client.statistics().sent, sent, "nothing was sent");
  assert.equal(publisher.client.statistics().subscriptions, 0, "the refused request left no inbox");

  // Topics: the grammar refuses lone surrogates (as the hub's does), not pairs.
  assert.throws(() => publisher.client.publish("js.surrogate.\ud800", 1), InvalidTopicError);
  assert.throws(() => publisher.client.publish("js.ok", 1, { replyTo: "_INBOX.\udc00" }), InvalidTopicError);
  assert.throws(() => publisher.client.subscribe("js.\udbff.>", () => {}), InvalidTopicError);

  // A pair is one character; "\\ud800" is a backslash and five letters: both travel intact.
  publisher.client.publish("js.surrogate.pair", "bus 🚌", { headers: { "🚌": "😀" } });
  publisher.client.publish("js.surrogate.text", "\\ud800", { headers: { "\\uDFFF": ["\\\\ud800"] } });
  publisher.client.publish("js.surrogate.🚌", ["\ud83d\ude8c"]);
  // One routing order: had a refused frame gone out, the subscriber would have got it first.
  const messages = await got.take(3);
  assert.deepEqual(
    messages.map((m) => [m.topic, m.data, m.headers]),
    [
      ["js.surrogate.pair", "bus 🚌", { "🚌": "😀" }],
      ["js.surrogate.text", "\\ud800", { "\\uDFFF": ["\\\\ud800"] }],
      ["js.surrogate.🚌", ["🚌"], {}],
    ],
  );
  await publisher.client.ping(); // the hub's answer to a refused frame would come before the pong
  assert.deepEqual(reported, [], "the hub refused nothing");
  assert.equal(publisher.client.statistics().hubErrors, 0);
});

test("a handler that throws is reported to onerror and delivery goes on", async () => {
  const { client, opened } = open(hub.url);
  await opened;
  const got = collector();
  client.subscribe("js.handler", (msg) => {
    got(msg);
    if (msg.data === "boom") throw new Error("boom");
  });
  await client.ping();
  const reported = next(client, "onerror");
  client.publish("js.handler", "boom");
  client.publish("js.handler", "after");
  const error = await reported;
  assert.ok(error instanceof HandlerError);
  assert.equal(error.pattern, "js.handler");
  assert.equal(error.cause.message, "boom");
  assert.deepEqual(
    (await got.take(2)).map((m) => m.data),
    ["boom", "after"],
  );
});

test("the hub's error frames reach onerror, and a refused subscription is dropped", async () => {
  const limited = await Hub.start(["--max-subscriptions", "2"]);
  const { client, opened } = open(limited.url);
  await opened;
  const reported = next(client, "onerror");
  client.subscribe("js.limit.one", () => {});
  client.subscribe("js.limit.two", () => {});
  client.subscribe("js.limit.three", () => {});
  const error = await reported;
  assert.ok(error instanceof HubError);
  assert.equal(error.code, "limit");
  assert.equal(error.pattern, "js.limit.three");
  assert.equal(error.fatal, false);
  assert.equal(client.statistics().subscriptions, 2);
  assert.equal(client.statistics().hubErrors, 1);
  assert.equal(client.state, State.OPEN);
  await client.ping(); // the connection is still fine
  await client.close();
  await limited.stop();
});

test("a wrong token is fatal: onerror gets unauthorized, then the client closes for good", async () => {
  const guarded = await Hub.start(["--token", "s3cret"]);
  const good = open(guarded.url, { token: "s3cret" });
  await good.opened;

  const bad = connect(guarded.url, { WebSocket: IMPLEMENTATION, token: "guess", reconnectDelay: 10 });
  clients.add(bad);
  const reported = next(bad, "onerror");
  const closed = next(bad, "onclose");
  const error = await reported;
  assert.ok(error instanceof HubError);
  assert.equal(error.code, "unauthorized");
  assert.equal(error.fatal, true);
  const info = await closed;
  assert.equal(info.code, 1008);
  assert.equal(info.reconnectIn, null);
  assert.equal(info.error, error);
  assert.equal(bad.state, State.CLOSED);
  assert.throws(
    () => bad.publish("js.after", 1),
    (e) => e instanceof ClosedError && e.cause === error,
  );
  await bad.close(); // nothing left to close

  await good.client.close();
  await guarded.stop();
});

test("after a hub restart, the client resubscribes, reports the gap and sends what waited", async () => {
  const restarting = await Hub.start();
  const { client, opened } = open(restarting.url, {
    maxBuffer: 3,
    reconnectDelay: 20,
    maxReconnectDelay: 200,
  });
  await opened;
  const reported = [];
  client.onerror = (error) => reported.push(error);
  const got = collector();
  const subscription = client.subscribe("js.restart.>", got);
  await client.ping();
  const before = client.position(subscription);
  assert.match(before, POSITION, "the sub's ack said where it starts");

  const lost = next(client, "onclose", "close when the hub stops");
  await restarting.stop();
  const info = await lost;
  assert.equal(info.code, 1001);
  assert.equal(info.reason, "hub shutting down");
  assert.equal(info.wasOpen, true);
  assert.ok(info.reconnectIn > 0 && info.reconnectIn <= 200);

  // Disconnected: publishes wait, unconfirmed, and the oldest are dropped past
  // maxBuffer, with one warning for the whole outage.
  const warnings = captureWarnings();
  try {
    for (let i = 0; i < 5; i++) client.publish("js.restart.buffered", { i });
  } finally {
    warnings.restore();
  }
  assert.equal(warnings.length, 1, warnings.join("\n"));
  assert.match(warnings[0], /disconnected with 3 unconfirmed message\(s\) waiting \(maxBuffer\); dropping the oldest/);
  const stats = client.statistics();
  assert.equal(stats.unconfirmed, 3);
  assert.equal(stats.dropped, 2);
  assert.equal(stats.resent, 0, "none of them had gone out");
  assert.notEqual(stats.state, State.OPEN);

  const reopened = next(client, "onopen", "welcome after the restart");
  const again = await Hub.start([], restarting.port);
  const second = await reopened;
  assert.equal(second.reconnects, 1);
  // Subscriptions go out before the unconfirmed publishes, so the client gets
  // its own publishes back (a new hub does not know the session: it applies them).
  assert.deepEqual(
    (await got.take(3)).map((m) => m.data),
    [{ i: 2 }, { i: 3 }, { i: 4 }],
  );
  // The new hub has none of the old one's history: the resume says so.
  assert.equal(reported.length, 1, reported.join("\n"));
  const [gap] = reported;
  assert.ok(gap instanceof RecoveryFailedError);
  assert.equal(gap.pattern, "js.restart.>");
  assert.equal(gap.since, before);
  assert.match(gap.reason, /does not cover the gap/);
  assert.equal(client.statistics().recoveriesFailed, 1);
  assert.equal(client.statistics().recovered, 0);

  const other = open(again.url);
  await other.opened;
  other.client.publish("js.restart.fresh", "from another client");
  assert.equal((await got.take(4))[3].data, "from another client");
  // The acks of the client's own publishes came before that message.
  assert.equal(client.statistics().unconfirmed, 0);
  assert.equal(client.statistics().reconnects, 1);

  await Promise.all([client.close(), other.client.close()]);
  await again.stop();
});

test("a request that ends while disconnected takes its publish back, never sent", async () => {
  const restarting = await Hub.start();
  const { client, opened } = open(restarting.url, { reconnectDelay: 20, maxReconnectDelay: 200 });
  await opened;
  const reported = [];
  client.onerror = (error) => reported.push(error);
  // The client answers its own requests: after a restart it subscribes again
  // before it sends what waited, so whatever waited reaches this responder.
  const seen = collector();
  client.subscribe("js.withdrawn.>", (msg) => {
    seen(msg);
    if (msg.replyTo !== null) msg.reply({ answered: msg.data });
  });
  await client.ping();

  const lost = next(client, "onclose", "close when the hub stops");
  await restarting.stop();
  await lost;
  assert.notEqual(client.state, State.OPEN);
  await assert.rejects(
    client.request("js.withdrawn.svc", "given up", { timeout: 100 }),
    RequestTimeoutError,
  );
  const afterTimeout = client.statistics();
  client.publish("js.withdrawn.after", "published after the timeout");
  const wanted = client.request("js.withdrawn.svc", "still wanted", { timeout: PATIENCE });
  const beforeRestart = client.statistics();

  const reopened = next(client, "onopen", "welcome after the restart");
  const again = await Hub.start([], restarting.port);
  await reopened;
  // A request still pending at the welcome goes out and is answered.
  assert.deepEqual((await wanted).data, { answered: "still wanted" });
  // The responder saw everything that waited, in order: not the abandoned request.
  assert.deepEqual(
    seen.messages.map((m) => m.data),
    ["published after the timeout", "still wanted"],
  );
  assert.equal(afterTimeout.unconfirmed, 0, "the abandoned request's pub was taken back");
  assert.equal(afterTimeout.dropped, 0, "a withdrawn request is no overflow");
  assert.equal(afterTimeout.withdrawn, 1);
  assert.equal(afterTimeout.subscriptions, 1, "its inbox is gone too");
  assert.equal(beforeRestart.unconfirmed, 2);
  await client.ping(); // after the acks of everything before it, the reply included
  const stats = client.statistics();
  assert.equal(stats.unconfirmed, 0);
  assert.equal(stats.dropped, 0);
  assert.equal(stats.withdrawn, 1);
  assert.equal(stats.resent, 0, "nothing had gone out before the restart");
  // The restarted hub could not replay the gap of js.withdrawn.> (the inbox is never kept).
  assert.deepEqual(
    reported.map((e) => [e.name, e.pattern]),
    [["RecoveryFailedError", "js.withdrawn.>"]],
  );

  await client.close();
  await again.stop();
});

test("close() rejects what is pending, reports a final close, and stops reconnecting", async () => {
  const { client, opened } = open(hub.url);
  await opened;
  const pending = client.request("js.nobody.listens", 1, { timeout: PATIENCE });
  const closed = next(client, "onclose");
  const done = client.close();
  assert.equal(client.close(), done, "close() is idempotent");
  await assert.rejects(pending, ClosedError);
  await within(PATIENCE, done, "close() to resolve");
  const info = await closed;
  assert.equal(info.code, 1000);
  assert.equal(info.reconnectIn, null);
  assert.equal(info.wasOpen, true);
  assert.equal(client.state, State.CLOSED);
  assert.throws(() => client.publish("js.after", 1), ClosedError);
  assert.throws(() => client.subscribe("js.after", () => {}), ClosedError);
  await assert.rejects(client.ping(), ClosedError);
});

test("a refused publish is never sent again, and its request rejects with the HubError", async () => {
  const dir = mkdtempSync(join(tmpdir(), "greenbus-acl-"));
  const acl = join(dir, "acl.toml");
  writeFileSync(acl, '[users.limited]\ntoken = "l-token"\npublish = ["js.allowed.>"]\nsubscribe = ["js.>"]\n');
  const guarded = await Hub.start(["--acl", acl]);
  rmSync(dir, { recursive: true, force: true });
  const { client, opened } = open(guarded.url, { token: "l-token" });
  await opened;
  const reported = [];
  client.onerror = (error) => reported.push(error);
  const got = collector();
  client.subscribe("js.>", got);
  await client.ping();

  // Refused at once with the hub's error, not after the timeout.
  await assert.rejects(client.request("js.secret.svc", 1, { timeout: PATIENCE }), (error) => {
    assert.ok(error instanceof HubError, `${error}`);
    assert.equal(error.code, "forbidden");
    assert.ok(Number.isInteger(error.id), "the id of a pub is its number in the session");
    return true;
  });
  assert.equal(client.statistics().subscriptions, 1, "the request's inbox is gone");
  client.publish("js.allowed.note", "fine");
  client.publish("js.secret.note", "refused"); // the last pub: no later ack confirms it
  await client.ping(); // after the hub's answers to both
  assert.equal(client.statistics().unconfirmed, 0, "the refused pub was dropped, not kept to send again");
  assert.deepEqual(
    got.messages.map((m) => m.data),
    ["fine"],
  );
  assert.deepEqual(
    reported.map((e) => [e.code, e.id]),
    [
      ["forbidden", 1],
      ["forbidden", 3],
    ],
  );
  await client.close();
  await guarded.stop();
});

test("through cut after cut, each message arrives once, in order, and every publish is confirmed", async (t) => {
  const relay = await Relay.start(hub.port);
  const subscriber = open(relay.url, { name: "js-steady-sub", ...QUICK });
  const publisher = open(relay.url, { name: "js-steady-pub", ...QUICK });
  await Promise.all([subscriber.opened, publisher.opened]);
  const reported = [];
  subscriber.client.onerror = publisher.client.onerror = (error) => reported.push(error);
  const got = collector();
  subscriber.client.subscribe("steady.>", got);
  await subscriber.client.ping(); // in place before the first publish
  const count = 400;
  const cuts = 5;

  const publishing = (async () => {
    for (let n = 0; n < count; n++) {
      publisher.client.publish(`steady.${n % 3}`, n);
      await sleep(2);
    }
  })();
  let cutConnections = 0;
  const cutting = (async () => {
    for (let i = 0; i < cuts; i++) {
      await sleep(150);
      cutConnections += await relay.cut();
    }
  })();
  await Promise.all([publishing, cutting]);

  const messages = await got.take(count);
  assert.deepEqual(
    messages.map((m) => m.data),
    range(count),
    "each once, in publish order",
  );
  assert.deepEqual(
    messages.map((m) => m.topic),
    range(count).map((n) => `steady.${n % 3}`),
  );
  await until(() => publisher.client.statistics().unconfirmed === 0, "the publisher's last acks");
  publisher.client.publish("steady.end", "end");
  assert.equal((await got.take(count + 1))[count].data, "end", "and nothing extra before it");

  const sub = subscriber.client.statistics();
  const pub = publisher.client.statistics();
  t.diagnostic(`subscriber ${JSON.stringify(sub)}`);
  t.diagnostic(`publisher ${JSON.stringify(pub)}`);
  assert.ok(sub.reconnects >= 1 && pub.reconnects >= 1);
  assert.equal(sub.recoveriesFailed, 0);
  assert.ok(sub.recovered >= 1, "the resumes were replayed (perhaps nothing)");
  assert.equal(pub.dropped, 0);
  assert.deepEqual(reported, []);
  assert.equal(await relay.stop(), cuts);
  assert.ok(cutConnections >= cuts, `the cuts reset ${cutConnections} connection(s)`);
  await Promise.all([subscriber.client.close(), publisher.client.close()]);
});

test("publishes the hub applied but whose acks were cut off are sent again and applied once", async () => {
  const relay = await Relay.start(hub.port);
  const publisher = open(relay.url, { name: "js-resender", ...QUICK });
  const subscriber = open(hub.url); // never cut
  await Promise.all([publisher.opened, subscriber.opened]);
  const got = collector();
  subscriber.client.subscribe("js.once.>", got);
  await subscriber.client.ping();
  const duplicatesBefore = await duplicatePubs(hub);
  const session = publisher.client.session;

  await relay.mute(); // from now on, the hub's acks to the publisher are held
  for (let n = 0; n < 10; n++) publisher.client.publish(`js.once.${n % 2}`, n);
  // The hub applied them all: the subscriber, on its own connection, has them.
  assert.deepEqual(
    (await got.take(10)).map((m) => m.data),
    range(10),
  );
  assert.equal(publisher.client.statistics().unconfirmed, 10, "no ack came through");
  const lost = next(publisher.client, "onclose", "the cut");
  assert.equal(await relay.cut(), 1);
  await lost; // the held acks are lost with the connection
  const reopened = next(publisher.client, "onopen", "the welcome after the cut");
  await relay.unmute();
  await reopened;

  await until(() => publisher.client.statistics().unconfirmed === 0, "the acks of the publishes sent again");
  const stats = publisher.client.statistics();
  assert.equal(stats.resent, 10);
  assert.equal(publisher.client.session, session, "one session across connections");
  assert.equal((await duplicatePubs(hub)) - duplicatesBefore, 10, "the hub recognised all ten");
  publisher.client.publish("js.once.end", "end");
  assert.equal((await got.take(11))[10].data, "end", "each applied once: nothing twice before it");
  assert.equal(await relay.stop(), 1);
  await publisher.client.close();
});

test("a gap the hub cannot replay goes to onerror as a RecoveryFailedError, counted and warned", async () => {
  const short = await Hub.start(["--history", "5"]);
  const relay = await Relay.start(short.port);
  const subscriber = open(relay.url, { name: "js-gap", ...QUICK });
  const publisher = open(short.url); // never cut
  await Promise.all([subscriber.opened, publisher.opened]);
  const got = collector();
  const subscription = subscriber.client.subscribe("js.gap", got);
  await subscriber.client.ping();
  const start = subscriber.client.position(subscription);
  assert.match(start, POSITION, "the sub's ack said where it starts");

  // The subscriber hears nothing more, then is cut off, and stays away while
  // 20 messages are published: 15 more than the hub keeps.
  await relay.mute();
  for (let n = 0; n < 20; n++) publisher.client.publish("js.gap", n);
  await publisher.client.ping(); // all applied
  const lost = next(subscriber.client, "onclose", "the cut");
  await relay.cut();
  await lost;
  const warnings = captureWarnings();
  let failure;
  try {
    const reported = next(subscriber.client, "onerror", "the gap's report");
    await relay.unmute();
    failure = await reported;
  } finally {
    warnings.restore();
  }
  assert.ok(failure instanceof RecoveryFailedError && failure instanceof GreenbusError, `${failure}`);
  assert.equal(failure.name, "RecoveryFailedError");
  assert.equal(failure.pattern, "js.gap");
  assert.equal(failure.since, start);
  assert.match(failure.reason, /does not cover the gap/);
  assert.match(failure.message, /^subscription "js\.gap" resumed with a gap: messages published while/);
  assert.equal(warnings.length, 1, warnings.join("\n"));
  assert.match(warnings[0], /js-gap: subscription "js\.gap" resumed with a gap/);
  const stats = subscriber.client.statistics();
  assert.equal(stats.recoveriesFailed, 1);
  assert.equal(stats.recovered, 0);
  // It goes on from where the hub said the new subscription starts.
  const restart = subscriber.client.position(subscription);
  assert.match(restart, POSITION);
  assert.notEqual(restart, start);

  publisher.client.publish("js.gap", "live");
  const [first] = await got.take(1);
  assert.equal(first.data, "live", "nothing replayed, live goes on");
  await subscriber.client.ping();
  assert.equal(got.messages.length, 1);
  assert.equal(await relay.stop(), 1);
  await Promise.all([subscriber.client.close(), publisher.client.close()]);
  await short.stop();
});

test("a subscription resumes from a position kept by another client, with what it missed first", async () => {
  const first = open(hub.url);
  const publisher = open(hub.url);
  await Promise.all([first.opened, publisher.opened]);
  const subscription = first.client.subscribe("js.orders.*", () => {});
  assert.equal(first.client.position(subscription), null, "no position before the hub's ack");
  await first.client.ping();
  const kept = first.client.position(subscription);
  assert.match(kept, POSITION);
  await first.client.close();
  assert.equal(first.client.position(subscription), null);

  for (let n = 0; n < 3; n++) publisher.client.publish(`js.orders.${n}`, n);
  await publisher.client.ping();
  const second = open(hub.url);
  await second.opened;
  const got = collector();
  const resumed = second.client.subscribe("js.orders.*", got, { since: kept });
  assert.equal(second.client.position(resumed), kept);
  assert.deepEqual(
    (await got.take(3)).map((m) => [m.topic, m.data]),
    [
      ["js.orders.0", 0],
      ["js.orders.1", 1],
      ["js.orders.2", 2],
    ],
  );
  // The ack (recovered) came before the replay.
  assert.equal(second.client.statistics().recovered, 1);
  assert.equal(second.client.statistics().recoveriesFailed, 0);
  const reached = second.client.position(resumed);
  assert.match(reached, POSITION);
  assert.notEqual(reached, kept);
  publisher.client.publish("js.orders.3", 3);
  assert.equal((await got.take(4))[3].data, 3, "then the live ones");

  for (const since of ["not a position", 42, "5f0c:1:"]) {
    assert.throws(
      () => second.client.subscribe("js.orders.*", () => {}, { since }),
      (e) => e instanceof TypeError && /since must be a position/.test(e.message),
    );
  }
  resumed();
  assert.equal(second.client.position(resumed), null);
  assert.equal(second.client.position(() => {}), null);
  await Promise.all([second.client.close(), publisher.client.close()]);
});

test(
  "without a WebSocket class, connect() says to pass the one from ws",
  { skip: globalThis.WebSocket !== undefined && "this Node has a global WebSocket" },
  () => {
    assert.throws(
      () => connect(hub.url),
      (error) =>
        error instanceof TypeError && /pass one: connect\(url, \{ WebSocket \}\)/.test(error.message),
    );
  },
);
