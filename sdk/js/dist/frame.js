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
export const HEADER_LEN = 16;
/** The protocol's operation codes (business pushes use any other op, 1000 and up by habit). */
export const Op = {
    Heartbeat: 2,
    HeartbeatReply: 3,
    SendMsg: 4,
    SendMsgReply: 5,
    /** imgate: the server says why it closes the connection (kick, expiry, refused auth). */
    Disconnect: 6,
    Auth: 7,
    AuthReply: 8,
    Raw: 9,
    ChangeRoom: 12,
    ChangeRoomReply: 13,
    Sub: 14,
    SubReply: 15,
    Unsub: 16,
    UnsubReply: 17,
    Ack: 20,
    AckReply: 21,
    Sync: 22,
    SyncReply: 23,
    Join: 24,
    JoinReply: 25,
    Leave: 26,
    LeaveReply: 27,
    Room: 28,
    /** imgate: a fresh token for the connection (body: the token). */
    Refresh: 30,
    /** imgate: the fresh token was taken (body: `{"exp": …}`, empty when it was not checked). */
    RefreshReply: 31,
};
/** Bytes from the server that are not a valid frame (or op-9 batch, or op-28 room frame). */
export class FrameError extends Error {
    constructor(message) {
        super(message);
        this.name = "FrameError";
    }
}
const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });
const EMPTY = new Uint8Array(0);
/** Encodes one frame; a string body is sent as UTF-8. */
export function encodeFrame(op, seq, body = EMPTY, ver = 1) {
    const bytes = typeof body === "string" ? encoder.encode(body) : body;
    const out = new Uint8Array(HEADER_LEN + bytes.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, out.length);
    view.setUint16(4, HEADER_LEN);
    view.setInt16(6, ver);
    view.setInt32(8, op);
    view.setUint32(12, seq >>> 0);
    out.set(bytes, HEADER_LEN);
    return out;
}
/** Reads the frame that starts at `offset`; it must fit in `bytes` before `end`. */
function frameAt(bytes, offset, end) {
    const left = end - offset;
    if (left < HEADER_LEN) {
        throw new FrameError(`expected a ${HEADER_LEN}-byte header, ${left} bytes left`);
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset + offset, HEADER_LEN);
    const packLen = view.getUint32(0);
    const headerLen = view.getUint16(4);
    if (headerLen !== HEADER_LEN) {
        throw new FrameError(`expected headerLen ${HEADER_LEN}, got ${headerLen}`);
    }
    if (packLen < HEADER_LEN || packLen > left) {
        throw new FrameError(`packLen ${packLen} does not fit the ${left} bytes left`);
    }
    return {
        ver: view.getInt16(6),
        op: view.getInt32(8),
        seq: view.getUint32(12),
        body: bytes.subarray(offset + HEADER_LEN, offset + packLen),
        next: offset + packLen,
    };
}
/**
 * Splits a run of complete frames (an op-9 body). The run must end exactly at the end of the
 * last frame.
 */
export function decodeFrames(bytes) {
    const frames = [];
    let offset = 0;
    while (offset < bytes.length) {
        const { next, ...frame } = frameAt(bytes, offset, bytes.length);
        frames.push(frame);
        offset = next;
    }
    return frames;
}
/**
 * Decodes one WebSocket message from the server: a single frame whose packLen is the
 * message's length. An op-9 batch is unwrapped into its inner frames (a batch inside a batch
 * is refused); any other frame is returned alone.
 */
export function decodeMessage(bytes) {
    const { next, ...frame } = frameAt(bytes, 0, bytes.length);
    if (next !== bytes.length) {
        throw new FrameError(`packLen ${next} but the message holds ${bytes.length} bytes`);
    }
    if (frame.op !== Op.Raw) {
        return [frame];
    }
    const inner = decodeFrames(frame.body);
    for (const f of inner) {
        if (f.op === Op.Raw) {
            throw new FrameError("an op-9 batch inside an op-9 batch");
        }
    }
    return inner;
}
/**
 * Splits the body of an op-28 frame (imgate's room tags): the room name's length (2 bytes,
 * big-endian), the name in UTF-8, then a run of complete frames, none of them a batch.
 */
export function decodeRoomFrames(body) {
    if (body.length < 2) {
        throw new FrameError(`expected a 2-byte room name length, ${body.length} bytes left`);
    }
    const nameLen = (body[0] << 8) | body[1];
    if (nameLen === 0 || 2 + nameLen > body.length) {
        throw new FrameError(`room name length ${nameLen} does not fit the ${body.length - 2} bytes left`);
    }
    let room;
    try {
        room = strictDecoder.decode(body.subarray(2, 2 + nameLen));
    }
    catch {
        throw new FrameError("a room name that is not UTF-8");
    }
    const frames = decodeFrames(body.subarray(2 + nameLen));
    for (const f of frames) {
        if (f.op === Op.Raw || f.op === Op.Room) {
            throw new FrameError(`an op-${f.op} frame inside an op-28 frame`);
        }
    }
    return { room, frames };
}
