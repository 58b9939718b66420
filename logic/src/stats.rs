//! What logic counts about itself.

imgate_shared::counters! {
    /// The live counters, written by the link and HTTP handlers.
    pub struct Counters =>
    /// A snapshot of logic's counters since start.
    pub LogicStats {
        /// Client frames with a business op that comets forwarded (goim's upstream, which
        /// logic only logs).
        upstream_frames: Counter,
        /// Client messages (op 4) the business answered with a 2xx.
        upstream_ok: Counter,
        /// Client messages the business refused (non-2xx) or could not be reached for.
        upstream_failed: Counter,
        /// Client messages the business did not answer within `logic.upstream_timeout`.
        upstream_timeout: Counter,
        /// Business answers over `logic.upstream_max_body`, dropped.
        upstream_too_large: Counter,
        /// Client messages answered empty at once: `logic.upstream_concurrency` were waiting.
        upstream_refused: Counter,
        /// Client messages answered empty because no `logic.upstream_url` is configured.
        upstream_unconfigured: Counter,
        /// Connections the connect hook admitted.
        connect_hook_ok: Counter,
        /// Connections the connect hook refused (non-2xx, or a room outside the `rooms` it
        /// answered).
        connect_hook_refused: Counter,
        /// Connections refused because the connect hook did not answer within
        /// `auth.connect_timeout`.
        connect_hook_timeout: Counter,
        /// Connections refused because the connect hook could not be reached (connection
        /// refused, no route).
        connect_hook_unreachable: Counter,
        /// Connections refused because the connect hook's 2xx answer was not a valid one (not
        /// a JSON object, no canonical positive mid, too large, a broken HTTP exchange).
        connect_hook_bad_answer: Counter,
        /// Connections refused at once because `auth.connect_concurrency` connects were
        /// waiting for the hook.
        connect_hook_busy: Counter,
        /// Connections refused over `comet.max_conns_per_user`.
        user_limit_refused: Counter,
        /// Oldest connections closed over `comet.max_conns_per_user` (`comet.kick_oldest`).
        user_limit_kicked: Counter,
        /// Events the events endpoint accepted (answered 2xx).
        events_sent: Counter,
        /// Events dropped, whatever the reason (`imgate_events_dropped_total{reason}` splits them).
        events_dropped: Counter,
        /// Failed POSTs of an events batch (each retried with backoff).
        events_post_failed: Counter,
    }
}
