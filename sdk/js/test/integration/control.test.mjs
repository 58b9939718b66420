// The business controls live connections, seen from the SDK against a real imgate
// (target/debug/imgate) with signed tokens (HS256, made here with the gateway's secret), an API
// key and auth.leeway = "1s": tokens from getToken renewed with op 30 on the open connection,
// rooms the server joins and leaves (POST /goim/rooms/join, /leave), kicks (POST /goim/kick)
// and a token's expiry, and which of them end reconnecting.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { ImgateClient } from "../../dist/index.js";
import { startImgate } from "../support/imgate.mjs";
import { record, sleep } from "../support/record.mjs";

const SECRET = "sdk-control-secret";
const API_KEY = "sdk-control-api-key";
const API = { Authorization: `Bearer ${API_KEY}` };

let gateway;
let dir;
const cleanups = [];

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "imgate-sdk-control-"));
  const file = path.join(dir, "imgate.toml");
  writeFileSync(
    file,
    ["[auth]", `jwt_secret = "${SECRET}"`, `api_key = "${API_KEY}"`, 'leeway = "1s"', ""].join("\n"),
  );
  gateway = await startImgate({ args: ["--config", file] });
});
after(async () => {
  await gateway?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const b64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
const nowSecs = () => Math.floor(Date.now() / 1000);

/** An HS256 JWT for user `mid`, valid `ttl` seconds from now. */
function sign(mid, ttl) {
  const head = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({ sub: String(mid), exp: nowSecs() + ttl })}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

function client(options) {
  const c = new ImgateClient({
    url: gateway.wsUrl,
    WebSocket,
    reconnect: { minDelay: 50, maxDelay: 400 },
    ...options,
  });
  cleanups.push(() => c.close());
  const r = record(c);
  r.kicks = [];
  r.tokens = [];
  r.rooms = [];
  c.on("kicked", (e) => r.kicks.push(e));
  c.on("token", (e) => r.tokens.push(e.exp));
  c.on("roomJoined", (e) => r.rooms.push(["joined", e.room, e.by]));
  c.on("roomLeft", (e) => r.rooms.push(["left", e.room, e.by]));
  return { client: c, r };
}

const post = (pathAndQuery, body = "") => gateway.push(pathAndQuery, body, API);

async function connectionsOf(mid) {
  const answer = await gateway.get(`/goim/online/mids?mids=${mid}`, API);
  return JSON.parse(answer.text).data[String(mid)];
}

test("getToken's tokens are renewed on the open connection: it outlives each exp and gets pushes", async () => {
  const mid = 4101;
  let issued = 0;
  const { client: c, r } = client({
    getToken: async () => {
      issued++;
      return sign(mid, 3);
    },
  });
  await c.connect();
  const firstExp = c.tokenExpiresAt;
  assert.ok(firstExp >= nowSecs() + 2, "the JWT's exp is known");
  // Past the first token's exp and the gateway's leeway, twice over.
  while (Date.now() / 1000 < firstExp + 3) {
    assert.equal(r.disconnected.length, 0, `closed: ${JSON.stringify(r.disconnected)}`);
    await sleep(100);
  }
  assert.ok(r.tokens.length >= 2, `renewed at least twice, got ${JSON.stringify(r.tokens)}`);
  assert.ok(issued >= 3, "getToken asked at connect and for each renewal");
  assert.ok(c.tokenExpiresAt > firstExp);
  assert.deepEqual(r.kicks, []);
  assert.equal(r.connected.length, 1, "one connection all along");
  await post(`/goim/push/mids?operation=1000&mids=${mid}`, "still here");
  await r.until(() => r.texts().includes("still here"), "the push");
  assert.deepEqual(r.errors, []);
});

test("rooms the server joins and leaves show up in the SDK, with their pushes", async () => {
  const mid = 4102;
  const { client: c, r } = client({ getToken: () => sign(mid, 600), room: "live://4102" });
  await c.connect();
  const answer = await post(`/goim/rooms/join?type=chat&room=srv-4102&mids=${mid}`);
  assert.equal(answer.data.connections, 1);
  await r.until(() => r.rooms.length === 1, "the server's join");
  assert.deepEqual(r.rooms[0], ["joined", "chat://srv-4102", "server"]);
  assert.deepEqual(c.rooms, ["live://4102", "chat://srv-4102"]);
  await post("/goim/push/room?operation=1001&type=chat&room=srv-4102&history=1", "in the server's room");
  await r.until(() => r.messages.length === 1, "the room's push");
  assert.deepEqual([r.messages[0].room, r.messages[0].seq, r.messages[0].text()], [
    "chat://srv-4102",
    1,
    "in the server's room",
  ]);
  const [conn] = await connectionsOf(mid);
  assert.deepEqual(conn.rooms, ["live://4102", "chat://srv-4102"]);

  await post(`/goim/rooms/leave?type=chat&room=srv-4102&mids=${mid}`);
  await r.until(() => r.rooms.length === 2, "the server's leave");
  assert.deepEqual(r.rooms[1], ["left", "chat://srv-4102", "server"]);
  assert.deepEqual(c.rooms, ["live://4102"]);
  await post("/goim/push/room?operation=1001&type=chat&room=srv-4102", "after the leave");
  await post(`/goim/push/mids?operation=1000&mids=${mid}`, "sentinel");
  await r.until(() => r.texts().includes("sentinel"), "the sentinel");
  assert.deepEqual(r.texts(), ["in the server's room", "sentinel"]);
  assert.deepEqual(r.errors, []);
});

test("a kick ends reconnecting; one whose reason starts with reconnect does not", async () => {
  const mid = 4103;
  const { client: c, r } = client({ getToken: () => sign(mid, 600) });
  await c.connect();
  await post(`/goim/kick?mids=${mid}&reason=${encodeURIComponent("reconnect: maintenance")}`);
  await r.until(() => r.connected.length === 2, "the reconnect after a reconnect kick", 10_000);
  assert.deepEqual(r.kicks, [{ reason: "reconnect: maintenance", final: false }]);

  await post(`/goim/kick?mids=${mid}&reason=banned`);
  await r.until(() => r.kicks.length === 2, "the kick");
  assert.deepEqual(r.kicks[1], { reason: "banned", final: true });
  assert.deepEqual(r.disconnected.at(-1), { reason: "kicked: banned", willReconnect: false });
  assert.equal(c.state, "disconnected");
  await sleep(800); // a reconnect (50-400 ms of backoff) would be back by now
  assert.equal(r.connected.length, 2, "no reconnect after the kick");
  const deadline = Date.now() + 5000;
  while ((await connectionsOf(mid)).length > 0) {
    assert.ok(Date.now() < deadline, "presence still lists the kicked user");
    await sleep(50);
  }
});

test("a fixed token that expires ends the session with op 6 token expired", async () => {
  const mid = 4104;
  const { client: c, r } = client({ token: sign(mid, 2) });
  await c.connect();
  await r.until(() => r.kicks.length === 1, "the expiry", 10_000);
  assert.deepEqual(r.kicks[0], { reason: "token expired", final: true });
  assert.equal(r.disconnected.at(-1).willReconnect, false);
  await sleep(500);
  assert.equal(r.connected.length, 1);
});

test("a fresh token for another user is refused and ends the session", async () => {
  const mid = 4105;
  let calls = 0;
  const { client: c, r } = client({ getToken: () => (++calls === 1 ? sign(mid, 2) : sign(mid + 1, 600)) });
  await c.connect();
  await r.until(() => r.kicks.length === 1, "the refusal", 10_000);
  assert.match(r.kicks[0].reason, /^fresh token refused: it is for user 4106, not 4105/);
  assert.equal(r.kicks[0].final, true);
  assert.equal(r.disconnected.at(-1).willReconnect, false);
  assert.deepEqual(r.tokens, []);
});
