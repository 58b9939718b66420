/**
 * imgate-client: a client for imgate, the goim-compatible instant-messaging and push gateway.
 * See README.md for a quick start.
 */
export { ImgateClient } from "./client.js";
export type {
  ConnectionState,
  ImgateClientOptions,
  ImgateEvents,
  ReconnectOptions,
  RoomChangeBy,
  TokenSource,
} from "./options.js";
export { tokenExp } from "./codec.js";
export type { Checkpoint } from "./delivery.js";
export { ImgateError, type ImgateErrorCode } from "./errors.js";
export {
  decodeFrames,
  decodeMessage,
  decodeRoomFrames,
  encodeFrame,
  FrameError,
  HEADER_LEN,
  Op,
  type Frame,
  type RoomFrames,
} from "./frame.js";
export { afterKick, RECONNECT_PREFIX, type KickOutcome } from "./kick.js";
export { ImgateMessage, type MessageKind } from "./message.js";
export { SequenceLog } from "./sequence.js";
export { type WebSocketConstructor, type WebSocketLike } from "./transport.js";
