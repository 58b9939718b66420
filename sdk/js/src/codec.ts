/**
 * What goes over the WebSocket besides the frame layout (`frame.ts`): a WebSocket message
 * from the server turned into frames, each with the room it was tagged with (op 28); the auth
 * JSON; the bodies of op 6 and op 31; the expiry a JWT carries.
 */
import { decodeMessage, decodeRoomFrames, FrameError, Op, type Frame } from "./frame.js";

/** A frame from the server, and the room it was pushed to when it came in an op-28 frame. */
export interface Incoming {
  frame: Frame;
  room?: string;
}

const decoder = new TextDecoder();

/**
 * Decodes one WebSocket message from the server into its frames, op-9 batches and op-28 room
 * frames unwrapped. Throws a `FrameError` for anything that is not a valid frame.
 */
export function decodeIncoming(data: unknown): Incoming[] {
  const received: Incoming[] = [];
  for (const frame of decodeMessage(toBytes(data))) {
    if (frame.op === Op.Room) {
      const { room, frames } = decodeRoomFrames(frame.body);
      for (const inner of frames) received.push({ frame: inner, room });
    } else {
      received.push({ frame });
    }
  }
  return received;
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
export function authBody(fields: AuthFields): string {
  const body: Record<string, unknown> = {
    mid: fields.mid,
    key: fields.key,
    room_id: fields.room,
    platform: fields.platform,
    accepts: fields.accepts,
    acks: fields.acks,
    // Room pushes and room history come in op-28 frames naming their room: the only way to
    // tell a room's sequence from the inbox's, and one room's from another's.
    room_tags: true,
  };
  if (fields.token !== undefined) {
    body.token = fields.token;
  }
  return JSON.stringify(body);
}

/** The text of a frame's body (op 6's reason, a room's name). */
export function bodyText(frame: Frame): string {
  return decoder.decode(frame.body);
}

/** The heartbeat reply's online count (0 when the body does not hold one). */
export function onlineCount(frame: Frame): number {
  return frame.body.length >= 4
    ? new DataView(frame.body.buffer, frame.body.byteOffset, 4).getInt32(0)
    : 0;
}

/**
 * The `exp` of an op-31 body `{"exp": <Unix seconds>}`; undefined for an empty body (the
 * token was not checked) or anything else.
 */
export function refreshedExp(frame: Frame): number | undefined {
  if (frame.body.length === 0) return undefined;
  try {
    return validExp((JSON.parse(bodyText(frame)) as { exp?: unknown }).exp);
  } catch {
    return undefined;
  }
}

/**
 * The `exp` claim (Unix seconds) of a JWT, read without checking the signature (the gateway
 * checks it; the client only needs to know when to ask for a fresh one). Undefined for a
 * token that is not a JWT or has no `exp`.
 */
export function tokenExp(token: string): number | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const binary = atob(padded);
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const claims = JSON.parse(decoder.decode(bytes)) as { exp?: unknown };
    return validExp(claims?.exp);
  } catch {
    return undefined;
  }
}

function validExp(exp: unknown): number | undefined {
  return typeof exp === "number" && Number.isFinite(exp) && exp > 0 ? exp : undefined;
}
