// The operator's status page (/status) in headless Chromium, served by a real imgate that
// requires an API key: without credentials the page is refused; with the key (the browser's
// basic-auth password) it loads, its script polls /status.json, and the connection count it
// shows follows real clients connecting and leaving; a push shows in the push table. Saves
// target/status.png.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import WebSocket from "ws";
import { chromium } from "playwright-core";
import { ImgateClient } from "../../dist/index.js";
import { startImgate, imgateBinary, repoRoot } from "../support/imgate.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ENV = { IMGATE_JWT_SECRET: "status-test-secret", IMGATE_API_KEY: "status-test-key" };

let gateway;
let browser;
const clients = [];

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install Debian's chromium or set CHROMIUM_PATH`);
  }
  gateway = await startImgate({ env: ENV });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
});

after(async () => {
  for (const c of clients) c.close();
  await browser?.close();
  await gateway?.stop();
});

async function connect(mid) {
  const token = execFileSync(imgateBinary(), ["token", "--mid", String(mid), "--ttl", "10m"], {
    env: { ...process.env, ...ENV },
    encoding: "utf8",
  }).trim();
  const c = new ImgateClient({ url: gateway.wsUrl, WebSocket, token, room: "live://status" });
  clients.push(c);
  await c.connect();
  return c;
}

const shown = (page, id) => page.$eval(`#${id}`, (n) => n.textContent);

async function waitForShown(page, id, text, timeout = 10_000) {
  await page.waitForFunction(
    ([selector, expected]) => document.querySelector(selector)?.textContent === expected,
    [`#${id}`, text],
    { timeout },
  );
}

test("the status page shows the live connection count, behind the API key", async () => {
  // Without the key: refused, and a browser is asked for credentials (a browser without
  // any fails the navigation outright).
  const refused = await gateway.get("/status");
  assert.equal(refused.status, 401);
  assert.match(refused.response.headers.get("www-authenticate") ?? "", /Basic/);
  assert.equal((await gateway.get("/status.json")).status, 401);
  const anonymous = await browser.newContext();
  await assert.rejects((await anonymous.newPage()).goto(`${gateway.httpBase}/status`), /AUTH/);
  await anonymous.close();

  await connect(501);
  await connect(502);
  await connect(503);

  const context = await browser.newContext({
    viewport: { width: 1280, height: 900 },
    httpCredentials: { username: "operator", password: ENV.IMGATE_API_KEY },
  });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  const response = await page.goto(`${gateway.httpBase}/status`);
  assert.equal(response.status(), 200);

  // The script ran and filled the figures in from /status.json.
  await waitForShown(page, "connections", "3");
  await page.waitForFunction(() => document.querySelector("#ready")?.textContent === "ready", null, {
    timeout: 10_000,
  });
  const comets = await page.$$eval("#comets tr", (rows) => rows.map((r) => r.children[1].textContent));
  assert.deepEqual(comets, ["3"]);

  // A push shows in the push table; a client leaving lowers the count.
  await gateway.push("/goim/push/room?operation=1000&type=live&room=status", "hi", {
    Authorization: `Bearer ${ENV.IMGATE_API_KEY}`,
  });
  await page.waitForFunction(
    () => [...document.querySelectorAll("#pushes tr")].some((r) => r.children[0].textContent === "room" && r.children[1].textContent === "1"),
    null,
    { timeout: 10_000 },
  );
  clients.pop().close();
  await waitForShown(page, "connections", "2");
  await waitForShown(page, "rooms", "1", 15_000);

  await page.screenshot({ path: path.join(repoRoot, "target/status.png"), fullPage: true });
  assert.deepEqual(problems, []);
  await context.close();
});
