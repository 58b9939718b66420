/** Why something failed. */
export type ImgateErrorCode = 
/** The server sent bytes that are not a valid frame; the client reconnects. */
"protocol"
/** The WebSocket could not be created or failed. */
 | "socket"
/** A request got no reply in time. */
 | "timeout"
/** The connection went away before the reply came. */
 | "disconnected"
/** The request needs a connection and there is none. */
 | "not_connected"
/** `close()` was called. */
 | "closed"
/** `getToken` failed, gave something that is not a token, or gave none. */
 | "token"
/**
 * The server said no with an empty reply: a room the token does not allow, a join past the
 * gateway's rooms per connection, a leave of a room the connection is not in, a sync it
 * could not serve; or op 6 instead of the auth reply (auth refused, the reason in the
 * message).
 */
 | "refused"
/** The server does not know this op (it echoed the request instead of replying). */
 | "unsupported"
/** An event listener of the application threw; the client carried on. */
 | "listener";
/** Every error the client reports, by event or by a rejected promise. */
export declare class ImgateError extends Error {
    readonly code: ImgateErrorCode;
    constructor(code: ImgateErrorCode, message: string, options?: {
        cause?: unknown;
    });
}
