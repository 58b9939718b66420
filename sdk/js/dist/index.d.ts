/**
 * imgate-client: a client for imgate, the goim-compatible instant-messaging and push gateway.
 * See README.md for a quick start.
 */
export { ImgateClient, type ImgateClientOptions, type ImgateEvents, type ReconnectOptions, type WebSocketConstructor, type WebSocketLike, } from "./client.js";
export { ImgateError, type ImgateErrorCode } from "./errors.js";
export { decodeFrames, decodeMessage, decodeRoomFrames, encodeFrame, FrameError, HEADER_LEN, Op, type Frame, type RoomFrames, } from "./frame.js";
export { ImgateMessage, type MessageKind } from "./message.js";
export { SequenceLog } from "./sequence.js";
