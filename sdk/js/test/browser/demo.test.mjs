// The demo app in headless Chromium (Debian's, driven by playwright-core), served by a real
// imgate in development mode: two pages as two users, a room push shown on both, a page that
// goes offline and comes back showing what it missed. Saves target/demo.png.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { startImgate, repoRoot } from "../support/imgate.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

let gateway;
let browser;

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM}: install Debian's chromium (scripts/test-js.sh does) ` +
        "or set CHROMIUM_PATH",
    );
  }
  gateway = await startImgate();
  // playwright starts Chromium on a fresh temporary profile (--user-data-dir) of its own.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
});

async function openAs(mid, room) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  const query = new URLSearchParams({ mid: String(mid), room, connect: "1" });
  await page.goto(`${gateway.httpBase}/demo/?${query}`);
  await page.waitForSelector('#status[data-state="on"]', { timeout: 10_000 });
  return { page, problems };
}

async function pushFromForm(page, { target, to, body, history = true }) {
  await page.selectOption("#push-target", target);
  if (target === "mids") await page.fill("#push-mids", to);
  if (target === "room") {
    await page.fill("#push-room", to);
    await page.setChecked("#push-history", history);
  }
  await page.fill("#push-body", body);
  await page.click("#push-send");
  await page.waitForFunction(
    (b) => document.querySelector("#push-result").textContent.startsWith("200"),
    body,
    { timeout: 5000 },
  );
}

async function waitForBody(page, body, timeout = 10_000) {
  await page.waitForFunction(
    (b) => [...document.querySelectorAll("#messages li.message .body")].some((n) => n.textContent === b),
    body,
    { timeout },
  );
}

test("two users in a room, a room push on both, and a reconnect that shows what was missed", async () => {
  const room = "live://browser";
  const alice = await openAs(601, room);
  const bob = await openAs(602, room);

  // The online count reaches 2 once the comet has reported both connections.
  await alice.page.waitForFunction(() => document.querySelector("#online-room").textContent === "2", null, {
    timeout: 20_000,
  });

  await pushFromForm(alice.page, { target: "room", to: room, body: "hello room" });
  await waitForBody(alice.page, "hello room");
  await waitForBody(bob.page, "hello room");

  await pushFromForm(alice.page, { target: "mids", to: "602", body: "for bob, live" });
  await waitForBody(bob.page, "for bob, live");

  // Bob goes offline; Alice pushes to him and to the room; Bob comes back.
  await bob.page.click("#disconnect");
  await bob.page.waitForSelector('#status[data-state="off"]');
  await pushFromForm(alice.page, { target: "mids", to: "602", body: "missed 1" });
  await pushFromForm(alice.page, { target: "mids", to: "602", body: "missed 2" });
  await pushFromForm(alice.page, { target: "room", to: room, body: "missed in the room" });
  await waitForBody(alice.page, "missed in the room");
  await bob.page.click("#connect");
  await bob.page.waitForSelector('#status[data-state="on"]', { timeout: 10_000 });
  for (const body of ["missed 1", "missed 2", "missed in the room"]) await waitForBody(bob.page, body);
  await bob.page.waitForTimeout(500); // a duplicate would show by now

  // Once each; in order within the user's inbox and within the room's history.
  const shown = await bob.page.$$eval("#messages li.message", (nodes) =>
    nodes.reverse().map((n) => [n.dataset.kind, n.querySelector(".body").textContent]),
  );
  const of = (kind) => shown.filter(([k]) => k === kind).map(([, body]) => body);
  assert.equal(shown.length, 5, JSON.stringify(shown));
  assert.deepEqual(of("inbox"), ["for bob, live", "missed 1", "missed 2"]);
  assert.deepEqual(of("room"), ["hello room", "missed in the room"]);

  mkdirSync(path.join(repoRoot, "target"), { recursive: true });
  await bob.page.screenshot({ path: path.join(repoRoot, "target/demo.png"), fullPage: true });
  assert.deepEqual([...alice.problems, ...bob.problems], []);
});
