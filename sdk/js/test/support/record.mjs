// Records what an ImgateClient tells the application, and waits (bounded) for it.

export function record(client) {
  const r = {
    messages: [],
    errors: [],
    connected: [],
    disconnected: [],
    heartbeats: [],
    /** Bodies of the messages so far, as text. */
    texts() {
      return r.messages.map((m) => m.text());
    },
    async until(condition, what, timeout = 5000) {
      const deadline = Date.now() + timeout;
      while (!condition()) {
        if (Date.now() > deadline) {
          throw new Error(
            `timed out after ${timeout} ms waiting for ${what}; messages ${JSON.stringify(r.texts())}, ` +
              `errors ${JSON.stringify(r.errors.map((e) => `${e.code}: ${e.message}`))}, ` +
              `disconnects ${JSON.stringify(r.disconnected.map((d) => d.reason))}`,
          );
        }
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    },
  };
  client.on("message", (m) => r.messages.push(m));
  client.on("error", (e) => r.errors.push(e));
  client.on("connected", (e) => r.connected.push(e));
  client.on("disconnected", (e) => r.disconnected.push(e));
  client.on("heartbeat", (e) => r.heartbeats.push(e));
  return r;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
