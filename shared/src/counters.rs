//! Counters: what a service counts about itself, declared once per service with
//! [`counters!`](crate::counters!), which gives the live set (one [`Counter`] per value), its
//! snapshot (one `u64` per value) and the list an exporter reads ([`Sample`]).
//!
//! Writes are relaxed atomic adds by whoever does the work, never a lock. A value written from
//! many threads (job's router and link tasks) lives in one set shared behind an `Arc`. A value
//! written on a hot path by many cores lives in one set *per core*, written only by that core,
//! and the sets are summed when read, so writers never contend on a cache line:
//!
//! ```
//! imgate_shared::counters! {
//!     /// One shard's counters.
//!     pub struct ShardCounters => pub ShardStats {
//!         /// Frames queued to connections.
//!         frames_queued: Counter,
//!         /// Connections open now.
//!         connections: Gauge,
//!     }
//! }
//!
//! let shards: Vec<ShardCounters> = (0..4).map(|_| ShardCounters::default()).collect();
//! shards[1].frames_queued.add(3);
//! shards[2].connections.add(1);
//! // Read: sum every shard's set into one snapshot.
//! let mut total = ShardStats::default();
//! for shard in &shards {
//!     shard.add_to(&mut total);
//! }
//! assert_eq!((total.frames_queued, total.connections), (3, 1));
//! let names: Vec<&str> = total.samples().map(|s| s.name).collect();
//! assert_eq!(names, ["frames_queued", "connections"]);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// One counted value: a count that only grows, or (as [`Gauge`]) a level that goes up and down.
/// Relaxed atomics: a reader sees each value exactly, but not a consistent moment across values.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

/// A [`Counter`] that goes up and down (connections open now, a share in thousandths); the
/// same type, named for what its readers may assume.
pub type Gauge = Counter;

impl Counter {
    /// A counter starting at `value`.
    pub const fn new(value: u64) -> Counter {
        Counter(AtomicU64::new(value))
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts `n` (gauges).
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }

    /// Sets the value (gauges).
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether a value only grows or goes up and down: how an exporter types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One value of a snapshot, as an exporter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The field's name, `snake_case`.
    pub name: &'static str,
    /// The field's doc comment.
    pub help: &'static str,
    pub kind: Kind,
    pub value: u64,
}

/// Declares a set of counters and its snapshot from one list of documented fields, each
/// `Counter` or `Gauge`:
///
/// - the set, `$set`, with a public [`Counter`] per field, `Default`, and `snapshot()` and
///   `add_to(&mut snapshot)` (to sum several sets, one per shard, into one snapshot);
/// - the snapshot, `$snapshot`, with a public `u64` per field, and `samples()`, the fields in
///   declaration order with their names, doc comments and kinds.
///
/// See the [module docs](crate::counters) for an example.
#[macro_export]
macro_rules! counters {
    (
        $(#[$set_meta:meta])*
        $vis:vis struct $set:ident => $(#[$snapshot_meta:meta])* $snapshot_vis:vis $snapshot:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $kind:ident
            ),* $(,)?
        }
    ) => {
        $(#[$set_meta])*
        #[derive(Debug, Default)]
        $vis struct $set {
            $(
                $(#[doc = $doc])*
                pub $field: $crate::counters::$kind,
            )*
        }

        $(#[$snapshot_meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        $snapshot_vis struct $snapshot {
            $(
                $(#[doc = $doc])*
                pub $field: u64,
            )*
        }

        impl $set {
            /// Every value now.
            pub fn snapshot(&self) -> $snapshot {
                let mut snapshot = $snapshot::default();
                self.add_to(&mut snapshot);
                snapshot
            }

            /// Adds every value to `total` (sums per-shard sets on read).
            pub fn add_to(&self, total: &mut $snapshot) {
                $( total.$field += self.$field.get(); )*
            }
        }

        impl $snapshot {
            /// Every value with its name, doc comment and kind, in declaration order.
            pub fn samples(&self) -> impl Iterator<Item = $crate::counters::Sample> {
                [
                    $(
                        $crate::counters::Sample {
                            name: stringify!($field),
                            help: concat!($($doc),*),
                            kind: $crate::counters::Kind::$kind,
                            value: self.$field,
                        },
                    )*
                ]
                .into_iter()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Kind;

    crate::counters! {
        /// Test counters.
        struct Set => Snap {
            /// Things done.
            done: Counter,
            /// Things open
            /// now.
            open: Gauge,
        }
    }

    #[test]
    fn sets_sum_into_one_snapshot_and_list_their_samples() {
        let shards = [Set::default(), Set::default()];
        shards[0].done.add(2);
        shards[1].done.inc();
        shards[1].open.add(5);
        shards[1].open.sub(1);
        let mut total = Snap::default();
        for shard in &shards {
            shard.add_to(&mut total);
        }
        assert_eq!(total, Snap { done: 3, open: 4 });
        assert_eq!(shards[1].snapshot(), Snap { done: 1, open: 4 });
        let samples: Vec<_> = total.samples().collect();
        assert_eq!(samples[0].name, "done");
        assert_eq!(samples[0].help.trim(), "Things done.");
        assert_eq!(samples[1].kind, Kind::Gauge);
        assert_eq!(samples[1].help.trim(), "Things open now.");
        assert_eq!(samples[1].value, 4);
    }
}
