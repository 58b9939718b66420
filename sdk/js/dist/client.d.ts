import { type Checkpoint } from "./delivery.js";
import type { ConnectionState, ImgateClientOptions, ImgateEvents } from "./options.js";
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
