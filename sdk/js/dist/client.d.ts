/**
 * The imgate client: one WebSocket to comet, authenticated with goim's auth JSON, kept alive
 * with heartbeats, reconnected with backoff, back in its rooms after each reconnect and caught
 * up so that the application sees every stored message once, in order: the user's inbox and
 * each room's history, told apart by imgate's room tags (op 28).
 */
import { ImgateError } from "./errors.js";
import { ImgateMessage } from "./message.js";
/** The part of the standard WebSocket API the client uses (browsers, Node 22+, `ws`). */
export interface WebSocketLike {
    binaryType: string;
    readonly readyState: number;
    onopen: ((event: any) => void) | null;
    onmessage: ((event: {
        data: unknown;
    }) => void) | null;
    onclose: ((event: {
        code?: number;
        reason?: string;
    }) => void) | null;
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
    connected: {
        reconnected: boolean;
    };
    /** The connection is gone; `delay` is when the next attempt starts, if there is one. */
    disconnected: {
        reason: string;
        willReconnect: boolean;
        delay?: number;
    };
    /** Something went wrong; the client has dealt with it (reconnected, dropped the reply…). */
    error: ImgateError;
    /** A heartbeat reply: the main room's online count. */
    heartbeat: {
        online: number;
    };
}
type Listener<K extends keyof ImgateEvents> = (event: ImgateEvents[K]) => void;
/** A client of imgate; see the README for a quick start. */
export declare class ImgateClient {
    private readonly options;
    private readonly WebSocketClass;
    private readonly key;
    private readonly accepts;
    /** The main room (auth's `room_id`, op 12), "" for none. */
    private primaryRoom;
    /** Rooms joined with op 24 besides the main room; joined again on every connection. */
    private readonly joined;
    private readonly inbox;
    /** The logs of the rooms the client has been in and not left, by room. */
    private readonly roomTracks;
    /** Room floors from `options.roomSeqs` not taken yet: each starts a room's log on entry. */
    private readonly resumeFloors;
    private readonly listeners;
    private readonly requests;
    private phase;
    private socket;
    private nextSeqValue;
    private authSeq;
    private attempt;
    private everConnected;
    private connectedAt;
    private lastAcked;
    private authTimer;
    private heartbeatTimer;
    private deadTimer;
    private reconnectTimer;
    private waiters;
    constructor(options: ImgateClientOptions);
    /** Subscribes to an event; returns the function that unsubscribes. */
    on<K extends keyof ImgateEvents>(event: K, listener: Listener<K>): () => void;
    off<K extends keyof ImgateEvents>(event: K, listener: Listener<K>): void;
    /**
     * Starts connecting (and reconnecting after every loss until `close()`). Resolves at the
     * next successful auth; rejects only if `close()` comes first.
     */
    connect(): Promise<void>;
    /**
     * Closes the connection and stops reconnecting. Rooms and sequence state are kept for
     * `connect()`.
     */
    close(): void;
    /** Whether the client is connected and authenticated now. */
    get connected(): boolean;
    /** The main room (auth / op 12), "" for none. */
    get room(): string;
    /** Rooms joined with `join()`, besides `room`. */
    get joinedRooms(): string[];
    /** Every room the client is in (or will be in on its next connection): `room` first. */
    get rooms(): string[];
    /** Where the logs stand: save it to resume with the `inboxSeq` and `roomSeqs` options. */
    get state(): {
        inboxSeq: number | undefined;
        roomSeqs: Record<string, number>;
    };
    /**
     * Moves the connection to another main room (op 12); "" leaves it. The old main room is
     * left; a room joined with `join()` becomes the main room. While disconnected the room is
     * taken at the next auth. Rejects with `refused` when the server keeps the connection where
     * it was (a token that does not allow the room).
     */
    switchRoom(room: string): Promise<void>;
    /**
     * Joins one more room (op 24) and resolves with the server's echo of its name. Rejects
     * with `refused` when the server answers empty (the token's rooms, the gateway's
     * `max_rooms_per_conn`, a name it does not take). While disconnected the room is joined at
     * the next auth and this resolves at once (a refusal then comes as an `error` event).
     */
    join(room: string): Promise<string>;
    /**
     * Leaves a room (op 26), joined or the main one, and resolves with the server's echo of its
     * name. Rejects with `refused` when the server says the connection was not in it (the client
     * forgets the room either way). While disconnected it is forgotten at once.
     */
    leave(room: string): Promise<string>;
    /** Adds business ops to receive from pushes by key and broadcasts (op 14). */
    watch(ops: number[]): Promise<void>;
    /** Stops receiving these business ops from pushes by key and broadcasts (op 16). */
    unwatch(ops: number[]): Promise<void>;
    /**
     * Sends a message to the business (op 4) and resolves with its answer, the body of the
     * op-5 reply with the same seq. An empty answer means the business gave none (it failed,
     * took too long, is not configured, or 8 of this connection's messages wait already).
     * Rejects with `timeout`, `disconnected` or `not_connected`; the client never sends a
     * message twice, so a message in flight when the connection drops is not resent.
     */
    send(body: Uint8Array | string): Promise<Uint8Array>;
    private open;
    private authBody;
    private onAuthenticated;
    /**
     * Back in every room and caught up. The main room came with auth (its `room_id`); each
     * joined room is joined again (op 24) and, once in, caught up. The server sends the inbox's
     * unacknowledged backlog by itself; ask for what came after what the application has, in
     * the inbox and in each room that keeps history (messages written to a socket that died
     * never reached the application), then acknowledge.
     */
    private catchUp;
    /**
     * The connection is in `room` now: the room's log starts (from a saved floor, if there is
     * one) or goes on. A room is caught up when its log has a floor and it was just entered
     * (`fresh`, on a new connection) or newly started; a room the connection is in already is
     * not asked for again.
     */
    private enterRoom;
    /** The client is no longer in `room`: its log ends (a later join starts a new one). */
    private forgetRoom;
    private dropTrack;
    /** Asks for a log's messages after its floor; `then` runs with the op-23 reply. */
    private sync;
    /**
     * Drops the socket (if any) and reconnects unless the application closed the client or
     * turned reconnecting off.
     */
    private drop;
    private afterLoss;
    private startHeartbeat;
    private onData;
    private onFrame;
    /** A push that names no room: to the user (stored, with a seq), to a key or to everyone. */
    private onPush;
    /** A push to `room` (op 28): live, or its history answering a sync. */
    private onRoomPush;
    private take;
    /** Keeps a gap timer running exactly while the log waits on a gap. */
    private watchGap;
    /**
     * A log waits on a gap: after `gapTimeout` ask the server for what is after the floor; when
     * its answer made no progress, the missing messages are gone and the rest is handed over (a
     * request that failed or filled part of the gap is tried again).
     * A log with no starting point (a fresh inbox) just waits `gapTimeout` for stragglers.
     */
    private armGap;
    private stopGapTimer;
    private deliver;
    /** Acknowledges the inbox up to what the application has had, once per advance. */
    private flushAck;
    /**
     * The main room is now `room`, as the server does it for op 12: the old main room is left,
     * and a joined room that becomes the main one stays (with its log).
     */
    private setPrimaryRoom;
    /**
     * Sends a request and settles it with `answer(reply)`, run as the reply is read (before any
     * frame after it), or with the error it throws.
     */
    private request;
    private sendFrame;
    /** Request seqs run 1…2^31−1 and skip the ones still waiting for a reply. */
    private nextSeq;
    private tracks;
    private clearTimer;
    private report;
    private emitError;
    /** Calls each listener; one that throws is reported and never breaks the client. */
    private emit;
}
export {};
