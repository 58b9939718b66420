/**
 * What an application gives the client (its options) and what it hears back (its events and
 * the connection state), in one place: the public shape of `ImgateClient`.
 */
import type { ImgateError } from "./errors.js";
import type { ImgateMessage } from "./message.js";
import type { WebSocketConstructor } from "./transport.js";

/** Reconnect delays: exponential from `minDelay` to `maxDelay`, with jitter. */
export interface ReconnectOptions {
  /** First delay in ms (default 500). */
  minDelay?: number;
  /** Longest delay in ms (default 30 000). */
  maxDelay?: number;
}

/**
 * Gives the token to connect with: called before every connection and before the current
 * token expires. `null` (or `undefined`) means there is none to give (say, the user logged
 * out): the client stops reconnecting. A rejection is reported and tried again later.
 */
export type TokenSource = () => Promise<string | null | undefined> | string | null | undefined;

export interface ImgateClientOptions {
  /** comet's WebSocket endpoint, e.g. `ws://127.0.0.1:3102/sub`. */
  url: string;
  /**
   * Asks the application for a signed token (JWT): before each connection, and ahead of the
   * token's `exp` to renew it on the open connection (op 30). Prefer it to `token`.
   */
  getToken?: TokenSource;
  /** One fixed signed token; the connection ends when it expires. Not with `getToken`. */
  token?: string;
  /** User id (trusted as is only by a development-mode gateway). */
  mid?: number;
  /**
   * Connection key. Default: a random key made once per client, so a reconnect replaces its
   * own stale session instead of leaving it to time out.
   */
  key?: string;
  /** Main room to be in, `type://id` (change it with `switchRoom`; add more with `join`). */
  room?: string;
  /** Business ops to receive from pushes by key and broadcasts (change with `watch`). */
  accepts?: number[];
  /** Acknowledge stored messages once the application has had them (op 20). Default true. */
  acks?: boolean;
  /** Heartbeat interval in ms (default 30 000, goim's web client; the server allows minutes). */
  heartbeat?: number;
  /** A heartbeat unanswered for this long (ms) means the connection is dead (default 10 000). */
  heartbeatTimeout?: number;
  /** Getting a token, connecting and authenticating must finish within this many ms (default 10 000). */
  authTimeout?: number;
  /** Replies to `join`, `leave`, `switchRoom`, `watch`, `send`… must come within this (ms, default 10 000). */
  requestTimeout?: number;
  /**
   * How long (ms) a gap in a sequence may stay open before the client asks the server for the
   * missing messages, and then gives up on the ones the server no longer has (default 500).
   */
  gapTimeout?: number;
  /** Reconnect after a connection is lost (default true, with the default delays). */
  reconnect?: boolean | ReconnectOptions;
  /** `platform` of the auth JSON (default "web"). */
  platform?: string;
  /** Resume the inbox after this sequence (`checkpoint.inboxSeq` saved by a previous page). */
  inboxSeq?: number;
  /**
   * Resume room histories after these sequences (`checkpoint.roomSeqs` saved before): a room
   * listed here is caught up from its sequence when the client enters it.
   */
  roomSeqs?: Record<string, number>;
  /** WebSocket class; default the global `WebSocket`. */
  WebSocket?: WebSocketConstructor;
}

/** The connection's state, `client.state`. */
export type ConnectionState =
  /** Getting a token, opening the socket or authenticating. */
  | "connecting"
  /** Authenticated: requests go out, pushes come in. */
  | "connected"
  /** No connection: waiting to reconnect, or stopped (`close()`, a kick, no token). */
  | "disconnected";

/** Who changed the client's rooms. */
export type RoomChangeBy = "client" | "server";

/** The events and what each listener receives. */
export interface ImgateEvents {
  /** A pushed message, handed over once (stored ones in sequence order). */
  message: ImgateMessage;
  /** `client.state` changed. */
  state: { state: ConnectionState; previous: ConnectionState };
  /** A connection attempt starts; `attempt` counts the failures since the last good one. */
  connecting: { attempt: number };
  /** Authenticated; `reconnected` is false only for the first connection. */
  connected: { reconnected: boolean };
  /** The connection is gone; `delay` is when the next attempt starts, if there is one. */
  disconnected: { reason: string; willReconnect: boolean; delay?: number };
  /**
   * The server closed the connection and said why (op 6 after auth): the business's kick,
   * an expired token, a refused fresh token. `final`: the client does not reconnect.
   */
  kicked: { reason: string; final: boolean };
  /** The gateway took a fresh token (op 31): the connection now lasts until `exp` (Unix s). */
  token: { exp: number };
  /** The client is in one more room: joined by the application or by the server. */
  roomJoined: { room: string; by: RoomChangeBy };
  /** The client left a room: by the application, or the server left it or refused it again. */
  roomLeft: { room: string; by: RoomChangeBy };
  /** Something went wrong; the client has dealt with it (reconnected, dropped the reply…). */
  error: ImgateError;
  /** A heartbeat reply: the main room's online count. */
  heartbeat: { online: number };
}
