// The SDK in Node against a real imgate (target/debug/imgate) over real WebSockets; every
// push goes through the gateway's HTTP API. Each test uses its own users and rooms.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import WebSocket from "ws";
import { ImgateClient } from "../../dist/index.js";
import { startImgate, imgateBinary, repoRoot } from "../support/imgate.mjs";
import { startProxy } from "../support/proxy.mjs";
import { record, sleep } from "../support/record.mjs";

const USER_OP = 1000;
const ROOM_OP = 1001;
const OTHER_OP = 1002;

let gateway;
const cleanups = [];

before(async () => {
  gateway = await startImgate();
});
after(async () => {
  await gateway?.stop();
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function client(options) {
  const c = new ImgateClient({
    url: gateway.wsUrl,
    WebSocket,
    accepts: [USER_OP, ROOM_OP, OTHER_OP],
    reconnect: { minDelay: 50, maxDelay: 400 },
    gapTimeout: 300,
    ...options,
  });
  cleanups.push(() => c.close());
  return { client: c, r: record(c) };
}

const roomQuery = (room) => {
  const [type, id] = room.split("://");
  return `type=${type}&room=${id}`;
};
const pushMid = (mid, body, op = USER_OP) =>
  gateway.push(`/goim/push/mids?operation=${op}&mids=${mid}`, body);
const pushRoom = (room, body, history = true) =>
  gateway.push(`/goim/push/room?operation=${ROOM_OP}&${roomQuery(room)}${history ? "&history=1" : ""}`, body);

async function inboxState(mid) {
  const answer = await gateway.get(`/goim/inbox/state?mids=${mid}`);
  return JSON.parse(answer.text).data[mid];
}

async function eventually(condition, what, timeout = 5000) {
  const deadline = Date.now() + timeout;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

test("a client connects and receives a push of each kind", async () => {
  const room = "live://it-kinds";
  const { client: c, r } = client({ mid: 1001, key: "it-kinds-key", room });
  await c.connect();
  await pushMid(1001, "to the user");
  await pushRoom(room, "to the room, kept", true);
  await pushRoom(room, "to the room, not kept", false);
  await gateway.push(`/goim/push/keys?operation=${OTHER_OP}&keys=it-kinds-key`, "to the key");
  await r.until(() => r.messages.length === 4, "four pushes");
  const byBody = Object.fromEntries(r.messages.map((m) => [m.text(), [m.kind, m.op, m.seq, m.room]]));
  assert.deepEqual(byBody, {
    "to the user": ["inbox", USER_OP, 1, undefined],
    "to the room, kept": ["room", ROOM_OP, 1, room],
    "to the room, not kept": ["room", ROOM_OP, 0, room],
    "to the key": ["push", OTHER_OP, 0, undefined],
  });
  await gateway.push(`/goim/push/all?operation=${OTHER_OP}`, JSON.stringify({ to: "everyone" }));
  await r.until(() => r.messages.length === 5, "the broadcast");
  assert.deepEqual(r.messages[4].json(), { to: "everyone" });
  await r.until(() => r.heartbeats.length > 0, "a heartbeat reply");
  assert.ok(r.heartbeats[0].online >= 1, `online ${r.heartbeats[0].online}`);
  assert.deepEqual(r.errors, []);
});

test("an offline user catches up on every stored message, in order, and acknowledges them", async () => {
  for (let i = 1; i <= 5; i++) await pushMid(1002, `m${i}`);
  const { client: c, r } = client({ mid: 1002 });
  await c.connect();
  await r.until(() => r.messages.length === 5, "the backlog");
  assert.deepEqual(r.texts(), ["m1", "m2", "m3", "m4", "m5"]);
  assert.deepEqual(r.messages.map((m) => m.seq), [1, 2, 3, 4, 5]);
  await eventually(async () => (await inboxState(1002)).acked_seq === 5, "acked_seq 5");
  await sleep(200);
  assert.equal(r.messages.length, 5, "nothing twice");
});

test("acknowledged messages are not delivered again to the user's next client", async () => {
  const first = client({ mid: 1003 });
  await first.client.connect();
  for (let i = 1; i <= 3; i++) await pushMid(1003, `a${i}`);
  await first.r.until(() => first.r.messages.length === 3, "three messages");
  await eventually(async () => (await inboxState(1003)).acked_seq === 3, "acked_seq 3");
  first.client.close();
  await pushMid(1003, "a4");
  // A fresh page knows nothing: the server sends only what was not acknowledged.
  const second = client({ mid: 1003 });
  await second.client.connect();
  await second.r.until(() => second.r.messages.length === 1, "the unacknowledged message");
  await sleep(300);
  assert.deepEqual(second.r.texts(), ["a4"]);
  await eventually(async () => (await inboxState(1003)).pending === 0, "nothing pending");
});

test("messages the gateway wrote to a socket that died are delivered after the reconnect", async () => {
  const proxy = await startProxy("127.0.0.1", Number(gateway.wsAddr.split(":").pop()));
  cleanups.push(() => proxy.close());
  const { client: c, r } = client({ url: proxy.url, mid: 1004 });
  await c.connect();
  await pushMid(1004, "before");
  await r.until(() => r.messages.length === 1, "the first message");
  proxy.stall();
  await pushMid(1004, "lost 1");
  await pushMid(1004, "lost 2");
  await sleep(100);
  assert.ok(proxy.cut() > 0, "the proxy dropped bytes the gateway wrote");
  await r.until(() => r.messages.length === 3, "the lost messages", 10_000);
  assert.deepEqual(r.texts(), ["before", "lost 1", "lost 2"]);
  assert.equal(r.connected.at(-1).reconnected, true);
  await eventually(async () => (await inboxState(1004)).acked_seq === 3, "acked_seq 3");
});

test("a reconnect mid-stream misses nothing and duplicates nothing", async () => {
  const mid = 1005;
  const room = "live://it-stream";
  const proxy = await startProxy("127.0.0.1", Number(gateway.wsAddr.split(":").pop()));
  cleanups.push(() => proxy.close());
  const { client: c, r } = client({ url: proxy.url, mid, room });
  await c.connect();
  const total = 90;
  let cuts = 0;
  for (let i = 1; i <= total; i++) {
    await Promise.all([pushMid(mid, `u${i}`), pushRoom(room, `r${i}`)]);
    await sleep(5);
    if (i % 30 === 10) {
      // Each cut hits a live connection with pushes in flight: what the gateway wrote while
      // the proxy held it back is gone with the socket.
      await r.until(() => r.connected.length === cuts + 1, `connection ${cuts + 1}`, 10_000);
      proxy.stall();
      await Promise.all([pushMid(mid, `u${i}+`), pushRoom(room, `r${i}+`)]);
      await sleep(30);
      assert.ok(proxy.cut() > 0, "the cut dropped pushes");
      cuts++;
    }
  }
  const expected = total + cuts;
  const of = (kind) => r.messages.filter((m) => m.kind === kind);
  await r.until(
    () => of("inbox").length >= expected && of("room").length >= expected,
    "every message",
    20_000,
  );
  await sleep(500); // a duplicate would have arrived by now
  const sequence = Array.from({ length: expected }, (_, i) => i + 1);
  assert.deepEqual(of("inbox").map((m) => m.seq), sequence, "inbox sequences");
  assert.deepEqual(of("room").map((m) => m.seq), sequence, "room sequences");
  const inOrder = (prefix) => {
    const bodies = [];
    for (let i = 1; i <= total; i++) {
      bodies.push(`${prefix}${i}`);
      if (i % 30 === 10) bodies.push(`${prefix}${i}+`);
    }
    return bodies;
  };
  assert.deepEqual(of("inbox").map((m) => m.text()), inOrder("u"));
  assert.deepEqual(of("room").map((m) => m.text()), inOrder("r"));
  assert.equal(cuts, 3);
  assert.ok(r.connected.length >= cuts + 1, `${r.connected.length} connections for ${cuts} cuts`);
  assert.deepEqual(r.errors, []);
  await eventually(async () => (await inboxState(mid)).acked_seq === expected, `acked_seq ${expected}`);
});

test("a signed deployment: the SDK authenticates with a token and the demo is off", async () => {
  const env = { IMGATE_JWT_SECRET: "sdk-test-secret", IMGATE_API_KEY: "sdk-test-key" };
  const secure = await startImgate({ env });
  cleanups.push(() => secure.stop());
  const token = execFileSync(imgateBinary(), ["token", "--mid", "77", "--ttl", "10m"], {
    env: { ...process.env, ...env },
    encoding: "utf8",
  }).trim();
  const { client: c, r } = client({ url: secure.wsUrl, token, mid: 1 });
  await c.connect();
  await secure.push(`/goim/push/mids?operation=${USER_OP}&mids=77`, "signed", {
    Authorization: "Bearer sdk-test-key",
  });
  await r.until(() => r.messages.length === 1, "the push to user 77");
  assert.equal(r.messages[0].text(), "signed");
  assert.equal((await secure.get("/demo/")).status, 404, "no demo in a configured deployment");
});

test("development mode serves the demo and the SDK's built files", async () => {
  const page = await gateway.get("/demo/");
  assert.equal(page.status, 200);
  assert.match(page.response.headers.get("content-type"), /text\/html/);
  assert.match(page.text, /imgate demo/);
  const sdk = await gateway.get("/demo/sdk/client.js");
  assert.equal(sdk.status, 200);
  assert.match(sdk.response.headers.get("content-type"), /javascript/);
  assert.equal(sdk.text, readFileSync(path.join(repoRoot, "sdk/js/dist/client.js"), "utf8"));
  const config = JSON.parse((await gateway.get("/demo/config.json")).text);
  assert.deepEqual(config.ws, [gateway.wsAddr]);
  assert.equal((await gateway.get("/demo/nothing-here")).status, 404);
  const redirect = await fetch(`${gateway.httpBase}/demo`, { redirect: "manual" });
  assert.equal(redirect.headers.get("location"), "/demo/");
});

test("a configured deployment serves the demo only when logic.demo = true", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "imgate-sdk-config-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  for (const [demo, status] of [
    [undefined, 404],
    [true, 200],
  ]) {
    const file = path.join(dir, `demo-${demo}.toml`);
    const logic = demo === undefined ? "" : `[logic]\ndemo = ${demo}\n`;
    writeFileSync(file, `[auth]\ninsecure = true\n${logic}`);
    const configured = await startImgate({ args: ["--config", file] });
    try {
      assert.equal((await configured.get("/demo/")).status, status, `logic.demo = ${demo}`);
    } finally {
      await configured.stop();
    }
  }
});
