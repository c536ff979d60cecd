// greenbus.js: a client for greenbus hubs, speaking wire protocol v1
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
// subscribes again.  While it is not connected, publishes wait in a bounded
// buffer (the oldest are dropped first, and counted); a request that ends
// unanswered while its publish still waits there takes it back, so nobody
// acts on a request its caller gave up on.  Messages published while it was
// away are gone: the hub stores nothing (at most once).
//
// Errors, all under one root:
//
//     GreenbusError
//     ├── InvalidTopicError     a topic or pattern breaks the grammar (thrown at once)
//     ├── LocalProtocolError    a frame protocol v1 cannot carry: NaN, a lone surrogate,
//     │                         a BigInt, a cycle (thrown at once)
//     ├── MessageTooBigError    a frame over maxMessageSize (thrown at once)
//     ├── HubError              the hub refused a frame: code, reason, id
//     ├── RemoteProtocolError   the hub sent something that is not protocol v1
//     ├── HandlerError          a subscription handler threw: cause, pattern, topic
//     ├── RequestTimeoutError   no reply to a request in time: topic, timeout
//     ├── ConnectionLostError   the connection ended before the hub answered
//     └── ClosedError           the client is closed (close(), or a refused token)
//
// Who broke it: InvalidTopicError, LocalProtocolError, MessageTooBigError
// and ClosedError are the caller's; HubError is the hub refusing what we
// sent; RemoteProtocolError is the hub misbehaving.  Arguments of the wrong
// JS type (a handler that is no function, headers that are no object, a bad
// option) throw the builtin TypeError or RangeError.

/** The protocol version this client speaks. */
export const PROTOCOL = 1;

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
  /** Final: close() was called, the hub refused the token, or reconnect is off. */
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
 * A frame that protocol v1 cannot carry, refused before anything is sent (the
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

  /** True if the client stops for good after this error (a refused token). */
  get fatal() {
    return this.code === "unauthorized";
  }
}

/** The hub sent a frame that is not protocol v1 (a bug on its side). */
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

/** The client is closed: by close(), or for good after the hub refused its token. */
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
 * @property {number} [maxBuffer=1000] publishes kept while disconnected (the oldest are dropped)
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
 * @property {HubError|null} error the fatal error that closed the client, if any
 */

/**
 * A connection to a greenbus hub that survives reconnections.  Make one with connect().
 *
 * Callbacks (also settable as options): `onopen(OpenInfo)` after every
 * welcome; `onclose(CloseInfo)` whenever a connection ends or an attempt
 * fails; `onerror(GreenbusError)` for the hub's error frames (HubError),
 * invalid frames (RemoteProtocolError) and failing handlers (HandlerError).
 * Errors nobody handles go to console.error, as the DOM does with listeners.
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
  #subs = new Map(); // sid -> {pattern, handler}
  #nextSid = 1;
  // Pub frames waiting for a connection, oldest first: {text} entries, kept by
  // identity (two equal publishes are two entries) so that a request can take
  // back its own with #unbuffer().
  #buffer = new Set();
  #pings = new Map(); // id -> {resolve, reject, timer, sent, started}
  #pingSeq = 0;
  #requests = new Set(); // cancel(error) of every pending request
  #closed = null; // {promise, resolve} once close() was called
  #stats = { reconnects: 0, sent: 0, received: 0, dropped: 0, withdrawn: 0, hubErrors: 0 };

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

  toString() {
    const counts = `subscriptions=${this.#subs.size} buffered=${this.#buffer.size}`;
    return `[greenbus Client ${this.name} ${this.url} ${this.#state} ${counts}]`;
  }

  /**
   * A snapshot of the counters.
   * @returns {{state: string, reconnects: number, sent: number, received: number,
   *   buffered: number, dropped: number, withdrawn: number, hubErrors: number,
   *   subscriptions: number}}
   *   `sent` counts frames written, `received` msg frames, `buffered` publishes
   *   waiting for a connection.  `dropped` counts publishes lost from a full
   *   buffer while disconnected: losses nobody was told of.  `withdrawn` counts
   *   requests that timed out while their publish still waited in the buffer:
   *   it was taken out and never sent (the caller got its RequestTimeoutError),
   *   so it is neither `dropped` nor `sent`.  close() discards the buffer
   *   without counting it in either.
   */
  statistics() {
    return Object.freeze({
      state: this.#state,
      ...this.#stats,
      buffered: this.#buffer.size,
      subscriptions: this.#subs.size,
    });
  }

  // -- publishing -------------------------------------------------------------

  /**
   * Publish `data` on `topic`.  Never waits: while disconnected the frame is
   * buffered (see maxBuffer) and sent after the next welcome.
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
    this.#sendPub(this.#encodePub(topic, data, headers, replyTo));
  }

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
    const text = encodeFrame(frame);
    const limit = this.#options.maxMessageSize;
    if (text.length * 3 > limit) {
      const size = utf8Length(text);
      if (size > limit) throw new MessageTooBigError(size, limit);
    }
    return text;
  }

  /**
   * Write a pub frame now, or buffer it until the next welcome (dropping the
   * oldest past maxBuffer, counted in `dropped`).
   * @param {string} text
   * @returns {{text: string}|null} the buffer entry, for #unbuffer(); null if written
   */
  #sendPub(text) {
    if (this.#isOpen()) {
      this.#write(text);
      return null;
    }
    if (this.#buffer.size >= this.#options.maxBuffer) {
      const [oldest] = this.#buffer;
      this.#buffer.delete(oldest);
      this.#stats.dropped += 1;
    }
    const entry = { text };
    this.#buffer.add(entry);
    return entry;
  }

  /**
   * Take a buffered pub back before it is sent.
   * @param {{text: string}|null} entry what #sendPub() returned
   * @returns {boolean} whether it was still waiting (false: sent, dropped or discarded)
   */
  #unbuffer(entry) {
    return entry !== null && this.#buffer.delete(entry);
  }

  // -- subscribing ------------------------------------------------------------

  /**
   * Subscribe to `pattern` on the hub (again after every reconnect).
   * @param {string} pattern a topic, or a pattern with `*` (one token) and a last `>` (the rest)
   * @param {(message: Message) => (void|Promise<void>)} handler called once per
   *   matching message, in order; what it throws goes to onerror as a HandlerError
   * @returns {() => void} unsubscribe (idempotent)
   * @throws {InvalidTopicError} a bad pattern
   * @throws {ClosedError} the client is closed
   */
  subscribe(pattern, handler) {
    this.#checkNotClosed();
    validatePattern(pattern);
    if (typeof handler !== "function") throw new TypeError("handler must be a function taking a Message");
    const sid = this.#nextSid++;
    this.#subs.set(sid, { pattern, handler });
    if (this.#isOpen()) this.#sendSub(sid, pattern);
    return () => {
      if (this.#subs.delete(sid) && this.#isOpen()) this.#write(JSON.stringify({ op: "unsub", sid }));
    };
  }

  /**
   * Publish a request and wait for the first reply.  The reply comes to a
   * private inbox, `_INBOX.<128 random bits in hex>` (new for every request), subscribed exactly
   * (wildcard subscriptions never see inboxes).
   *
   * A request that times out while disconnected takes its publish back out of
   * the buffer (counted in statistics().withdrawn), and close() discards the
   * buffer: a request is never sent after its caller gave up, so no responder
   * acts on it.
   * @param {string} topic
   * @param {*} [data]
   * @param {{timeout?: number, headers?: object}} [options] timeout in ms (default 5000)
   * @returns {Promise<Message>} the reply
   * @throws {RequestTimeoutError} (rejects) no reply within the timeout
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
      const inbox = `_INBOX.${randomHex(16)}`;
      // Encoded first: a bad request is refused before anything is sent.
      const text = this.#encodePub(topic, data, headers, inbox);
      let timer = null;
      let buffered = null; // the pub's buffer entry while disconnected
      // Every way a request ends comes through here.  A pub still buffered
      // must never go out after its caller gave up: in practice only a
      // timeout finds it there (close() has emptied the buffer already, and
      // no reply can come before the pub was sent).
      const settle = () => {
        clearTimeout(timer);
        unsubscribe();
        this.#requests.delete(cancel);
        if (this.#unbuffer(buffered)) this.#stats.withdrawn += 1;
      };
      const cancel = (error) => {
        settle();
        reject(error);
      };
      const unsubscribe = this.subscribe(inbox, (message) => {
        settle();
        resolve(message);
      });
      this.#requests.add(cancel);
      timer = setTimeout(() => cancel(new RequestTimeoutError(topic, timeout)), timeout);
      buffered = this.#sendPub(text);
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
   * reject with ClosedError; buffered publishes are dropped.  Idempotent.
   * @returns {Promise<void>} resolves once the socket is closed
   */
  close() {
    if (this.#closed !== null) return this.#closed.promise;
    if (this.#state === State.CLOSED) {
      // Already closed for good (a refused token): nothing left to close.
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

  #sendSub(sid, pattern) {
    // The id lets a refusal (forbidden, limit) name the pattern.
    this.#write(JSON.stringify({ op: "sub", sid, topic: pattern, id: `sub-${sid}` }));
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
      const hello = { op: "hello", protocol: PROTOCOL, name: this.name, id: "hello" };
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
        break; // of a sub: nothing waits for it
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
    // In this order: the hub applies one connection's frames in order, so a
    // buffered request finds its inbox subscribed, and a ping comes back
    // after everything before it.
    for (const [sid, { pattern }] of this.#subs) this.#sendSub(sid, pattern);
    const buffered = [...this.#buffer];
    this.#buffer.clear();
    for (const { text } of buffered) this.#write(text);
    for (const [id, entry] of this.#pings) if (!entry.sent) this.#sendPing(id, entry);
    this.#call("onopen", { server: frame.server, peer: frame.peer, reconnects: this.#stats.reconnects });
  }

  #dispatch(frame) {
    this.#stats.received += 1;
    const sub = this.#subs.get(frame.sid);
    if (sub === undefined) return; // unsubscribed while it was in flight
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

  #hubError(frame) {
    this.#stats.hubErrors += 1;
    let pattern = null;
    const match = /^sub-(\d+)$/.exec(String(frame.id ?? ""));
    if (match !== null) {
      // A refused subscription is dropped, so it is not sent again on reconnect.
      const sid = Number(match[1]);
      pattern = this.#subs.get(sid)?.pattern ?? null;
      this.#subs.delete(sid);
    }
    const error = new HubError(frame, pattern);
    if (error.fatal) this.#fatal = error;
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
    this.#buffer.clear();
    this.#subs.clear();
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
