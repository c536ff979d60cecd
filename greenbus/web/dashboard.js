// The hub's live dashboard: a page of greenbus.js over the hub's own WebSocket.
//
// It subscribes to $greenbus.stats (one document a second, see
// HubServer.stats_document) and renders totals, peers and topic rates; the
// console subscribes to patterns and publishes JSON.  Everything a peer can
// name (topics, names, payloads) is shown with textContent, never as HTML.

import { HubError, InvalidTopicError, State, connect, validatePattern } from "./greenbus.js";

const STATS_TOPIC = "$greenbus.stats";
/** Messages kept in the console list (the oldest go first). */
const MAX_MESSAGES = 500;
/** Peers shown in the table; the rest are counted below it. */
const MAX_PEER_ROWS = 200;
/** Subscriptions shown per peer; the rest are in the cell's tooltip. */
const MAX_SUB_CHIPS = 4;
/** Without a stats document for this long, the figures are marked stale. */
const STALE_AFTER_MS = 3500;

const $ = (id) => document.getElementById(id);
const numberFormat = new Intl.NumberFormat("en-US");
const rateFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

/** Make an element: el("td", {className: "num"}, "42", child, ...). */
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function formatUptime(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m > 0) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${s} s`;
}

function clock(date) {
  return date.toTimeString().slice(0, 8) + "." + String(date.getMilliseconds()).padStart(3, "0");
}

function compactJSON(value) {
  const text = JSON.stringify(value);
  return text.length > 400 ? `${text.slice(0, 400)}…` : text;
}

// -- the connection ------------------------------------------------------------------

let client = null;
/** Console subscriptions: pattern -> unsubscribe function of the current client (or null). */
const watches = new Map();

function defaultHubUrl() {
  const url = new URL(".", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function start() {
  if (client !== null) {
    // The old client's last words are not news.
    client.onopen = client.onclose = null;
    client.onerror = () => {};
    client.close();
  }
  resetStats();
  const token = $("token").value || undefined;
  setStatus(State.CONNECTING, "connecting…");
  $("connect-note").textContent = "";
  try {
    client = connect($("hub-url").value, { token, name: "dashboard" });
  } catch (error) {
    client = null;
    setStatus(State.CLOSED, "not connected");
    $("connect-note").textContent = error.message;
    return;
  }
  client.onopen = ({ peer }) => {
    openedAt = performance.now();
    setStatus(State.OPEN, `connected as ${peer}`);
    $("connect-note").textContent = "";
  };
  client.onclose = onClose;
  client.onerror = onError;
  client.subscribe(STATS_TOPIC, (msg) => renderStats(msg.data));
  for (const pattern of watches.keys()) watches.set(pattern, client.subscribe(pattern, showMessage));
}

function onClose({ code, reason, reconnectIn, error }) {
  if (reconnectIn !== null) {
    setStatus(State.RECONNECTING, `reconnecting in ${(reconnectIn / 1000).toFixed(1)} s`);
    $("connect-note").textContent =
      code === 1006 ? "the hub is unreachable" : `closed: ${code} ${reason}`.trim();
    return;
  }
  setStatus(State.CLOSED, "disconnected");
  if (error?.code === "unauthorized") {
    $("connect-note").textContent =
      "The hub wants a token (or refused this one): enter it and press Connect.";
    $("token").focus();
  }
}

function onError(error) {
  if (error instanceof HubError && error.code === "unauthorized") return; // onClose says it
  if (error instanceof HubError && error.pattern !== null) {
    // A refused subscription: the client dropped it.
    if (error.pattern === STATS_TOPIC) {
      showStatsNote(`No statistics for this token: ${error.reason}.`);
    } else {
      watches.delete(error.pattern);
      renderWatches();
      $("sub-error").textContent = `Subscription to ${error.pattern} refused: ${error.reason}`;
    }
    return;
  }
  showHubError(error);
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

// -- statistics ------------------------------------------------------------------------

let previous = null; // the last stats document, for rates
let lastStatsAt = 0;
let openedAt = 0;

function resetStats() {
  previous = null;
  lastStatsAt = 0;
  $("stats-note").hidden = true;
}

function showStatsNote(text) {
  const note = $("stats-note");
  note.textContent = text;
  note.hidden = false;
}

function renderStats(stats) {
  lastStatsAt = performance.now();
  $("stats-note").hidden = true;
  document.body.classList.remove("stale");
  // greenbus serve --workers N: the figures are every worker's (this page is on stats.worker).
  const workers = stats.workers > 1 ? ` · ${stats.workers} workers` : "";
  $("hub-info").textContent = `hub ${stats.server} · v${stats.version} · up ${formatUptime(stats.uptime_s)}${workers}`;
  renderTotals(stats);
  renderPeers(stats.peers, stats.worker);
  renderTopics(stats.topics);
  previous = stats;
}

function renderTotals(stats) {
  const t = stats.totals;
  const set = (key, value, sub) => {
    $(`total-${key}`).textContent = numberFormat.format(value);
    if (sub !== undefined) $(`total-${key}-sub`).textContent = sub;
  };
  const rate = (key) => {
    if (previous === null) return "";
    const dt = stats.uptime_s - previous.uptime_s;
    if (!(dt > 0)) return "";
    return `${rateFormat.format(Math.max(0, t[key] - previous.totals[key]) / dt)}/s`;
  };
  set("connections", t.connections, `${numberFormat.format(t.connections_total)} since start`);
  set("messages-in", t.messages_in, rate("messages_in"));
  set("messages-out", t.messages_out, rate("messages_out"));
  set("dropped", t.dropped);
  set("slow-consumers", t.slow_consumers);
  set("local-subscriptions", t.local_subscriptions);
  $("total-dropped").parentElement.classList.toggle("alert", t.dropped > 0);
  $("total-slow-consumers").parentElement.classList.toggle("alert", t.slow_consumers > 0);
}

function subscriptionsCell(subscriptions) {
  const cell = el("td", { className: "subs" });
  if (subscriptions.length === 0) {
    cell.append(el("span", { className: "muted" }, "none"));
    return cell;
  }
  cell.title = subscriptions.join("\n");
  for (const pattern of subscriptions.slice(0, MAX_SUB_CHIPS)) {
    cell.append(el("code", { className: "chip" }, pattern));
  }
  if (subscriptions.length > MAX_SUB_CHIPS) {
    cell.append(el("span", { className: "muted" }, ` +${subscriptions.length - MAX_SUB_CHIPS} more`));
  }
  return cell;
}

function renderPeers(peers, worker) {
  $("peer-count").textContent = numberFormat.format(peers.length);
  const rows = peers.slice(0, MAX_PEER_ROWS).map((p) => {
    // Peer ids are per worker: this page's is the one on its own worker.
    const self = client !== null && p.id === client.peer && p.worker === worker;
    const idCell = el("td", { className: "peer-id" }, el("code", {}, p.id));
    if (self) idCell.append(el("span", { className: "badge" }, "this page"));
    const num = (value, alert = false) =>
      el("td", { className: alert && value > 0 ? "num alert" : "num" }, numberFormat.format(value));
    return el(
      "tr",
      { className: self ? "self" : "" },
      idCell,
      el("td", { className: "name" }, p.name ?? el("span", { className: "muted" }, "anonymous")),
      el("td", { className: "address" }, p.address),
      subscriptionsCell(p.subscriptions),
      Object.assign(num(p.pending), { title: `${numberFormat.format(p.pending_bytes ?? 0)} bytes of messages queued` }),
      num(p.received),
      num(p.sent),
      num(p.dropped, true),
    );
  });
  if (rows.length === 0)
    rows.push(el("tr", { className: "empty" }, el("td", { colSpan: 8 }, "No peers connected")));
  $("peers").tBodies[0].replaceChildren(...rows);
  const hidden = peers.length - MAX_PEER_ROWS;
  $("peers-note").hidden = hidden <= 0;
  $("peers-note").textContent = hidden > 0 ? `${numberFormat.format(hidden)} more peers not shown` : "";
}

function renderTopics(topics) {
  const entries = Object.entries(topics);
  const max = Math.max(1, ...entries.map(([, rate]) => rate));
  const rows = entries.map(([topic, rate]) => {
    const bar = el("span", { className: "bar" });
    bar.style.width = `${Math.max(2, (rate / max) * 100)}%`;
    return el(
      "tr",
      { className: topic === "(other)" ? "other" : "" },
      el("td", { className: "topic" }, el("code", {}, topic)),
      el(
        "td",
        { className: "num" },
        el(
          "div",
          { className: "rate" },
          el("span", { className: "bar-track" }, bar),
          rateFormat.format(rate),
        ),
      ),
    );
  });
  if (rows.length === 0)
    rows.push(el("tr", { className: "empty" }, el("td", { colSpan: 2 }, "No traffic in the last second")));
  $("topics").tBodies[0].replaceChildren(...rows);
}

// No stats come from a hub run with --stats-interval 0, and none while the connection is down.
setInterval(() => {
  if (client === null || client.state !== State.OPEN) return;
  const silent = performance.now() - Math.max(lastStatsAt, openedAt);
  if (silent < STALE_AFTER_MS) return;
  if (lastStatsAt === 0) {
    showStatsNote(`No ${STATS_TOPIC} from this hub yet: is it running with --stats-interval 0?`);
  } else {
    document.body.classList.add("stale");
    showStatsNote(`No ${STATS_TOPIC} for ${Math.round(silent / 1000)} s: the figures are stale.`);
  }
}, 1000);

// -- the console: watch ------------------------------------------------------------------

function renderWatches() {
  const chips = [...watches.keys()].map((pattern) => {
    const remove = el(
      "button",
      { type: "button", className: "chip-remove", title: `Unsubscribe from ${pattern}` },
      "×",
    );
    remove.setAttribute("aria-label", `Unsubscribe from ${pattern}`);
    remove.addEventListener("click", () => {
      watches.get(pattern)?.();
      watches.delete(pattern);
      renderWatches();
    });
    return el("li", { className: "chip" }, el("code", {}, pattern), remove);
  });
  $("sub-list").replaceChildren(...chips);
}

function appendToConsole(item) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 24;
  list.append(item);
  while (list.childElementCount > MAX_MESSAGES) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
  $("message-count").textContent = `${numberFormat.format(list.childElementCount)} shown`;
}

function showMessage(msg) {
  if (msg.topic === STATS_TOPIC && $("hide-stats").checked) return;
  const headers =
    Object.keys(msg.headers).length > 0
      ? el("code", { className: "headers" }, compactJSON(msg.headers))
      : null;
  const request =
    msg.replyTo !== null
      ? el("span", { className: "badge", title: `reply to ${msg.replyTo}` }, "request")
      : null;
  appendToConsole(
    el(
      "li",
      { className: "message" },
      el("time", {}, clock(new Date())),
      el("code", { className: "topic" }, msg.topic),
      request,
      el("code", { className: "data" }, compactJSON(msg.data)),
      headers,
    ),
  );
}

function showHubError(error) {
  appendToConsole(
    el(
      "li",
      { className: "message hub-error" },
      el("time", {}, clock(new Date())),
      el("strong", {}, error.code ?? error.name),
      el("span", {}, error.reason ?? error.message),
    ),
  );
}

$("sub-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("sub-pattern");
  const pattern = input.value.trim();
  $("sub-error").textContent = "";
  try {
    validatePattern(pattern);
  } catch (error) {
    $("sub-error").textContent = `Invalid pattern: ${error.problem}.`;
    return;
  }
  if (watches.has(pattern)) {
    $("sub-error").textContent = `Already watching ${pattern}.`;
    return;
  }
  // Disconnected for good: kept, and subscribed by the next Connect.
  const connected = client !== null && client.state !== State.CLOSED;
  watches.set(pattern, connected ? client.subscribe(pattern, showMessage) : null);
  input.value = "";
  renderWatches();
});

$("clear").addEventListener("click", () => {
  $("messages").replaceChildren();
  $("message-count").textContent = "";
});

// -- the console: publish ------------------------------------------------------------------

function parseJSON(text, what) {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new SyntaxError(`${what} is not valid JSON: ${error.message}`);
  }
}

$("pub-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const error = $("pub-error");
  const status = $("pub-status");
  const dataInput = $("pub-data");
  const headersInput = $("pub-headers");
  error.textContent = "";
  status.textContent = "";
  dataInput.removeAttribute("aria-invalid");
  headersInput.removeAttribute("aria-invalid");
  const topic = $("pub-topic").value.trim();
  let data;
  let headers;
  try {
    data = dataInput.value.trim() === "" ? null : parseJSON(dataInput.value, "Data");
  } catch (e) {
    dataInput.setAttribute("aria-invalid", "true");
    error.textContent = e.message;
    return;
  }
  try {
    headers = headersInput.value.trim() === "" ? undefined : parseJSON(headersInput.value, "Headers");
    if (
      headers !== undefined &&
      (headers === null || typeof headers !== "object" || Array.isArray(headers))
    ) {
      throw new TypeError('Headers must be a JSON object, such as {"unit": "C"}.');
    }
  } catch (e) {
    headersInput.setAttribute("aria-invalid", "true");
    error.textContent = e.message;
    return;
  }
  if (client === null || client.state === State.CLOSED) {
    error.textContent = "Not connected: press Connect first.";
    return;
  }
  try {
    client.publish(topic, data, { headers });
  } catch (e) {
    error.textContent = e instanceof InvalidTopicError ? `Invalid topic: ${e.problem}.` : e.message;
    return;
  }
  status.textContent =
    client.state === State.OPEN ? `Published to ${topic}` : `Queued for ${topic} (sent when connected)`;
});

// -- start ------------------------------------------------------------------------------------

$("connect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});

$("hub-url").value = defaultHubUrl();
start();
