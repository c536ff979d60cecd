// Tests of greenbus/web/greenbus.js in Node, against real hubs (`python -m
// greenbus serve` child processes on free ports of 127.0.0.1).  The client
// gets the `ws` package's WebSocket class; with GREENBUS_JS_WEBSOCKET=global
// it uses Node's own instead (Node >= 22, or Node 20 with
// --experimental-websocket), the implementation browsers have.
//
// Run: PYTHON=.venv/bin/python node --test-reporter=tap tests/node/client.test.mjs
// (tests/test_js_client.py does, both ways, and checks every test by name).
// PYTHON is the interpreter that runs the hubs; the checkout is put on its
// PYTHONPATH.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
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

process.on("exit", () => {
  for (const hub of hubs) hub.proc.kill("SIGKILL");
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

test("after a hub restart on the same port, the client resubscribes and sends its buffer", async () => {
  const restarting = await Hub.start();
  const { client, opened } = open(restarting.url, {
    maxBuffer: 3,
    reconnectDelay: 20,
    maxReconnectDelay: 200,
  });
  await opened;
  const got = collector();
  client.subscribe("js.restart.>", got);
  await client.ping();

  const lost = next(client, "onclose", "close when the hub stops");
  await restarting.stop();
  const info = await lost;
  assert.equal(info.code, 1001);
  assert.equal(info.reason, "hub shutting down");
  assert.equal(info.wasOpen, true);
  assert.ok(info.reconnectIn > 0 && info.reconnectIn <= 200);

  // Disconnected: publishes wait in the buffer, and the oldest are dropped past maxBuffer.
  for (let i = 0; i < 5; i++) client.publish("js.restart.buffered", { i });
  const stats = client.statistics();
  assert.equal(stats.buffered, 3);
  assert.equal(stats.dropped, 2);
  assert.notEqual(stats.state, State.OPEN);

  const reopened = next(client, "onopen", "welcome after the restart");
  const again = await Hub.start([], restarting.port);
  const second = await reopened;
  assert.equal(second.reconnects, 1);
  // Subscriptions go out before the buffer, so the client gets its own publishes back.
  assert.deepEqual(
    (await got.take(3)).map((m) => m.data),
    [{ i: 2 }, { i: 3 }, { i: 4 }],
  );

  const other = open(again.url);
  await other.opened;
  other.client.publish("js.restart.fresh", "from another client");
  assert.equal((await got.take(4))[3].data, "from another client");
  assert.equal(client.statistics().buffered, 0);
  assert.equal(client.statistics().reconnects, 1);

  await Promise.all([client.close(), other.client.close()]);
  await again.stop();
});

test("a request that ends while disconnected is taken out of the buffer and never sent", async () => {
  const restarting = await Hub.start();
  const { client, opened } = open(restarting.url, { reconnectDelay: 20, maxReconnectDelay: 200 });
  await opened;
  // The client answers its own requests: after a restart it subscribes again
  // before it sends its buffer, so whatever the buffer held reaches this responder.
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
  // The responder saw everything the buffer sent, in order: not the abandoned request.
  assert.deepEqual(
    seen.messages.map((m) => m.data),
    ["published after the timeout", "still wanted"],
  );
  assert.equal(afterTimeout.buffered, 0, "the abandoned request's pub left the buffer");
  assert.equal(afterTimeout.dropped, 0, "a withdrawn request is no overflow");
  assert.equal(afterTimeout.withdrawn, 1);
  assert.equal(afterTimeout.subscriptions, 1, "its inbox is gone too");
  assert.equal(beforeRestart.buffered, 2);
  const stats = client.statistics();
  assert.equal(stats.buffered, 0);
  assert.equal(stats.dropped, 0);
  assert.equal(stats.withdrawn, 1);

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
