// ImgateClient against an in-process fake comet (test/support/fake-server.mjs): auth, pushes,
// heartbeats, reconnects, catch-up, acknowledgements, requests and bad input. The real
// gateway is exercised by test/integration/.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ImgateClient, encodeFrame, Op } from "../../dist/index.js";
import { FakeComet, batch, roomFrames } from "../support/fake-server.mjs";
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

test("auth carries goim's JSON with acks, room tags, the token and a key kept across reconnects", async () => {
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
    "room_tags",
    "token",
  ]);
  assert.equal(first.auth.mid, 123);
  assert.equal(first.auth.room_id, "live://1");
  assert.deepEqual(first.auth.accepts, [1000, 1001]);
  assert.equal(first.auth.acks, true);
  assert.equal(first.auth.room_tags, true, "always asks for room tags");
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
  assert.equal(client.checkpoint.inboxSeq, 4);
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
  assert.equal(client.checkpoint.inboxSeq, 3);
});

test("room pushes come tagged with their room: history by room sequence, the rest as it comes", async () => {
  const { comet, client, r } = await setup({ room: "live://9" });
  await client.connect();
  const conn = await comet.connection(0);
  await client.join("chat://a");
  // The same op and sequence numbers in the inbox and in two rooms: three independent logs.
  conn.socket.send(batch({ op: 1000, seq: 1, body: "inbox 1" }));
  conn.socket.send(roomFrames("live://9", { op: 1000, seq: 1, body: "main 1" }, { op: 1000, seq: 2, body: "main 2" }));
  conn.socket.send(roomFrames("chat://a", { op: 1000, seq: 1, body: "a 1" }));
  conn.socket.send(roomFrames("chat://a", { op: 1000, seq: 1, body: "a 1" })); // a duplicate
  conn.socket.send(roomFrames("chat://a", { op: 1001, body: "a, not kept" }));
  conn.socket.send(roomFrames("chat://elsewhere", { op: 1000, seq: 1, body: "not my room" }));
  conn.socket.send(batch({ op: 1000, seq: 2, body: "inbox 2" }));
  // A fresh inbox waits gapTimeout for stragglers before its first messages go out.
  await r.until(() => r.texts().includes("inbox 2"), "the last message");
  await sleep(50);
  const log = (kind, room) =>
    r.messages.filter((m) => m.kind === kind && m.room === room).map((m) => [m.seq, m.text()]);
  assert.deepEqual(log("inbox", undefined), [[1, "inbox 1"], [2, "inbox 2"]]);
  assert.deepEqual(log("room", "live://9"), [[1, "main 1"], [2, "main 2"]]);
  assert.deepEqual(log("room", "chat://a"), [[1, "a 1"], [0, "a, not kept"]]);
  assert.equal(r.messages.length, 6, "nothing else: not twice, not from a room it is not in");
  assert.deepEqual(client.checkpoint, { inboxSeq: 2, roomSeqs: { "live://9": 2, "chat://a": 1 } });
  assert.deepEqual(r.errors, []);
});

test("a room's first stored message is where its log starts: what came before is not asked for", async () => {
  const { comet, client, r } = await setup({ room: "live://9" });
  await client.connect();
  const conn = await comet.connection(0);
  conn.socket.send(roomFrames("live://9", { op: 1000, seq: 41, body: "41" }));
  conn.socket.send(roomFrames("live://9", { op: 1000, seq: 42, body: "42" }));
  await r.until(() => r.messages.length === 2, "two messages");
  await sleep(250); // two gap timeouts
  assert.deepEqual(comet.sent(conn, Op.Sync), []);
  assert.equal(client.checkpoint.roomSeqs["live://9"], 42);
});

test("a reconnect joins every room again, then catches up the inbox and each room", async () => {
  const { comet, client, r } = await setup({ room: "live://9" });
  await client.connect();
  const first = await comet.connection(0);
  assert.deepEqual(comet.sent(first, Op.Sync), [], "nothing to catch up on a first connect");
  assert.equal(await client.join("chat://a"), "chat://a");
  assert.equal(await client.join("chat://quiet"), "chat://quiet");
  first.socket.send(batch({ op: 1000, seq: 1, body: "inbox 1" }));
  first.socket.send(roomFrames("live://9", { op: 1000, seq: 41, body: "main 41" }));
  first.socket.send(roomFrames("chat://a", { op: 1000, seq: 7, body: "a 7" }));
  await r.until(() => r.messages.length === 3, "three messages");
  first.socket.terminate();

  // The gateway answers a join only after a moment: a room's sync must wait for its join.
  let held = [];
  comet.handlers[Op.Join] = (conn, frame) => {
    held.push(() => conn.socket.send(encodeFrame(Op.JoinReply, frame.seq, frame.body)));
  };
  const second = await comet.connection(1);
  assert.equal(second.auth.room_id, "live://9", "the main room comes back with auth");
  await comet.until(() => comet.sent(second, Op.Join).length === 2, "two joins");
  await comet.until(() => comet.sent(second, Op.Sync).length === 2, "the inbox's and the main room's syncs");
  assert.deepEqual(comet.sent(second, Op.Sync).map(text).sort(), ["1", "live://9 41"]);
  for (const answer of held.splice(0)) answer();
  await comet.until(() => comet.sent(second, Op.Sync).length === 4, "the joined rooms' syncs");
  // A room joined without one of its stored messages seen is asked for everything it keeps.
  assert.deepEqual(comet.sent(second, Op.Sync).map(text).slice(2).sort(), ["chat://a 7", "chat://quiet 0"]);
  assert.deepEqual(comet.sent(second, Op.Join).map(text).sort(), ["chat://a", "chat://quiet"]);

  // What the server sends again is dropped; only the new ones come through.
  second.socket.send(batch({ op: 1000, seq: 1, body: "inbox 1" }, { op: 1000, seq: 2, body: "inbox 2" }));
  second.socket.send(roomFrames("live://9", { op: 1000, seq: 41, body: "main 41" }, { op: 1000, seq: 42, body: "main 42" }));
  second.socket.send(roomFrames("chat://a", { op: 1000, seq: 7, body: "a 7" }, { op: 1000, seq: 8, body: "a 8" }));
  second.socket.send(roomFrames("chat://quiet", { op: 1000, seq: 1, body: "quiet 1" }));
  await r.until(() => r.messages.length === 7, "seven messages");
  assert.deepEqual(r.texts().slice(3), ["inbox 2", "main 42", "a 8", "quiet 1"]);
  await comet.until(() => comet.sent(second, Op.Ack).some((f) => text(f) === "2"), "ack 2");
  assert.deepEqual(r.errors, []);
});

test("a room the server refuses to join again is forgotten and reported", async () => {
  const { comet, client, r } = await setup();
  await client.connect();
  const first = await comet.connection(0);
  await client.join("chat://a");
  await client.join("chat://b");
  comet.handlers[Op.Join] = (_c, frame, body) =>
    encodeFrame(Op.JoinReply, frame.seq, body === "chat://b" ? "" : body);
  first.socket.terminate();
  await comet.connection(1);
  await r.until(() => r.errors.length === 1, "the refusal");
  assert.equal(r.errors[0].code, "refused");
  assert.match(r.errors[0].message, /chat:\/\/b/);
  assert.deepEqual(client.joinedRooms, ["chat://a"]);
});

test("options resume the logs where a previous page left them", async () => {
  const { comet, client } = await setup({
    room: "live://5",
    inboxSeq: 17,
    roomSeqs: { "live://5": 8, "chat://later": 3 },
  });
  await client.connect();
  const conn = await comet.connection(0);
  await comet.until(() => comet.sent(conn, Op.Sync).length === 2, "two syncs");
  assert.deepEqual(comet.sent(conn, Op.Sync).map(text).sort(), ["17", "live://5 8"]);
  // A saved room is caught up when the client enters it, and stays in the state till then.
  assert.deepEqual(client.checkpoint.roomSeqs, { "live://5": 8, "chat://later": 3 });
  await client.join("chat://later");
  await comet.until(() => comet.sent(conn, Op.Sync).length === 3, "the joined room's sync");
  assert.equal(text(comet.sent(conn, Op.Sync)[2]), "chat://later 3");
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

test("join and leave send ops 24 and 26, resolve with the echo, and shape the next connection", async () => {
  const { comet, client, r } = await setup({ room: "live://main" });
  await client.connect();
  const conn = await comet.connection(0);
  assert.equal(await client.join("chat://a"), "chat://a");
  assert.equal(await client.join("chat://b"), "chat://b");
  assert.equal(await client.leave("chat://a"), "chat://a");
  assert.deepEqual(comet.sent(conn, Op.Join).map(text), ["chat://a", "chat://b"]);
  assert.deepEqual(comet.sent(conn, Op.Leave).map(text), ["chat://a"]);
  assert.deepEqual(client.joinedRooms, ["chat://b"]);
  assert.deepEqual(client.rooms, ["live://main", "chat://b"]);
  // A room left is not a room any more: its late pushes are dropped.
  conn.socket.send(roomFrames("chat://a", { op: 1000, body: "late" }));
  conn.socket.send(roomFrames("chat://b", { op: 1000, body: "b" }));
  await r.until(() => r.messages.length === 1, "b's push");
  assert.deepEqual(r.texts(), ["b"]);
  // Leaving the main room leaves the connection in no main room (as op 26 does on the server).
  await client.leave("live://main");
  assert.equal(client.room, "");
  conn.socket.close();
  const next = await comet.connection(1);
  assert.equal(next.auth.room_id, "");
  await comet.until(() => comet.sent(next, Op.Join).length === 1, "the rejoin");
  assert.deepEqual(comet.sent(next, Op.Join).map(text), ["chat://b"]);
  assert.deepEqual(r.errors, []);
});

test("join and leave while disconnected resolve at once and shape the next connection", async () => {
  const { comet, client, r } = await setup({ room: "live://main" });
  assert.equal(await client.join("chat://early"), "chat://early");
  assert.equal(await client.join("chat://dropped"), "chat://dropped");
  assert.equal(await client.leave("chat://dropped"), "chat://dropped");
  assert.equal(await client.leave("live://main"), "live://main");
  assert.deepEqual(client.rooms, ["chat://early"]);
  await client.connect();
  const conn = await comet.connection(0);
  assert.equal(conn.auth.room_id, "");
  await comet.until(() => comet.sent(conn, Op.Join).length === 1, "the join");
  assert.deepEqual(comet.sent(conn, Op.Join).map(text), ["chat://early"]);
  // Sent after the join's reply, so it arrives after it.
  conn.socket.send(roomFrames("chat://early", { op: 1000, body: "in" }));
  await r.until(() => r.messages.length === 1, "the joined room's push");
  assert.equal(r.messages[0].room, "chat://early");
});

test("join and leave reject with refused on an empty reply and unsupported on an echo", async () => {
  const { client } = await setup({}, {
    [Op.Join]: (_c, frame, body) =>
      body === "chat://no"
        ? encodeFrame(Op.JoinReply, frame.seq, "")
        : body === "chat://old-server"
          ? encodeFrame(Op.Join, frame.seq, "") // what an older comet does with an op it does not know
          : encodeFrame(Op.JoinReply, frame.seq, frame.body),
    [Op.Leave]: (_c, frame) => encodeFrame(Op.LeaveReply, frame.seq, ""),
  });
  await client.connect();
  await assert.rejects(client.join("chat://no"), { code: "refused" });
  await assert.rejects(client.join("chat://old-server"), { code: "unsupported" });
  assert.deepEqual(client.joinedRooms, []);
  await client.join("chat://yes");
  // The server says the connection is not in it: rejected, and forgotten all the same.
  await assert.rejects(client.leave("chat://yes"), { code: "refused" });
  assert.deepEqual(client.joinedRooms, []);
});

test("switchRoom to a joined room makes it the main room and leaves the old one", async () => {
  const { comet, client, r } = await setup({ room: "live://old" });
  await client.connect();
  const conn = await comet.connection(0);
  await client.join("chat://a");
  conn.socket.send(roomFrames("chat://a", { op: 1000, seq: 3, body: "a 3" }));
  await r.until(() => r.messages.length === 1, "a's push");
  await client.switchRoom("chat://a");
  assert.equal(client.room, "chat://a");
  assert.deepEqual(client.joinedRooms, []);
  assert.deepEqual(client.checkpoint.roomSeqs, { "chat://a": 3 }, "the joined room keeps its log");
  conn.socket.send(roomFrames("live://old", { op: 1000, body: "old" }));
  conn.socket.send(roomFrames("chat://a", { op: 1000, seq: 4, body: "a 4" }));
  await r.until(() => r.messages.length === 2, "a's next push");
  assert.deepEqual(r.texts(), ["a 3", "a 4"]);
});

test("send resolves with the op-5 body matched by seq, empty when the business gave none", async () => {
  const { comet, client } = await setup({}, {
    [Op.SendMsg]: (conn, frame, body) => {
      // Answer in reverse order to show replies are matched by seq, not by arrival.
      conn.pending = [...(conn.pending ?? []), [frame.seq, body]];
      if (conn.pending.length === 2) {
        for (const [seq, b] of conn.pending.reverse()) {
          conn.socket.send(encodeFrame(Op.SendMsgReply, seq, b === "none" ? "" : `{"echo":"${b}"}`));
        }
      }
      return undefined;
    },
  });
  await client.connect();
  const [one, two] = await Promise.all([client.send("hello"), client.send(new TextEncoder().encode("world"))]);
  assert.ok(one instanceof Uint8Array);
  assert.deepEqual([Buffer.from(one).toString(), Buffer.from(two).toString()], ['{"echo":"hello"}', '{"echo":"world"}']);
  const conn = await comet.connection(0);
  conn.pending = [];
  const [none, other] = await Promise.all([client.send("none"), client.send("ok")]);
  assert.equal(none.length, 0, "an empty answer resolves, empty");
  assert.equal(Buffer.from(other).toString(), '{"echo":"ok"}');
  await assert.rejects(client.send(42), TypeError);
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
  const next = await comet.connection(1);
  await sleep(50);
  assert.equal(comet.sent(conn, Op.SendMsg).length, 2, "nothing was sent twice");
  assert.equal(comet.sent(next, Op.SendMsg).length, 0, "nothing resent after the reconnect");
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
