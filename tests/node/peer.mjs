#!/usr/bin/env node
// A greenbus peer written in Node.js, for tests/test_node.py: it speaks the
// hub's wire protocol v1 (one JSON object per WebSocket text message, field
// "op") using nothing but the `ws` package, to show the hub is not tied to
// the Python client.
//
// Usage: node peer.mjs [--timeout SECONDS] URL MODE ARGS...
//
//   sub PATTERN COUNT    subscribe; print {"subscribed": PATTERN} once the hub
//                        acks, then one JSON line {"topic", "data"[, "headers"]
//                        [, "reply_to"]} per msg; exit 0 after COUNT msgs.
//   pub TOPIC N          publish N messages {"i": k} (k = 0..N-1), each with an
//                        id; wait for every ack, print {"published": N}, exit 0.
//   echo TOPIC [COUNT]   subscribe; print {"subscribed": TOPIC}; answer every msg
//                        that has reply_to by publishing {"echo": data} to it
//                        (printing {"echoed": reply_to}); with COUNT, exit 0
//                        once COUNT replies are acked, else run until SIGTERM.
//   request TOPIC DATA   DATA is JSON: subscribe to an inbox, publish DATA to
//                        TOPIC with reply_to = the inbox, print the reply as
//                        {"topic", "data"}, exit 0.
//   errors               send bad frames one at a time and print, per frame,
//                        {"case", "op", "code", "id"} of the hub's answer; then
//                        a ping, to show the connection survived; exit 0.
//   binary               send one binary message, which the protocol forbids;
//                        print {"closed": CODE, "reason"} when the hub closes
//                        the connection; exit 0.
//
// Whenever the hub closes the connection unexpectedly, the peer prints
// {"closed": CODE, "reason"} on stdout before exiting 3.
//
// Every mode first sends hello (with GREENBUS_TOKEN from the environment if
// set) and waits for welcome.  Exit codes: 0 done; 2 usage; 3 the connection
// failed or closed unexpectedly; 4 timeout (default 20 s); 5 the hub answered
// something unexpected (e.g. an error frame outside mode "errors").  The
// reason is always printed on stderr.

import WebSocket from "ws";

const PROTOCOL = 1;

function usage(message) {
  process.stderr.write(
    `peer.mjs: ${message}\n` +
      "usage: node peer.mjs [--timeout SECONDS] URL " +
      "(sub PATTERN COUNT | pub TOPIC N | echo TOPIC [COUNT] | request TOPIC DATA | errors | binary)\n",
  );
  process.exit(2);
}

function die(code, message) {
  process.stderr.write(`peer.mjs: ${message}\n`);
  process.exit(code);
}

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function count(text, what) {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) usage(`${what} must be a non-negative integer, not ${JSON.stringify(text)}`);
  return n;
}

// -- arguments ------------------------------------------------------------------

const argv = process.argv.slice(2);
let timeoutS = 20;
if (argv[0] === "--timeout") {
  timeoutS = Number(argv[1]);
  if (!(timeoutS > 0)) usage(`--timeout must be a positive number, not ${JSON.stringify(argv[1])}`);
  argv.splice(0, 2);
}
const [url, mode, ...args] = argv;
if (!url || !mode) usage("URL and MODE are required");

const arity = { sub: [2, 2], pub: [2, 2], echo: [1, 2], request: [2, 2], errors: [0, 0], binary: [0, 0] };
if (!(mode in arity)) usage(`unknown mode ${JSON.stringify(mode)}`);
if (args.length < arity[mode][0] || args.length > arity[mode][1]) {
  const [lo, hi] = arity[mode];
  usage(`mode ${mode} takes ${lo === hi ? lo : `${lo} or ${hi}`} argument(s), got ${args.length}`);
}

// -- the connection ---------------------------------------------------------------

// An open-ended echo has no deadline: it serves until it is told to stop.
const deadline =
  mode === "echo" && args.length < 2
    ? null
    : setTimeout(() => die(4, `timeout: mode ${mode} not done after ${timeoutS} s`), timeoutS * 1000);

let finishing = false;
const ws = new WebSocket(url, { handshakeTimeout: timeoutS * 1000 });

function send(frame) {
  ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
}

// Close normally and let Node exit once stdout is flushed and the socket is gone.
function finish() {
  finishing = true;
  if (deadline) clearTimeout(deadline);
  ws.close(1000, "done");
}

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    if (ws.readyState === WebSocket.OPEN) finish();
    else process.exit(0);
    // If the hub never answers the close, don't linger.
    setTimeout(() => process.exit(0), 2000).unref();
  });
}

ws.on("error", (err) => die(3, `connection to ${url} failed: ${err.message}`));
ws.on("unexpected-response", (_req, res) => die(3, `handshake with ${url} refused: HTTP ${res.statusCode}`));
ws.on("close", (code, raw) => {
  if (finishing) {
    process.exitCode = 0;
    return;
  }
  // The socket is gone: exit once stdout is flushed (no process.exit here).
  if (deadline) clearTimeout(deadline);
  const reason = raw.toString();
  print({ closed: code, reason });
  if (handler !== null && handler.closeExpected) {
    process.exitCode = 0;
    return;
  }
  process.stderr.write(
    `peer.mjs: the hub closed the connection unexpectedly: code ${code} ${JSON.stringify(reason)}\n`,
  );
  process.exitCode = 3;
});

let handler = null; // the mode's frame handler, installed after welcome
const helloId = "hello-1";

ws.on("open", () => {
  const hello = { op: "hello", protocol: PROTOCOL, name: `node-${mode}`, id: helloId };
  if (process.env.GREENBUS_TOKEN) hello.token = process.env.GREENBUS_TOKEN;
  send(hello);
});

ws.on("message", (raw, isBinary) => {
  if (isBinary) die(5, "the hub sent a binary message");
  let frame;
  try {
    frame = JSON.parse(raw.toString("utf8"));
  } catch (err) {
    die(5, `the hub sent text that is not JSON: ${err.message}`);
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame) || typeof frame.op !== "string") {
    die(5, `the hub sent a frame without a string op: ${raw}`);
  }
  if (handler === null) {
    if (frame.op === "welcome" && frame.id === helloId) {
      if (frame.protocol !== PROTOCOL) die(5, `the hub speaks protocol ${frame.protocol}, not ${PROTOCOL}`);
      handler = modes[mode];
      handler.start();
      return;
    }
    die(5, `expected welcome, got ${raw}`);
  }
  if (frame.op === "error" && !handler.errorsExpected) {
    die(5, `the hub answered with error ${frame.code} (id ${JSON.stringify(frame.id)}): ${frame.reason}`);
  }
  handler.frame(frame);
});

function unexpected(frame) {
  die(5, `unexpected frame in mode ${mode}: ${JSON.stringify(frame)}`);
}

// Modes sub and echo: subscribe to `pattern` as sid 1; the mode is done
// after `wanted` messages (or answers) of its own counting.
function subscribe(handler, pattern, wanted) {
  handler.pattern = pattern;
  handler.wanted = wanted;
  send({ op: "sub", sid: 1, topic: pattern, id: "sub-1" });
}

// Whether `f` is the ack of subscribe(): then print {"subscribed": pattern},
// and finish at once if nothing is wanted.
function subscribed(handler, f) {
  if (f.op !== "ack" || f.id !== "sub-1") return false;
  print({ subscribed: handler.pattern });
  if (handler.wanted === 0) finish();
  return true;
}

// -- the modes ------------------------------------------------------------------

const modes = {
  sub: {
    start() {
      this.seen = 0;
      subscribe(this, args[0], count(args[1], "COUNT"));
    },
    frame(f) {
      if (subscribed(this, f)) return;
      if (f.op === "msg" && f.sid === 1) {
        const line = { topic: f.topic, data: f.data };
        if (f.headers) line.headers = f.headers;
        if (f.reply_to !== undefined) line.reply_to = f.reply_to;
        print(line);
        if (++this.seen === this.wanted) finish();
      } else unexpected(f);
    },
  },

  pub: {
    start() {
      const topic = args[0];
      const n = count(args[1], "N");
      this.n = n;
      this.pending = new Set();
      for (let k = 0; k < n; k++) {
        const id = `pub-${k}`;
        this.pending.add(id);
        send({ op: "pub", topic, data: { i: k }, id });
      }
      this.check();
    },
    frame(f) {
      if (f.op === "ack" && this.pending.delete(f.id)) this.check();
      else unexpected(f);
    },
    check() {
      if (this.pending.size === 0) {
        print({ published: this.n });
        finish();
      }
    },
  },

  echo: {
    start() {
      this.replies = new Set();
      this.answered = 0;
      this.seq = 0;
      subscribe(this, args[0], args.length > 1 ? count(args[1], "COUNT") : Infinity);
    },
    frame(f) {
      if (subscribed(this, f)) return;
      if (f.op === "msg" && f.sid === 1) {
        if (typeof f.reply_to !== "string") return; // not a request: nothing to answer
        const id = `reply-${++this.seq}`;
        this.replies.add(id);
        send({ op: "pub", topic: f.reply_to, data: { echo: f.data }, id });
        print({ echoed: f.reply_to });
      } else if (f.op === "ack" && this.replies.delete(f.id)) {
        if (++this.answered === this.wanted) finish();
      } else unexpected(f);
    },
  },

  request: {
    start() {
      let data;
      try {
        data = JSON.parse(args[1]);
      } catch (err) {
        usage(`DATA must be JSON (${err.message}); quote strings: '"hi"'`);
      }
      this.inbox = `_INBOX.node.${process.pid}.${Date.now()}`;
      // The hub handles one connection's frames in order: the inbox
      // subscription is in place before the request is routed.
      send({ op: "sub", sid: "inbox", topic: this.inbox, id: "sub-inbox" });
      send({ op: "pub", topic: args[0], data, reply_to: this.inbox, id: "request" });
    },
    frame(f) {
      if (f.op === "ack" && (f.id === "sub-inbox" || f.id === "request")) return;
      if (f.op === "msg" && f.sid === "inbox" && f.topic === this.inbox) {
        print({ topic: f.topic, data: f.data });
        finish();
      } else unexpected(f);
    },
  },

  errors: {
    errorsExpected: true,
    // [case, text]: each is sent once the answer to the previous one is in.
    cases: [
      ["not-json", "this is not JSON"],
      ["not-an-object", "[1, 2, 3]"],
      ["missing-op", JSON.stringify({ topic: "a.b", id: "missing-op" })],
      ["unknown-op", JSON.stringify({ op: "publish", topic: "a.b", id: "unknown-op" })],
      ["pub-missing-topic", JSON.stringify({ op: "pub", data: 1, id: "pub-missing-topic" })],
      ["pub-empty-token", JSON.stringify({ op: "pub", topic: "a..b", id: "pub-empty-token" })],
      ["pub-wildcard-topic", JSON.stringify({ op: "pub", topic: "a.*", id: "pub-wildcard-topic" })],
      ["sub-partial-wildcard", JSON.stringify({ op: "sub", sid: 7, topic: "room*", id: "sub-partial-wildcard" })],
      ["sub-ok", JSON.stringify({ op: "sub", sid: 1, topic: "errors.ok", id: "sub-ok" })],
      ["sub-duplicate-sid", JSON.stringify({ op: "sub", sid: 1, topic: "errors.other", id: "sub-duplicate-sid" })],
      ["unsub-unknown-sid", JSON.stringify({ op: "unsub", sid: 99, id: "unsub-unknown-sid" })],
      ["hello-protocol-3", JSON.stringify({ op: "hello", protocol: 3, id: "hello-protocol-3" })],
      ["ping-after-errors", JSON.stringify({ op: "ping", id: "ping-after-errors" })],
    ],
    start() {
      this.next = 0;
      this.sendNext();
    },
    sendNext() {
      if (this.next === this.cases.length) {
        finish();
        return;
      }
      send(this.cases[this.next][1]);
    },
    frame(f) {
      if (!["error", "ack", "pong"].includes(f.op)) unexpected(f);
      const line = { case: this.cases[this.next][0], op: f.op, id: f.id ?? null };
      if (f.op === "error") line.code = f.code;
      print(line);
      this.next++;
      this.sendNext();
    },
  },

  binary: {
    closeExpected: true,
    start() {
      ws.send(Buffer.from(JSON.stringify({ op: "ping", id: "binary" })), { binary: true });
    },
    frame(f) {
      unexpected(f);
    },
  },
};
