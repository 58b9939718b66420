// A TCP proxy between a client and imgate that a test can stall and cut, to lose a
// connection mid-stream the way a network does: bytes the server wrote are dropped unseen.
import net from "node:net";

export async function startProxy(targetHost, targetPort) {
  const pairs = new Set();
  let stalled = false;
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, targetHost);
    const pair = { client, upstream, held: [] };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("data", (data) => upstream.write(data));
    upstream.on("data", (data) => {
      if (stalled) pair.held.push(data);
      else client.write(data);
    });
    for (const socket of [client, upstream]) {
      socket.on("error", end);
      socket.on("close", end);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    port,
    url: `ws://127.0.0.1:${port}/sub`,
    get connections() {
      return pairs.size;
    },
    /** Holds back what the server sends (it stays written, as far as the server knows). */
    stall() {
      stalled = true;
    },
    /** Destroys every proxied connection, dropping what was held back, and resumes. */
    cut() {
      let dropped = 0;
      for (const pair of [...pairs]) {
        dropped += pair.held.reduce((n, b) => n + b.length, 0);
        pair.client.destroy();
        pair.upstream.destroy();
        pairs.delete(pair);
      }
      stalled = false;
      return dropped;
    },
    async close() {
      this.cut();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
