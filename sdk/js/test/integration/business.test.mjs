// send() against a real imgate (target/debug/imgate) configured with logic.upstream_url served
// by this test's own HTTP server (the business): the business's answer comes back as send()'s
// result; a failing, silent or oversized business gives an empty answer within the timeout, and
// the connection stays up. Presence (/goim/online/mids) names the SDK's connection.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { ImgateClient } from "../../dist/index.js";
import { startImgate } from "../support/imgate.mjs";

let gateway;
let business;
let dir;
const received = [];
const held = [];

before(async () => {
  business = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const message = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      received.push({ path: req.url, message });
      const text = Buffer.from(message.body, "base64").toString("utf8");
      if (text === "fail") {
        res.writeHead(500).end("boom");
      } else if (text === "silent") {
        held.push(res); // never answered
      } else if (text === "huge") {
        res.writeHead(200).end("x".repeat(100_000));
      } else {
        res.writeHead(200, { "Content-Type": "text/plain" }).end(`echo:${text}`);
      }
    });
  });
  await new Promise((resolve) => business.listen(0, "127.0.0.1", resolve));
  const { port } = business.address();
  dir = mkdtempSync(path.join(tmpdir(), "imgate-sdk-business-"));
  const file = path.join(dir, "imgate.toml");
  writeFileSync(
    file,
    [
      "[auth]",
      "insecure = true",
      "[logic]",
      `upstream_url = "http://127.0.0.1:${port}/upstream"`,
      'upstream_timeout = "400ms"',
      "upstream_max_body = 65536",
      "",
    ].join("\n"),
  );
  gateway = await startImgate({ args: ["--config", file] });
});

after(async () => {
  await gateway?.stop();
  for (const res of held) res.destroy();
  await new Promise((resolve) => business?.close(resolve) ?? resolve());
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("send() resolves with the business's answer; a failing, silent or huge one is empty", async () => {
  const c = new ImgateClient({
    url: gateway.wsUrl,
    WebSocket,
    mid: 3301,
    key: "sdk-business",
    platform: "node",
    reconnect: { minDelay: 50, maxDelay: 400 },
  });
  try {
    await c.connect();
    const answer = await c.send("hello");
    assert.equal(new TextDecoder().decode(answer), "echo:hello");
    const m = received.at(-1);
    assert.equal(m.path, "/upstream");
    assert.equal(m.message.mid, 3301);
    assert.equal(m.message.key, "sdk-business");
    assert.equal(m.message.platform, "node");
    assert.equal(m.message.op, 4);
    assert.equal(Buffer.from(m.message.body, "base64").toString(), "hello");

    for (const body of ["fail", "silent", "huge"]) {
      const started = Date.now();
      const reply = await c.send(body);
      assert.equal(reply.length, 0, `${body}: an empty answer`);
      assert.ok(Date.now() - started < 3000, `${body}: answered within the timeout`);
    }
    // Bytes go through untouched.
    const bytes = await c.send(new Uint8Array([0, 1, 2, 255]));
    assert.equal(new TextDecoder().decode(bytes.slice(0, 5)), "echo:");
    assert.deepEqual(
      [...Buffer.from(received.at(-1).message.body, "base64")],
      [0, 1, 2, 255],
    );
    // Still connected: presence lists it, with its platform.
    const online = await gateway.get("/goim/online/mids?mids=3301");
    const conns = JSON.parse(online.text).data["3301"];
    assert.equal(conns.length, 1);
    assert.equal(conns[0].key, "sdk-business");
    assert.equal(conns[0].platform, "node");
    assert.equal(new TextDecoder().decode(await c.send("again")), "echo:again");
  } finally {
    c.close();
  }
});
