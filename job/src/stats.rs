//! Counters job keeps about what it routed and what it could not deliver.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A snapshot of job's counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobStats {
    /// Bus messages received.
    pub consumed: u64,
    /// Keys pushes handed to a comet link.
    pub keys_pushes: u64,
    /// Room messages received.
    pub room_messages: u64,
    /// Room batches flushed to the comet links.
    pub room_batches: u64,
    /// Broadcasts handed to the comet links.
    pub broadcasts: u64,
    /// Messages that had no comet to go to (unknown comet, no comet at all).
    pub undeliverable: u64,
    /// Link frames refused because a comet's queue was full.
    pub link_queue_full: u64,
    /// Link frames lost because the connection to a comet broke while they were being written.
    pub link_write_failed: u64,
    /// Registry reads that failed (the previous comet set was kept).
    pub registry_errors: u64,
    /// The share of `room_writes_per_shard` big rooms are paced by, in thousandths (1000: the
    /// nominal figure; learned from the comets' load, see `pacing.rs`).
    pub room_budget_permille: u64,
    /// The busiest comet shard's busy share (smoothed), in thousandths.
    pub busiest_shard_permille: u64,
}

/// The live counters; written from the router and the link tasks, read by [`Counters::snapshot`].
#[derive(Default)]
pub(crate) struct Counters {
    pub consumed: AtomicU64,
    pub keys_pushes: AtomicU64,
    pub room_messages: AtomicU64,
    pub room_batches: AtomicU64,
    pub broadcasts: AtomicU64,
    pub undeliverable: AtomicU64,
    pub link_queue_full: AtomicU64,
    pub link_write_failed: AtomicU64,
    pub registry_errors: AtomicU64,
    pub room_budget_permille: AtomicU64,
    pub busiest_shard_permille: AtomicU64,
    /// Comet links connected right now.
    pub connected: AtomicUsize,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> JobStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        JobStats {
            consumed: get(&self.consumed),
            keys_pushes: get(&self.keys_pushes),
            room_messages: get(&self.room_messages),
            room_batches: get(&self.room_batches),
            broadcasts: get(&self.broadcasts),
            undeliverable: get(&self.undeliverable),
            link_queue_full: get(&self.link_queue_full),
            link_write_failed: get(&self.link_write_failed),
            registry_errors: get(&self.registry_errors),
            room_budget_permille: get(&self.room_budget_permille),
            busiest_shard_permille: get(&self.busiest_shard_permille),
        }
    }
}
