//! Per-shard counters, written only by their shard and summed when read (`counters!`), and
//! the per-shard push latency histogram.

imgate_shared::counters! {
    /// The counters of one shard. Only that shard writes them (relaxed), readers sum them.
    pub(crate) struct ShardCounters =>
    /// A snapshot of a comet's counters, summed over its shards.
    pub Stats {
        /// Currently authenticated connections.
        connections: Gauge,
        /// Of those, WebSocket connections (the rest are raw TCP).
        connections_ws: Gauge,
        /// Client connections accepted (TCP and WebSocket), authenticated or not.
        accepted: Counter,
        /// Connections that authenticated (logic accepted their auth).
        connects: Counter,
        /// Heartbeats (op 2) answered.
        heartbeats: Counter,
        /// Connections closed because logic refused or could not answer their auth.
        auth_failed: Counter,
        /// Of those, the ones logic could not answer (unreachable, too slow).
        auth_unavailable: Counter,
        /// Of those, the ones refused because the connect hook did not answer in time.
        auth_hook_timeout: Counter,
        /// Of those, the ones refused because the connect hook could not be reached.
        auth_hook_unreachable: Counter,
        /// Of those, the ones refused because the connect hook's answer was not a valid one.
        auth_hook_bad_answer: Counter,
        /// Of those, the ones refused at once because `auth.connect_concurrency` connects
        /// waited for the connect hook already.
        auth_hook_busy: Counter,
        /// Connections closed for a protocol error (bad frame, bad upgrade, bad WebSocket
        /// framing).
        closed_malformed: Counter,
        /// Connections closed because their outgoing queue was full.
        closed_slow: Counter,
        /// Connections closed because they did not authenticate in time.
        handshake_timeouts: Counter,
        /// Connections closed because no heartbeat arrived in time.
        heartbeat_expired: Counter,
        /// Connections closed because a newer connection authenticated with the same key.
        kicked_duplicate: Counter,
        /// Connections the business kicked (`POST /goim/kick`): told with op 6, then closed.
        closed_kicked: Counter,
        /// Connections closed because their token expired (`exp` and `auth.leeway`).
        closed_token_expired: Counter,
        /// Connections closed because the fresh token they sent (op 30) was refused.
        closed_refresh_refused: Counter,
        /// Business joins, leaves and kicks for a connection that had closed already.
        control_missed: Counter,
        /// Pushes handed to connections (written at once or queued).
        frames_queued: Counter,
        /// Of those, pushes a fan-out wrote to the socket at once, whole.
        frames_written_at_once: Counter,
        /// Socket writes to clients that sent bytes.
        writes: Counter,
        /// Of those, sends made through the shard's io_uring (fan-out writes on the io_uring
        /// engine), submitted a slice at a time.
        ring_sends: Counter,
        /// Bytes those writes sent.
        bytes_sent: Counter,
        /// Key pushes whose key has no connection on the target shard.
        push_dropped_no_key: Counter,
        /// Stored key pushes not queued because the connection already had them (its connect
        /// backlog or a sync carried them).
        push_dropped_duplicate: Counter,
        /// Room changes, joins and room-history syncs refused because the connection's token
        /// does not allow that room (or its name is too long, or not UTF-8).
        room_refused: Counter,
        /// Connections closed at accept because the comet holds `max_conns`.
        refused_conn_limit: Counter,
        /// Connections closed at accept because their address holds `max_conns_per_ip`.
        refused_ip_limit: Counter,
        /// Connections closed for sending faster than `upstream_rate` / `upstream_burst`.
        closed_rate_limited: Counter,
        /// TLS connections closed because their TLS handshake failed.
        tls_failed: Counter,
        /// Op-22 requests answered empty because the connection had too many waiting.
        sync_refused: Counter,
        /// Joins (op 24) refused because the connection was in `max_rooms_per_conn` rooms.
        room_limit: Counter,
        /// Client messages (op 4) answered empty at once: too many of the connection's (8) or
        /// the shard's (`upstream_concurrency`) waited for the business already.
        upstream_refused: Counter,
        /// Client messages the business did not answer (an error, a timeout, no business
        /// configured, logic unreachable): op 5 went out empty.
        upstream_failed: Counter,
        /// Messages to logic dropped, oldest first, because logic was unreachable or slow while
        /// more than 100,000 (or 16 MiB of them) waited.
        logic_dropped: Counter,
        /// Rooms with members, per shard (a room on two shards counts twice), as of each
        /// shard's last online report.
        rooms: Gauge,
        /// 1 while this shard's link to logic is up.
        logic_linked: Gauge,
        /// 1 while this shard's loop runs (from its start to its orderly stop).
        running: Gauge,
        /// Panics caught in a connection's tasks (each closed that connection).
        task_panics: Counter,
        /// Connections closed because one of their tasks panicked.
        closed_panic: Counter,
    }
}

/// One shard's counters and push latency histogram. Only that shard writes them.
#[derive(Debug, Default)]
pub(crate) struct ShardStats {
    pub counters: ShardCounters,
    /// From logic accepting a push (the oldest of a room batch) to this shard having written
    /// it, or queued it (a member whose socket was full), to its last member of it. Merged
    /// room pushes count once.
    pub push_latency: imgate_shared::metrics::Histogram,
    /// From reading a push off job's link to the same point: the shard's own part.
    pub fanout_latency: imgate_shared::metrics::Histogram,
    /// The shard's event loop's counters (its tasks' panics among them), once it runs.
    pub loop_stats: std::sync::OnceLock<std::sync::Arc<imgate_runtime::LoopStats>>,
}

impl std::ops::Deref for ShardStats {
    type Target = ShardCounters;

    fn deref(&self) -> &ShardCounters {
        &self.counters
    }
}

impl ShardStats {
    /// Panics of this shard's tasks: the connections' (caught by comet, each closing its
    /// connection) and any other task's (caught by the runtime, which dropped that task).
    pub fn task_panics(&self) -> u64 {
        let dropped = self.loop_stats.get().map_or(0, |l| l.task_panics());
        self.counters.task_panics.get() + dropped
    }

    /// Adds this shard's counters to `total`.
    pub fn add_to(&self, total: &mut Stats) {
        self.counters.add_to(total);
    }
}
