// An in-process stand-in for comet, for the unit tests: a real WebSocket server on a loopback
// port that speaks the frame protocol the way imgate does (op 8 after auth, op 3 with an
// online count, echoed replies, an empty op 5 for a client message) and lets a test push,
// misbehave or drop connections.
import { WebSocketServer } from "ws";
import { decodeMessage, encodeFrame, Op } from "../../dist/index.js";

/** Encodes frames as the body of one op-9 batch, as imgate sends pushes over WebSocket. */
export function batch(...frames) {
  const inner = Buffer.concat(frames.map((f) => encodeFrame(f.op, f.seq ?? 0, f.body ?? "")));
  return encodeFrame(Op.Raw, 0, inner);
}

/** Encodes frames as one op-28 frame tagged with `room`, as imgate sends room pushes. */
export function roomFrames(room, ...frames) {
  const name = Buffer.from(room);
  const length = Buffer.alloc(2);
  length.writeUInt16BE(name.length);
  const inner = frames.map((f) => encodeFrame(f.op, f.seq ?? 0, f.body ?? ""));
  return encodeFrame(Op.Room, 0, Buffer.concat([length, name, ...inner]));
}

export class FakeComet {
  /**
   * `handlers[op](conn, frame)` overrides the answer to a client op; returning undefined
   * sends nothing.
   */
  constructor(handlers = {}) {
    this.handlers = handlers;
    this.connections = [];
    this.waiters = [];
    this.online = 7;
  }

  async start() {
    this.wss = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/sub" });
    await new Promise((resolve) => this.wss.once("listening", resolve));
    this.url = `ws://127.0.0.1:${this.wss.address().port}/sub`;
    this.wss.on("connection", (socket) => {
      const conn = { socket, frames: [], auth: undefined, closed: false };
      this.connections.push(conn);
      socket.on("close", () => {
        conn.closed = true;
        this.wake();
      });
      socket.on("message", (data) => {
        const [frame] = decodeMessage(new Uint8Array(data));
        conn.frames.push(frame);
        this.answer(conn, frame);
        this.wake();
      });
      this.wake();
    });
    return this;
  }

  answer(conn, frame) {
    const text = Buffer.from(frame.body).toString();
    if (frame.op === Op.Auth) conn.auth = JSON.parse(text);
    const custom = this.handlers[frame.op];
    if (custom) {
      const reply = custom(conn, frame, text);
      if (reply !== undefined) conn.socket.send(reply);
      return;
    }
    const echo = (op) => conn.socket.send(encodeFrame(op, frame.seq, frame.body, frame.ver));
    switch (frame.op) {
      case Op.Auth:
        return echo(Op.AuthReply);
      case Op.Heartbeat: {
        const body = Buffer.alloc(4);
        body.writeInt32BE(this.online);
        return conn.socket.send(encodeFrame(Op.HeartbeatReply, frame.seq, body));
      }
      case Op.ChangeRoom:
        return echo(Op.ChangeRoomReply);
      case Op.Sub:
        return echo(Op.SubReply);
      case Op.Unsub:
        return echo(Op.UnsubReply);
      case Op.Ack:
        return echo(Op.AckReply);
      case Op.Sync:
        return echo(Op.SyncReply);
      case Op.Join:
        return echo(Op.JoinReply);
      case Op.Leave:
        return echo(Op.LeaveReply);
      case Op.SendMsg:
        // No business behind this gateway: an empty answer.
        return conn.socket.send(encodeFrame(Op.SendMsgReply, frame.seq, "", frame.ver));
      default:
        // Like today's comet: an op it does not know is echoed with an empty body.
        return conn.socket.send(encodeFrame(frame.op, frame.seq, "", frame.ver));
    }
  }

  /** The connection opened `index`-th (0 = first), once it has sent its auth frame. */
  async connection(index, timeout = 5000) {
    await this.until(
      () => this.connections[index]?.auth !== undefined,
      `connection ${index} to authenticate`,
      timeout,
    );
    return this.connections[index];
  }

  /** The frames a connection received with this op. */
  sent(conn, op) {
    return conn.frames.filter((f) => f.op === op);
  }

  /** Waits (bounded) until `condition()` holds, re-checking on every server event. */
  async until(condition, what, timeout = 5000) {
    const deadline = Date.now() + timeout;
    while (!condition()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`fake comet: timed out waiting for ${what}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 50));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  async stop() {
    for (const c of this.connections) c.socket.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
  }
}
