import { type Frame } from "./frame.js";
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
export declare class Transport {
    private readonly events;
    private readonly socket;
    private readonly requests;
    private nextSeqValue;
    private heartbeatTimer;
    private deadTimer;
    private closed;
    /** Opens the socket; throws what the WebSocket constructor throws. */
    constructor(WebSocketClass: WebSocketConstructor, url: string, events: TransportEvents);
    /** Whether `close()` was called or the socket closed. */
    get isClosed(): boolean;
    /** Sends one frame; a failure to send gives the socket up (`lost`). */
    send(op: number, seq: number, body?: Uint8Array | string): void;
    /** Sends a frame that expects no reply, under a seq of its own. */
    sendOneWay(op: number, body?: Uint8Array | string): number;
    /**
     * Sends a request and settles it with `answer(reply)`, run as the reply is read (before any
     * frame after it), or with the error it throws. An echo of the request's own op means the
     * server does not know it (`unsupported`).
     */
    request<T>(op: number, body: Uint8Array | string, replyOp: number, timeout: number, answer: (reply: Frame) => T): Promise<T>;
    /** Settles the request this frame answers; false when it answers none. */
    settle(frame: Frame): boolean;
    /**
     * Heartbeats now and every `interval` ms; one unanswered (nothing at all from the server)
     * for `timeout` ms gives the socket up.
     */
    startHeartbeat(interval: number, timeout: number): void;
    /**
     * Closes the socket (`code` 4000 when the client means to come back, 1000 when not) and
     * rejects the requests waiting with `disconnected`. Nothing is reported after this.
     */
    close(reason: string, code?: number): void;
    private giveUp;
    private clearDeadTimer;
    /** Request seqs run 1…2^31−1 and skip the ones still waiting for a reply. */
    private nextSeq;
}
