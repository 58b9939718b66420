// Many rooms per connection and client messages, from the SDK in Node against a real imgate
// (target/debug/imgate) over real WebSockets: join and leave (ops 24-27), a join past
// comet.max_rooms_per_conn, rooms joined again after a cut with their history caught up, and
// send() answered by op 5. Each test uses its own users and rooms.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { ImgateClient, decodeMessage, Op } from "../../dist/index.js";
import { startImgate } from "../support/imgate.mjs";
import { startProxy } from "../support/proxy.mjs";
import { record, sleep } from "../support/record.mjs";

const USER_OP = 1000;
const ROOM_OP = 1001;

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
    reconnect: { minDelay: 50, maxDelay: 400 },
    gapTimeout: 300,
    ...options,
  });
  cleanups.push(() => c.close());
  return { client: c, r: record(c) };
}

const roomQuery = (room) => {
  const at = room.indexOf("://");
  return `type=${room.slice(0, at)}&room=${room.slice(at + 3)}`;
};
const pushMid = (mid, body, api = gateway) =>
  api.push(`/goim/push/mids?operation=${USER_OP}&mids=${mid}`, body);
const pushRoom = (room, body, { history = true, api = gateway } = {}) =>
  api.push(`/goim/push/room?operation=${ROOM_OP}&${roomQuery(room)}${history ? "&history=1" : ""}`, body);

/** Messages of one log: the inbox (room undefined) or a room's. */
const logOf = (r, room) =>
  r.messages.filter((m) => (room === undefined ? m.kind === "inbox" : m.room === room));

/**
 * A `ws` WebSocket that records the frames the client sends and the ones it receives, in
 * order, for tests that look at the wire.
 */
function wireRecorder() {
  const wire = { sent: [], received: [] };
  wire.Socket = class extends WebSocket {
    constructor(url) {
      super(url);
      this.on("message", (data) => {
        for (const f of decodeMessage(new Uint8Array(data))) wire.received.push(f);
      });
    }
    send(data) {
      wire.sent.push(...decodeMessage(data));
      super.send(data);
    }
  };
  return wire;
}

test("a joined room's pushes arrive tagged with the room, and stop once it is left", async () => {
  const main = "live://jl-main";
  const a = "live://jl-a";
  const b = "chat://jl-b";
  const { client: c, r } = client({ room: main });
  await c.connect();
  assert.equal(await c.join(a), a);
  assert.equal(await c.join(b), b);
  assert.deepEqual(c.rooms, [main, a, b]);

  await pushRoom(main, "main kept");
  await pushRoom(a, "a kept");
  await pushRoom(a, "a not kept", { history: false });
  await pushRoom(b, "b kept");
  await r.until(() => r.messages.length === 4, "a push from each room");
  const seen = r.messages.map((m) => [m.kind, m.room, m.seq > 0, m.text()]);
  const byText = (x, y) => x[3].localeCompare(y[3]);
  assert.deepEqual(seen.sort(byText), [
    ["room", a, true, "a kept"],
    ["room", a, false, "a not kept"],
    ["room", b, true, "b kept"],
    ["room", main, true, "main kept"],
  ]);

  assert.equal(await c.leave(a), a);
  assert.deepEqual(c.rooms, [main, b]);
  await pushRoom(a, "a after the leave");
  await pushRoom(b, "b sentinel");
  await r.until(() => r.texts().includes("b sentinel"), "the sentinel");
  // Room pushes are written in the order they were pushed: one for a would have come first.
  assert.equal(logOf(r, a).length, 2);
  // Leaving a room the connection is not in: the server answers empty.
  await assert.rejects(c.leave(a), { code: "refused" });
  assert.deepEqual(r.errors, []);
});

test("a join past comet.max_rooms_per_conn is refused, and takes effect once a room is left", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "imgate-sdk-rooms-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, "two-rooms.toml");
  writeFileSync(file, "[auth]\ninsecure = true\n\n[comet]\nmax_rooms_per_conn = 2\n");
  const limited = await startImgate({ args: ["--config", file] });
  cleanups.push(() => limited.stop());

  const { client: c, r } = client({ url: limited.wsUrl, room: "live://cap-main" });
  await c.connect();
  await c.join("live://cap-1");
  // The main room and one joined room make two.
  await assert.rejects(c.join("live://cap-2"), (e) => e.code === "refused" && /cap-2/.test(e.message));
  assert.deepEqual(c.rooms, ["live://cap-main", "live://cap-1"]);
  await pushRoom("live://cap-2", "not joined", { api: limited });
  await pushRoom("live://cap-1", "joined", { api: limited });
  await r.until(() => r.messages.length === 1, "the joined room's push");
  assert.deepEqual(r.texts(), ["joined"]);

  await c.leave("live://cap-1");
  assert.equal(await c.join("live://cap-2"), "live://cap-2");
  await pushRoom("live://cap-2", "now joined", { api: limited });
  await r.until(() => r.messages.length === 2, "cap-2's push");
  assert.equal(r.messages[1].room, "live://cap-2");
});

test("joined rooms are joined again after mid-stream cuts; their history misses nothing and duplicates nothing", async () => {
  const mid = 2101;
  const main = "live://cut-main";
  const kept = ["live://cut-a", "chat://cut-b"];
  const plain = "live://cut-plain"; // pushed without history: only a rejoin brings its pushes
  const proxy = await startProxy("127.0.0.1", Number(gateway.wsAddr.split(":").pop()));
  cleanups.push(() => proxy.close());
  const { client: c, r } = client({ url: proxy.url, mid, room: main });
  await c.connect();
  for (const room of [...kept, plain]) await c.join(room);

  const logs = [undefined, main, ...kept];
  const pushAll = (label) =>
    Promise.all([
      pushMid(mid, `inbox ${label}`),
      pushRoom(main, `${main} ${label}`),
      ...kept.map((room) => pushRoom(room, `${room} ${label}`)),
    ]);
  const total = 45;
  let cuts = 0;
  const expectedBodies = [];
  for (let i = 1; i <= total; i++) {
    await pushAll(`${i}`);
    expectedBodies.push(`${i}`);
    await sleep(5);
    // The last cut comes after the last push: what it lost can only come from the catch-up
    // (earlier ones are also mended by the gap timer, as later pushes show the gap).
    if (i % 15 === 0) {
      await r.until(() => r.connected.length === cuts + 1, `connection ${cuts + 1}`, 10_000);
      // Pushes the gateway writes while the proxy holds them back die with the socket.
      proxy.stall();
      await pushAll(`${i}+`);
      expectedBodies.push(`${i}+`);
      await sleep(30);
      assert.ok(proxy.cut() > 0, "the cut dropped pushes");
      cuts++;
      // Back in the room without history: a push to it arrives again (bounded retries: the
      // push may reach the gateway before the rejoin does).
      await r.until(() => r.connected.length === cuts + 1, `reconnect ${cuts}`, 10_000);
      const deadline = Date.now() + 10_000;
      const before = logOf(r, plain).length;
      for (let attempt = 0; logOf(r, plain).length === before; attempt++) {
        assert.ok(Date.now() < deadline, `no push to ${plain} arrived after reconnect ${cuts}`);
        await pushRoom(plain, `plain after cut ${cuts} #${attempt}`, { history: false });
        await sleep(50);
      }
    }
  }
  assert.equal(cuts, 3);
  const expected = expectedBodies.length;
  await r.until(
    () => logs.every((room) => logOf(r, room).length >= expected),
    "every message of every log",
    20_000,
  );
  await sleep(500); // a duplicate would have arrived by now
  const sequence = Array.from({ length: expected }, (_, i) => i + 1);
  for (const room of logs) {
    const log = logOf(r, room);
    const prefix = room ?? "inbox";
    assert.deepEqual(log.map((m) => m.seq), sequence, `${prefix}: sequences`);
    assert.deepEqual(log.map((m) => m.text()), expectedBodies.map((b) => `${prefix} ${b}`), `${prefix}: bodies`);
  }
  assert.deepEqual(c.rooms, [main, ...kept, plain]);
  assert.deepEqual(r.errors, []);
  for (const room of [main, ...kept]) assert.equal(c.checkpoint.roomSeqs[room], expected, `${room}'s floor`);
});

test("send() resolves with the op-5 answer of its own seq, empty while no business answers", async () => {
  const wire = wireRecorder();
  const { client: c, r } = client({ mid: 2201, WebSocket: wire.Socket });
  await c.connect();
  const answer = await c.send("hello business");
  assert.ok(answer instanceof Uint8Array);
  assert.equal(answer.length, 0, "no upstream is configured: an empty answer");

  // Concurrent sends, each settled by the reply with its own seq, in the order replies come.
  const settled = [];
  const bodies = Array.from({ length: 6 }, (_, i) => `message ${i}`);
  const sends = bodies.map((body) =>
    c.send(body).then((reply) => {
      settled.push(body);
      return reply;
    }),
  );
  const replies = await Promise.all(sends);
  assert.ok(replies.every((reply) => reply instanceof Uint8Array && reply.length === 0));
  const sentSeqs = new Map(
    wire.sent
      .filter((f) => f.op === Op.SendMsg)
      .map((f) => [new TextDecoder().decode(f.body), f.seq]),
  );
  assert.equal(sentSeqs.size, bodies.length + 1);
  const replySeqs = wire.received.filter((f) => f.op === Op.SendMsgReply).map((f) => f.seq);
  assert.deepEqual(
    [...replySeqs].sort((x, y) => x - y),
    [...sentSeqs.values()].sort((x, y) => x - y),
    "one op 5 for each op 4, same seq",
  );
  assert.deepEqual(
    settled.map((body) => sentSeqs.get(body)),
    replySeqs.slice(1),
    "each send settled by its own seq's reply",
  );
  assert.deepEqual(r.errors, []);
});

test("a send in flight when the connection is cut rejects with disconnected and is never resent", async () => {
  const wire = wireRecorder();
  const proxy = await startProxy("127.0.0.1", Number(gateway.wsAddr.split(":").pop()));
  cleanups.push(() => proxy.close());
  const { client: c, r } = client({ url: proxy.url, mid: 2202, WebSocket: wire.Socket });
  await c.connect();
  proxy.stall(); // the answer is held back, then dropped with the socket
  const pending = c.send("in flight");
  const deadline = Date.now() + 5000;
  while (!wire.sent.some((f) => f.op === Op.SendMsg)) {
    assert.ok(Date.now() < deadline, "the op 4 went out");
    await sleep(10);
  }
  await sleep(50);
  proxy.cut();
  await assert.rejects(pending, { code: "disconnected" });
  await r.until(() => r.connected.length === 2, "the reconnect", 10_000);
  await c.send("after the reconnect");
  const sent = wire.sent.filter((f) => f.op === Op.SendMsg).map((f) => new TextDecoder().decode(f.body));
  assert.deepEqual(sent, ["in flight", "after the reconnect"]);
});
