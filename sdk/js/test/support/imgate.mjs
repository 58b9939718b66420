// Starts the real imgate binary on free loopback ports (port 0, read back from its start-up
// log), waits until its HTTP API answers, and stops it. Every wait is bounded.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

export const repoRoot = path.resolve(fileURLToPath(import.meta.url), "../../../../..");

/** The binary the tests run: $IMGATE_BIN, or the debug build `cargo build` leaves. */
export function imgateBinary() {
  const binary = process.env.IMGATE_BIN ?? path.join(repoRoot, "target/debug/imgate");
  if (!existsSync(binary)) {
    throw new Error(
      `imgate binary not found at ${binary}: build it with \`cargo build -p imgate\` ` +
        "(scripts/test-js.sh does) or point IMGATE_BIN at one",
    );
  }
  return binary;
}

const LOOPBACK_PORTS = [
  "--tcp-bind", "127.0.0.1:0",
  "--ws-bind", "127.0.0.1:0",
  "--http-bind", "127.0.0.1:0",
  "--comet-link-bind", "127.0.0.1:0",
  "--logic-link-bind", "127.0.0.1:0",
];

/**
 * Runs `imgate [args]` on free ports. `env` adds variables (say IMGATE_JWT_SECRET); without
 * them imgate runs in development mode. Resolves once the API answers.
 */
export async function startImgate({ args = [], env = {}, timeout = 30_000 } = {}) {
  const binary = imgateBinary();
  const childEnv = { ...process.env, NO_COLOR: "1", RUST_LOG: "info" };
  delete childEnv.IMGATE_JWT_SECRET;
  delete childEnv.IMGATE_API_KEY;
  const child = spawn(binary, [...LOOPBACK_PORTS, "--shards", "1", ...args], {
    env: { ...childEnv, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  let exited = null;
  child.on("exit", (code, signal) => (exited = { code, signal }));
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    // Keep the log bounded: a long-running gateway logs every connection.
    log = (log + chunk.replace(/\x1b\[[0-9;]*m/g, "")).slice(-200_000);
  });

  const deadline = Date.now() + timeout;
  let ws;
  let http;
  while (!(ws && http)) {
    if (exited) {
      throw new Error(`imgate exited (${JSON.stringify(exited)}) before it listened:\n${log}`);
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`imgate did not report its addresses within ${timeout} ms:\n${log}`);
    }
    ws = log.match(/comet \S+ tcp \[[^\]]*\] ws \[([^\],]+)/)?.[1];
    http = log.match(/logic http (\S+) link/)?.[1];
    await new Promise((resolve) => setTimeout(resolve, 20));
  }

  const gateway = {
    wsUrl: `ws://${ws}/sub`,
    wsAddr: ws,
    httpBase: `http://${http}`,
    log: () => log,
    child,
    /** POST a push; resolves with the parsed JSON answer, failing on a non-2xx status. */
    async push(pathAndQuery, body, headers = {}) {
      const response = await fetch(gateway.httpBase + pathAndQuery, { method: "POST", body, headers });
      const answer = await response.json();
      if (!response.ok || answer.code !== 0) {
        throw new Error(`POST ${pathAndQuery} → ${response.status} ${JSON.stringify(answer)}`);
      }
      return answer;
    },
    async get(pathAndQuery, headers = {}) {
      const response = await fetch(gateway.httpBase + pathAndQuery, { headers });
      return { status: response.status, text: await response.text(), response };
    },
    async stop() {
      if (exited) return;
      const gone = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await gone;
      clearTimeout(timer);
    },
  };

  // The gateway logs its addresses once its comet is linked; the API must answer too (the
  // public node list, so this works with an API key as well).
  for (;;) {
    try {
      const nodes = await gateway.get("/goim/nodes/weighted?platform=web");
      if (nodes.status === 200 && JSON.parse(nodes.text).data?.nodes?.length > 0) break;
    } catch {
      // Not listening yet.
    }
    if (exited || Date.now() > deadline) {
      await gateway.stop();
      throw new Error(`imgate's HTTP API at ${gateway.httpBase} did not answer in time:\n${log}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return gateway;
}
