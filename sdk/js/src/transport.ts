/**
 * One WebSocket to comet: opened, written to frame by frame, its requests matched with their
 * replies by seq, kept alive with heartbeats, and closed. It knows nothing of auth, rooms or
 * sequences; the client makes a new one for every connection.
 */
import { ImgateError } from "./errors.js";
import { encodeFrame, Op, type Frame } from "./frame.js";

/** The part of the standard WebSocket API the client uses (browsers, Node 22+, `ws`). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code?: number; reason?: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket class: the global one, or e.g. the `ws` package's on Node 20. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** What a transport tells its owner. Nothing is called after `close()`. */
export interface TransportEvents {
  open(): void;
  data(data: unknown): void;
  /** The socket closed by itself (or failed): `code` and `reason` of its close; the owner closes the transport. */
  closed(code: number, reason: string): void;
  /**
   * The transport gives up on the socket (a send failed, a heartbeat went unanswered); the
   * owner closes it.
   */
  lost(reason: string, cause?: unknown): void;
}

type Timer = ReturnType<typeof setTimeout>;

interface PendingRequest {
  op: number;
  replyOp: number;
  /** Settles the request with its reply, synchronously, before the next frame is read. */
  answer: (frame: Frame) => void;
  reject: (error: ImgateError) => void;
  timer: Timer;
}

const OPEN = 1;
const noop = () => {};

export class Transport {
  private readonly socket: WebSocketLike;
  private readonly requests = new Map<number, PendingRequest>();
  private nextSeqValue = 0;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private deadTimer: Timer | undefined;
  private closed = false;

  /** Opens the socket; throws what the WebSocket constructor throws. */
  constructor(
    WebSocketClass: WebSocketConstructor,
    url: string,
    private readonly events: TransportEvents,
  ) {
    const ws = new WebSocketClass(url);
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    ws.onopen = () => this.closed || events.open();
    ws.onmessage = (event) => {
      if (this.closed) return;
      this.clearDeadTimer(); // anything from the server shows the connection is alive
      events.data(event.data);
    };
    ws.onclose = (event) => {
      if (this.closed) return;
      events.closed(event?.code ?? 0, event?.reason ?? "");
    };
    // A close event always follows an error event.
    ws.onerror = noop;
  }

  /** Whether `close()` was called or the socket closed. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Sends one frame; a failure to send gives the socket up (`lost`). */
  send(op: number, seq: number, body?: Uint8Array | string): void {
    if (this.closed || this.socket.readyState !== OPEN) return;
    try {
      this.socket.send(encodeFrame(op, seq, body));
    } catch (cause) {
      this.giveUp("sending failed", cause);
    }
  }

  /** Sends a frame that expects no reply, under a seq of its own. */
  sendOneWay(op: number, body?: Uint8Array | string): number {
    const seq = this.nextSeq();
    this.send(op, seq, body);
    return seq;
  }

  /**
   * Sends a request and settles it with `answer(reply)`, run as the reply is read (before any
   * frame after it), or with the error it throws. An echo of the request's own op means the
   * server does not know it (`unsupported`).
   */
  request<T>(
    op: number,
    body: Uint8Array | string,
    replyOp: number,
    timeout: number,
    answer: (reply: Frame) => T,
  ): Promise<T> {
    if (this.closed) {
      return Promise.reject(new ImgateError("not_connected", "the client is not connected"));
    }
    const seq = this.nextSeq();
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(seq);
        reject(new ImgateError("timeout", `no reply to op ${op} within ${timeout} ms`));
      }, timeout);
      const settle = (reply: Frame) => {
        try {
          resolve(answer(reply));
        } catch (error) {
          reject(error);
        }
      };
      this.requests.set(seq, { op, replyOp, answer: settle, reject, timer });
      this.send(op, seq, body);
    });
  }

  /** Settles the request this frame answers; false when it answers none. */
  settle(frame: Frame): boolean {
    const request = this.requests.get(frame.seq);
    if (!request || (frame.op !== request.replyOp && frame.op !== request.op)) return false;
    this.requests.delete(frame.seq);
    clearTimeout(request.timer);
    if (frame.op === request.op) {
      request.reject(new ImgateError("unsupported", `the server does not support op ${request.op}`));
    } else {
      request.answer(frame);
    }
    return true;
  }

  /**
   * Heartbeats now and every `interval` ms; one unanswered (nothing at all from the server)
   * for `timeout` ms gives the socket up.
   */
  startHeartbeat(interval: number, timeout: number): void {
    const beat = () => {
      this.sendOneWay(Op.Heartbeat);
      if (this.deadTimer === undefined && !this.closed) {
        this.deadTimer = setTimeout(
          () => this.giveUp(`no answer to a heartbeat within ${timeout} ms`),
          timeout,
        );
      }
    };
    beat();
    this.heartbeatTimer = setInterval(beat, interval);
  }

  /**
   * Closes the socket (`code` 4000 when the client means to come back, 1000 when not) and
   * rejects the requests waiting with `disconnected`. Nothing is reported after this.
   */
  close(reason: string, code = 1000): void {
    const wasOpen = !this.closed;
    this.closed = true;
    const ws = this.socket;
    ws.onopen = noop;
    ws.onmessage = noop;
    ws.onclose = noop;
    if (wasOpen) {
      try {
        ws.close(code);
      } catch {
        // Already closing or closed.
      }
    }
    this.clearDeadTimer();
    if (this.heartbeatTimer !== undefined) {
      clearInterval(this.heartbeatTimer);
      this.heartbeatTimer = undefined;
    }
    const why = reason === "" ? "the connection closed" : reason;
    for (const [seq, request] of this.requests) {
      this.requests.delete(seq);
      clearTimeout(request.timer);
      request.reject(new ImgateError("disconnected", `the connection was lost: ${why}`));
    }
  }

  private giveUp(reason: string, cause?: unknown): void {
    if (this.closed) return;
    this.events.lost(reason, cause);
  }

  private clearDeadTimer(): void {
    if (this.deadTimer !== undefined) {
      clearTimeout(this.deadTimer);
      this.deadTimer = undefined;
    }
  }

  /** Request seqs run 1…2^31−1 and skip the ones still waiting for a reply. */
  private nextSeq(): number {
    do {
      this.nextSeqValue = this.nextSeqValue >= 0x7fffffff ? 1 : this.nextSeqValue + 1;
    } while (this.requests.has(this.nextSeqValue));
    return this.nextSeqValue;
  }
}
