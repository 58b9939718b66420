/**
 * The imgate client: one WebSocket to comet, authenticated with goim's auth JSON, kept alive
 * with heartbeats, reconnected with backoff, and caught up after each reconnect so that the
 * application sees every stored message once, in order.
 */
import { ImgateError } from "./errors.js";
import { ImgateMessage, Reply } from "./message.js";
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
    /** Room to be in, `type://id` (change it with `switchRoom`). */
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
    /** Replies to `join`, `switchRoom`, `watch`, `send`… must come within this (ms, default 10 000). */
    requestTimeout?: number;
    /**
     * How long (ms) a gap in a sequence may stay open before the client asks the server for the
     * missing messages, and then gives up on the ones the server no longer has (default 500).
     */
    gapTimeout?: number;
    /** Reconnect after a connection is lost (default true, with the default delays). */
    reconnect?: boolean | ReconnectOptions;
    /**
     * Business ops your back-end pushes to rooms with `history=1`. A stored message's frame does
     * not say whether its sequence is the user's inbox or the room's history; frames of these
     * ops are taken as the current room's history, every other sequenced frame as the inbox.
     */
    roomHistoryOps?: number[];
    /** `platform` of the auth JSON (default "web"). */
    platform?: string;
    /** Resume the inbox after this sequence (e.g. `state.inboxSeq` saved by a previous page). */
    inboxSeq?: number;
    /** Resume room histories after these sequences (e.g. `state.roomSeqs` saved before). */
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
    /** A heartbeat reply: the current room's online count. */
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
    private readonly historyOps;
    private readonly rooms;
    private primaryRoom;
    private readonly inbox;
    private readonly roomTracks;
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
    /** Closes the connection and stops reconnecting. Sequence state is kept for `connect()`. */
    close(): void;
    /** Whether the client is connected and authenticated now. */
    get connected(): boolean;
    /** The room the connection is in (op 12 / auth), "" for none. */
    get room(): string;
    /** Rooms joined with `join()`, besides `room`. */
    get joinedRooms(): string[];
    /** Where the logs stand: save it to resume with the `inboxSeq` and `roomSeqs` options. */
    get state(): {
        inboxSeq: number | undefined;
        roomSeqs: Record<string, number>;
    };
    /**
     * Moves the connection to another room (op 12); "" leaves it. While disconnected the room
     * is taken at the next auth. Rejects with `refused` when the server keeps the connection
     * where it was (a token that does not allow the room).
     */
    switchRoom(room: string): Promise<void>;
    /** Joins one more room (op 24); while disconnected, at the next auth. */
    join(room: string): Promise<void>;
    /** Leaves a room joined with `join()` (op 26). */
    leave(room: string): Promise<void>;
    /** Adds business ops to receive from pushes by key and broadcasts (op 14). */
    watch(ops: number[]): Promise<void>;
    /** Stops receiving these business ops from pushes by key and broadcasts (op 16). */
    unwatch(ops: number[]): Promise<void>;
    /**
     * Sends a message to the business (op 4) and resolves with its answer (op 5). Rejects with
     * `send_failed` when the business gave none, `timeout`, `disconnected` or `not_connected`;
     * a message is never sent twice by the client.
     */
    send(body: Uint8Array | string): Promise<Reply>;
    private open;
    private authBody;
    private onAuthenticated;
    /**
     * After auth the server sends the unacknowledged backlog by itself; ask for what came
     * after what the application has, in the inbox and in the room's history (messages written
     * to a socket that died never reached the application), then acknowledge.
     */
    private catchUp;
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
    private onPush;
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
    private setPrimaryRoom;
    private joinNow;
    private request;
    private sendFrame;
    /** Request seqs run 1…2^31−1 and skip the ones still waiting for a reply. */
    private nextSeq;
    /**
     * Whether a sequenced frame of this op is room history. A frame does not say; without a
     * user there is no inbox, so every sequenced frame is the room's.
     */
    private isRoomHistory;
    private tracksRooms;
    /** A user has an inbox: a token names one, or a development-mode mid above 0. */
    private hasInbox;
    private tracks;
    private clearTimer;
    private report;
    private emitError;
    /** Calls each listener; one that throws is reported and never breaks the client. */
    private emit;
}
export {};
