/**
 * Which closes announced by the server (op 6, its reason) end reconnecting. The rules are the
 * README's ("Kicks and expiry"); in short, a business's kick ends the session unless its
 * reason starts with `reconnect`, an expired token is replaced when `getToken` can, and a
 * refused fresh token ends the session.
 */

/** A kick whose reason starts with this asks the client to come back (after its usual backoff). */
export const RECONNECT_PREFIX = "reconnect";
/** op 6's reason when the connection's token expired. */
export const TOKEN_EXPIRED = "token expired";
/** op 6's reason starts with this when the gateway refused a fresh token (op 30). */
export const REFRESH_REFUSED_PREFIX = "fresh token refused";

/** What the client does after an op 6. */
export type KickOutcome =
  /** Stop reconnecting: `connect()` starts again. */
  | "stop"
  /** Reconnect at once, with a fresh token from `getToken`. */
  | "renew"
  /** Reconnect after the usual backoff. */
  | "retry";

/**
 * What an op 6 with `reason` means for the client. `atAuth`: it came instead of the auth
 * reply (auth refused); `renewable`: the client has `getToken`, so a new connection can bring
 * a new token.
 */
export function afterKick(reason: string, atAuth: boolean, renewable: boolean): KickOutcome {
  if (atAuth) {
    // A refused auth is retried (logic may be back, `getToken` may give a better token),
    // except an expired token that cannot be replaced: it would be refused again forever.
    return !renewable && reason.includes(TOKEN_EXPIRED) ? "stop" : "retry";
  }
  if (reason === TOKEN_EXPIRED) {
    return renewable ? "renew" : "stop";
  }
  if (reason.startsWith(RECONNECT_PREFIX)) {
    return "retry";
  }
  // A refused fresh token, or the business's kick ("kicked" when it gave no reason).
  return "stop";
}
