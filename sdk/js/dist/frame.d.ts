/**
 * The goim v2 frame, as imgate speaks it: a 16-byte big-endian header (packLen, headerLen,
 * ver, op, seq) followed by the body. Each WebSocket message holds exactly one frame; a
 * server push may be an op-9 frame whose body is a run of complete frames, or (for a client
 * that asked for room tags) an op-28 frame whose body names a room before its run of frames.
 *
 * Decoding never trusts a length: every frame is checked against the bytes that are really
 * there before anything is read from its body.
 */
/** Bytes in a frame header; `headerLen` must say exactly this. */
export declare const HEADER_LEN = 16;
/** The protocol's operation codes (business pushes use any other op, 1000 and up by habit). */
export declare const Op: {
    readonly Heartbeat: 2;
    readonly HeartbeatReply: 3;
    readonly SendMsg: 4;
    readonly SendMsgReply: 5;
    /** imgate: the server says why it closes the connection (kick, expiry, refused auth). */
    readonly Disconnect: 6;
    readonly Auth: 7;
    readonly AuthReply: 8;
    readonly Raw: 9;
    readonly ChangeRoom: 12;
    readonly ChangeRoomReply: 13;
    readonly Sub: 14;
    readonly SubReply: 15;
    readonly Unsub: 16;
    readonly UnsubReply: 17;
    readonly Ack: 20;
    readonly AckReply: 21;
    readonly Sync: 22;
    readonly SyncReply: 23;
    readonly Join: 24;
    readonly JoinReply: 25;
    readonly Leave: 26;
    readonly LeaveReply: 27;
    readonly Room: 28;
    /** imgate: a fresh token for the connection (body: the token). */
    readonly Refresh: 30;
    /** imgate: the fresh token was taken (body: `{"exp": …}`, empty when it was not checked). */
    readonly RefreshReply: 31;
};
/** One decoded frame. `seq` is unsigned: stored sequences may pass 2^31. */
export interface Frame {
    ver: number;
    op: number;
    seq: number;
    body: Uint8Array;
}
/** Bytes from the server that are not a valid frame (or op-9 batch, or op-28 room frame). */
export declare class FrameError extends Error {
    constructor(message: string);
}
/** Encodes one frame; a string body is sent as UTF-8. */
export declare function encodeFrame(op: number, seq: number, body?: Uint8Array | string, ver?: number): Uint8Array;
/**
 * Splits a run of complete frames (an op-9 body). The run must end exactly at the end of the
 * last frame.
 */
export declare function decodeFrames(bytes: Uint8Array): Frame[];
/**
 * Decodes one WebSocket message from the server: a single frame whose packLen is the
 * message's length. An op-9 batch is unwrapped into its inner frames (a batch inside a batch
 * is refused); any other frame is returned alone.
 */
export declare function decodeMessage(bytes: Uint8Array): Frame[];
/** The body of an op-28 frame: the room the pushes were sent to, and the pushed frames. */
export interface RoomFrames {
    room: string;
    frames: Frame[];
}
/**
 * Splits the body of an op-28 frame (imgate's room tags): the room name's length (2 bytes,
 * big-endian), the name in UTF-8, then a run of complete frames, none of them a batch.
 */
export declare function decodeRoomFrames(body: Uint8Array): RoomFrames;
