//! What job counts about what it routed and what it could not deliver.

imgate_shared::counters! {
    /// The live counters; written from the router and the link tasks, read by
    /// [`Counters::snapshot`].
    pub struct Counters =>
    /// A snapshot of job's counters since start.
    pub JobStats {
        /// Bus messages received.
        consumed: Counter,
        /// Keys pushes handed to a comet link.
        keys_pushes: Counter,
        /// Room messages received.
        room_messages: Counter,
        /// Room batches flushed to the comet links.
        room_batches: Counter,
        /// Broadcasts handed to the comet links.
        broadcasts: Counter,
        /// Messages that had no comet to go to (unknown comet, no comet at all).
        undeliverable: Counter,
        /// Link frames refused because a comet's queue was full.
        link_queue_full: Counter,
        /// Link frames lost because the connection to a comet broke while they were being
        /// written.
        link_write_failed: Counter,
        /// Registry reads that failed (the previous comet set was kept).
        registry_errors: Counter,
        /// The share of `room_writes_per_shard` big rooms are paced by, in thousandths (1000:
        /// the nominal figure; learned from the comets' load, see `pacing.rs`).
        room_budget_permille: Gauge,
        /// The busiest comet shard's busy share (smoothed), in thousandths.
        busiest_shard_permille: Gauge,
        /// How often the biggest paced room flushes, in milliseconds (0: no room is paced).
        paced_interval_ms: Gauge,
        /// Comet links connected right now.
        connected: Gauge,
    }
}
