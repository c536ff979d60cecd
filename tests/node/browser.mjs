#!/usr/bin/env node
// Drives a headless Chromium for tests/test_browser.py, with playwright-core
// and the system's browser (/usr/bin/chromium: Playwright never downloads one).
//
// Usage: node browser.mjs [--executable PATH] [--timeout MS]
//
// It prints {"ready": true, "version"} once the browser runs, then reads one
// JSON command per line on stdin and answers each with one JSON line on
// stdout: {"ok": true, ...results} or {"ok": false, "error"}.  Commands
// ("cmd", then arguments):
//
//   new_page                         close the current page (if any), open a fresh one
//                                    (and take back permissions granted to the last one)
//   grant PERMISSIONS                grant the pages permissions (["local-network-access"])
//   route URL BODY [CONTENT_TYPE]    answer requests for URL with BODY (default text/html)
//   goto URL                         load URL; wait for its load event
//   fill SELECTOR VALUE              type VALUE into the element (replacing its value)
//   check SELECTOR / uncheck SELECTOR
//   click SELECTOR
//   wait_for SELECTOR [TEXT]         wait until an element matches (and contains TEXT);
//                                    answers {"text"}: that element's innerText
//   text SELECTOR                    {"text"}: the first match's innerText
//   texts SELECTOR                   {"texts"}: every match's innerText
//   attribute SELECTOR NAME          {"value"}: the attribute, or null
//   console                          {"messages": [{"type", "text"}], "errors": [page errors]}
//   wait_console TEXT                wait until the page logs TEXT (console.log and such)
//   screenshot PATH                  save a PNG of the whole page
//
// Each command may carry "timeout" (ms; default --timeout, 10000).  At EOF on
// stdin it closes the browser and exits 0.  The profile is a fresh temporary
// directory, removed at exit.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const argv = process.argv.slice(2);
let executablePath = "/usr/bin/chromium";
let defaultTimeout = 10_000;
while (argv.length > 0) {
  const [flag, value] = argv.splice(0, 2);
  if (flag === "--executable") executablePath = value;
  else if (flag === "--timeout") defaultTimeout = Number(value);
  else {
    process.stderr.write(
      `browser.mjs: unknown argument ${flag}\nusage: node browser.mjs [--executable PATH] [--timeout MS]\n`,
    );
    process.exit(2);
  }
}

const profile = mkdtempSync(join(tmpdir(), "greenbus-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ARGS,
    viewport: { width: 1280, height: 900 },
    colorScheme: "light",
    timeout: 30_000,
  });
} catch (error) {
  rmSync(profile, { recursive: true, force: true });
  print({ ok: false, error: `could not start ${executablePath}: ${error.message}` });
  process.exit(3);
}

let page = null;
let messages = [];
let errors = [];
let consoleWaiters = [];

async function newPage() {
  if (page !== null) await page.close();
  await context.clearPermissions();
  messages = [];
  errors = [];
  consoleWaiters = [];
  page = await context.newPage();
  page.on("console", (msg) => {
    const entry = { type: msg.type(), text: msg.text() };
    messages.push(entry);
    for (const waiter of consoleWaiters) waiter(entry);
  });
  page.on("pageerror", (error) => errors.push(String(error.stack ?? error)));
  return {};
}

function need(value, what) {
  if (value === undefined) throw new Error(`missing argument ${JSON.stringify(what)}`);
  return value;
}

const commands = {
  new_page: () => newPage(),
  async grant({ permissions }) {
    await context.grantPermissions(need(permissions, "permissions"));
    return {};
  },
  async route({ url, body, content_type = "text/html; charset=utf-8" }) {
    await page.route(need(url, "url"), (route) =>
      route.fulfill({ status: 200, contentType: content_type, body: need(body, "body") }),
    );
    return {};
  },
  async goto({ url, timeout }) {
    const response = await page.goto(need(url, "url"), { waitUntil: "load", timeout });
    return { status: response?.status() ?? null };
  },
  async fill({ selector, value, timeout }) {
    await page.locator(need(selector, "selector")).fill(need(value, "value"), { timeout });
    return {};
  },
  async check({ selector, timeout }) {
    await page.locator(need(selector, "selector")).check({ timeout });
    return {};
  },
  async uncheck({ selector, timeout }) {
    await page.locator(need(selector, "selector")).uncheck({ timeout });
    return {};
  },
  async click({ selector, timeout }) {
    await page.locator(need(selector, "selector")).click({ timeout });
    return {};
  },
  async wait_for({ selector, text, timeout }) {
    let locator = page.locator(need(selector, "selector"));
    if (text !== undefined) locator = locator.filter({ hasText: text });
    locator = locator.first();
    await locator.waitFor({ state: "attached", timeout });
    return { text: await locator.innerText({ timeout }) };
  },
  async text({ selector, timeout }) {
    return { text: await page.locator(need(selector, "selector")).first().innerText({ timeout }) };
  },
  async texts({ selector }) {
    return { texts: await page.locator(need(selector, "selector")).allInnerTexts() };
  },
  async attribute({ selector, name, timeout }) {
    return {
      value: await page
        .locator(need(selector, "selector"))
        .first()
        .getAttribute(need(name, "name"), { timeout }),
    };
  },
  console: async () => ({ messages, errors }),
  wait_console({ text, timeout }) {
    need(text, "text");
    if (messages.some((m) => m.text === text)) return {};
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        consoleWaiters = consoleWaiters.filter((w) => w !== waiter);
        reject(new Error(`the page did not log ${JSON.stringify(text)} within ${timeout} ms`));
      }, timeout);
      const waiter = (entry) => {
        if (entry.text !== text) return;
        clearTimeout(timer);
        consoleWaiters = consoleWaiters.filter((w) => w !== waiter);
        resolve({});
      };
      consoleWaiters.push(waiter);
    });
  },
  async screenshot({ path }) {
    await page.screenshot({ path: need(path, "path"), fullPage: true });
    return {};
  },
};

async function shutdown() {
  try {
    await context.close();
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => shutdown().finally(() => process.exit(0)));
}

await newPage();
print({ ready: true, version: context.browser()?.version() ?? null });

for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === "") continue;
  let command;
  try {
    command = JSON.parse(line);
  } catch (error) {
    print({ ok: false, error: `not a JSON command: ${error.message}` });
    continue;
  }
  const run = commands[command.cmd];
  if (run === undefined) {
    print({ ok: false, error: `unknown command ${JSON.stringify(command.cmd)}` });
    continue;
  }
  try {
    const result = await run({ timeout: defaultTimeout, ...command });
    print({ ok: true, ...result });
  } catch (error) {
    print({ ok: false, error: error.message });
  }
}
await shutdown();
