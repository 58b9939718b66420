/**
 * The imgate client: one WebSocket to comet, authenticated with goim's auth JSON, kept alive
 * with heartbeats, reconnected with backoff, back in its rooms after each reconnect and caught
 * up so that the application sees every stored message once, in order: the user's inbox and
 * each room's history, told apart by imgate's room tags (op 28).
 */
import { ImgateError, type ImgateErrorCode } from "./errors.js";
import { decodeMessage, decodeRoomFrames, encodeFrame, FrameError, Op, type Frame } from "./frame.js";
import { ImgateMessage } from "./message.js";
import { SequenceLog } from "./sequence.js";

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

/** Reconnect delays: exponential from `minDelay` to `maxDelay`, with jitter. */
export interface ReconnectOptions {
  /** First delay in ms (default 500). */
  minDelay?: number;
  /** Longest delay in ms (default 30 000). */
  maxDelay?: number;
}

export interface ImgateClientOptions {
  /** comet's WebSocket endpoint, e.g. `ws://127.0.0.1:3102/sub`. */
  url: string;
  /** Signed token (deployments that require one); the user is then the token's subject. */
  token?: string;
  /** User id (trusted as is only by a development-mode gateway). */
  mid?: number;
  /**
   * Connection key. Default: a random key made once per client, so a reconnect replaces its
   * own stale session instead of leaving it to time out.
   */
  key?: string;
  /** Main room to be in, `type://id` (change it with `switchRoom`; add more with `join`). */
  room?: string;
  /** Business ops to receive from pushes by key and broadcasts (change with `watch`). */
  accepts?: number[];
  /** Acknowledge stored messages once the application has had them (op 20). Default true. */
  acks?: boolean;
  /** Heartbeat interval in ms (default 30 000, goim's web client; the server allows minutes). */
  heartbeat?: number;
  /** A heartbeat unanswered for this long (ms) means the connection is dead (default 10 000). */
  heartbeatTimeout?: number;
  /** Connecting and authenticating must finish within this many ms (default 10 000). */
  authTimeout?: number;
  /** Replies to `join`, `leave`, `switchRoom`, `watch`, `send`… must come within this (ms, default 10 000). */
  requestTimeout?: number;
  /**
   * How long (ms) a gap in a sequence may stay open before the client asks the server for the
   * missing messages, and then gives up on the ones the server no longer has (default 500).
   */
  gapTimeout?: number;
  /** Reconnect after a connection is lost (default true, with the default delays). */
  reconnect?: boolean | ReconnectOptions;
  /** `platform` of the auth JSON (default "web"). */
  platform?: string;
  /** Resume the inbox after this sequence (e.g. `state.inboxSeq` saved by a previous page). */
  inboxSeq?: number;
  /**
   * Resume room histories after these sequences (e.g. `state.roomSeqs` saved before): a room
   * listed here is caught up from its sequence when the client enters it.
   */
  roomSeqs?: Record<string, number>;
  /** WebSocket class; default the global `WebSocket`. */
  WebSocket?: WebSocketConstructor;
}

/** The events and what each listener receives. */
export interface ImgateEvents {
  /** A pushed message, handed over once (stored ones in sequence order). */
  message: ImgateMessage;
  /** Authenticated; `reconnected` is false only for the first connection. */
  connected: { reconnected: boolean };
  /** The connection is gone; `delay` is when the next attempt starts, if there is one. */
  disconnected: { reason: string; willReconnect: boolean; delay?: number };
  /** Something went wrong; the client has dealt with it (reconnected, dropped the reply…). */
  error: ImgateError;
  /** A heartbeat reply: the main room's online count. */
  heartbeat: { online: number };
}

type Listener<K extends keyof ImgateEvents> = (event: ImgateEvents[K]) => void;
type Timer = ReturnType<typeof setTimeout>;

/** Ops up to here are the protocol's; a frame with one of them is never a business push. */
const LAST_PROTOCOL_OP = 31;
/** A connection authenticated this long counts as good: the next reconnect starts over. */
const STABLE_MS = 10_000;
const OPEN = 1;

interface PendingRequest {
  op: number;
  replyOp: number;
  /** Settles the request with its reply, synchronously, before the next frame is read. */
  answer: (frame: Frame) => void;
  reject: (error: ImgateError) => void;
  timer: Timer;
}

/**
 * A sequenced log the client keeps: the inbox (target "") or the history of a room the client
 * is in (one track per room, kept across reconnects until the client leaves the room).
 */
interface Track {
  target: string;
  log: SequenceLog<ImgateMessage>;
  gapTimer?: Timer;
}

type Phase = "idle" | "connecting" | "authenticating" | "connected" | "waiting";

const noop = () => {};
const decoder = new TextDecoder();

/** A client of imgate; see the README for a quick start. */
export class ImgateClient {
  private readonly options: ImgateClientOptions;
  private readonly WebSocketClass: WebSocketConstructor;
  private readonly key: string;
  private readonly accepts: Set<number>;
  /** The main room (auth's `room_id`, op 12), "" for none. */
  private primaryRoom: string;
  /** Rooms joined with op 24 besides the main room; joined again on every connection. */
  private readonly joined = new Set<string>();
  private readonly inbox: Track;
  /** The logs of the rooms the client has been in and not left, by room. */
  private readonly roomTracks = new Map<string, Track>();
  /** Room floors from `options.roomSeqs` not taken yet: each starts a room's log on entry. */
  private readonly resumeFloors: Map<string, number>;
  private readonly listeners = new Map<keyof ImgateEvents, Set<Listener<any>>>();
  private readonly requests = new Map<number, PendingRequest>();

  private phase: Phase = "idle";
  private socket: WebSocketLike | undefined;
  private nextSeqValue = 0;
  private authSeq = 0;
  private attempt = 0;
  private everConnected = false;
  private connectedAt = 0;
  private lastAcked = 0;
  private authTimer: Timer | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private deadTimer: Timer | undefined;
  private reconnectTimer: Timer | undefined;
  private waiters: { resolve: () => void; reject: (e: ImgateError) => void }[] = [];

  constructor(options: ImgateClientOptions) {
    if (!options || typeof options.url !== "string" || options.url === "") {
      throw new TypeError("ImgateClient needs options.url, e.g. ws://127.0.0.1:3102/sub");
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
    this.primaryRoom = options.room ?? "";
    this.inbox = { target: "", log: new SequenceLog(options.inboxSeq) };
    this.resumeFloors = new Map(Object.entries(options.roomSeqs ?? {}));
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
   * Starts connecting (and reconnecting after every loss until `close()`). Resolves at the
   * next successful auth; rejects only if `close()` comes first.
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
   * Closes the connection and stops reconnecting. Rooms and sequence state are kept for
   * `connect()`.
   */
  close(): void {
    const wasActive = this.phase !== "idle";
    this.clearTimer("reconnectTimer");
    for (const track of this.tracks()) {
      this.stopGapTimer(track);
    }
    const closed = new ImgateError("closed", "the client was closed");
    for (const waiter of this.waiters.splice(0)) {
      waiter.reject(closed);
    }
    if (this.socket) {
      this.drop("closed by the application", false);
    } else if (wasActive) {
      this.phase = "idle";
      this.emit("disconnected", { reason: "closed by the application", willReconnect: false });
    }
  }

  /** Whether the client is connected and authenticated now. */
  get connected(): boolean {
    return this.phase === "connected";
  }

  /** The main room (auth / op 12), "" for none. */
  get room(): string {
    return this.primaryRoom;
  }

  /** Rooms joined with `join()`, besides `room`. */
  get joinedRooms(): string[] {
    return [...this.joined];
  }

  /** Every room the client is in (or will be in on its next connection): `room` first. */
  get rooms(): string[] {
    return this.primaryRoom === "" ? [...this.joined] : [this.primaryRoom, ...this.joined];
  }

  /** Where the logs stand: save it to resume with the `inboxSeq` and `roomSeqs` options. */
  get state(): { inboxSeq: number | undefined; roomSeqs: Record<string, number> } {
    const roomSeqs: Record<string, number> = Object.fromEntries(this.resumeFloors);
    for (const [room, track] of this.roomTracks) {
      if (track.log.floor !== undefined) {
        roomSeqs[room] = track.log.floor;
      }
    }
    return { inboxSeq: this.inbox.log.floor, roomSeqs };
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
      if (room !== this.primaryRoom) this.joined.add(room);
      return room;
    }
    return this.request(Op.Join, room, Op.JoinReply, (reply) => {
      if (reply.body.length === 0) {
        throw new ImgateError("refused", `the server refused to join ${room}`);
      }
      if (room !== this.primaryRoom) this.joined.add(room);
      this.enterRoom(room, false);
      return decoder.decode(reply.body);
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
      this.forgetRoom(room);
      return room;
    }
    return this.request(Op.Leave, room, Op.LeaveReply, (reply) => {
      this.forgetRoom(room);
      if (reply.body.length === 0) {
        throw new ImgateError("refused", `the server says the connection is not in ${room}`);
      }
      return decoder.decode(reply.body);
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

  private open(): void {
    this.reconnectTimer = undefined;
    let ws: WebSocketLike;
    try {
      ws = new this.WebSocketClass(this.options.url);
      ws.binaryType = "arraybuffer";
    } catch (cause) {
      this.phase = "connecting";
      this.report("socket", `cannot open ${this.options.url}: ${String(cause)}`, cause);
      this.afterLoss("the WebSocket could not be created");
      return;
    }
    this.socket = ws;
    this.phase = "connecting";
    const authTimeout = this.options.authTimeout ?? 10_000;
    this.authTimer = setTimeout(
      () => this.drop(`not authenticated within ${authTimeout} ms`),
      authTimeout,
    );
    ws.onopen = () => {
      if (ws !== this.socket) return;
      this.phase = "authenticating";
      this.authSeq = this.nextSeq();
      this.sendFrame(Op.Auth, this.authSeq, JSON.stringify(this.authBody()));
    };
    ws.onmessage = (event) => {
      if (ws !== this.socket) return;
      this.onData(event.data);
    };
    ws.onclose = (event) => {
      if (ws !== this.socket) return;
      const code = event?.code ?? 0;
      const why = event?.reason ? ` ${event.reason}` : "";
      this.drop(
        this.phase === "connected"
          ? `the connection closed (code ${code}${why})`
          : `the connection closed before auth was accepted (code ${code}${why})`,
      );
    };
    // A close event always follows an error event.
    ws.onerror = noop;
  }

  private authBody(): Record<string, unknown> {
    const body: Record<string, unknown> = {
      mid: this.options.mid ?? 0,
      key: this.key,
      room_id: this.primaryRoom,
      platform: this.options.platform ?? "web",
      accepts: [...this.accepts],
      acks: this.options.acks ?? true,
      // Room pushes and room history come in op-28 frames naming their room: the only way to
      // tell a room's sequence from the inbox's, and one room's from another's.
      room_tags: true,
    };
    if (this.options.token !== undefined) {
      body.token = this.options.token;
    }
    return body;
  }

  private onAuthenticated(): void {
    this.clearTimer("authTimer");
    this.phase = "connected";
    this.connectedAt = Date.now();
    const reconnected = this.everConnected;
    this.everConnected = true;
    this.lastAcked = 0;
    this.startHeartbeat();
    this.catchUp();
    this.emit("connected", { reconnected });
    for (const waiter of this.waiters.splice(0)) {
      waiter.resolve();
    }
  }

  /**
   * Back in every room and caught up. The main room came with auth (its `room_id`); each
   * joined room is joined again (op 24) and, once in, caught up. The server sends the inbox's
   * unacknowledged backlog by itself; ask for what came after what the application has, in
   * the inbox and in each room that keeps history (messages written to a socket that died
   * never reached the application), then acknowledge.
   */
  private catchUp(): void {
    // A room the client was in without seeing one of its stored messages has no floor: any
    // message the room keeps may have come while the connection was down.
    for (const track of this.roomTracks.values()) {
      if (track.log.floor === undefined) track.log.floor = 0;
    }
    if (this.primaryRoom !== "") {
      this.enterRoom(this.primaryRoom, true);
    }
    for (const room of this.joined) {
      this.request(Op.Join, room, Op.JoinReply, (reply) => {
        if (reply.body.length === 0) {
          if (room !== this.primaryRoom) this.forgetRoom(room);
          throw new ImgateError("refused", `the server refused to join ${room} again`);
        }
        if (this.joined.has(room)) this.enterRoom(room, true);
      }).catch((error: ImgateError) => {
        // A lost connection joins again on the next one.
        if (error.code !== "disconnected") this.emitError(error);
      });
    }
    if (this.inbox.log.floor !== undefined) {
      this.sync(this.inbox);
    }
    this.watchGap(this.inbox);
    this.flushAck();
  }

  /**
   * The connection is in `room` now: the room's log starts (from a saved floor, if there is
   * one) or goes on. A room is caught up when its log has a floor and it was just entered
   * (`fresh`, on a new connection) or newly started; a room the connection is in already is
   * not asked for again.
   */
  private enterRoom(room: string, fresh: boolean): void {
    let track = this.roomTracks.get(room);
    const started = track === undefined;
    if (!track) {
      track = { target: room, log: new SequenceLog(this.resumeFloors.get(room)) };
      this.resumeFloors.delete(room);
      this.roomTracks.set(room, track);
    }
    if ((fresh || started) && track.log.floor !== undefined) {
      this.sync(track);
    }
    this.watchGap(track);
  }

  /** The client is no longer in `room`: its log ends (a later join starts a new one). */
  private forgetRoom(room: string): void {
    if (room === this.primaryRoom) this.primaryRoom = "";
    this.joined.delete(room);
    this.resumeFloors.delete(room);
    this.dropTrack(room);
  }

  private dropTrack(room: string): void {
    const track = this.roomTracks.get(room);
    if (track) {
      this.stopGapTimer(track);
      this.roomTracks.delete(room);
    }
  }

  /** Asks for a log's messages after its floor; `then` runs with the op-23 reply. */
  private sync(track: Track, then?: (ok: boolean) => void): void {
    const body = track.target === "" ? `${track.log.floor}` : `${track.target} ${track.log.floor}`;
    this.request(Op.Sync, body, Op.SyncReply, (reply) => reply.body.length > 0).then(
      (served) => {
        if (!served) {
          this.report("refused", `the server could not serve sync ${body}`);
        }
        then?.(served);
      },
      (error: ImgateError) => {
        if (error.code !== "disconnected") this.emitError(error);
        then?.(false);
      },
    );
  }

  /**
   * Drops the socket (if any) and reconnects unless the application closed the client or
   * turned reconnecting off.
   */
  private drop(reason: string, reconnect = true): void {
    const ws = this.socket;
    if (ws) {
      this.socket = undefined;
      ws.onopen = noop;
      ws.onmessage = noop;
      ws.onclose = noop;
      ws.onerror = noop;
      try {
        ws.close(reconnect ? 4000 : 1000);
      } catch {
        // Already closing or closed.
      }
    }
    if (this.phase === "connected" && Date.now() - this.connectedAt >= STABLE_MS) {
      this.attempt = 0;
    }
    this.clearTimer("authTimer");
    this.clearTimer("deadTimer");
    if (this.heartbeatTimer !== undefined) {
      clearInterval(this.heartbeatTimer);
      this.heartbeatTimer = undefined;
    }
    for (const [seq, request] of this.requests) {
      this.requests.delete(seq);
      clearTimeout(request.timer);
      request.reject(new ImgateError("disconnected", `the connection was lost: ${reason}`));
    }
    if (reconnect) {
      this.afterLoss(reason);
    } else {
      this.phase = "idle";
      this.emit("disconnected", { reason, willReconnect: false });
    }
  }

  private afterLoss(reason: string): void {
    const settings = this.options.reconnect ?? true;
    if (settings === false) {
      this.phase = "idle";
      this.emit("disconnected", { reason, willReconnect: false });
      return;
    }
    const { minDelay = 500, maxDelay = 30_000 } = settings === true ? {} : settings;
    const ceiling = Math.min(maxDelay, minDelay * 2 ** Math.min(this.attempt, 30));
    // Half fixed, half random: clients dropped together do not come back together.
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.attempt++;
    this.phase = "waiting";
    this.reconnectTimer = setTimeout(() => this.open(), delay);
    this.emit("disconnected", { reason, willReconnect: true, delay });
  }

  private startHeartbeat(): void {
    const interval = this.options.heartbeat ?? 30_000;
    const timeout = this.options.heartbeatTimeout ?? 10_000;
    const beat = () => {
      this.sendFrame(Op.Heartbeat, this.nextSeq());
      if (this.deadTimer === undefined) {
        this.deadTimer = setTimeout(
          () => this.drop(`no answer to a heartbeat within ${timeout} ms`),
          timeout,
        );
      }
    };
    beat();
    this.heartbeatTimer = setInterval(beat, interval);
  }

  // ----- receiving -----

  private onData(data: unknown): void {
    this.clearTimer("deadTimer");
    const received: { frame: Frame; room?: string }[] = [];
    try {
      for (const frame of decodeMessage(toBytes(data))) {
        if (frame.op === Op.Room) {
          const { room, frames } = decodeRoomFrames(frame.body);
          for (const inner of frames) received.push({ frame: inner, room });
        } else {
          received.push({ frame });
        }
      }
    } catch (cause) {
      const detail = cause instanceof FrameError ? cause.message : String(cause);
      this.report("protocol", `malformed message from the server: ${detail}`, cause);
      this.drop(`protocol error: ${detail}`);
      return;
    }
    for (const { frame, room } of received) {
      if (this.socket === undefined) return; // a listener closed the client
      if (room === undefined) {
        this.onFrame(frame);
      } else if (this.phase === "connected") {
        this.onRoomPush(room, frame);
      }
    }
    this.flushAck();
  }

  private onFrame(frame: Frame): void {
    if (frame.op === Op.AuthReply) {
      if (this.phase === "authenticating" && frame.seq === this.authSeq) this.onAuthenticated();
      return;
    }
    if (this.phase !== "connected") {
      return; // nothing but the auth reply is expected before auth
    }
    if (frame.op === Op.HeartbeatReply) {
      const online =
        frame.body.length >= 4
          ? new DataView(frame.body.buffer, frame.body.byteOffset, 4).getInt32(0)
          : 0;
      this.emit("heartbeat", { online });
      return;
    }
    const request = this.requests.get(frame.seq);
    if (request && (frame.op === request.replyOp || frame.op === request.op)) {
      this.requests.delete(frame.seq);
      clearTimeout(request.timer);
      if (frame.op === request.op) {
        request.reject(
          new ImgateError("unsupported", `the server does not support op ${request.op}`),
        );
      } else {
        request.answer(frame);
      }
      return;
    }
    if (frame.op >= 0 && frame.op <= LAST_PROTOCOL_OP) {
      return; // a late reply, or an op this client does not use
    }
    this.onPush(frame);
  }

  /** A push that names no room: to the user (stored, with a seq), to a key or to everyone. */
  private onPush(frame: Frame): void {
    if (frame.seq === 0) {
      this.deliver([new ImgateMessage(frame.op, 0, "push", undefined, frame.body)]);
      return;
    }
    const message = new ImgateMessage(frame.op, frame.seq, "inbox", undefined, frame.body);
    this.take(this.inbox, frame.seq, message);
  }

  /** A push to `room` (op 28): live, or its history answering a sync. */
  private onRoomPush(room: string, frame: Frame): void {
    const track = this.roomTracks.get(room);
    if (!track) {
      return; // history the client asked for before it left the room
    }
    const message = new ImgateMessage(frame.op, frame.seq, "room", room, frame.body);
    if (frame.seq === 0) {
      this.deliver([message]); // the room keeps no history of it
      return;
    }
    // A room's pushes arrive in order: with no starting point, the first one is it.
    if (track.log.floor === undefined) track.log.floor = frame.seq - 1;
    this.take(track, frame.seq, message);
  }

  private take(track: Track, seq: number, message: ImgateMessage): void {
    this.deliver(track.log.offer(seq, message));
    this.watchGap(track);
  }

  /** Keeps a gap timer running exactly while the log waits on a gap. */
  private watchGap(track: Track): void {
    if (track.log.waiting) {
      this.armGap(track);
    } else {
      this.stopGapTimer(track);
    }
  }

  /**
   * A log waits on a gap: after `gapTimeout` ask the server for what is after the floor; when
   * its answer made no progress, the missing messages are gone and the rest is handed over (a
   * request that failed or filled part of the gap is tried again).
   * A log with no starting point (a fresh inbox) just waits `gapTimeout` for stragglers.
   */
  private armGap(track: Track): void {
    if (track.gapTimer !== undefined) return;
    track.gapTimer = setTimeout(() => {
      track.gapTimer = undefined;
      if (!track.log.waiting) return;
      if (track.log.floor === undefined) {
        this.deliver(track.log.skipGap());
        this.flushAck();
        this.watchGap(track);
        return;
      }
      if (this.phase !== "connected") return; // the next auth catches up and re-arms
      const before = track.log.floor;
      this.sync(track, (answered) => {
        if (!track.log.waiting || this.phase !== "connected") return;
        if (answered && (track.log.floor ?? 0) === before) {
          this.deliver(track.log.skipGap());
          this.flushAck();
        }
        this.watchGap(track);
      });
    }, this.options.gapTimeout ?? 500);
  }

  private stopGapTimer(track: Track): void {
    if (track.gapTimer !== undefined) {
      clearTimeout(track.gapTimer);
      track.gapTimer = undefined;
    }
  }

  private deliver(messages: ImgateMessage[]): void {
    for (const message of messages) {
      this.emit("message", message);
    }
  }

  /** Acknowledges the inbox up to what the application has had, once per advance. */
  private flushAck(): void {
    const floor = this.inbox.log.floor;
    if (
      (this.options.acks ?? true) &&
      this.phase === "connected" &&
      floor !== undefined &&
      floor > this.lastAcked
    ) {
      this.lastAcked = floor;
      this.sendFrame(Op.Ack, this.nextSeq(), `${floor}`);
    }
  }

  // ----- plumbing -----

  /**
   * The main room is now `room`, as the server does it for op 12: the old main room is left,
   * and a joined room that becomes the main one stays (with its log).
   */
  private setPrimaryRoom(room: string): void {
    if (room === this.primaryRoom) return;
    if (this.primaryRoom !== "") this.dropTrack(this.primaryRoom);
    this.primaryRoom = room;
    if (room === "") return;
    this.joined.delete(room);
    if (this.phase === "connected") this.enterRoom(room, false);
  }

  /**
   * Sends a request and settles it with `answer(reply)`, run as the reply is read (before any
   * frame after it), or with the error it throws.
   */
  private request<T>(
    op: number,
    body: Uint8Array | string,
    replyOp: number,
    answer: (reply: Frame) => T,
  ): Promise<T> {
    if (this.phase !== "connected") {
      return Promise.reject(new ImgateError("not_connected", "the client is not connected"));
    }
    const seq = this.nextSeq();
    const timeout = this.options.requestTimeout ?? 10_000;
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
      this.sendFrame(op, seq, body);
    });
  }

  private sendFrame(op: number, seq: number, body?: Uint8Array | string): void {
    const ws = this.socket;
    if (!ws || ws.readyState !== OPEN) return;
    try {
      ws.send(encodeFrame(op, seq, body));
    } catch (cause) {
      this.report("socket", `sending failed: ${String(cause)}`, cause);
      this.drop("sending failed");
    }
  }

  /** Request seqs run 1…2^31−1 and skip the ones still waiting for a reply. */
  private nextSeq(): number {
    do {
      this.nextSeqValue = this.nextSeqValue >= 0x7fffffff ? 1 : this.nextSeqValue + 1;
    } while (this.requests.has(this.nextSeqValue));
    return this.nextSeqValue;
  }

  private tracks(): Track[] {
    return [this.inbox, ...this.roomTracks.values()];
  }

  private clearTimer(name: "authTimer" | "deadTimer" | "reconnectTimer"): void {
    const timer = this[name];
    if (timer !== undefined) {
      clearTimeout(timer);
      this[name] = undefined;
    }
  }

  private report(code: ImgateErrorCode, message: string, cause?: unknown): void {
    this.emitError(new ImgateError(code, message, cause === undefined ? undefined : { cause }));
  }

  private emitError(error: ImgateError): void {
    this.emit("error", error);
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

function toBytes(data: unknown): Uint8Array {
  if (data instanceof ArrayBuffer) {
    return new Uint8Array(data);
  }
  if (ArrayBuffer.isView(data)) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  if (typeof data === "string") {
    throw new FrameError("a text message (frames come as binary messages)");
  }
  throw new FrameError(`an unreadable message (${Object.prototype.toString.call(data)})`);
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
