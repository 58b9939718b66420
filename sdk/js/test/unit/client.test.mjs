// ImgateClient against an in-process fake comet (test/support/fake-server.mjs): auth, pushes,
// heartbeats, reconnects, catch-up, acknowledgements, requests and bad input. The real
// gateway is exercised by test/integration/.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ImgateClient, encodeFrame, Op } from "../../dist/index.js";
import { FakeComet, batch } from "../support/fake-server.mjs";
import { record, sleep } from "../support/record.mjs";

const cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

// Nothing the server sends may turn into an exception the application did not catch.
const escaped = [];
process.on("uncaughtException", (e) => escaped.push(e));
process.on("unhandledRejection", (e) => escaped.push(e));
afterEach(() => assert.deepEqual(escaped.splice(0), [], "an exception escaped"));

async function setup(options = {}, handlers = {}) {
  const comet = await new FakeComet(handlers).start();
  const client = new ImgateClient({
    url: comet.url,
    WebSocket,
    mid: 123,
    reconnect: { minDelay: 20, maxDelay: 80 },
    gapTimeout: 100,
    ...options,
  });
  const r = record(client);
  cleanups.push(() => comet.stop());
  cleanups.push(() => client.close());
  return { comet, client, r };
}

const text = (frame) => Buffer.from(frame.body).toString();

test("auth carries goim's JSON with acks, the token and a key kept across reconnects", async () => {
  const { comet, client, r } = await setup({
    room: "live://1",
    accepts: [1000, 1001],
    token: "signed.jwt.token",
  });
  await client.connect();
  const first = await comet.connection(0);
  assert.deepEqual(Object.keys(first.auth).sort(), [
    "accepts",
    "acks",
    "key",
    "mid",
    "platform",
    "room_id",
    "token",
  ]);
  assert.equal(first.auth.mid, 123);
  assert.equal(first.auth.room_id, "live://1");
  assert.deepEqual(first.auth.accepts, [1000, 1001]);
  assert.equal(first.auth.acks, true);
  assert.equal(first.auth.token, "signed.jwt.token");
  assert.equal(first.auth.platform, "web");
  assert.ok(first.auth.key.length >= 16, "a generated key");
  assert.deepEqual(r.connected, [{ reconnected: false }]);

  first.socket.close();
  const second = await comet.connection(1);
  await r.until(() => r.connected.length === 2, "the reconnect");
  assert.equal(second.auth.key, first.auth.key, "the same key replaces the stale session");
  assert.deepEqual(r.connected[1], { reconnected: true });
  assert.equal(r.disconnected[0].willReconnect, true);
});

test("pushes arrive as messages, from op-9 batches and from bare frames", async () => {
  const { comet, client, r } = await setup();
  await client.connect();
  const conn = await comet.connection(0);
  conn.socket.send(batch({ op: 1000, body: "one" }, { op: 1001, body: '{"n":2}' }));
  conn.socket.send(encodeFrame(1002, 0, "three"));
  await r.until(() => r.messages.length === 3, "three messages");
  assert.deepEqual(
    r.messages.map((m) => [m.op, m.seq, m.kind, m.room, m.text()]),
    [
      [1000, 0, "push", undefined, "one"],
      [1001, 0, "push", undefined, '{"n":2}'],
      [1002, 0, "push", undefined, "three"],
    ],
  );
  assert.deepEqual(r.messages[1].json(), { n: 2 });
  assert.ok(r.messages[0].body instanceof Uint8Array);
});

test("heartbeats go out at once and on the interval, and report the online count", async () => {
  const { comet, client, r } = await setup({ heartbeat: 100 });
  await client.connect();
  const conn = await comet.connection(0);
  await comet.until(() => comet.sent(conn, Op.Heartbeat).length >= 3, "three heartbeats", 2000);
  await r.until(() => r.heartbeats.length >= 3, "heartbeat events");
  assert.deepEqual(r.heartbeats[0], { online: 7 });
});

test("a connection whose heartbeats go unanswered is dropped and replaced", async () => {
  let answer = false;
  const { comet, client, r } = await setup(
    { heartbeat: 100, heartbeatTimeout: 150 },
    {
      [Op.Heartbeat]: (_conn, frame) => (answer ? encodeFrame(Op.HeartbeatReply, frame.seq) : undefined),
    },
  );
  await client.connect();
  await r.until(() => r.disconnected.length === 1, "the dead connection to be noticed", 2000);
  assert.match(r.disconnected[0].reason, /no answer to a heartbeat within 150 ms/);
  answer = true;
  await comet.connection(1);
  await r.until(() => r.connected.length === 2, "a new connection");
});

test("reconnect delays grow exponentially with jitter, up to the maximum", async () => {
  // A server that accepts the socket and closes it before auth, every time.
  const { comet, client, r } = await setup(
    { reconnect: { minDelay: 10, maxDelay: 80 } },
    { [Op.Auth]: (conn) => void conn.socket.close() },
  );
  client.connect().catch(() => {});
  await r.until(() => r.disconnected.length >= 6, "six failed attempts", 5000);
  const delays = r.disconnected.map((d) => d.delay);
  const ceilings = [10, 20, 40, 80, 80, 80];
  delays.slice(0, 6).forEach((delay, i) => {
    assert.ok(delay >= ceilings[i] / 2 && delay <= ceilings[i], `attempt ${i}: ${delay} ms`);
  });
  assert.match(r.disconnected[0].reason, /before auth was accepted/);
  assert.ok(comet.connections.length >= 6);
});

test("stored messages are handed over once, in order, and the inbox is acknowledged", async () => {
  const { comet, client, r } = await setup();
  await client.connect();
  const conn = await comet.connection(0);
  const stored = (seq) => ({ op: 1000, seq, body: `m${seq}` });
  conn.socket.send(batch(stored(1), stored(2)));
  conn.socket.send(batch(stored(2))); // the same message again (backlog and live)
  conn.socket.send(batch(stored(4)));
  conn.socket.send(batch(stored(3)));
  await r.until(() => r.messages.length === 4, "four messages");
  assert.deepEqual(r.texts(), ["m1", "m2", "m3", "m4"]);
  assert.ok(r.messages.every((m) => m.kind === "inbox"));
  await comet.until(() => comet.sent(conn, Op.Ack).some((f) => text(f) === "4"), "ack 4");
  const acks = comet.sent(conn, Op.Ack).map(text);
  assert.deepEqual(acks, [...acks].sort((a, b) => a - b), "acks only go up");
  assert.equal(client.state.inboxSeq, 4);
});

test("without acks the client still orders and dedupes but never sends op 20", async () => {
  const { comet, client, r } = await setup({ acks: false });
  await client.connect();
  const conn = await comet.connection(0);
  conn.socket.send(batch({ op: 1000, seq: 1, body: "a" }, { op: 1000, seq: 1, body: "a" }));
  await r.until(() => r.messages.length === 1, "one message");
  await sleep(50);
  assert.equal(conn.auth.acks, false);
  assert.deepEqual(comet.sent(conn, Op.Ack), []);
});

test("a gap is filled by asking the server for what follows the floor", async () => {
  const { comet, client, r } = await setup({}, {
    [Op.Sync]: (conn, frame, body) => {
      if (body === "1") conn.socket.send(batch({ op: 1000, seq: 2, body: "m2" }));
      return encodeFrame(Op.SyncReply, frame.seq, frame.body);
    },
  });
  await client.connect();
  const conn = await comet.connection(0);
  conn.socket.send(batch({ op: 1000, seq: 1, body: "m1" }));
  conn.socket.send(batch({ op: 1000, seq: 3, body: "m3" }));
  await r.until(() => r.messages.length === 3, "the gap to fill");
  assert.deepEqual(r.texts(), ["m1", "m2", "m3"]);
  assert.deepEqual(comet.sent(conn, Op.Sync).map(text), ["1"]);
});

test("a gap the server cannot fill is skipped after its sync, not waited on forever", async () => {
  const { comet, client, r } = await setup();
  await client.connect();
  const conn = await comet.connection(0);
  conn.socket.send(batch({ op: 1000, seq: 1, body: "m1" }));
  conn.socket.send(batch({ op: 1000, seq: 3, body: "m3" }));
  await r.until(() => r.messages.length === 2, "m3 after the skip");
  assert.deepEqual(r.texts(), ["m1", "m3"]);
  assert.equal(comet.sent(conn, Op.Sync).length, 1);
  assert.equal(client.state.inboxSeq, 3);
});

test("a reconnect catches up the inbox and the room's history, then acknowledges", async () => {
  const { comet, client, r } = await setup({ room: "live://9", roomHistoryOps: [2000] });
  await client.connect();
  const first = await comet.connection(0);
  assert.deepEqual(comet.sent(first, Op.Sync), [], "nothing to catch up on a first connect");
  first.socket.send(batch({ op: 1000, seq: 1, body: "inbox 1" }));
  first.socket.send(batch({ op: 2000, seq: 41, body: "room 41" }, { op: 2000, seq: 42, body: "room 42" }));
  await r.until(() => r.messages.length === 3, "three messages");
  // Each log is in order; the two logs are independent of each other.
  assert.deepEqual(
    r.messages.map((m) => [m.kind, m.room, m.seq]).sort(),
    [
      ["inbox", undefined, 1],
      ["room", "live://9", 41],
      ["room", "live://9", 42],
    ],
  );
  assert.deepEqual(client.state, { inboxSeq: 1, roomSeqs: { "live://9": 42 } });
  first.socket.terminate();

  const second = await comet.connection(1);
  await comet.until(() => comet.sent(second, Op.Sync).length === 2, "two syncs");
  assert.deepEqual(comet.sent(second, Op.Sync).map(text), ["1", "live://9 42"]);
  // The server's backlog repeats what the client has; only the new ones come through.
  second.socket.send(batch({ op: 1000, seq: 1, body: "inbox 1" }, { op: 1000, seq: 2, body: "inbox 2" }));
  second.socket.send(batch({ op: 2000, seq: 42, body: "room 42" }, { op: 2000, seq: 43, body: "room 43" }));
  await r.until(() => r.messages.length === 5, "five messages");
  assert.deepEqual(r.texts().slice(3).sort(), ["inbox 2", "room 43"]);
  await comet.until(() => comet.sent(second, Op.Ack).some((f) => text(f) === "2"), "ack 2");
});

test("options resume the logs where a previous page left them", async () => {
  const { comet, client } = await setup({
    room: "live://5",
    roomHistoryOps: [2000],
    inboxSeq: 17,
    roomSeqs: { "live://5": 8 },
  });
  await client.connect();
  const conn = await comet.connection(0);
  await comet.until(() => comet.sent(conn, Op.Sync).length === 2, "two syncs");
  assert.deepEqual(comet.sent(conn, Op.Sync).map(text), ["17", "live://5 8"]);
});

test("without a user every sequenced frame is the room's history", async () => {
  const { comet, client, r } = await setup({ mid: undefined, room: "live://3" });
  await client.connect();
  const conn = await comet.connection(0);
  conn.socket.send(batch({ op: 1000, seq: 5, body: "r5" }, { op: 1000, seq: 5, body: "r5" }));
  await r.until(() => r.messages.length === 1, "one message");
  assert.deepEqual([r.messages[0].kind, r.messages[0].room], ["room", "live://3"]);
});

test("a malformed frame is an error event and a reconnect, never an exception", async () => {
  const { comet, client, r } = await setup();
  await client.connect();
  const bad = [
    Buffer.from([0, 0, 0, 99, 0, 16, 0, 1]), // a header cut short
    (() => {
      const b = Buffer.from(encodeFrame(1000, 0, "x"));
      b.writeUInt16BE(12, 4); // headerLen 12
      return b;
    })(),
    encodeFrame(Op.Raw, 0, Buffer.from([0, 0, 0, 200, 0, 16])), // an inner frame that overruns
    "a text message",
  ];
  for (let i = 0; i < bad.length; i++) {
    const conn = await comet.connection(i);
    await r.until(() => r.connected.length === i + 1, `connection ${i}`);
    conn.socket.send(bad[i]);
    await r.until(() => r.errors.length === i + 1, `error ${i}`);
    assert.equal(r.errors[i].code, "protocol");
    assert.match(r.disconnected[i].reason, /^protocol error: /);
  }
  await comet.connection(bad.length);
  await r.until(() => r.connected.length === bad.length + 1, "a good connection again");
  assert.deepEqual(r.messages, []);
});

test("a listener that throws is reported and the client carries on", async () => {
  const { comet, client, r } = await setup();
  client.on("message", (m) => {
    if (m.text() === "boom") throw new Error("application bug");
  });
  await client.connect();
  const conn = await comet.connection(0);
  conn.socket.send(batch({ op: 1000, body: "boom" }, { op: 1000, body: "after" }));
  await r.until(() => r.messages.length === 2, "both messages");
  assert.equal(r.errors[0].code, "listener");
  assert.equal(client.connected, true);
});

test("switchRoom, watch and unwatch send ops 12, 14, 16 and shape the next auth", async () => {
  const { comet, client } = await setup({ accepts: [1000] });
  await client.connect();
  const conn = await comet.connection(0);
  await client.switchRoom("live://7");
  await client.watch([1001, 1002]);
  await client.unwatch([1000]);
  assert.deepEqual(comet.sent(conn, Op.ChangeRoom).map(text), ["live://7"]);
  assert.deepEqual(comet.sent(conn, Op.Sub).map(text), ["1001,1002"]);
  assert.deepEqual(comet.sent(conn, Op.Unsub).map(text), ["1000"]);
  assert.equal(client.room, "live://7");
  conn.socket.close();
  const next = await comet.connection(1);
  assert.equal(next.auth.room_id, "live://7");
  assert.deepEqual(next.auth.accepts.sort(), [1001, 1002]);
});

test("a room the server refuses rejects switchRoom and leaves the room as it was", async () => {
  const { client } = await setup(
    { room: "live://1" },
    { [Op.ChangeRoom]: (_c, frame) => encodeFrame(Op.ChangeRoomReply, frame.seq, "") },
  );
  await client.connect();
  await assert.rejects(client.switchRoom("live://secret"), { code: "refused" });
  assert.equal(client.room, "live://1");
});

test("join and leave send ops 24 and 26, and joined rooms are joined again after a reconnect", async () => {
  const { comet, client, r } = await setup();
  await client.connect();
  const conn = await comet.connection(0);
  await client.join("chat://a");
  await client.join("chat://b");
  await client.leave("chat://a");
  assert.deepEqual(comet.sent(conn, Op.Join).map(text), ["chat://a", "chat://b"]);
  assert.deepEqual(comet.sent(conn, Op.Leave).map(text), ["chat://a"]);
  assert.deepEqual(client.joinedRooms, ["chat://b"]);
  conn.socket.close();
  const next = await comet.connection(1);
  await comet.until(() => comet.sent(next, Op.Join).length === 1, "the rejoin");
  assert.deepEqual(comet.sent(next, Op.Join).map(text), ["chat://b"]);
  assert.deepEqual(r.errors, []);
});

test("join rejects with refused on an empty reply and unsupported on an echo", async () => {
  const { client } = await setup({}, {
    [Op.Join]: (_c, frame, body) =>
      body === "chat://no"
        ? encodeFrame(Op.JoinReply, frame.seq, "")
        : encodeFrame(Op.Join, frame.seq, ""), // what today's comet does with an op it does not know
  });
  await client.connect();
  await assert.rejects(client.join("chat://no"), { code: "refused" });
  await assert.rejects(client.join("chat://old-server"), { code: "unsupported" });
  assert.deepEqual(client.joinedRooms, []);
});

test("send resolves with the business's reply, matched by seq", async () => {
  const { comet, client } = await setup({}, {
    [Op.SendMsg]: (conn, frame, body) => {
      // Answer in reverse order to show replies are matched by seq, not by arrival.
      conn.pending = [...(conn.pending ?? []), [frame.seq, body]];
      if (conn.pending.length === 2) {
        for (const [seq, b] of conn.pending.reverse()) {
          conn.socket.send(encodeFrame(Op.SendMsgReply, seq, b === "fail" ? "" : `{"echo":"${b}"}`));
        }
      }
      return undefined;
    },
  });
  await client.connect();
  const [one, two] = await Promise.all([client.send("hello"), client.send(new TextEncoder().encode("world"))]);
  assert.deepEqual([one.json(), two.text()], [{ echo: "hello" }, '{"echo":"world"}']);
  const conn = await comet.connection(0);
  conn.pending = [];
  const failed = client.send("fail");
  const other = client.send("ok");
  await assert.rejects(failed, { code: "send_failed" });
  assert.equal((await other).json().echo, "ok");
});

test("send rejects when there is no connection, on timeout, and when the connection drops", async () => {
  const { comet, client } = await setup({ requestTimeout: 100 }, { [Op.SendMsg]: () => undefined });
  await assert.rejects(client.send("early"), { code: "not_connected" });
  await client.connect();
  await assert.rejects(client.send("lost"), { code: "timeout" });
  const pending = client.send("in flight");
  const conn = await comet.connection(0);
  await comet.until(() => comet.sent(conn, Op.SendMsg).length === 2, "the second send");
  conn.socket.terminate();
  await assert.rejects(pending, { code: "disconnected" });
  await comet.connection(1);
  assert.equal(comet.sent(conn, Op.SendMsg).length, 2, "nothing was sent twice");
});

test("close stops reconnecting and rejects a pending connect", async () => {
  const { comet, client, r } = await setup({}, { [Op.Auth]: () => undefined });
  const pending = client.connect();
  await comet.connection(0);
  client.close();
  await assert.rejects(pending, { code: "closed" });
  await sleep(150);
  assert.equal(comet.connections.length, 1, "no reconnect after close");
  assert.equal(r.disconnected.at(-1).willReconnect, false);
});
