//! Per-shard counters, written only by their shard and summed when read.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a comet's counters, summed over its shards.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Currently authenticated connections.
    pub connections: u64,
    /// Client connections accepted (TCP and WebSocket), authenticated or not.
    pub accepted: u64,
    /// Connections closed because logic refused or could not answer their auth.
    pub auth_failed: u64,
    /// Connections closed for a protocol error (bad frame, bad upgrade, bad WebSocket framing).
    pub closed_malformed: u64,
    /// Connections closed because their outgoing queue was full.
    pub closed_slow: u64,
    /// Connections closed because they did not authenticate in time.
    pub handshake_timeouts: u64,
    /// Connections closed because no heartbeat arrived in time.
    pub heartbeat_expired: u64,
    /// Connections closed because a newer connection authenticated with the same key.
    pub kicked_duplicate: u64,
    /// Pushes handed to connections (written at once or queued).
    pub frames_queued: u64,
    /// Of those, pushes a fan-out wrote to the socket at once, whole.
    pub frames_written_at_once: u64,
    /// Socket writes to clients that sent bytes, and the bytes they sent.
    pub writes: u64,
    pub bytes_sent: u64,
    /// Key pushes whose key has no connection on the target shard.
    pub push_dropped_no_key: u64,
    /// Stored key pushes not queued because the connection already had them (its connect
    /// backlog or a sync carried them).
    pub push_dropped_duplicate: u64,
    /// Room changes, joins and room-history syncs refused because the connection's token does
    /// not allow that room (or its name is too long).
    pub room_refused: u64,
    /// Connections closed at accept because the comet holds `max_conns`.
    pub refused_conn_limit: u64,
    /// Connections closed at accept because their address holds `max_conns_per_ip`.
    pub refused_ip_limit: u64,
    /// Connections closed for sending faster than `upstream_rate` / `upstream_burst`.
    pub closed_rate_limited: u64,
    /// TLS connections closed because their TLS handshake failed.
    pub tls_failed: u64,
    /// Op-22 requests answered empty because the connection had too many waiting.
    pub sync_refused: u64,
    /// Joins (op 24) refused because the connection was in `max_rooms_per_conn` rooms.
    pub room_limit: u64,
    /// Client messages (op 4) answered empty at once: too many of the connection's (8) or the
    /// shard's (`upstream_concurrency`) waited for the business already.
    pub upstream_refused: u64,
    /// Client messages the business did not answer (an error, a timeout, no business
    /// configured, logic unreachable): op 5 went out empty.
    pub upstream_failed: u64,
    /// Messages to logic dropped, oldest first, because logic was unreachable or slow while
    /// more than 100,000 (or 16 MiB of them) waited.
    pub logic_dropped: u64,
}

/// The counters of one shard. Only that shard writes them (relaxed), readers sum them.
#[derive(Debug, Default)]
pub(crate) struct ShardStats {
    pub connections: AtomicU64,
    pub accepted: AtomicU64,
    pub auth_failed: AtomicU64,
    pub closed_malformed: AtomicU64,
    pub closed_slow: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub heartbeat_expired: AtomicU64,
    pub kicked_duplicate: AtomicU64,
    pub frames_queued: AtomicU64,
    pub frames_written_at_once: AtomicU64,
    pub writes: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub push_dropped_no_key: AtomicU64,
    pub push_dropped_duplicate: AtomicU64,
    pub room_refused: AtomicU64,
    pub refused_conn_limit: AtomicU64,
    pub refused_ip_limit: AtomicU64,
    pub closed_rate_limited: AtomicU64,
    pub tls_failed: AtomicU64,
    pub sync_refused: AtomicU64,
    pub room_limit: AtomicU64,
    pub upstream_refused: AtomicU64,
    pub upstream_failed: AtomicU64,
    pub logic_dropped: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Subtracts one from a gauge.
pub(crate) fn dec(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}

impl ShardStats {
    /// Adds this shard's counters to `total`.
    pub fn add_to(&self, total: &mut Stats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        total.connections += get(&self.connections);
        total.accepted += get(&self.accepted);
        total.auth_failed += get(&self.auth_failed);
        total.closed_malformed += get(&self.closed_malformed);
        total.closed_slow += get(&self.closed_slow);
        total.handshake_timeouts += get(&self.handshake_timeouts);
        total.heartbeat_expired += get(&self.heartbeat_expired);
        total.kicked_duplicate += get(&self.kicked_duplicate);
        total.frames_queued += get(&self.frames_queued);
        total.frames_written_at_once += get(&self.frames_written_at_once);
        total.writes += get(&self.writes);
        total.bytes_sent += get(&self.bytes_sent);
        total.push_dropped_no_key += get(&self.push_dropped_no_key);
        total.push_dropped_duplicate += get(&self.push_dropped_duplicate);
        total.room_refused += get(&self.room_refused);
        total.refused_conn_limit += get(&self.refused_conn_limit);
        total.refused_ip_limit += get(&self.refused_ip_limit);
        total.closed_rate_limited += get(&self.closed_rate_limited);
        total.tls_failed += get(&self.tls_failed);
        total.sync_refused += get(&self.sync_refused);
        total.room_limit += get(&self.room_limit);
        total.upstream_refused += get(&self.upstream_refused);
        total.upstream_failed += get(&self.upstream_failed);
        total.logic_dropped += get(&self.logic_dropped);
    }
}
