import { type Checkpoint } from "./delivery.js";
import { ImgateError } from "./errors.js";
import type { ImgateMessage } from "./message.js";
import { type WebSocketConstructor } from "./transport.js";
/** Reconnect delays: exponential from `minDelay` to `maxDelay`, with jitter. */
export interface ReconnectOptions {
    /** First delay in ms (default 500). */
    minDelay?: number;
    /** Longest delay in ms (default 30 000). */
    maxDelay?: number;
}
/**
 * Gives the token to connect with: called before every connection and before the current
 * token expires. `null` (or `undefined`) means there is none to give (say, the user logged
 * out): the client stops reconnecting. A rejection is reported and tried again later.
 */
export type TokenSource = () => Promise<string | null | undefined> | string | null | undefined;
export interface ImgateClientOptions {
    /** comet's WebSocket endpoint, e.g. `ws://127.0.0.1:3102/sub`. */
    url: string;
    /**
     * Asks the application for a signed token (JWT): before each connection, and ahead of the
     * token's `exp` to renew it on the open connection (op 30). Prefer it to `token`.
     */
    getToken?: TokenSource;
    /** One fixed signed token; the connection ends when it expires. Not with `getToken`. */
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
    /** Getting a token, connecting and authenticating must finish within this many ms (default 10 000). */
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
    /** Resume the inbox after this sequence (`checkpoint.inboxSeq` saved by a previous page). */
    inboxSeq?: number;
    /**
     * Resume room histories after these sequences (`checkpoint.roomSeqs` saved before): a room
     * listed here is caught up from its sequence when the client enters it.
     */
    roomSeqs?: Record<string, number>;
    /** WebSocket class; default the global `WebSocket`. */
    WebSocket?: WebSocketConstructor;
}
/** The connection's state, `client.state`. */
export type ConnectionState = 
/** Getting a token, opening the socket or authenticating. */
"connecting"
/** Authenticated: requests go out, pushes come in. */
 | "connected"
/** No connection: waiting to reconnect, or stopped (`close()`, a kick, no token). */
 | "disconnected";
/** Who changed the client's rooms. */
export type RoomChangeBy = "client" | "server";
/** The events and what each listener receives. */
export interface ImgateEvents {
    /** A pushed message, handed over once (stored ones in sequence order). */
    message: ImgateMessage;
    /** `client.state` changed. */
    state: {
        state: ConnectionState;
        previous: ConnectionState;
    };
    /** A connection attempt starts; `attempt` counts the failures since the last good one. */
    connecting: {
        attempt: number;
    };
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
    /**
     * The server closed the connection and said why (op 6 after auth): the business's kick,
     * an expired token, a refused fresh token. `final`: the client does not reconnect.
     */
    kicked: {
        reason: string;
        final: boolean;
    };
    /** The gateway took a fresh token (op 31): the connection now lasts until `exp` (Unix s). */
    token: {
        exp: number;
    };
    /** The client is in one more room: joined by the application or by the server. */
    roomJoined: {
        room: string;
        by: RoomChangeBy;
    };
    /** The client left a room: by the application, or the server left it or refused it again. */
    roomLeft: {
        room: string;
        by: RoomChangeBy;
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
    private readonly roomSet;
    private readonly delivery;
    private readonly listeners;
    private phase;
    private transport;
    /** Counts connection attempts, so a late answer from `getToken` for an old one is ignored. */
    private attemptId;
    private authSeq;
    private attempt;
    private everConnected;
    private connectedAt;
    /** The token of the current connection and its `exp` (Unix seconds), if known. */
    private token;
    private tokenExpiry;
    private authTimer;
    private reconnectTimer;
    private refreshTimer;
    private waiters;
    constructor(options: ImgateClientOptions);
    /** Subscribes to an event; returns the function that unsubscribes. */
    on<K extends keyof ImgateEvents>(event: K, listener: Listener<K>): () => void;
    off<K extends keyof ImgateEvents>(event: K, listener: Listener<K>): void;
    /**
     * Starts connecting (and reconnecting after every loss until `close()` or a final kick).
     * Resolves at the next successful auth; rejects if the client stops first (`closed`,
     * `kicked`, `refused`, `token`).
     */
    connect(): Promise<void>;
    /**
     * Closes the connection and stops reconnecting. Rooms and where the logs stand are kept for
     * `connect()`.
     */
    close(): void;
    /** The connection's state: `connecting`, `connected` or `disconnected` (event `state`). */
    get state(): ConnectionState;
    /** Whether the client is connected and authenticated now. */
    get connected(): boolean;
    /** The main room (auth / op 12), "" for none. */
    get room(): string;
    /** Rooms joined besides `room`, by `join()` or by the server. */
    get joinedRooms(): string[];
    /** Every room the client is in (or will be in on its next connection): `room` first. */
    get rooms(): string[];
    /**
     * Where the logs stand: save it to resume with the `inboxSeq` and `roomSeqs` options.
     * (Called `state` before 0.3.)
     */
    get checkpoint(): Checkpoint;
    /** When the current token expires (Unix seconds), when the client knows. */
    get tokenExpiresAt(): number | undefined;
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
    /** One connection attempt: a token (from `getToken`), the socket, auth. */
    private open;
    private openSocket;
    private onOpen;
    private onAuthenticated;
    /**
     * Back in every room and caught up. The main room came with auth (its `room_id`); each
     * joined room is joined again (op 24) and, once in, caught up; then the inbox.
     */
    private catchUp;
    /**
     * Drops the connection (if any) and goes on as `after` says: reconnect after a backoff, at
     * once, or stop.
     */
    private drop;
    private useToken;
    /**
     * With `getToken` and a known expiry, asks for a fresh token when three quarters of the
     * time left have passed (the gateway closes the connection at `exp` plus its leeway).
     */
    private scheduleRefresh;
    /** Sends a fresh token from `getToken` (op 30); op 31 says until when it holds. */
    private refresh;
    private onData;
    private onFrame;
    /** op 6: the server closes the connection and says why; see kick.ts for what follows. */
    private onKick;
    /** The client is in `room` (besides its main room); `entered`: the connection is in it now. */
    private addRoom;
    /** The client is no longer in `room`: its log ends (a later join starts a new one). */
    private removeRoom;
    /**
     * The main room is now `room`, as the server does it for op 12: the old main room is left,
     * and a joined room that becomes the main one stays (with its log).
     */
    private setPrimaryRoom;
    private request;
    private setPhase;
    private stopWaiters;
    private clearTimer;
    private report;
    /** Calls each listener; one that throws is reported and never breaks the client. */
    private emit;
}
export {};
