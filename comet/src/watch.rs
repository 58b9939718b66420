//! The ops a connection watches (goim's `accepts`, ops 14 and 16): key pushes and broadcasts
//! with any other op pass it by.
//!
//! A sorted list without repeats, bounded at [`MAX_WATCHED_OPS`], in an exact-size slice: a
//! push's check is a binary search, and a frame of m ops costs a sort of those m and one merge,
//! O(m log m + n), whatever the list already holds. A connection watching nothing holds no
//! allocation. (A linear search per op made a full list cost a frame ~700,000 comparisons:
//! about a hundred heartbeats' worth of work for one frame the rate limit let through.)

use std::cell::RefCell;

/// Most ops one connection may watch; further subscriptions are ignored.
pub(crate) const MAX_WATCHED_OPS: usize = 1024;

/// One connection's watched ops.
#[derive(Debug, Default)]
pub(crate) struct Watched(RefCell<Box<[i32]>>);

impl Watched {
    /// Whether `op` is watched.
    pub fn contains(&self, op: i32) -> bool {
        self.0.borrow().binary_search(&op).is_ok()
    }

    /// How many ops are watched.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    /// Whether no more ops can be watched: a subscription changes nothing, so its frame need
    /// not even be read.
    pub fn is_full(&self) -> bool {
        self.0.borrow().len() >= MAX_WATCHED_OPS
    }

    /// Watches `ops` too (sorted in place). Past [`MAX_WATCHED_OPS`] the rest are ignored: a
    /// full list costs nothing more, and of one frame that overfills it, the lowest new ops
    /// are the ones kept.
    pub fn subscribe(&self, ops: &mut [i32]) {
        let mut watched = self.0.borrow_mut();
        let room = MAX_WATCHED_OPS.saturating_sub(watched.len());
        if room == 0 || ops.is_empty() {
            return;
        }
        ops.sort_unstable();
        let mut added: Vec<i32> = Vec::new();
        let mut at = 0;
        for (i, &op) in ops.iter().enumerate() {
            if i > 0 && ops[i - 1] == op {
                continue;
            }
            // Both sorted: the watched list is walked once over the whole frame.
            while at < watched.len() && watched[at] < op {
                at += 1;
            }
            if watched.get(at) != Some(&op) {
                added.push(op);
                if added.len() == room {
                    break;
                }
            }
        }
        if added.is_empty() {
            return;
        }
        let mut merged = Vec::with_capacity(watched.len() + added.len());
        let (mut old, mut new) = (watched.iter().peekable(), added.iter().peekable());
        while let (Some(&&a), Some(&&b)) = (old.peek(), new.peek()) {
            if a < b {
                merged.push(a);
                old.next();
            } else {
                merged.push(b);
                new.next();
            }
        }
        merged.extend(old);
        merged.extend(new);
        *watched = merged.into_boxed_slice();
    }

    /// Stops watching `ops` (sorted in place).
    pub fn unsubscribe(&self, ops: &mut [i32]) {
        let mut watched = self.0.borrow_mut();
        if watched.is_empty() || ops.is_empty() {
            return;
        }
        ops.sort_unstable();
        let gone = |op: &i32| ops.binary_search(op).is_ok();
        if watched.iter().any(gone) {
            *watched = watched.iter().filter(|op| !gone(op)).copied().collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(w: &Watched) -> Vec<i32> {
        w.0.borrow().to_vec()
    }

    #[test]
    fn subscribes_and_unsubscribes_as_a_set() {
        let w = Watched::default();
        w.subscribe(&mut [1000, 5, 1000, -3]);
        assert_eq!(list(&w), [-3, 5, 1000]);
        w.subscribe(&mut [5, 7]);
        assert_eq!(list(&w), [-3, 5, 7, 1000]);
        assert!(w.contains(7) && w.contains(-3) && !w.contains(6));
        w.unsubscribe(&mut [7, 8, -3]);
        assert_eq!(list(&w), [5, 1000]);
        w.unsubscribe(&mut [5, 1000]);
        assert_eq!(w.len(), 0);
        assert!(!w.contains(5));
    }

    #[test]
    fn the_list_is_bounded_and_a_full_one_stays_as_it_is() {
        let w = Watched::default();
        let mut first: Vec<i32> = (0..700).rev().collect();
        w.subscribe(&mut first);
        let mut second: Vec<i32> = (500..1500).collect();
        w.subscribe(&mut second);
        assert_eq!(w.len(), MAX_WATCHED_OPS);
        // The lowest new ops filled it: 700..1024.
        assert!(w.contains(1023) && !w.contains(1024));
        w.subscribe(&mut [5000, -1]);
        assert_eq!(w.len(), MAX_WATCHED_OPS);
        assert!(!w.contains(5000) && !w.contains(-1));
        // Room again after an unsubscribe.
        w.unsubscribe(&mut [0]);
        w.subscribe(&mut [5000, 6000]);
        assert!(w.contains(5000) && !w.contains(6000));
        let l = list(&w);
        assert!(l.windows(2).all(|p| p[0] < p[1]), "sorted without repeats");
    }

    /// Found by probing: every op of a frame was searched for in the whole list, so a frame
    /// of 680 ops against a full list cost ~700,000 comparisons, a hundred heartbeats. A frame
    /// now costs about what sorting its own ops costs, whatever the list holds. Measured
    /// against that sort, interleaved, so a loaded machine slows both alike.
    #[test]
    fn a_frame_costs_about_what_sorting_its_own_ops_costs() {
        use std::time::{Duration, Instant};
        let w = Watched::default();
        // Room for one more, so the frame is really looked at.
        w.subscribe(&mut (0..MAX_WATCHED_OPS as i32 - 1).collect::<Vec<_>>());
        // All watched already, shuffled (so that sorting them is real work).
        let frame: Vec<i32> = (0..680).map(|i| (i * 619) % 1021).collect();
        let (mut sorting, mut subscribing) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..300 {
            let mut ops = frame.clone();
            let started = Instant::now();
            ops.sort_unstable();
            sorting += started.elapsed();
            std::hint::black_box(&ops);
            let mut ops = frame.clone();
            let started = Instant::now();
            w.subscribe(&mut ops);
            subscribing += started.elapsed();
        }
        assert_eq!(w.len(), MAX_WATCHED_OPS - 1);
        println!("sorting {sorting:?}, subscribing {subscribing:?}");
        assert!(
            subscribing < sorting * 4,
            "subscribing took {subscribing:?}, sorting the same ops {sorting:?}"
        );
    }
}
