// greenbus.js: a client for greenbus hubs, speaking wire protocol v2
// (docs/protocol.md): one JSON object per WebSocket text message.
//
// No dependencies and no build step.  It runs in browsers (the hub serves it
// at /greenbus.js), in Node >= 22 (global WebSocket), and in older Node with
// a WebSocket class passed in: connect(url, { WebSocket }) from the `ws`
// package.
//
//     import { connect } from "/greenbus.js";
//     const bus = connect("ws://127.0.0.1:8765/", { name: "thermostat" });
//     const unsubscribe = bus.subscribe("sensors.*.temp", (msg) => console.log(msg.topic, msg.data));
//     bus.publish("sensors.kitchen.temp", 20.5, { headers: { unit: "C" } });
//     const reply = await bus.request("math.double", 21, { timeout: 2000 });
//
// The client reconnects by itself, with capped exponential backoff, and
// resumes (docs/recovery.md), as the Python client does:
//
// - Subscriptions.  Each one remembers the position (`pos`) of the last
//   message it received, or where the hub said it started.  After a cut it
//   subscribes again from there (`since`), and the hub first replays what it
//   missed, then goes on live: each message once, in order.  When the hub
//   cannot (its history does not reach back that far, it restarted, or it
//   keeps none), the gap is never silent: a RecoveryFailedError goes to
//   onerror, a console.warn line says it, and statistics().recoveriesFailed
//   counts it; the subscription goes on with the live messages.
//   `$` topics and request inboxes (`_INBOX.`) are never kept: they just
//   subscribe again.
// - Publishes.  The client names a random publisher `session` (fixed for its
//   life) and numbers its publishes 1, 2, 3, ...  It keeps every one the hub
//   has not acknowledged, and sends them all again, in order, on each new
//   connection; the hub drops those it had applied.  So a publish made while
//   disconnected, or in flight when the connection dropped, reaches
//   subscribers exactly once.  While disconnected at most maxBuffer wait:
//   past that the oldest are dropped (counted in statistics().dropped, and
//   one console.warn per outage).  A request that ends unanswered takes its
//   publish back: it is never sent again, so nobody acts on a request its
//   caller gave up on.
//
// The window is the hub's (--history, --history-ttl: 100 messages per topic,
// 120 s, by default); a hub restart without Redis loses it.
//
//     const unsubscribe = bus.subscribe("orders.*", handle);
//     const kept = bus.position(unsubscribe);          // an opaque string, or null
//     // later, in another client or after a restart: what was published after `kept` first
//     other.subscribe("orders.*", handle, { since: kept });
//
// Errors, all under one root:
//
//     GreenbusError
//     ├── InvalidTopicError     a topic or pattern breaks the grammar (thrown at once)
//     ├── LocalProtocolError    a frame the protocol cannot carry: NaN, a lone surrogate,
//     │                         a BigInt, a cycle (thrown at once)
//     ├── MessageTooBigError    a frame over maxMessageSize (thrown at once)
//     ├── HubError              the hub refused a frame: code, reason, id
//     ├── RemoteProtocolError   the hub sent something that is not the protocol
//     ├── HandlerError          a subscription handler threw: cause, pattern, topic
//     ├── RecoveryFailedError   a subscription resumed with a gap: pattern, since, reason
//     ├── RequestTimeoutError   no reply to a request in time: topic, timeout
//     ├── ConnectionLostError   the connection ended before the hub answered
//     └── ClosedError           the client is closed (close(), or a refusal for good)
//
// Who broke it: InvalidTopicError, LocalProtocolError, MessageTooBigError
// and ClosedError are the caller's; HubError is the hub refusing what we
// sent; RemoteProtocolError is the hub misbehaving.  Arguments of the wrong
// JS type (a handler that is no function, headers that are no object, a bad
// option) throw the builtin TypeError or RangeError.

/** The protocol version this client speaks. */
export const PROTOCOL = 2;

/**
 * The states of a client.  Every transition is listed in TRANSITIONS.
 * @readonly
 * @enum {string}
 */
export const State = Object.freeze({
  /** A socket is opening, or waiting for the hub's welcome. */
  CONNECTING: "connecting",
  /** Welcomed: subscriptions are in place and publishes go out at once. */
  OPEN: "open",
  /** The connection ended; the next attempt is scheduled. */
  RECONNECTING: "reconnecting",
  /** Final: close() was called, the hub refused the client for good, or reconnect is off. */
  CLOSED: "closed",
});

/** The allowed state transitions, as data. */
const TRANSITIONS = Object.freeze({
  [State.CONNECTING]: [State.OPEN, State.RECONNECTING, State.CLOSED],
  [State.OPEN]: [State.RECONNECTING, State.CLOSED],
  [State.RECONNECTING]: [State.CONNECTING, State.CLOSED],
  [State.CLOSED]: [],
});

/** WebSocket.readyState of an open socket (the same in browsers, Node and `ws`). */
const SOCKET_OPEN = 1;
/**
 * ms to wait for the close event that must follow an error, or close().  Past
 * that the socket counts as closed (1006): Node 20's experimental WebSocket
 * never sends one after a failed handshake, and a hub may never answer.
 */
const CLOSE_GRACE_MS = 1000;

/** A position as the hub writes it (`<epoch>:<seq>:<ms>`, docs/recovery.md); opaque otherwise. */
const POSITION = /^[0-9a-f]{1,32}:(?:0|[1-9][0-9]{0,18}):(?:0|[1-9][0-9]{0,15})$/;
/** The prefix of request inboxes, which a hub never keeps (nor `$` topics). */
const INBOX_PREFIX = "_INBOX.";

/** Whether a hub keeps what `pattern` matches, so that a subscription to it can resume. */
function isKept(pattern) {
  return !(pattern.startsWith("$") || pattern.startsWith(INBOX_PREFIX));
}

const DEFAULTS = Object.freeze({
  maxBuffer: 1000,
  reconnectDelay: 100,
  maxReconnectDelay: 5000,
  maxMessageSize: 1 << 20,
  requestTimeout: 5000,
});

// -- errors ---------------------------------------------------------------------

/** The root of every error this module throws or reports. */
export class GreenbusError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A topic or pattern that breaks the grammar of docs/protocol.md. */
export class InvalidTopicError extends GreenbusError {
  /**
   * @param {unknown} value the topic or pattern
   * @param {string} problem what is wrong with it
   */
  constructor(value, problem) {
    super(`invalid topic ${safeJSON(value)}: ${problem}`);
    this.value = value;
    this.problem = problem;
  }
}

/**
 * A frame that the protocol cannot carry, refused before anything is sent (the
 * hub would answer `bad_json`): NaN or Infinity, a string or key holding a
 * lone UTF-16 surrogate (it has no UTF-8 encoding), or a value JSON.stringify
 * cannot encode (a BigInt, a cycle; then `cause` is its TypeError).  The
 * Python client raises greenbus.LocalProtocolError for the same frames.
 */
export class LocalProtocolError extends GreenbusError {
  /**
   * @param {string} problem what the frame holds that the protocol cannot carry
   * @param {{cause?: unknown}} [options]
   */
  constructor(problem, options) {
    super(`cannot send this frame: ${problem}`, options);
    this.problem = problem;
  }
}

/** A frame larger than the hub accepts (it would close the connection with 1009). */
export class MessageTooBigError extends GreenbusError {
  /**
   * @param {number} size the frame's size in bytes of UTF-8
   * @param {number} limit maxMessageSize
   */
  constructor(size, limit) {
    super(`message of ${size} bytes exceeds the limit of ${limit} bytes`);
    this.size = size;
    this.limit = limit;
  }
}

/** An `error` frame from the hub: it refused a frame, or it is about to close. */
export class HubError extends GreenbusError {
  /**
   * @param {{code: string, reason: string, id?: string|number}} frame
   * @param {string|null} [pattern] the subscription it refused, if it was a `sub`
   */
  constructor(frame, pattern = null) {
    const about = pattern === null ? "" : ` (subscription ${safeJSON(pattern)})`;
    super(`${frame.code}: ${frame.reason}${about}`);
    /** One of the error codes of docs/protocol.md; branch on this. */
    this.code = frame.code;
    /** Words for people; the wording may change. */
    this.reason = frame.reason;
    /** The id of the refused frame, when the hub could read it. */
    this.id = frame.id ?? null;
    /** The pattern of a refused subscription (it is dropped), else null. */
    this.pattern = pattern;
  }

  /**
   * True if the client stops for good after this error: a refused token
   * (`unauthorized`), or a hub that does not speak protocol 2
   * (`unsupported_protocol`).  Retrying cannot help.
   */
  get fatal() {
    return this.code === "unauthorized" || this.code === "unsupported_protocol";
  }
}

/** The hub sent a frame that is not the protocol (a bug on its side). */
export class RemoteProtocolError extends GreenbusError {
  constructor(problem, text) {
    super(`the hub sent an invalid frame: ${problem}`);
    this.text = text;
  }
}

/** A subscription handler threw (or its promise rejected); `cause` is what it threw. */
export class HandlerError extends GreenbusError {
  constructor(cause, pattern, topic) {
    super(`the handler of ${safeJSON(pattern)} failed on ${safeJSON(topic)}: ${cause}`, { cause });
    this.pattern = pattern;
    this.topic = topic;
  }
}

/**
 * A subscription resumed after a cut, and messages published meanwhile may be
 * missing: the hub could not replay them (its history does not reach back to
 * `since`, it restarted, or it keeps none).  Never thrown: it goes to onerror
 * (and console.warn), is counted in statistics().recoveriesFailed, and the
 * subscription goes on with the live messages.  The Python client reports
 * greenbus.RecoveryFailed for the same gaps.
 */
export class RecoveryFailedError extends GreenbusError {
  /**
   * @param {string} pattern the subscription's pattern
   * @param {string|null} since the position it asked to resume from (null if it had none)
   * @param {string} reason why the gap could not be replayed
   */
  constructor(pattern, since, reason) {
    super(
      `subscription ${safeJSON(pattern)} resumed with a gap: messages published while it was ` +
        `disconnected may be lost (${reason})`,
    );
    this.pattern = pattern;
    this.since = since;
    this.reason = reason;
  }
}

/** No reply came within the timeout (the hub cannot say that nobody listens). */
export class RequestTimeoutError extends GreenbusError {
  constructor(topic, timeout) {
    super(`no reply to the request on ${safeJSON(topic)} within ${timeout} ms`);
    this.topic = topic;
    this.timeout = timeout;
  }
}

/** The connection ended before the hub answered (for example a ping in flight). */
export class ConnectionLostError extends GreenbusError {}

/** The client is closed: by close(), or for good after the hub refused it (a token, its protocol). */
export class ClosedError extends GreenbusError {}

function safeJSON(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

// -- topics (docs/protocol.md, "Topics and wildcards") -------------------------------

// Whitespace as Python's str.isspace() sees it, the C0 and C1 control
// characters, and lone surrogates (which have no UTF-8 encoding).
const FORBIDDEN =
  /[\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ud800-\udfff]/u;
const WILDCARD_CHARS = /[*>]/;

function checkCommon(value, kind) {
  if (typeof value !== "string") {
    throw new InvalidTopicError(
      value,
      `a ${kind} must be a string, not ${value === null ? "null" : typeof value}`,
    );
  }
  if (value === "") throw new InvalidTopicError(value, `a ${kind} must not be empty`);
  const bad = FORBIDDEN.exec(value);
  if (bad !== null) {
    const code = bad[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    throw new InvalidTopicError(value, `whitespace or control character U+${code} at index ${bad.index}`);
  }
  const tokens = value.split(".");
  const empty = tokens.indexOf("");
  if (empty !== -1) {
    throw new InvalidTopicError(value, `empty token at position ${empty} (leading, trailing or double dot)`);
  }
  return tokens;
}

/**
 * Check a concrete topic (no wildcards), as the hub does.
 * @param {string} topic
 * @returns {string} the topic
 * @throws {InvalidTopicError} naming the problem
 */
export function validateTopic(topic) {
  const tokens = checkCommon(topic, "topic");
  if (WILDCARD_CHARS.test(topic)) {
    const wildcard = tokens.find((t) => t === "*" || t === ">");
    throw new InvalidTopicError(
      topic,
      wildcard === undefined
        ? "'*' and '>' are reserved for wildcards"
        : `wildcard '${wildcard}' is only allowed in subscription patterns`,
    );
  }
  return topic;
}

/**
 * Check a subscription pattern: `*` matches one token, a last `>` the rest.
 * @param {string} pattern
 * @returns {string} the pattern
 * @throws {InvalidTopicError} naming the problem
 */
export function validatePattern(pattern) {
  const tokens = checkCommon(pattern, "pattern");
  tokens.forEach((token, i) => {
    if (token === ">") {
      if (i !== tokens.length - 1) throw new InvalidTopicError(pattern, "'>' must be the last token");
    } else if (token !== "*" && WILDCARD_CHARS.test(token)) {
      throw new InvalidTopicError(
        pattern,
        `wildcard inside token '${token}': '*' and '>' must be whole tokens`,
      );
    }
  });
  return pattern;
}

// JSON as the hub wants it: NaN and Infinity would silently become null.
function strict(_key, value) {
  if (typeof value === "number" && !Number.isFinite(value)) {
    throw new LocalProtocolError(`${value} is not valid JSON (the hub refuses NaN and Infinity)`);
  }
  return value;
}

// A lone surrogate as JSON.stringify writes it (ES2019, well-formed): the
// escape \ud800 to \udfff, while a pair (an astral character) is written raw.
// The escape must not be escaped itself: an even number of backslashes (0,
// 2, ...) before the one that starts it.  JSON.stringify writes lower case;
// the match does not rely on it.
const LONE_SURROGATE_ESCAPE = /(?<!\\)(?:\\\\)*\\u(d[89a-f][0-9a-f]{2})/i;

/**
 * The text of a frame, as strict as the hub's decoder (docs/protocol.md,
 * "Transport": "JSON is strict", and "Refused input worth knowing").
 * @param {object} frame
 * @returns {string}
 * @throws {LocalProtocolError} NaN or Infinity, a lone surrogate in any string
 *   or key, or a value JSON.stringify refuses (a BigInt, a cycle)
 */
function encodeFrame(frame) {
  let text;
  try {
    text = JSON.stringify(frame, strict);
  } catch (error) {
    // JSON.stringify refuses a BigInt or a cycle with a TypeError (one thrown by a
    // toJSON() is wrapped too, as cause); anything else a toJSON() throws passes.
    if (error instanceof TypeError) {
      throw new LocalProtocolError(`not JSON: ${error.message}`, { cause: error });
    }
    throw error;
  }
  const lone = text.includes("\\u") ? LONE_SURROGATE_ESCAPE.exec(text) : null;
  if (lone !== null) {
    throw new LocalProtocolError(
      `a string holds a lone UTF-16 surrogate U+${lone[1].toUpperCase()}, which has no UTF-8 encoding`,
    );
  }
  return text;
}

function randomHex(bytes) {
  const buf = new Uint8Array(bytes);
  globalThis.crypto.getRandomValues(buf);
  return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
}

function utf8Length(text) {
  let n = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
  }
  return n;
}

// -- messages -------------------------------------------------------------------

/** A message delivered to a subscription handler. */
export class Message {
  /** @param {Client} client @param {object} frame a `msg` frame */
  constructor(client, frame) {
    this.#client = client;
    /** The concrete topic it was published on. */
    this.topic = frame.topic;
    /** The payload (null if there was none). */
    this.data = frame.data ?? null;
    /** Application metadata; {} when the publisher gave none. */
    this.headers = frame.headers ?? {};
    /** For a request: the inbox to reply to; null otherwise. */
    this.replyTo = frame.reply_to ?? null;
  }

  #client;

  /**
   * Answer a request: publish `data` to its replyTo inbox.
   * @param {*} data any JSON value
   * @param {{headers?: object}} [options]
   * @throws {GreenbusError} this message is not a request, or as Client.publish
   */
  reply(data, { headers } = {}) {
    if (this.replyTo === null) {
      throw new GreenbusError(`the message on ${safeJSON(this.topic)} is not a request: it has no replyTo`);
    }
    this.#client.publish(this.replyTo, data, { headers });
  }
}

// -- the client -----------------------------------------------------------------

/**
 * @typedef {object} ConnectOptions
 * @property {string} [token] the hub's token (a shared secret or an ACL user's)
 * @property {string} [name] a name for the hub's logs and statistics (default `js-<random>`)
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (default: the global one;
 *   pass `ws`'s on Node < 22)
 * @property {boolean} [reconnect=true] reconnect after the connection ends
 * @property {number} [reconnectDelay=100] ms before the first retry; doubles per failed attempt
 * @property {number} [maxReconnectDelay=5000] ms, the cap of the delay
 * @property {number} [maxBuffer=1000] unconfirmed publishes kept while disconnected (the oldest
 *   are dropped)
 * @property {number} [maxMessageSize=1048576] bytes; larger publishes throw MessageTooBigError
 * @property {number} [requestTimeout=5000] ms, the default timeout of request() and ping()
 * @property {(info: OpenInfo) => void} [onopen]
 * @property {(info: CloseInfo) => void} [onclose]
 * @property {(error: GreenbusError) => void} [onerror]
 */

/**
 * @typedef {object} OpenInfo
 * @property {string} server the hub's name
 * @property {string} peer the id the hub gave this connection (`p1`, ...)
 * @property {number} reconnects how many times the client has reconnected so far
 */

/**
 * @typedef {object} CloseInfo
 * @property {number} code the WebSocket close code (1006: no close frame, or no connection)
 * @property {string} reason the close reason
 * @property {boolean} wasOpen whether the hub had welcomed this connection
 * @property {number|null} reconnectIn ms until the next attempt; null: the client is closed
 * @property {HubError|null} error the fatal error that closed the client, if any (a HubError
 *   `unauthorized` or `unsupported_protocol`)
 */

/**
 * A connection to a greenbus hub that survives reconnections.  Make one with connect().
 *
 * Callbacks (also settable as options): `onopen(OpenInfo)` after every
 * welcome; `onclose(CloseInfo)` whenever a connection ends or an attempt
 * fails; `onerror(GreenbusError)` for the hub's error frames (HubError),
 * invalid frames (RemoteProtocolError), failing handlers (HandlerError) and
 * subscriptions resumed with a gap (RecoveryFailedError).  Errors nobody
 * handles go to console.error, as the DOM does with listeners (a
 * RecoveryFailedError has its console.warn line either way).
 */
export class Client {
  /** @type {((info: OpenInfo) => void) | null} */
  onopen = null;
  /** @type {((info: CloseInfo) => void) | null} */
  onclose = null;
  /** @type {((error: GreenbusError) => void) | null} */
  onerror = null;

  #WebSocket;
  #token;
  #options;
  #state = State.CONNECTING;
  #socket = null;
  #socketWelcomed = false; // has the hub welcomed the current socket?
  #peer = null;
  #server = null;
  #attempt = 0;
  #timer = null;
  #fatal = null;
  // sid -> {pattern, handler, pos, acked, asked}: `pos` is where the
  // subscription stands (the last msg's pos, or its ack's), `acked` whether a
  // hub has acknowledged it before (the next sub is a resume), `asked` the
  // `since` of the sub in flight on this connection.
  #subs = new Map();
  #nextSid = 1;
  #handles = new WeakMap(); // the function subscribe() returned -> sid, for position()
  // This client's publisher session (docs/protocol.md, "Publisher sessions").
  #session = randomHex(16);
  #lastNumber = 0; // the number of the last pub: 1, 2, 3, ... for the session's life
  // Every pub the hub has not acknowledged, by number, oldest first (numbers
  // only grow, so insertion order is number order): {text, sent}, `sent` once
  // a socket has had it.  All go again on each new connection.
  #unconfirmed = new Map();
  #pubRequests = new Map(); // pub number -> cancel(error) of the request waiting for it
  #droppedWarned = false; // one console.warn per outage for maxBuffer drops
  #pings = new Map(); // id -> {resolve, reject, timer, sent, started}
  #pingSeq = 0;
  #requests = new Set(); // cancel(error) of every pending request
  #closed = null; // {promise, resolve} once close() was called
  #stats = {
    reconnects: 0,
    sent: 0,
    received: 0,
    resent: 0,
    dropped: 0,
    withdrawn: 0,
    hubErrors: 0,
    recovered: 0,
    recoveriesFailed: 0,
  };

  /**
   * @param {string} url `ws://host:port/` or `wss://...`
   * @param {ConnectOptions} [options]
   */
  constructor(url, options = {}) {
    const parsed = new URL(url);
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
      throw new TypeError(`a hub URL starts with ws:// or wss://, not ${safeJSON(url)}`);
    }
    const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketClass !== "function") {
      throw new TypeError(
        "no WebSocket class: this runtime has no global WebSocket (Node < 22); " +
          'pass one: connect(url, { WebSocket }) with `import WebSocket from "ws"`',
      );
    }
    const opts = { ...DEFAULTS, reconnect: true };
    for (const key of Object.keys(DEFAULTS)) {
      if (options[key] === undefined) continue;
      const value = options[key];
      if (typeof value !== "number" || !(value > 0) || (key === "maxBuffer" && !Number.isInteger(value))) {
        throw new RangeError(
          `${key} must be a positive ${key === "maxBuffer" ? "integer" : "number"}, not ${safeJSON(value)}`,
        );
      }
      opts[key] = value;
    }
    if (opts.maxReconnectDelay < opts.reconnectDelay) {
      throw new RangeError(
        `maxReconnectDelay (${opts.maxReconnectDelay}) is less than reconnectDelay (${opts.reconnectDelay})`,
      );
    }
    if (options.reconnect !== undefined) opts.reconnect = Boolean(options.reconnect);
    if (options.token != null && typeof options.token !== "string")
      throw new TypeError("token must be a string");
    if (options.name != null && typeof options.name !== "string")
      throw new TypeError("name must be a string");

    /** The hub's URL. */
    this.url = parsed.href;
    /** This client's name, as the hub's logs and statistics show it. */
    this.name = options.name ?? `js-${randomHex(4)}`;
    this.onopen = options.onopen ?? null;
    this.onclose = options.onclose ?? null;
    this.onerror = options.onerror ?? null;
    this.#WebSocket = WebSocketClass;
    this.#token = options.token ?? null;
    this.#options = Object.freeze(opts);
    this.#open();
  }

  /** The current State. */
  get state() {
    return this.#state;
  }

  /** The id the hub gave the current connection (`p1`, ...), or null before the first welcome. */
  get peer() {
    return this.#peer;
  }

  /** The hub's name from its welcome, or null before the first one. */
  get server() {
    return this.#server;
  }

  /**
   * This client's publisher session: 32 random hex digits, the same for the
   * client's whole life (across reconnects), sent in every `hello`.
   */
  get session() {
    return this.#session;
  }

  toString() {
    const counts = `subscriptions=${this.#subs.size} unconfirmed=${this.#unconfirmed.size}`;
    return `[greenbus Client ${this.name} ${this.url} ${this.#state} ${counts}]`;
  }

  /**
   * A snapshot of the counters.
   * @returns {{state: string, reconnects: number, sent: number, received: number,
   *   unconfirmed: number, resent: number, dropped: number, withdrawn: number,
   *   hubErrors: number, recovered: number, recoveriesFailed: number,
   *   subscriptions: number}}
   *   `sent` counts frames written, resends included; `received` msg frames.
   *   `unconfirmed` counts publishes the hub has not acknowledged yet: in
   *   flight, or waiting for a connection; each new connection sends them all
   *   again.  `resent` counts those sent again because a connection that had
   *   them ended before the hub acknowledged them (the hub drops those it had
   *   applied).  `dropped` counts publishes dropped, never sent, because
   *   maxBuffer unconfirmed ones waited while disconnected.  `withdrawn` counts
   *   requests that ended unanswered while their publish had not been sent:
   *   it was taken back and never sent (the caller got its
   *   RequestTimeoutError), so it is neither `dropped` nor `sent`.
   *   `recovered` counts subscriptions resumed after a cut with every missed
   *   message replayed; `recoveriesFailed` those resumed with a gap (each told
   *   to onerror as a RecoveryFailedError).  close() discards what is
   *   unconfirmed without counting it.
   */
  statistics() {
    return Object.freeze({
      state: this.#state,
      ...this.#stats,
      unconfirmed: this.#unconfirmed.size,
      subscriptions: this.#subs.size,
    });
  }

  /**
   * The position a subscription has reached: the `pos` of the last message it
   * received, or where the hub said it started; null before that (and once it
   * is unsubscribed, or with a hub that keeps no history).  Opaque text: pass
   * it to subscribe() as `since` to resume from there later, in another client
   * even (docs/recovery.md).
   * @param {() => void} subscription the function subscribe() returned
   * @returns {string|null}
   */
  position(subscription) {
    const sid = this.#handles.get(subscription);
    return (sid === undefined ? undefined : this.#subs.get(sid)?.pos) ?? null;
  }

  // -- publishing -------------------------------------------------------------

  /**
   * Publish `data` on `topic`.  Never waits: while disconnected the frame
   * waits (see maxBuffer) and goes out after the next welcome.  Until the hub
   * acknowledges it, it is sent again on each new connection, and the hub
   * applies it once (statistics().unconfirmed).
   * @param {string} topic a concrete topic (no wildcards)
   * @param {*} [data] any JSON value; undefined is sent as null
   * @param {{headers?: object, replyTo?: string}} [options] headers: an object
   *   of JSON values; replyTo: an inbox topic for a reply (request() does this for you)
   * @throws {InvalidTopicError} a bad topic or replyTo (a lone surrogate in it included)
   * @throws {LocalProtocolError} data or headers the protocol cannot carry: NaN or
   *   Infinity, a lone UTF-16 surrogate in a string or key, a BigInt, a cycle
   * @throws {TypeError} headers that are not an object
   * @throws {MessageTooBigError} the frame exceeds maxMessageSize
   * @throws {ClosedError} the client is closed
   */
  publish(topic, data, { headers, replyTo } = {}) {
    this.#checkNotClosed();
    const [number, text] = this.#encodePub(topic, data, headers, replyTo);
    this.#sendPub(number, text);
  }

  /**
   * The pub frame, numbered as the session's next pub (its `id`).
   * @returns {[number, string]} its number and its text
   */
  #encodePub(topic, data, headers, replyTo) {
    validateTopic(topic);
    const frame = { op: "pub", topic };
    if (data !== undefined) frame.data = data;
    if (headers != null) {
      if (typeof headers !== "object" || Array.isArray(headers)) {
        throw new TypeError(`headers must be an object, not ${safeJSON(headers)}`);
      }
      if (Object.keys(headers).length > 0) frame.headers = headers;
    }
    if (replyTo != null) frame.reply_to = validateTopic(replyTo);
    // The number is taken only once the frame is known to be good: a refused
    // publish leaves no hole (the hub would not mind one, though).
    const number = this.#lastNumber + 1;
    frame.id = number;
    const text = encodeFrame(frame);
    const limit = this.#options.maxMessageSize;
    if (text.length * 3 > limit) {
      const size = utf8Length(text);
      if (size > limit) throw new MessageTooBigError(size, limit);
    }
    this.#lastNumber = number;
    return [number, text];
  }

  /**
   * Keep pub `number` until the hub acknowledges it, and write it now if the
   * client is open; while disconnected, at most maxBuffer wait.
   * @param {number} number
   * @param {string} text
   */
  #sendPub(number, text) {
    const entry = { text, sent: false };
    this.#unconfirmed.set(number, entry);
    if (this.#isOpen()) {
      this.#write(text);
      entry.sent = true;
    } else {
      this.#trim();
    }
  }

  /**
   * While disconnected: drop the oldest unconfirmed pubs past maxBuffer,
   * counted in `dropped`, with one console.warn per outage.
   */
  #trim() {
    const limit = this.#options.maxBuffer;
    const unconfirmed = this.#unconfirmed;
    let dropped = 0;
    for (const number of unconfirmed.keys()) {
      if (unconfirmed.size <= limit) break;
      unconfirmed.delete(number);
      dropped += 1;
    }
    if (dropped === 0) return;
    this.#stats.dropped += dropped;
    if (!this.#droppedWarned) {
      this.#droppedWarned = true;
      console.warn(
        `greenbus.js ${this.name}: disconnected with ${limit} unconfirmed message(s) waiting ` +
          `(maxBuffer); dropping the oldest (${this.#stats.dropped} dropped so far)`,
      );
    }
  }

  /**
   * A request gave up on its pub: it must never go out again.  Counted in
   * `withdrawn` if no socket ever had it.
   * @param {number} number
   */
  #withdraw(number) {
    const entry = this.#unconfirmed.get(number);
    if (entry === undefined) return; // confirmed, refused, dropped or discarded already
    this.#unconfirmed.delete(number);
    if (!entry.sent) this.#stats.withdrawn += 1;
    // Otherwise a connection had it: it may have reached the hub, and subscribers.
  }

  // -- subscribing ------------------------------------------------------------

  /**
   * Subscribe to `pattern` on the hub.  After a cut the subscription resumes
   * by itself from the last message it received: the hub replays what it
   * missed, or onerror gets a RecoveryFailedError.
   * @param {string} pattern a topic, or a pattern with `*` (one token) and a last `>` (the rest)
   * @param {(message: Message) => (void|Promise<void>)} handler called once per
   *   matching message, in order; what it throws goes to onerror as a HandlerError
   * @param {{since?: string}} [options] since: a position kept from position()
   *   (by this client or another): the hub first delivers what was published
   *   after it, or, if its history cannot, onerror gets a RecoveryFailedError
   * @returns {() => void} unsubscribe (idempotent); also the subscription's
   *   handle for position()
   * @throws {InvalidTopicError} a bad pattern
   * @throws {TypeError} a handler that is no function, a `since` that is no position
   * @throws {ClosedError} the client is closed
   */
  subscribe(pattern, handler, { since } = {}) {
    this.#checkNotClosed();
    validatePattern(pattern);
    if (typeof handler !== "function") throw new TypeError("handler must be a function taking a Message");
    if (since != null && (typeof since !== "string" || !POSITION.test(since))) {
      throw new TypeError(`since must be a position (from client.position()), not ${safeJSON(since)}`);
    }
    const sid = this.#nextSid++;
    // A kept position makes the first sub a resume, judged as any other.
    const resume = since != null;
    this.#subs.set(sid, { pattern, handler, pos: resume ? since : null, acked: resume, asked: null });
    if (this.#isOpen()) this.#sendSub(sid);
    const unsubscribe = () => {
      if (this.#subs.delete(sid) && this.#isOpen()) this.#write(JSON.stringify({ op: "unsub", sid }));
    };
    this.#handles.set(unsubscribe, sid);
    return unsubscribe;
  }

  /**
   * Publish a request and wait for the first reply.  The reply comes to a
   * private inbox, `_INBOX.<128 random bits in hex>` (new for every request), subscribed exactly
   * (wildcard subscriptions never see inboxes).
   *
   * A request that ends unanswered (a timeout, close()) takes its publish
   * back: it is never sent again after a cut, so no responder acts on it
   * later (counted in statistics().withdrawn if it had not been sent at all).
   * A reply in flight when the connection drops is lost: the request times out.
   * @param {string} topic
   * @param {*} [data]
   * @param {{timeout?: number, headers?: object}} [options] timeout in ms (default 5000)
   * @returns {Promise<Message>} the reply
   * @throws {RequestTimeoutError} (rejects) no reply within the timeout
   * @throws {HubError} (rejects) the hub refused the request's publish (e.g. `forbidden`)
   * @throws {ClosedError} (rejects) the client was closed meanwhile
   * @throws {InvalidTopicError|LocalProtocolError|TypeError|MessageTooBigError}
   *   (rejects) as publish(); nothing is sent
   * @throws {RangeError} (rejects) a timeout that is not a positive number
   */
  request(topic, data, { timeout = this.#options.requestTimeout, headers } = {}) {
    return new Promise((resolve, reject) => {
      if (typeof timeout !== "number" || !(timeout > 0)) {
        throw new RangeError(`timeout must be a positive number of ms, not ${safeJSON(timeout)}`);
      }
      this.#checkNotClosed();
      // A fresh random inbox per request: a responder that saw one reply_to
      // cannot guess the next one (exact inbox subscriptions are open to all).
      const inbox = `${INBOX_PREFIX}${randomHex(16)}`;
      // Encoded first: a bad request is refused before anything is sent.
      const [number, text] = this.#encodePub(topic, data, headers, inbox);
      let timer = null;
      // Every way a request ends comes through here.
      const settle = () => {
        clearTimeout(timer);
        unsubscribe();
        this.#requests.delete(cancel);
        this.#pubRequests.delete(number);
      };
      const cancel = (error) => {
        settle();
        // Unanswered: its pub must never go out after its caller gave up.
        this.#withdraw(number);
        reject(error);
      };
      const unsubscribe = this.subscribe(inbox, (message) => {
        settle();
        resolve(message);
      });
      this.#requests.add(cancel);
      this.#pubRequests.set(number, cancel);
      timer = setTimeout(() => cancel(new RequestTimeoutError(topic, timeout)), timeout);
      this.#sendPub(number, text);
    });
  }

  /**
   * Ask the hub for a pong.  It comes after everything sent before it has
   * been applied, so once it resolves, earlier subscriptions are in place.
   * While disconnected, the ping waits for the next connection.
   * @param {{timeout?: number}} [options] ms (default 5000)
   * @returns {Promise<number>} the round trip in ms
   * @throws {RequestTimeoutError} (rejects) no pong in time
   * @throws {ConnectionLostError} (rejects) the connection ended before the pong
   * @throws {ClosedError} (rejects) the client is or was closed
   */
  ping({ timeout = this.#options.requestTimeout } = {}) {
    return new Promise((resolve, reject) => {
      this.#checkNotClosed();
      const id = `ping-${++this.#pingSeq}`;
      const entry = { resolve, reject, sent: false, started: performance.now() };
      entry.timer = setTimeout(() => {
        this.#pings.delete(id);
        reject(new RequestTimeoutError("(ping)", timeout));
      }, timeout);
      this.#pings.set(id, entry);
      if (this.#isOpen()) this.#sendPing(id, entry);
    });
  }

  // -- closing ----------------------------------------------------------------

  /**
   * Close the connection and stop reconnecting.  Pending requests and pings
   * reject with ClosedError; publishes the hub has not acknowledged are
   * forgotten (those already written to the socket still go out before the
   * close frame; those waiting for a connection never do).  Idempotent.
   * @returns {Promise<void>} resolves once the socket is closed
   */
  close() {
    if (this.#closed !== null) return this.#closed.promise;
    if (this.#state === State.CLOSED) {
      // Already closed for good (the hub refused it): nothing left to close.
      this.#closed = { promise: Promise.resolve(), resolve() {} };
      return this.#closed.promise;
    }
    let resolve;
    const promise = new Promise((r) => (resolve = r));
    this.#closed = { promise, resolve };
    const socket = this.#socket;
    this.#finish(new ClosedError("the client was closed"));
    if (socket !== null) {
      socket.close(1000, "client closing");
      this.#expectClose(socket);
    } else {
      queueMicrotask(() => this.#ended(1000, "client closing", false));
    }
    return promise;
  }

  // -- internals --------------------------------------------------------------

  #setState(next) {
    if (!TRANSITIONS[this.#state].includes(next)) {
      throw new Error(`greenbus.js bug: no transition from ${this.#state} to ${next}`);
    }
    this.#state = next;
  }

  #checkNotClosed() {
    if (this.#state === State.CLOSED) {
      throw new ClosedError(
        this.#fatal ? `the client is closed: ${this.#fatal.message}` : "the client is closed",
        {
          cause: this.#fatal ?? undefined,
        },
      );
    }
  }

  #isOpen() {
    return this.#state === State.OPEN && this.#socket !== null && this.#socket.readyState === SOCKET_OPEN;
  }

  #write(text) {
    this.#socket.send(text);
    this.#stats.sent += 1;
  }

  #sendSub(sid) {
    // The id lets a refusal (forbidden, limit) name the pattern, and the ack
    // say where the subscription starts.  A subscription a hub has answered
    // before resumes from its position (never one on `$` topics or inboxes).
    const sub = this.#subs.get(sid);
    const since = isKept(sub.pattern) ? sub.pos : null;
    sub.asked = since;
    const frame = { op: "sub", sid, topic: sub.pattern, id: `sub-${sid}` };
    if (since !== null) frame.since = since;
    this.#write(JSON.stringify(frame));
  }

  #sendPing(id, entry) {
    entry.sent = true;
    this.#write(JSON.stringify({ op: "ping", id }));
  }

  #open() {
    const socket = new this.#WebSocket(this.url);
    this.#socket = socket;
    this.#socketWelcomed = false;
    socket.onopen = () => {
      // The session makes the pubs this client sends again after a cut harmless.
      const hello = {
        op: "hello",
        protocol: PROTOCOL,
        name: this.name,
        session: this.#session,
        id: "hello",
      };
      if (this.#token !== null) hello.token = this.#token;
      socket.send(JSON.stringify(hello));
      this.#stats.sent += 1;
    };
    socket.onmessage = (event) => {
      if (socket === this.#socket) this.#receive(event.data);
    };
    socket.onclose = (event) => this.#socketClosed(socket, event.code, event.reason);
    // The close event that follows an error says all there is to say.
    socket.onerror = () => this.#expectClose(socket);
  }

  #socketClosed(socket, code, reason) {
    if (socket !== this.#socket) return; // already handled
    this.#socket = null;
    this.#disconnected(code, reason);
  }

  #expectClose(socket) {
    setTimeout(() => this.#socketClosed(socket, 1006, ""), CLOSE_GRACE_MS);
  }

  #receive(text) {
    if (typeof text !== "string") {
      this.#report(new RemoteProtocolError("a binary message", ""));
      return;
    }
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      this.#report(new RemoteProtocolError(`not JSON (${error.message})`, text));
      return;
    }
    if (frame === null || typeof frame !== "object" || Array.isArray(frame) || typeof frame.op !== "string") {
      this.#report(new RemoteProtocolError("not an object with a string op", text));
      return;
    }
    switch (frame.op) {
      case "msg":
        this.#dispatch(frame);
        break;
      case "welcome":
        this.#welcomed(frame);
        break;
      case "pong":
        this.#ponged(frame);
        break;
      case "error":
        this.#hubError(frame);
        break;
      case "ack":
        this.#acked(frame);
        break;
      default:
        this.#report(new RemoteProtocolError(`unknown op ${safeJSON(frame.op)}`, text));
    }
  }

  #welcomed(frame) {
    if (this.#state !== State.CONNECTING) return; // a repeated welcome changes nothing
    this.#setState(State.OPEN);
    this.#socketWelcomed = true;
    this.#peer = frame.peer;
    this.#server = frame.server;
    this.#attempt = 0;
    this.#droppedWarned = false;
    // In this order: the hub applies one connection's frames in order, so a
    // waiting request finds its inbox subscribed, and a ping comes back
    // after everything before it.  Every pub the hub has not acknowledged
    // goes again, oldest first: the hub drops those it had applied.
    for (const sid of this.#subs.keys()) this.#sendSub(sid);
    for (const entry of this.#unconfirmed.values()) {
      if (entry.sent) this.#stats.resent += 1;
      this.#write(entry.text);
      entry.sent = true;
    }
    for (const [id, entry] of this.#pings) if (!entry.sent) this.#sendPing(id, entry);
    this.#call("onopen", { server: frame.server, peer: frame.peer, reconnects: this.#stats.reconnects });
  }

  #dispatch(frame) {
    this.#stats.received += 1;
    const sub = this.#subs.get(frame.sid);
    if (sub === undefined) return; // unsubscribed while it was in flight
    if (typeof frame.pos === "string") sub.pos = frame.pos;
    const fail = (error) => this.#report(new HandlerError(error, sub.pattern, frame.topic));
    try {
      const result = sub.handler(new Message(this, frame));
      if (result !== null && typeof result === "object" && typeof result.then === "function") {
        result.then(undefined, fail);
      }
    } catch (error) {
      fail(error);
    }
  }

  #ponged(frame) {
    const entry = this.#pings.get(frame.id);
    if (entry === undefined) return;
    this.#pings.delete(frame.id);
    clearTimeout(entry.timer);
    entry.resolve(performance.now() - entry.started);
  }

  #acked(frame) {
    if (Number.isInteger(frame.id)) {
      this.#confirmed(frame.id);
      return;
    }
    const match = typeof frame.id === "string" ? /^sub-(\d+)$/.exec(frame.id) : null;
    if (match !== null) this.#subscribed(Number(match[1]), frame);
  }

  // A cumulative ack: the hub applied every pub of the session up to `upto`.
  #confirmed(upto) {
    for (const number of this.#unconfirmed.keys()) {
      if (number > upto) break;
      this.#unconfirmed.delete(number);
    }
  }

  // The hub's answer to a sub: where the subscription starts and, for a
  // resumed one, whether what it missed follows (as Python's Positions.acked).
  #subscribed(sid, frame) {
    const sub = this.#subs.get(sid);
    if (sub === undefined) return; // unsubscribed meanwhile
    const since = sub.asked;
    sub.asked = null;
    const resumed = sub.acked;
    sub.acked = true;
    if (frame.recovered === true) {
      // Not the ack's position: the replay follows the ack, and a cut before
      // it ends must resume from the last message received.
      this.#stats.recovered += 1;
      return;
    }
    if (typeof frame.pos === "string") sub.pos = frame.pos;
    if (!resumed || !isKept(sub.pattern)) return;
    let reason;
    if (since === null) reason = "no position to resume from: the hub kept no history";
    else if (frame.recovered === false) {
      reason = "the hub's history does not cover the gap (too old, trimmed, or another epoch)";
    } else reason = "the hub keeps no history";
    const failure = new RecoveryFailedError(sub.pattern, since, reason);
    this.#stats.recoveriesFailed += 1;
    console.warn(`greenbus.js ${this.name}: ${failure.message}`);
    // Warned already: onerror if there is one, never console.error as well.
    if (typeof this.onerror === "function") this.#call("onerror", failure);
  }

  #hubError(frame) {
    this.#stats.hubErrors += 1;
    let pattern = null;
    let request = null;
    if (Number.isInteger(frame.id)) {
      // A refused pub: never sent again; a request waiting for it rejects.
      this.#unconfirmed.delete(frame.id);
      request = this.#pubRequests.get(frame.id) ?? null;
    } else {
      const match = typeof frame.id === "string" ? /^sub-(\d+)$/.exec(frame.id) : null;
      if (match !== null) {
        // A refused subscription is dropped, so it is not sent again on reconnect.
        const sid = Number(match[1]);
        pattern = this.#subs.get(sid)?.pattern ?? null;
        this.#subs.delete(sid);
      }
    }
    const error = new HubError(frame, pattern);
    if (error.fatal) {
      this.#fatal = error;
      // The hub closes after `unauthorized`; after a refused protocol it keeps
      // the connection open: end it, and the client with it (#disconnected).
      const socket = this.#socket;
      if (error.code !== "unauthorized" && socket !== null) {
        socket.close(1000, "refused");
        this.#expectClose(socket);
      }
    }
    request?.(error);
    this.#report(error);
  }

  #disconnected(code, reason) {
    const wasOpen = this.#socketWelcomed;
    this.#socketWelcomed = false;
    for (const [id, entry] of this.#pings) {
      if (!entry.sent) continue;
      this.#pings.delete(id);
      clearTimeout(entry.timer);
      entry.reject(new ConnectionLostError(`the connection ended (code ${code}) before the pong`));
    }
    if (this.#state === State.CLOSED) {
      this.#ended(code, reason, wasOpen);
      return;
    }
    if (this.#fatal !== null || !this.#options.reconnect) {
      const cause = this.#fatal ?? undefined;
      const why = cause ? `the client is closed: ${cause.message}` : `the connection ended (code ${code})`;
      this.#finish(new ClosedError(why, { cause }));
      this.#ended(code, reason, wasOpen);
      return;
    }
    if (wasOpen) this.#stats.reconnects += 1;
    // Written or not, every pub the hub did not acknowledge stays, and goes
    // again on the next connection: at most maxBuffer wait meanwhile.
    this.#trim();
    this.#setState(State.RECONNECTING);
    const { reconnectDelay, maxReconnectDelay } = this.#options;
    const cap = Math.min(maxReconnectDelay, reconnectDelay * 2 ** this.#attempt);
    // Jitter (half to all of the delay), so that many clients of a restarted
    // hub do not all come back in the same millisecond.
    const delay = Math.round(cap / 2 + (Math.random() * cap) / 2);
    this.#attempt += 1;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#setState(State.CONNECTING);
      try {
        this.#open();
      } catch (error) {
        // The runtime refused to open a socket at all (the URL was fine the
        // first time): report it and try again later, as for a failed attempt.
        this.#report(error);
        this.#socket = null;
        this.#disconnected(1006, String(error.message ?? error));
      }
    }, delay);
    this.#call("onclose", { code, reason, wasOpen, reconnectIn: delay, error: null });
  }

  // The client stops for good: state CLOSED, everything pending fails with `error`.
  #finish(error) {
    this.#setState(State.CLOSED);
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#subs.clear();
    // Discarded first, uncounted: a request that ends now withdraws nothing.
    this.#unconfirmed.clear();
    for (const cancel of [...this.#requests]) cancel(error);
    for (const entry of this.#pings.values()) {
      clearTimeout(entry.timer);
      entry.reject(error);
    }
    this.#pings.clear();
  }

  // The last onclose, and close()'s promise resolved.
  #ended(code, reason, wasOpen) {
    this.#call("onclose", { code, reason, wasOpen, reconnectIn: null, error: this.#fatal });
    this.#closed?.resolve();
  }

  #report(error) {
    if (typeof this.onerror === "function") {
      this.#call("onerror", error);
    } else {
      console.error(error);
    }
  }

  #call(name, arg) {
    const callback = this[name];
    if (typeof callback !== "function") return;
    try {
      callback.call(this, arg);
    } catch (error) {
      // A failing callback must not break the connection's bookkeeping.
      console.error(`greenbus.js: the ${name} callback threw:`, error);
    }
  }
}

/**
 * Connect to a hub.  Returns at once: the client connects in the background,
 * retries with backoff, and calls `onopen` once the hub has welcomed it.
 * @param {string} url `ws://host:port/` (or `wss://`)
 * @param {ConnectOptions} [options]
 * @returns {Client}
 * @throws {TypeError} a URL that is not ws:// or wss://, or no WebSocket class
 * @throws {RangeError} an out-of-range option
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}
