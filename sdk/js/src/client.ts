/**
 * The imgate client: one connection at a time (`transport.ts`), authenticated with goim's auth
 * JSON and a token it asks the application for (`getToken`) and renews before it expires
 * (op 30), reconnected with backoff, back in its rooms (`rooms.ts`) after each reconnect and
 * caught up (`delivery.ts`) so that the application sees every stored message once, in order.
 * This file is the lifecycle and the public API; its options and events are in `options.ts`.
 */
import {
  authBody,
  bodyText,
  decodeIncoming,
  onlineCount,
  refreshedExp,
  tokenExp,
} from "./codec.js";
import { Delivery, type Checkpoint } from "./delivery.js";
import { ImgateError, type ImgateErrorCode } from "./errors.js";
import { FrameError, Op, type Frame } from "./frame.js";
import { afterKick, type KickOutcome } from "./kick.js";
import type {
  ConnectionState,
  ImgateClientOptions,
  ImgateEvents,
  RoomChangeBy,
  TokenSource,
} from "./options.js";
import { RoomSet } from "./rooms.js";
import { Transport, type WebSocketConstructor } from "./transport.js";

type Listener<K extends keyof ImgateEvents> = (event: ImgateEvents[K]) => void;
type Timer = ReturnType<typeof setTimeout>;

/** Ops up to here are the protocol's; a frame with one of them is never a business push. */
const LAST_PROTOCOL_OP = 31;
/** A connection authenticated this long counts as good: the next reconnect starts over. */
const STABLE_MS = 10_000;
/** Renewals of the token are at least this far apart (ms). */
const MIN_REFRESH_MS = 1000;
/** setTimeout's longest delay; a longer one would fire at once. */
const MAX_TIMER_MS = 0x7fffffff;

type Phase = "idle" | "connecting" | "authenticating" | "connected" | "waiting";

/** How a dropped connection goes on: reconnect after a backoff, at once, or not at all. */
type After = "backoff" | "now" | "stop";

const noop = () => {};

/** A client of imgate; see the README for a quick start. */
export class ImgateClient {
  private readonly options: ImgateClientOptions;
  private readonly WebSocketClass: WebSocketConstructor;
  private readonly key: string;
  private readonly accepts: Set<number>;
  private readonly roomSet: RoomSet;
  private readonly delivery: Delivery;
  private readonly listeners = new Map<keyof ImgateEvents, Set<Listener<any>>>();

  private phase: Phase = "idle";
  private transport: Transport | undefined;
  /** Counts connection attempts, so a late answer from `getToken` for an old one is ignored. */
  private attemptId = 0;
  private authSeq = 0;
  private attempt = 0;
  private everConnected = false;
  private connectedAt = 0;
  /** The token of the current connection and its `exp` (Unix seconds), if known. */
  private token: string | undefined;
  private tokenExpiry: number | undefined;
  private authTimer: Timer | undefined;
  private reconnectTimer: Timer | undefined;
  private refreshTimer: Timer | undefined;
  private waiters: { resolve: () => void; reject: (e: ImgateError) => void }[] = [];

  constructor(options: ImgateClientOptions) {
    if (!options || typeof options.url !== "string" || options.url === "") {
      throw new TypeError("ImgateClient needs options.url, e.g. ws://127.0.0.1:3102/sub");
    }
    if (options.getToken !== undefined && typeof options.getToken !== "function") {
      throw new TypeError("options.getToken must be a function returning the token (or a promise of it)");
    }
    if (options.getToken !== undefined && options.token !== undefined) {
      throw new TypeError("pass options.getToken or options.token, not both");
    }
    const WebSocketClass =
      options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocketClass) {
      throw new TypeError(
        "no global WebSocket here: pass options.WebSocket (on Node 20, the ws package's)",
      );
    }
    this.options = options;
    this.WebSocketClass = WebSocketClass;
    this.key = options.key ?? randomKey();
    this.accepts = new Set(checkOps(options.accepts ?? []));
    this.roomSet = new RoomSet(options.room ?? "");
    if (options.token !== undefined) this.useToken(options.token);
    this.delivery = new Delivery(
      {
        deliver: (messages) => {
          for (const message of messages) this.emit("message", message);
        },
        sync: (body) =>
          this.request(Op.Sync, body, Op.SyncReply, (reply) => reply.body.length > 0),
        ack: (floor) => this.transport?.sendOneWay(Op.Ack, `${floor}`),
        connected: () => this.phase === "connected",
        report: (error) => this.emit("error", error),
      },
      { gapTimeout: options.gapTimeout ?? 500, acks: options.acks ?? true },
      { inboxSeq: options.inboxSeq, roomSeqs: options.roomSeqs },
    );
  }

  // ----- public API -----

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends keyof ImgateEvents>(event: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  off<K extends keyof ImgateEvents>(event: K, listener: Listener<K>): void {
    this.listeners.get(event)?.delete(listener);
  }

  /**
   * Starts connecting (and reconnecting after every loss until `close()` or a final kick).
   * Resolves at the next successful auth; rejects if the client stops first (`closed`,
   * `kicked`, `refused`, `token`).
   */
  connect(): Promise<void> {
    const connected = new Promise<void>((resolve, reject) => {
      if (this.phase === "connected") {
        resolve();
      } else {
        this.waiters.push({ resolve, reject });
      }
    });
    if (this.phase === "idle") {
      this.attempt = 0;
      this.open();
    }
    return connected;
  }

  /**
   * Closes the connection and stops reconnecting. Rooms and where the logs stand are kept for
   * `connect()`.
   */
  close(): void {
    this.delivery.stop();
    this.stopWaiters(new ImgateError("closed", "the client was closed"));
    if (this.phase !== "idle") {
      this.drop("closed by the application", "stop");
    }
  }

  /** The connection's state: `connecting`, `connected` or `disconnected` (event `state`). */
  get state(): ConnectionState {
    return publicState(this.phase);
  }

  /** Whether the client is connected and authenticated now. */
  get connected(): boolean {
    return this.phase === "connected";
  }

  /** The main room (auth / op 12), "" for none. */
  get room(): string {
    return this.roomSet.primary;
  }

  /** Rooms joined besides `room`, by `join()` or by the server. */
  get joinedRooms(): string[] {
    return this.roomSet.extra;
  }

  /** Every room the client is in (or will be in on its next connection): `room` first. */
  get rooms(): string[] {
    return this.roomSet.all;
  }

  /**
   * Where the logs stand: save it to resume with the `inboxSeq` and `roomSeqs` options.
   * (Called `state` before 0.3.)
   */
  get checkpoint(): Checkpoint {
    return this.delivery.checkpoint;
  }

  /** When the current token expires (Unix seconds), when the client knows. */
  get tokenExpiresAt(): number | undefined {
    return this.tokenExpiry;
  }

  /**
   * Moves the connection to another main room (op 12); "" leaves it. The old main room is
   * left; a room joined with `join()` becomes the main room. While disconnected the room is
   * taken at the next auth. Rejects with `refused` when the server keeps the connection where
   * it was (a token that does not allow the room).
   */
  async switchRoom(room: string): Promise<void> {
    checkRoom(room, true);
    if (this.phase !== "connected") {
      this.setPrimaryRoom(room);
      return;
    }
    await this.request(Op.ChangeRoom, room, Op.ChangeRoomReply, (reply) => {
      if (room !== "" && reply.body.length === 0) {
        throw new ImgateError("refused", `the server refused room ${room}`);
      }
      this.setPrimaryRoom(room);
    });
  }

  /**
   * Joins one more room (op 24) and resolves with the server's echo of its name. Rejects
   * with `refused` when the server answers empty (the token's rooms, the gateway's
   * `max_rooms_per_conn`, a name it does not take). While disconnected the room is joined at
   * the next auth and this resolves at once (a refusal then comes as an `error` event).
   */
  async join(room: string): Promise<string> {
    checkRoom(room, false);
    if (this.phase !== "connected") {
      this.addRoom(room, "client", false);
      return room;
    }
    return this.request(Op.Join, room, Op.JoinReply, (reply) => {
      if (reply.body.length === 0) {
        throw new ImgateError("refused", `the server refused to join ${room}`);
      }
      this.addRoom(room, "client", true);
      return bodyText(reply);
    });
  }

  /**
   * Leaves a room (op 26), joined or the main one, and resolves with the server's echo of its
   * name. Rejects with `refused` when the server says the connection was not in it (the client
   * forgets the room either way). While disconnected it is forgotten at once.
   */
  async leave(room: string): Promise<string> {
    checkRoom(room, false);
    if (this.phase !== "connected") {
      this.removeRoom(room, "client");
      return room;
    }
    return this.request(Op.Leave, room, Op.LeaveReply, (reply) => {
      this.removeRoom(room, "client");
      if (reply.body.length === 0) {
        throw new ImgateError("refused", `the server says the connection is not in ${room}`);
      }
      return bodyText(reply);
    });
  }

  /** Adds business ops to receive from pushes by key and broadcasts (op 14). */
  async watch(ops: number[]): Promise<void> {
    checkOps(ops);
    if (this.phase === "connected" && ops.length > 0) {
      await this.request(Op.Sub, ops.join(","), Op.SubReply, noop);
    }
    for (const op of ops) {
      this.accepts.add(op);
    }
  }

  /** Stops receiving these business ops from pushes by key and broadcasts (op 16). */
  async unwatch(ops: number[]): Promise<void> {
    checkOps(ops);
    if (this.phase === "connected" && ops.length > 0) {
      await this.request(Op.Unsub, ops.join(","), Op.UnsubReply, noop);
    }
    for (const op of ops) {
      this.accepts.delete(op);
    }
  }

  /**
   * Sends a message to the business (op 4) and resolves with its answer, the body of the
   * op-5 reply with the same seq. An empty answer means the business gave none (it failed,
   * took too long, is not configured, or 8 of this connection's messages wait already).
   * Rejects with `timeout`, `disconnected` or `not_connected`; the client never sends a
   * message twice, so a message in flight when the connection drops is not resent.
   */
  async send(body: Uint8Array | string): Promise<Uint8Array> {
    if (typeof body !== "string" && !ArrayBuffer.isView(body)) {
      throw new TypeError("send() takes a string or a Uint8Array");
    }
    const bytes =
      typeof body === "string" ? body : new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
    return this.request(Op.SendMsg, bytes, Op.SendMsgReply, (reply) => reply.body);
  }

  // ----- connection lifecycle -----

  /** One connection attempt: a token (from `getToken`), the socket, auth. */
  private open(): void {
    this.reconnectTimer = undefined;
    const id = ++this.attemptId;
    this.setPhase("connecting");
    this.emit("connecting", { attempt: this.attempt });
    if (this.phase !== "connecting" || id !== this.attemptId) return; // a listener closed it
    const authTimeout = this.options.authTimeout ?? 10_000;
    this.authTimer = setTimeout(
      () => this.drop(`not authenticated within ${authTimeout} ms`, "backoff"),
      authTimeout,
    );
    const getToken = this.options.getToken;
    if (!getToken) {
      this.openSocket();
      return;
    }
    callTokenSource(getToken).then(
      (token) => {
        if (id !== this.attemptId || this.phase !== "connecting") return;
        if (token === undefined) {
          this.stopWaiters(new ImgateError("token", "getToken gave no token"));
          this.drop("getToken gave no token", "stop");
          return;
        }
        this.useToken(token);
        this.openSocket();
      },
      (cause) => {
        if (id !== this.attemptId || this.phase !== "connecting") return;
        this.report("token", `getToken failed: ${describe(cause)}`, cause);
        this.drop("getToken failed", "backoff");
      },
    );
  }

  private openSocket(): void {
    let transport: Transport;
    try {
      transport = new Transport(this.WebSocketClass, this.options.url, {
        open: () => this.onOpen(transport),
        data: (data) => this.onData(transport, data),
        closed: (code, reason) => {
          const why = reason ? ` ${reason}` : "";
          this.drop(
            this.phase === "connected"
              ? `the connection closed (code ${code}${why})`
              : `the connection closed before auth was accepted (code ${code}${why})`,
            "backoff",
          );
        },
        lost: (reason, cause) => {
          if (cause !== undefined) this.report("socket", `${reason}: ${describe(cause)}`, cause);
          this.drop(reason, "backoff");
        },
      });
    } catch (cause) {
      this.report("socket", `cannot open ${this.options.url}: ${describe(cause)}`, cause);
      this.drop("the WebSocket could not be created", "backoff");
      return;
    }
    this.transport = transport;
  }

  private onOpen(transport: Transport): void {
    this.phase = "authenticating";
    this.authSeq = transport.sendOneWay(
      Op.Auth,
      authBody({
        mid: this.options.mid ?? 0,
        key: this.key,
        room: this.roomSet.primary,
        platform: this.options.platform ?? "web",
        accepts: [...this.accepts],
        acks: this.options.acks ?? true,
        token: this.token,
      }),
    );
  }

  private onAuthenticated(transport: Transport): void {
    this.clearTimer("authTimer");
    this.setPhase("connected");
    this.connectedAt = Date.now();
    const reconnected = this.everConnected;
    this.everConnected = true;
    transport.startHeartbeat(this.options.heartbeat ?? 30_000, this.options.heartbeatTimeout ?? 10_000);
    this.catchUp();
    this.scheduleRefresh();
    this.emit("connected", { reconnected });
    for (const waiter of this.waiters.splice(0)) {
      waiter.resolve();
    }
  }

  /**
   * Back in every room and caught up. The main room came with auth (its `room_id`); each
   * joined room is joined again (op 24) and, once in, caught up; then the inbox.
   */
  private catchUp(): void {
    this.delivery.connectionStarted();
    if (this.roomSet.primary !== "") {
      this.delivery.enterRoom(this.roomSet.primary, true);
    }
    for (const room of this.roomSet.extra) {
      this.request(Op.Join, room, Op.JoinReply, (reply) => {
        if (reply.body.length === 0) {
          if (room !== this.roomSet.primary) this.removeRoom(room, "server");
          throw new ImgateError("refused", `the server refused to join ${room} again`);
        }
        if (this.roomSet.isExtra(room)) this.delivery.enterRoom(room, true);
      }).catch((error: ImgateError) => {
        // A lost connection joins again on the next one.
        if (error.code !== "disconnected") this.emit("error", error);
      });
    }
    this.delivery.catchUpInbox();
  }

  /**
   * Drops the connection (if any) and goes on as `after` says: reconnect after a backoff, at
   * once, or stop.
   */
  private drop(reason: string, after: After): void {
    this.attemptId++; // a getToken still running belongs to a gone attempt
    const transport = this.transport;
    this.transport = undefined;
    transport?.close(reason, after === "stop" ? 1000 : 4000);
    if (this.phase === "connected" && Date.now() - this.connectedAt >= STABLE_MS) {
      this.attempt = 0;
    }
    this.clearTimer("authTimer");
    this.clearTimer("reconnectTimer");
    this.clearTimer("refreshTimer");
    const settings = this.options.reconnect ?? true;
    if (after === "stop" || settings === false) {
      this.setPhase("idle");
      this.emit("disconnected", { reason, willReconnect: false });
      return;
    }
    let delay = 0;
    // At once only right after a good stretch: a token that expires again at once (a clock
    // far off, a hook's expire_at in the past) must not turn into a reconnect loop.
    if (after === "backoff" || this.attempt > 0) {
      const { minDelay = 500, maxDelay = 30_000 } = settings === true ? {} : settings;
      const ceiling = Math.min(maxDelay, minDelay * 2 ** Math.min(this.attempt, 30));
      // Half fixed, half random: clients dropped together do not come back together.
      delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    }
    this.attempt++;
    this.setPhase("waiting");
    this.reconnectTimer = setTimeout(() => this.open(), delay);
    this.emit("disconnected", { reason, willReconnect: true, delay });
  }

  // ----- tokens -----

  private useToken(token: string): void {
    this.token = token;
    this.tokenExpiry = tokenExp(token);
  }

  /**
   * With `getToken` and a known expiry, asks for a fresh token when three quarters of the
   * time left have passed (the gateway closes the connection at `exp` plus its leeway).
   */
  private scheduleRefresh(retry = false): void {
    this.clearTimer("refreshTimer");
    if (!this.options.getToken || this.tokenExpiry === undefined || this.phase !== "connected") {
      return;
    }
    const left = this.tokenExpiry * 1000 - Date.now();
    // A retry (op 31 empty: not checked; getToken failed or gave no fresher token) comes
    // sooner; neither comes in a loop, even past `exp` (the gateway's leeway runs then).
    const delay = Math.max(MIN_REFRESH_MS, retry ? Math.min(30_000, left / 4) : (left * 3) / 4);
    const due = Date.now() + delay;
    const arm = () => {
      const wait = due - Date.now();
      this.refreshTimer =
        wait > MAX_TIMER_MS ? setTimeout(arm, MAX_TIMER_MS) : setTimeout(() => this.refresh(), Math.max(0, wait));
    };
    arm();
  }

  /** Sends a fresh token from `getToken` (op 30); op 31 says until when it holds. */
  private refresh(): void {
    this.refreshTimer = undefined;
    const transport = this.transport;
    const getToken = this.options.getToken;
    if (!getToken || !transport || this.phase !== "connected") return;
    const current = () => this.transport === transport && this.phase === "connected";
    callTokenSource(getToken)
      .then((token) => {
        if (!current()) return undefined;
        if (token === undefined) {
          // Nothing to renew with: the connection lasts until its token expires.
          return undefined;
        }
        const before = this.tokenExpiry ?? 0;
        return this.request(Op.Refresh, token, Op.RefreshReply, (reply) => {
          const exp = refreshedExp(reply);
          if (exp !== undefined) {
            this.token = token;
            this.tokenExpiry = exp;
          }
          return exp;
        }).then((exp) => {
          if (!current()) return;
          if (exp === undefined) {
            this.report("refused", "the gateway could not check the fresh token now; trying again");
            this.scheduleRefresh(true);
          } else if (exp <= before) {
            this.report("token", `getToken gave no fresher token (exp ${exp}); trying again`);
            this.scheduleRefresh(true);
          } else {
            this.emit("token", { exp });
            this.scheduleRefresh();
          }
        });
      })
      .catch((cause) => {
        if (!current()) return;
        if (cause instanceof ImgateError) {
          if (cause.code === "disconnected") return;
          this.emit("error", cause);
          if (cause.code === "unsupported") return; // an older gateway: no op 30
        } else {
          this.report("token", `getToken failed: ${describe(cause)}`, cause);
        }
        this.scheduleRefresh(true);
      });
  }

  // ----- receiving -----

  private onData(transport: Transport, data: unknown): void {
    let received;
    try {
      received = decodeIncoming(data);
    } catch (cause) {
      const detail = cause instanceof FrameError ? cause.message : String(cause);
      this.report("protocol", `malformed message from the server: ${detail}`, cause);
      this.drop(`protocol error: ${detail}`, "backoff");
      return;
    }
    for (const { frame, room } of received) {
      if (this.transport !== transport) return; // a listener closed the client, or a kick
      if (room === undefined) {
        this.onFrame(transport, frame);
      } else if (this.phase === "connected") {
        this.delivery.onRoomPush(room, frame);
      }
    }
    this.delivery.flushAck();
  }

  private onFrame(transport: Transport, frame: Frame): void {
    if (frame.op === Op.Disconnect) {
      this.onKick(transport, bodyText(frame));
      return;
    }
    if (frame.op === Op.AuthReply) {
      if (this.phase === "authenticating" && frame.seq === this.authSeq) this.onAuthenticated(transport);
      return;
    }
    if (this.phase !== "connected") {
      return; // nothing but the auth reply is expected before auth
    }
    if (frame.op === Op.HeartbeatReply) {
      this.emit("heartbeat", { online: onlineCount(frame) });
      return;
    }
    if (transport.settle(frame)) {
      return;
    }
    // seq 0: the server joined or left a room for the connection (the business's call).
    if (frame.seq === 0 && frame.op === Op.JoinReply) {
      const room = bodyText(frame);
      if (room !== "") this.addRoom(room, "server", true);
      return;
    }
    if (frame.seq === 0 && frame.op === Op.LeaveReply) {
      this.removeRoom(bodyText(frame), "server");
      return;
    }
    if (frame.op >= 0 && frame.op <= LAST_PROTOCOL_OP) {
      return; // a late reply, or an op this client does not use
    }
    this.delivery.onPush(frame);
  }

  /** op 6: the server closes the connection and says why; see kick.ts for what follows. */
  private onKick(transport: Transport, reason: string): void {
    const atAuth = this.phase !== "connected";
    const outcome: KickOutcome = afterKick(reason, atAuth, this.options.getToken !== undefined);
    const after: After = outcome === "stop" ? "stop" : outcome === "renew" ? "now" : "backoff";
    if (atAuth) {
      const refused = new ImgateError("refused", `the server refused auth: ${reason}`);
      this.emit("error", refused);
      if (after === "stop") this.stopWaiters(refused);
    } else {
      this.emit("kicked", { reason, final: after === "stop" });
    }
    // A listener may have closed the client meanwhile.
    if (this.transport === transport) {
      this.drop(atAuth ? `auth refused: ${reason}` : `kicked: ${reason}`, after);
    }
  }

  // ----- rooms -----

  /** The client is in `room` (besides its main room); `entered`: the connection is in it now. */
  private addRoom(room: string, by: RoomChangeBy, entered: boolean): void {
    const added = this.roomSet.add(room);
    if (entered && this.roomSet.has(room)) this.delivery.enterRoom(room, false);
    if (added) this.emit("roomJoined", { room, by });
  }

  /** The client is no longer in `room`: its log ends (a later join starts a new one). */
  private removeRoom(room: string, by: RoomChangeBy): void {
    const removed = this.roomSet.remove(room);
    this.delivery.leaveRoom(room);
    if (removed) this.emit("roomLeft", { room, by });
  }

  /**
   * The main room is now `room`, as the server does it for op 12: the old main room is left,
   * and a joined room that becomes the main one stays (with its log).
   */
  private setPrimaryRoom(room: string): void {
    if (room === this.roomSet.primary) return;
    const wasExtra = this.roomSet.isExtra(room);
    const old = this.roomSet.setPrimary(room);
    if (old !== "") {
      this.delivery.leaveRoom(old);
      this.emit("roomLeft", { room: old, by: "client" });
    }
    if (room === "") return;
    if (this.phase === "connected") this.delivery.enterRoom(room, false);
    if (!wasExtra) this.emit("roomJoined", { room, by: "client" });
  }

  // ----- plumbing -----

  private request<T>(
    op: number,
    body: Uint8Array | string,
    replyOp: number,
    answer: (reply: Frame) => T,
  ): Promise<T> {
    if (this.phase !== "connected" || !this.transport) {
      return Promise.reject(new ImgateError("not_connected", "the client is not connected"));
    }
    return this.transport.request(op, body, replyOp, this.options.requestTimeout ?? 10_000, answer);
  }

  private setPhase(phase: Phase): void {
    const previous = publicState(this.phase);
    this.phase = phase;
    const state = publicState(phase);
    if (state !== previous) this.emit("state", { state, previous });
  }

  private stopWaiters(error: ImgateError): void {
    for (const waiter of this.waiters.splice(0)) {
      waiter.reject(error);
    }
  }

  private clearTimer(name: "authTimer" | "reconnectTimer" | "refreshTimer"): void {
    const timer = this[name];
    if (timer !== undefined) {
      clearTimeout(timer);
      this[name] = undefined;
    }
  }

  private report(code: ImgateErrorCode, message: string, cause?: unknown): void {
    this.emit("error", new ImgateError(code, message, cause === undefined ? undefined : { cause }));
  }

  /** Calls each listener; one that throws is reported and never breaks the client. */
  private emit<K extends keyof ImgateEvents>(event: K, value: ImgateEvents[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(value);
      } catch (cause) {
        if (event !== "error") {
          this.report("listener", `a ${event} listener threw: ${String(cause)}`, cause);
        }
      }
    }
  }
}

function publicState(phase: Phase): ConnectionState {
  switch (phase) {
    case "connecting":
    case "authenticating":
      return "connecting";
    case "connected":
      return "connected";
    default:
      return "disconnected";
  }
}

/**
 * Calls `getToken`, whatever it returns or throws: a token, `undefined` for none, or a
 * rejection (a token that is not a non-empty string is one).
 */
async function callTokenSource(getToken: TokenSource): Promise<string | undefined> {
  const token = await getToken();
  if (token === null || token === undefined) return undefined;
  if (typeof token !== "string" || token === "") {
    throw new TypeError(`getToken must give a non-empty string, got ${JSON.stringify(token)}`);
  }
  return token;
}

function describe(cause: unknown): string {
  return cause instanceof Error ? cause.message : String(cause);
}

function checkOps(ops: number[]): number[] {
  if (!Array.isArray(ops) || !ops.every((op) => Number.isInteger(op) && op >= -(2 ** 31) && op < 2 ** 31)) {
    throw new TypeError(`ops must be an array of 32-bit integers, got ${JSON.stringify(ops)}`);
  }
  return ops;
}

function checkRoom(room: string, emptyAllowed: boolean): void {
  if (typeof room !== "string" || (!emptyAllowed && room === "")) {
    throw new TypeError(`a room is a string "type://id", got ${JSON.stringify(room)}`);
  }
}

function randomKey(): string {
  const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (crypto?.randomUUID) {
    return crypto.randomUUID();
  }
  let key = "";
  for (let i = 0; i < 4; i++) {
    key += Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, "0");
  }
  return key;
}
