/**
 * Delivery and resume: the logs the client keeps (the user's inbox and the history of each
 * room it is in), each handing its messages over once and in order, mending gaps by asking the
 * server (op 22), catching up after a reconnect, acknowledging the inbox (op 20), and saying
 * where it stands (`checkpoint`) so a later client can resume from there.
 */
import { ImgateError } from "./errors.js";
import type { Frame } from "./frame.js";
import { ImgateMessage } from "./message.js";
/** Where the logs stand: save it, and resume with the `inboxSeq` and `roomSeqs` options. */
export interface Checkpoint {
    /** The inbox's floor: every message up to it was handed over. */
    inboxSeq: number | undefined;
    /** Each room's floor, by room. */
    roomSeqs: Record<string, number>;
}
/** What delivery needs from the client. */
export interface DeliveryHost {
    /** Hands messages to the application, in order. */
    deliver(messages: ImgateMessage[]): void;
    /** Sends op 22 with `body`; resolves with whether the server served it (op 23 not empty). */
    sync(body: string): Promise<boolean>;
    /** Sends op 20 with `floor`. */
    ack(floor: number): void;
    /** Whether the client is connected and authenticated. */
    connected(): boolean;
    report(error: ImgateError): void;
}
export declare class Delivery {
    private readonly host;
    private readonly settings;
    private readonly inbox;
    /** The logs of the rooms the client has been in and not left, by room. */
    private readonly roomTracks;
    /** Room floors from the `roomSeqs` option not taken yet: each starts a room's log on entry. */
    private readonly resumeFloors;
    private lastAcked;
    constructor(host: DeliveryHost, settings: {
        gapTimeout: number;
        acks: boolean;
    }, resume: {
        inboxSeq?: number;
        roomSeqs?: Record<string, number>;
    });
    /** Where the logs stand now. */
    get checkpoint(): Checkpoint;
    /**
     * A new connection is authenticated. A room the client was in without seeing one of its
     * stored messages has no floor: any message the room keeps may have come while the
     * connection was down, so it starts from 0. The new connection has acknowledged nothing.
     */
    connectionStarted(): void;
    /**
     * The inbox is caught up: the server sends the unacknowledged backlog by itself; what came
     * after what the application has is asked for (messages written to a socket that died never
     * reached the application), then acknowledged.
     */
    catchUpInbox(): void;
    /**
     * The connection is in `room` now: the room's log starts (from a saved floor, if there is
     * one) or goes on. A room is caught up when its log has a floor and it was just entered
     * (`fresh`, on a new connection) or newly started; a room the connection is in already is
     * not asked for again.
     */
    enterRoom(room: string, fresh: boolean): void;
    /** The client is no longer in `room`: its log ends (a later join starts a new one). */
    leaveRoom(room: string): void;
    /** A push that names no room: to the user (stored, with a seq), to a key or to everyone. */
    onPush(frame: Frame): void;
    /** A push to `room` (op 28): live, or its history answering a sync. */
    onRoomPush(room: string, frame: Frame): void;
    /** Acknowledges the inbox up to what the application has had, once per advance. */
    flushAck(): void;
    /** Stops every gap timer (the client was closed). */
    stop(): void;
    private take;
    /** Asks for a log's messages after its floor; `then` runs with whether it was served. */
    private sync;
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
}
