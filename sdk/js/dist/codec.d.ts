/**
 * What goes over the WebSocket besides the frame layout (`frame.ts`): a WebSocket message
 * from the server turned into frames, each with the room it was tagged with (op 28); the auth
 * JSON; the bodies of op 6 and op 31; the expiry a JWT carries.
 */
import { type Frame } from "./frame.js";
/** A frame from the server, and the room it was pushed to when it came in an op-28 frame. */
export interface Incoming {
    frame: Frame;
    room?: string;
}
/**
 * Decodes one WebSocket message from the server into its frames, op-9 batches and op-28 room
 * frames unwrapped. Throws a `FrameError` for anything that is not a valid frame.
 */
export declare function decodeIncoming(data: unknown): Incoming[];
/** What the auth JSON (op 7) says about the client. */
export interface AuthFields {
    mid: number;
    key: string;
    room: string;
    platform: string;
    accepts: number[];
    acks: boolean;
    token: string | undefined;
}
/** The auth JSON: goim's fields, imgate's `acks` and `room_tags`, and the token if any. */
export declare function authBody(fields: AuthFields): string;
/** The text of a frame's body (op 6's reason, a room's name). */
export declare function bodyText(frame: Frame): string;
/** The heartbeat reply's online count (0 when the body does not hold one). */
export declare function onlineCount(frame: Frame): number;
/**
 * The `exp` of an op-31 body `{"exp": <Unix seconds>}`; undefined for an empty body (the
 * token was not checked) or anything else.
 */
export declare function refreshedExp(frame: Frame): number | undefined;
/**
 * The `exp` claim (Unix seconds) of a JWT, read without checking the signature (the gateway
 * checks it; the client only needs to know when to ask for a fresh one). Undefined for a
 * token that is not a JWT or has no `exp`.
 */
export declare function tokenExp(token: string): number | undefined;
