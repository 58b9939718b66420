/**
 * imgate-client: a client for imgate, the goim-compatible instant-messaging and push gateway.
 * See README.md for a quick start.
 */
export { ImgateClient } from "./client.js";
export { tokenExp } from "./codec.js";
export { ImgateError } from "./errors.js";
export { decodeFrames, decodeMessage, decodeRoomFrames, encodeFrame, FrameError, HEADER_LEN, Op, } from "./frame.js";
export { afterKick, RECONNECT_PREFIX } from "./kick.js";
export { ImgateMessage } from "./message.js";
export { SequenceLog } from "./sequence.js";
