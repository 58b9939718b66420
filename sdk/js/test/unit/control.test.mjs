// What the server controls, against the in-process fake comet: the connection state and its
// events, tokens from getToken (at each connection, renewed with op 30 before exp), rooms the
// server joins or leaves (op 25 / 27 with seq 0), and op 6 (kicks, expiry, refused auth): which
// ones end reconnecting. The real gateway is exercised by test/integration/control.test.mjs.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ImgateClient, afterKick, encodeFrame, Op, tokenExp } from "../../dist/index.js";
import { FakeComet, roomFrames } from "../support/fake-server.mjs";
import { record, sleep } from "../support/record.mjs";

const cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const escaped = [];
process.on("uncaughtException", (e) => escaped.push(e));
process.on("unhandledRejection", (e) => escaped.push(e));
afterEach(() => assert.deepEqual(escaped.splice(0), [], "an exception escaped"));

async function setup(options = {}, handlers = {}) {
  const comet = await new FakeComet(handlers).start();
  const client = new ImgateClient({
    url: comet.url,
    WebSocket,
    reconnect: { minDelay: 20, maxDelay: 80 },
    gapTimeout: 100,
    ...options,
  });
  const r = record(client);
  r.states = [];
  r.kicks = [];
  r.tokens = [];
  r.rooms = [];
  client.on("state", (e) => r.states.push(e.state));
  client.on("kicked", (e) => r.kicks.push(e));
  client.on("token", (e) => r.tokens.push(e.exp));
  client.on("roomJoined", (e) => r.rooms.push(["joined", e.room, e.by]));
  client.on("roomLeft", (e) => r.rooms.push(["left", e.room, e.by]));
  cleanups.push(() => comet.stop());
  cleanups.push(() => client.close());
  return { comet, client, r };
}

const text = (frame) => Buffer.from(frame.body).toString();
const b64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
/** A JWT-shaped token (the fake comet does not check signatures). */
const jwt = (claims) => `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}.c2ln`;
const nowSecs = () => Math.floor(Date.now() / 1000);
/** op 6 from the server, `seq` 0 after auth (the auth frame's seq when it refuses auth). */
const disconnect = (reason, seq = 0) => encodeFrame(Op.Disconnect, seq, reason);

test("the connection state is public and every change is an event", async () => {
  const { comet, client, r } = await setup({ mid: 1 });
  assert.equal(client.state, "disconnected");
  const connecting = [];
  client.on("connecting", (e) => connecting.push(e.attempt));
  const pending = client.connect();
  assert.equal(client.state, "connecting");
  await pending;
  assert.equal(client.state, "connected");
  const first = await comet.connection(0);
  first.socket.close();
  await r.until(() => r.connected.length === 2, "the reconnect");
  assert.equal(client.state, "connected");
  client.close();
  assert.equal(client.state, "disconnected");
  assert.deepEqual(r.states, [
    "connecting",
    "connected",
    "disconnected",
    "connecting",
    "connected",
    "disconnected",
  ]);
  assert.deepEqual(connecting, [0, 1]);
  assert.equal(typeof client.checkpoint, "object", "the resume position is checkpoint now");
});

test("getToken gives the token of every connection, and of every reconnect", async () => {
  const given = [];
  const { comet, client, r } = await setup({
    getToken: async () => {
      await sleep(5);
      given.push(`token-${given.length + 1}`);
      return given.at(-1);
    },
  });
  await client.connect();
  const first = await comet.connection(0);
  assert.equal(first.auth.token, "token-1");
  first.socket.close();
  const second = await comet.connection(1);
  assert.equal(second.auth.token, "token-2");
  await r.until(() => r.connected.length === 2, "the reconnect");
  assert.equal(client.tokenExpiresAt, undefined, "not a JWT: no known expiry");
  assert.throws(() => new ImgateClient({ url: comet.url, WebSocket, token: "t", getToken: () => "t" }), TypeError);
});

test("a getToken that fails is reported and tried again; one that gives null stops the client", async () => {
  let calls = 0;
  let answer = "fail";
  const { comet, client, r } = await setup({
    getToken: () => {
      calls++;
      if (answer === "fail") throw new Error("the login server is down");
      return answer;
    },
  });
  const pending = client.connect();
  await r.until(() => calls >= 2, "getToken to be called again");
  assert.equal(r.errors[0].code, "token");
  assert.match(r.errors[0].message, /getToken failed: the login server is down/);
  assert.equal(comet.connections.length, 0, "no connection without a token");
  answer = "good";
  await pending;
  assert.equal((await comet.connection(0)).auth.token, "good");

  answer = null;
  (await comet.connection(0)).socket.close();
  await r.until(() => r.disconnected.some((d) => !d.willReconnect), "the stop");
  assert.match(r.disconnected.at(-1).reason, /getToken gave no token/);
  assert.equal(client.state, "disconnected");
  await assert.rejects(client.connect(), { code: "token" });
  assert.equal(comet.connections.length, 1);
});

test("a JWT is renewed with op 30 before its exp, and op 31 says until when", async () => {
  const exps = [nowSecs() + 4, nowSecs() + 3600];
  let n = 0;
  const refreshes = [];
  const { comet, client, r } = await setup(
    { getToken: () => jwt({ sub: "9", exp: exps[Math.min(n++, 1)] }) },
    {
      [Op.Refresh]: (conn, frame, body) => {
        refreshes.push(body);
        // The first try cannot be checked (logic unavailable): an empty op 31.
        const answer = refreshes.length === 1 ? "" : JSON.stringify({ exp: tokenExp(body) });
        return encodeFrame(Op.RefreshReply, frame.seq, answer);
      },
    },
  );
  await client.connect();
  assert.equal(client.tokenExpiresAt, exps[0], "read from the JWT");
  await r.until(() => r.tokens.length === 1, "the fresh token to be taken", 6000);
  // Within the gateway's leeway of the old exp (1 s in the integration tests, 60 s by default).
  assert.ok(Date.now() / 1000 < exps[0] + 1, "renewed before the old exp and a leeway");
  assert.equal(refreshes.length, 2, "the unchecked one tried again");
  assert.equal(tokenExp(refreshes[1]), exps[1]);
  assert.deepEqual(r.tokens, [exps[1]]);
  assert.equal(client.tokenExpiresAt, exps[1]);
  assert.equal(r.errors.filter((e) => e.code === "refused").length, 1, "the empty op 31 is reported");
  // The same connection all along, and no more refreshes for a token valid an hour.
  await sleep(200);
  assert.equal(comet.connections.length, 1);
  assert.equal(refreshes.length, 2);
});

test("a getToken that keeps giving the same token is reported, and not asked in a loop", async () => {
  const token = jwt({ sub: "9", exp: nowSecs() + 2 });
  const refreshes = [];
  const { client, r } = await setup(
    { getToken: () => token },
    {
      [Op.Refresh]: (_conn, frame, body) => {
        refreshes.push(Date.now());
        return encodeFrame(Op.RefreshReply, frame.seq, JSON.stringify({ exp: tokenExp(body) }));
      },
    },
  );
  await client.connect();
  await sleep(3500); // past its exp: the gateway's leeway is when renewals would pile up
  assert.ok(refreshes.length >= 1 && refreshes.length <= 4, `${refreshes.length} renewals in 3.5 s`);
  for (let i = 1; i < refreshes.length; i++) {
    assert.ok(refreshes[i] - refreshes[i - 1] >= 990, "renewals at least a second apart");
  }
  assert.deepEqual(r.tokens, [], "no fresher token, no token event");
  assert.ok(r.errors.some((e) => e.code === "token" && /no fresher token/.test(e.message)));
});

test("a gateway without op 30 is reported once and not asked again", async () => {
  let refreshes = 0;
  const { comet, client, r } = await setup(
    { getToken: () => jwt({ sub: "9", exp: nowSecs() + 2 }) },
    {
      // An older gateway echoes an op it does not know, with an empty body.
      [Op.Refresh]: (_conn, frame) => {
        refreshes++;
        return encodeFrame(Op.Refresh, frame.seq, "");
      },
    },
  );
  await client.connect();
  await r.until(() => r.errors.some((e) => e.code === "unsupported"), "the unsupported op", 4000);
  await sleep(2000);
  assert.equal(refreshes, 1);
  assert.deepEqual(r.tokens, []);
  assert.equal(comet.connections.length, 1);
});

test("a kick listener that closes the client is obeyed: no reconnect", async () => {
  const { comet, client, r } = await setup({ mid: 8 });
  client.on("kicked", () => client.close());
  await client.connect();
  (await comet.connection(0)).socket.send(disconnect("reconnect: soon"));
  await r.until(() => r.kicks.length === 1, "the kick");
  await sleep(200);
  assert.equal(comet.connections.length, 1, "closed by the application, so no reconnect");
  assert.equal(client.state, "disconnected");
  assert.equal(r.disconnected.at(-1).willReconnect, false);
});

test("rooms the server joins and leaves show up, in the rooms list and as events", async () => {
  const { comet, client, r } = await setup({ mid: 5, room: "live://1" });
  await client.connect();
  const conn = await comet.connection(0);
  conn.socket.send(encodeFrame(Op.JoinReply, 0, "chat://by-server"));
  await r.until(() => r.rooms.length === 1, "the join event");
  assert.deepEqual(r.rooms, [["joined", "chat://by-server", "server"]]);
  assert.deepEqual(client.rooms, ["live://1", "chat://by-server"]);
  // Its pushes are the room's, with their sequence.
  conn.socket.send(roomFrames("chat://by-server", { op: 1000, seq: 1, body: "s1" }));
  await r.until(() => r.messages.length === 1, "the room's push");
  assert.deepEqual([r.messages[0].room, r.messages[0].seq], ["chat://by-server", 1]);

  // Joined again (as the client's own) after a reconnect, and caught up.
  conn.socket.close();
  const next = await comet.connection(1);
  await comet.until(() => comet.sent(next, Op.Join).length === 1, "the rejoin");
  assert.equal(text(comet.sent(next, Op.Join)[0]), "chat://by-server");
  await comet.until(() => comet.sent(next, Op.Sync).some((f) => text(f) === "chat://by-server 1"), "its sync");

  // The server leaves it, and the main room too.
  next.socket.send(encodeFrame(Op.LeaveReply, 0, "chat://by-server"));
  next.socket.send(encodeFrame(Op.LeaveReply, 0, "live://1"));
  next.socket.send(encodeFrame(Op.LeaveReply, 0, "chat://never-in"));
  await r.until(() => r.rooms.length === 3, "the leave events");
  assert.deepEqual(r.rooms.slice(1), [
    ["left", "chat://by-server", "server"],
    ["left", "live://1", "server"],
  ]);
  assert.deepEqual(client.rooms, []);
  next.socket.send(roomFrames("chat://by-server", { op: 1000, seq: 2, body: "after" }));
  next.socket.send(encodeFrame(1000, 0, "sentinel"));
  await r.until(() => r.messages.length === 2, "the sentinel");
  assert.equal(r.messages[1].text(), "sentinel", "nothing from a room left");
  // The client's own joins are events too.
  await client.join("chat://mine");
  assert.deepEqual(r.rooms.at(-1), ["joined", "chat://mine", "client"]);
});

test("a kick ends reconnecting unless its reason starts with reconnect", async () => {
  const { comet, client, r } = await setup({ mid: 6 });
  await client.connect();
  (await comet.connection(0)).socket.send(disconnect("reconnect: moving you"));
  await comet.connection(1);
  await r.until(() => r.connected.length === 2, "the reconnect");
  assert.deepEqual(r.kicks, [{ reason: "reconnect: moving you", final: false }]);

  (await comet.connection(1)).socket.send(disconnect("banned for spam"));
  await r.until(() => r.kicks.length === 2, "the kick");
  assert.deepEqual(r.kicks[1], { reason: "banned for spam", final: true });
  assert.deepEqual(r.disconnected.at(-1), { reason: "kicked: banned for spam", willReconnect: false });
  assert.equal(client.state, "disconnected");
  await sleep(200);
  assert.equal(comet.connections.length, 2, "no reconnect after the kick");
  // connect() starts again.
  await client.connect();
  assert.equal(comet.connections.length, 3);
});

test("an expired token reconnects at once with getToken's next one, and stops without getToken", async () => {
  let n = 0;
  const { comet, client, r } = await setup({ getToken: () => `t${++n}`, reconnect: { minDelay: 5000 } });
  const started = Date.now();
  await client.connect();
  (await comet.connection(0)).socket.send(disconnect("token expired"));
  const second = await comet.connection(1);
  assert.equal(second.auth.token, "t2");
  assert.ok(Date.now() - started < 4000, "at once, not after the 5 s backoff");
  assert.deepEqual(r.kicks, [{ reason: "token expired", final: false }]);
  assert.equal(r.disconnected[0].delay, 0);
  // Expired again at once: no loop, the backoff this time.
  await r.until(() => r.connected.length === 2, "the reconnect");
  second.socket.send(disconnect("token expired"));
  await r.until(() => r.disconnected.length === 2, "the second expiry");
  assert.ok(r.disconnected[1].delay >= 2500, `backoff after a second expiry: ${r.disconnected[1].delay} ms`);
  client.close();

  const fixed = await setup({ token: jwt({ sub: "9", exp: 1_900_000_000 }) });
  assert.equal(fixed.client.tokenExpiresAt, 1_900_000_000, "a fixed JWT's exp is known too");
  await fixed.client.connect();
  (await fixed.comet.connection(0)).socket.send(disconnect("token expired"));
  await fixed.r.until(() => fixed.r.disconnected.length === 1, "the stop");
  assert.equal(fixed.r.disconnected[0].willReconnect, false);
  assert.deepEqual(fixed.r.kicks, [{ reason: "token expired", final: true }]);
});

test("a refused fresh token ends the session", async () => {
  const { comet, client, r } = await setup(
    { getToken: () => jwt({ sub: "9", exp: nowSecs() + 1 }) },
    {
      [Op.Refresh]: (conn) => {
        conn.socket.send(disconnect("fresh token refused: it is for user 8, not 9"));
        return undefined;
      },
    },
  );
  await client.connect();
  await r.until(() => r.kicks.length === 1, "the refusal", 5000);
  assert.deepEqual(r.kicks[0], { reason: "fresh token refused: it is for user 8, not 9", final: true });
  assert.equal(r.disconnected.at(-1).willReconnect, false);
  await sleep(100);
  assert.equal(comet.connections.length, 1);
});

test("a refused auth is retried, except an expired token that cannot be replaced", async () => {
  let refuse = 2;
  const { comet, client, r } = await setup(
    { mid: 7 },
    {
      [Op.Auth]: (conn, frame) =>
        refuse-- > 0 ? disconnect("auth could not be checked: logic is unavailable", frame.seq) : encodeFrame(Op.AuthReply, frame.seq),
    },
  );
  await client.connect();
  assert.equal(comet.connections.length, 3);
  assert.deepEqual(r.kicks, [], "a refused auth is not a kick");
  assert.equal(r.errors.filter((e) => e.code === "refused").length, 2);
  assert.match(r.disconnected[0].reason, /^auth refused: auth could not be checked/);

  const expired = await setup(
    { token: "stale" },
    { [Op.Auth]: (conn, frame) => disconnect("invalid auth body: token expired", frame.seq) },
  );
  await assert.rejects(expired.client.connect(), { code: "refused", message: /token expired/ });
  await sleep(150);
  assert.equal(expired.comet.connections.length, 1, "not tried again with the same stale token");
  assert.equal(expired.client.state, "disconnected");
});

test("afterKick: the documented rules", () => {
  const cases = [
    // reason, at auth, has getToken → outcome
    ["kicked", false, true, "stop"],
    ["banned for spam", false, false, "stop"],
    ["reconnect", false, false, "retry"],
    ["reconnect: rebalancing", false, true, "retry"],
    ["token expired", false, true, "renew"],
    ["token expired", false, false, "stop"],
    ["fresh token refused: token signature is invalid", false, true, "stop"],
    ["invalid auth body: token expired", true, false, "stop"],
    ["invalid auth body: token expired", true, true, "retry"],
    ["auth could not be checked: logic is unavailable", true, false, "retry"],
    ["replaced by a newer connection with the same key", true, false, "retry"],
  ];
  for (const [reason, atAuth, renewable, outcome] of cases) {
    assert.equal(afterKick(reason, atAuth, renewable), outcome, `${reason} (${atAuth}, ${renewable})`);
  }
});

test("tokenExp reads a JWT's exp and nothing else", () => {
  assert.equal(tokenExp(jwt({ sub: "1", exp: 1_900_000_000 })), 1_900_000_000);
  assert.equal(tokenExp(jwt({ sub: "1" })), undefined);
  assert.equal(tokenExp(jwt({ sub: "1", exp: "soon" })), undefined);
  assert.equal(tokenExp("not-a-jwt"), undefined);
  assert.equal(tokenExp("a.%%%.c"), undefined);
  assert.equal(tokenExp(`a.${Buffer.from("not json").toString("base64url")}.c`), undefined);
});
