//! Room names (and short labels: comet names, platforms), held once per process.
//!
//! A room's name is the client's to choose (256 bytes at most, up to `comet.max_rooms_per_conn`
//! rooms a connection), and every service kept its own copy: a comet shard's room, the
//! cluster-wide count it keeps for heartbeats, logic's registry of online reports, logic's
//! room-count cache, job's room sizes. 1,000 connections making 15 single-member rooms each
//! grew imgate by ~40 MB. Interned, a name is one allocation whichever services of the process
//! hold it, each holder paying for a pointer.
//!
//! The table is split into segments, each behind its own mutex, so threads interning different
//! names rarely meet; comet shards touch it only when a room starts or ends on the shard (never
//! on a fan-out), logic when an online report arrives. A name nothing else holds any more stays
//! until the next [`sweep`] (comet shards sweep with each online report, logic with each
//! refresh of its room counts).

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

/// Segments of the table: enough that a few dozen shards rarely wait on one another.
const SEGMENTS: usize = 64;

/// A table of interned strings.
#[derive(Debug)]
pub struct Interner {
    segments: [Mutex<HashSet<Arc<str>>>; SEGMENTS],
}

/// The process's room names.
static ROOMS: LazyLock<Interner> = LazyLock::new(Interner::new);

/// The process's short labels: comet names and client platforms, which a store holds for
/// every connection.
static LABELS: LazyLock<Interner> = LazyLock::new(Interner::new);

/// The process's one copy of room name `name`.
pub fn room(name: &str) -> Arc<str> {
    ROOMS.intern(name)
}

/// Forgets the room names nothing but the table holds any more.
pub fn sweep() {
    ROOMS.sweep();
}

/// The process's one copy of label `name` (a comet's name, a client's platform).
pub fn label(name: &str) -> Arc<str> {
    LABELS.intern(name)
}

/// Forgets the labels nothing but the table holds any more (the embedded session store
/// sweeps them when it drops expired connections).
pub fn sweep_labels() {
    LABELS.sweep();
}

impl Default for Interner {
    fn default() -> Self {
        Interner::new()
    }
}

impl Interner {
    /// An empty table.
    pub fn new() -> Interner {
        Interner {
            segments: std::array::from_fn(|_| Mutex::default()),
        }
    }

    fn segment(&self, name: &str) -> MutexGuard<'_, HashSet<Arc<str>>> {
        // A fixed hasher: which segment a name lands in needs no secret, only spread.
        let index = BuildHasherDefault::<DefaultHasher>::default().hash_one(name) as usize;
        self.segments[index % SEGMENTS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The one `Arc<str>` of `name` (made now if the table has none).
    pub fn intern(&self, name: &str) -> Arc<str> {
        let mut segment = self.segment(name);
        if let Some(held) = segment.get(name) {
            return held.clone();
        }
        let new: Arc<str> = Arc::from(name);
        segment.insert(new.clone());
        new
    }

    /// Drops the names only the table holds. Each segment's lock is held for that segment's
    /// names only, so an intern waits at most for one segment's sweep.
    pub fn sweep(&self) {
        for segment in &self.segments {
            let mut segment = segment.lock().unwrap_or_else(|e| e.into_inner());
            // The table's own reference is the only one: no holder is left (and none can
            // appear, as a new one takes the lock to find it).
            segment.retain(|name| Arc::strong_count(name) > 1);
            if segment.capacity() > 4 * segment.len().max(16) {
                segment.shrink_to_fit();
            }
        }
    }

    /// Names in the table.
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_held_once_and_forgotten_when_nobody_holds_it() {
        let table = Interner::new();
        let a = table.intern("live://1");
        let b = table.intern(&String::from("live://1"));
        assert!(Arc::ptr_eq(&a, &b));
        let other = table.intern("live://2");
        assert_eq!(table.len(), 2);
        drop(a);
        table.sweep();
        assert_eq!(table.len(), 2, "b still holds live://1");
        drop((b, other));
        table.sweep();
        assert!(table.is_empty());
        // Interned again after it was forgotten: a fresh copy, held once again.
        let again = table.intern("live://1");
        assert!(Arc::ptr_eq(&again, &table.intern("live://1")));
    }

    #[test]
    fn threads_share_one_copy() {
        let table = Arc::new(Interner::new());
        let names: Vec<Vec<Arc<str>>> = (0..4)
            .map(|_| {
                let table = table.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .map(|i| table.intern(&format!("room-{i}")))
                        .collect::<Vec<_>>()
                })
            })
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(table.len(), 1000);
        for i in 0..1000 {
            assert!(names.iter().all(|n| Arc::ptr_eq(&n[i], &names[0][i])));
        }
    }
}
