// The demo app in headless Chromium (Debian's, driven by playwright-core), served by a real
// imgate in development mode: two pages as two users in a shared room and a private room each,
// joined with the page's buttons; a room push shown on both, a private one on its owner's
// only; a page whose connection is cut mid-stream (by a proxy between it and the gateway)
// comes back showing what it missed; a room left stops; a message to the business is
// answered. Saves target/demo.png. Then the business's side: a room joined from the server
// (the page's "Join from the server" button) shows up and gets its pushes; on a gateway with
// signed tokens, a fresh token pasted into the page renews the connection's before it expires.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { startImgate, repoRoot } from "../support/imgate.mjs";
import { startProxy } from "../support/proxy.mjs";

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

async function openAs(mid, { room, ws, token, apikey, gw = gateway }) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
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
  if (ws) query.set("ws", ws);
  if (token) query.set("token", token);
  if (apikey) query.set("apikey", apikey);
  await page.goto(`${gw.httpBase}/demo/?${query}`);
  await page.waitForSelector('#status[data-state="on"]', { timeout: 10_000 });
  return { page, problems };
}

const roomItem = (room) => `#rooms li[data-room="${room}"]`;

async function joinWithButton(page, room) {
  await page.fill("#join-room", room);
  await page.click("#join-button");
  await page.waitForSelector(roomItem(room), { timeout: 5000 });
}

async function pushFromForm(page, { target, to, body, history = true }) {
  await page.selectOption("#push-target", target);
  if (target === "mids") await page.fill("#push-mids", to);
  if (target === "room") {
    await page.fill("#push-room", to);
    await page.setChecked("#push-history", history);
  }
  await page.fill("#push-body", body);
  await page.$eval("#push-result", (node) => (node.textContent = ""));
  await page.click("#push-send");
  await page.waitForFunction(
    () => document.querySelector("#push-result").textContent.startsWith("200"),
    null,
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

/** The messages a page shows, oldest first: [kind, room, body]. */
function shownMessages(page) {
  return page.$$eval("#messages li.message", (nodes) =>
    nodes.reverse().map((n) => [n.dataset.kind, n.dataset.room ?? "", n.querySelector(".body").textContent]),
  );
}

async function waitForOnline(page, room, count) {
  await page.waitForFunction(
    ([selector, n]) => document.querySelector(selector)?.textContent === n,
    [`${roomItem(room)} .members`, String(count)],
    { timeout: 20_000 },
  );
}

test("two users in a shared room and a private room each; a cut page catches up on reconnect", async () => {
  const shared = "live://browser-shared";
  const alicesRoom = "chat://alice-601";
  const bobsRoom = "chat://bob-602";
  // Bob's page reaches the gateway through a proxy the test can cut.
  const proxy = await startProxy("127.0.0.1", Number(gateway.wsAddr.split(":").pop()));
  try {
    const alice = await openAs(601, { room: shared });
    const bob = await openAs(602, { room: shared, ws: proxy.url });
    await joinWithButton(alice.page, alicesRoom);
    await joinWithButton(bob.page, bobsRoom);

    // Online counts per room, once the comet has reported both connections.
    await waitForOnline(alice.page, shared, 2);
    await waitForOnline(alice.page, alicesRoom, 1);
    await waitForOnline(bob.page, bobsRoom, 1);

    await pushFromForm(alice.page, { target: "room", to: shared, body: "hello shared" });
    await waitForBody(alice.page, "hello shared");
    await waitForBody(bob.page, "hello shared");
    await pushFromForm(alice.page, { target: "room", to: alicesRoom, body: "alice's own" });
    await pushFromForm(alice.page, { target: "room", to: bobsRoom, body: "for bob's room" });
    await pushFromForm(alice.page, { target: "mids", to: "602", body: "for bob, live" });
    await waitForBody(alice.page, "alice's own");
    await waitForBody(bob.page, "for bob's room");
    await waitForBody(bob.page, "for bob, live");

    // Bob's connection dies mid-stream: what the gateway writes meanwhile never reaches him.
    proxy.stall();
    await pushFromForm(alice.page, { target: "room", to: shared, body: "missed in shared" });
    await pushFromForm(alice.page, { target: "room", to: bobsRoom, body: "missed in bob's room" });
    await pushFromForm(alice.page, { target: "mids", to: "602", body: "missed 1" });
    await pushFromForm(alice.page, { target: "mids", to: "602", body: "missed 2" });
    await waitForBody(alice.page, "missed in shared");
    await bob.page.waitForTimeout(100); // let the gateway write to the stalled socket
    assert.ok(proxy.cut() > 0, "the cut dropped what the gateway wrote to Bob");
    await bob.page.waitForSelector('#status[data-state="wait"]', { timeout: 10_000 });
    await bob.page.waitForSelector('#status[data-state="on"]', { timeout: 15_000 });
    for (const body of ["missed in shared", "missed in bob's room", "missed 1", "missed 2"]) {
      await waitForBody(bob.page, body);
    }
    await bob.page.waitForTimeout(500); // a duplicate would show by now

    // Once each; in order within the inbox and within each room; nothing of Alice's room.
    const shown = await shownMessages(bob.page);
    const of = (kind, room = "") =>
      shown.filter(([k, r]) => k === kind && r === room).map(([, , body]) => body);
    assert.equal(shown.length, 7, JSON.stringify(shown));
    assert.deepEqual(of("inbox"), ["for bob, live", "missed 1", "missed 2"]);
    assert.deepEqual(of("room", shared), ["hello shared", "missed in shared"]);
    assert.deepEqual(of("room", bobsRoom), ["for bob's room", "missed in bob's room"]);
    // Each room message shows its room.
    const where = await bob.page.$$eval("#messages li.message[data-room] .where", (nodes) =>
      nodes.map((n) => n.textContent),
    );
    assert.equal(where.length, 4);
    assert.ok(where.every((w) => w === shared || w === bobsRoom), JSON.stringify(where));
    mkdirSync(path.join(repoRoot, "target"), { recursive: true });
    await bob.page.screenshot({ path: path.join(repoRoot, "target/demo.png"), fullPage: true });

    // Bob leaves his room with its button: its pushes stop.
    await bob.page.click(`${roomItem(bobsRoom)} button.leave`);
    await bob.page.waitForSelector(roomItem(bobsRoom), { state: "detached", timeout: 5000 });
    await pushFromForm(alice.page, { target: "room", to: bobsRoom, body: "after bob left" });
    await pushFromForm(alice.page, { target: "room", to: shared, body: "sentinel" });
    await waitForBody(bob.page, "sentinel");
    assert.ok(!(await shownMessages(bob.page)).some(([, , body]) => body === "after bob left"));
    assert.deepEqual(
      (await shownMessages(alice.page)).filter(([, room]) => room === bobsRoom),
      [],
      "Alice is not in Bob's room",
    );

    // A message to the business: no business behind this gateway, so an empty answer.
    await bob.page.click("#send-button");
    await bob.page.waitForFunction(
      () => document.querySelector("#send-result").textContent.includes("the business gave no answer"),
      null,
      { timeout: 5000 },
    );

    assert.deepEqual([...alice.problems, ...bob.problems], []);
  } finally {
    await proxy.close();
  }
});

async function waitForNote(page, prefix, timeout = 10_000) {
  await page.waitForFunction(
    (p) => [...document.querySelectorAll("#messages li.note")].some((n) => n.textContent.startsWith(p)),
    prefix,
    { timeout },
  );
}

test("a room joined from the server shows up on the page and gets its pushes", async () => {
  const room = "chat://srv-611";
  const { page, problems } = await openAs(611, { room: "live://browser-611" });
  await page.fill("#server-join-room", room);
  await page.click("#server-join-button");
  await page.waitForSelector(roomItem(room), { timeout: 5000 });
  await waitForNote(page, `the server joined you to ${room}`);
  await gateway.push("/goim/push/room?operation=1001&type=chat&room=srv-611&history=1", "from the server's room");
  await waitForBody(page, "from the server's room");
  const shown = await shownMessages(page);
  assert.deepEqual(shown, [["room", room, "from the server's room"]]);
  assert.deepEqual(problems, []);
});

test("with signed tokens, a fresh token pasted into the page renews the connection's", async () => {
  const secret = "browser-secret";
  const apikey = "browser-api-key";
  const dir = mkdtempSync(path.join(tmpdir(), "imgate-sdk-browser-"));
  const file = path.join(dir, "imgate.toml");
  writeFileSync(
    file,
    ["[auth]", `jwt_secret = "${secret}"`, `api_key = "${apikey}"`, 'leeway = "1s"', "[logic]", "demo = true", ""].join("\n"),
  );
  const signed = await startImgate({ args: ["--config", file] });
  const b64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const sign = (mid, ttl) => {
    const exp = Math.floor(Date.now() / 1000) + ttl;
    const head = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({ sub: String(mid), exp })}`;
    return { exp, token: `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}` };
  };
  try {
    const first = sign(612, 5);
    const { page, problems } = await openAs(612, { room: "live://browser-612", token: first.token, apikey, gw: signed });
    await page.fill("#token", sign(612, 600).token);
    await waitForNote(page, "token renewed", 10_000);
    // Past the first token's exp and the gateway's leeway: still the same connection.
    while (Date.now() / 1000 < first.exp + 2.5) await page.waitForTimeout(200);
    assert.equal(await page.getAttribute("#status", "data-state"), "on");
    const notes = await page.$$eval("#messages li.note", (nodes) => nodes.map((n) => n.textContent));
    assert.ok(!notes.some((n) => /disconnected|offline/.test(n)), JSON.stringify(notes));
    await signed.push("/goim/push/mids?operation=1000&mids=612", "after the old exp", {
      Authorization: `Bearer ${apikey}`,
    });
    await waitForBody(page, "after the old exp");
    assert.deepEqual(problems, []);
  } finally {
    await signed.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
