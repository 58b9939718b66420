//! Heartbeat deadlines of a shard's connections on one coarse timer wheel, instead of one
//! reactor timer per connection (a timer costs an idle connection about 200 bytes between its
//! handle, the reactor's maps and the task state that awaits it).
//!
//! A connection sits in the slot of its deadline tick, by id only. A heartbeat does not move
//! it: when its slot comes round the shard looks again and either closes the connection or
//! files it under its new deadline (lazily re-armed, as the per-connection timer was). A slot
//! is never visited before its tick has passed, so a connection is never closed early; it may
//! be closed up to one tick late.

use std::sync::OnceLock;
use std::time::Instant;

/// Width of one slot.
pub(crate) const TICK_MS: u64 = 100;
/// Slots on the wheel (102.4 s at 100 ms); a later deadline waits for its turn round.
const SLOTS: usize = 1024;

/// Milliseconds on a process-wide monotonic clock.
pub(crate) fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The low 32 bits of [`clock_ms`], what a connection keeps of its last heartbeat: intervals
/// (at most [`MAX_HEARTBEAT_MS`]) are computed with wrapping arithmetic.
pub(crate) fn stamp(now_ms: u64) -> u32 {
    now_ms as u32
}

/// Longest heartbeat expiry a connection can have (about 24 days).
pub(crate) const MAX_HEARTBEAT_MS: u32 = u32::MAX / 2;

/// Connection ids filed by deadline tick.
pub(crate) struct Wheel {
    slots: Box<[Vec<u64>]>,
    /// The next tick to visit; every earlier one has been visited.
    next_tick: u64,
}

impl Wheel {
    pub fn new(now_ms: u64) -> Self {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: now_ms / TICK_MS,
        }
    }

    /// Files `conn_id` to be looked at once `deadline_ms` has passed.
    pub fn insert(&mut self, conn_id: u64, deadline_ms: u64) {
        let tick = deadline_ms.div_ceil(TICK_MS).max(self.next_tick);
        self.slots[(tick % SLOTS as u64) as usize].push(conn_id);
    }

    /// Takes the connection ids of every slot whose tick has passed by `now_ms`, at most one
    /// turn of the wheel (a slot is emptied as it is taken, so nothing comes twice).
    pub fn due(&mut self, now_ms: u64) -> Vec<u64> {
        let mut due = Vec::new();
        let now_tick = now_ms / TICK_MS;
        let mut visited = 0;
        while self.next_tick <= now_tick && visited < SLOTS {
            let slot = &mut self.slots[(self.next_tick % SLOTS as u64) as usize];
            if due.is_empty() {
                due = std::mem::take(slot);
            } else {
                due.append(slot);
            }
            self.next_tick += 1;
            visited += 1;
        }
        self.next_tick = self.next_tick.max(now_tick + 1);
        due
    }
}

/// When a connection whose last heartbeat is `last` (a [`stamp`]) and whose expiry is
/// `expiry_ms` expires, as of `now_ms`: `None` if it already has.
pub(crate) fn deadline(now_ms: u64, last: u32, expiry_ms: u32) -> Option<u64> {
    let elapsed = stamp(now_ms).wrapping_sub(last);
    (elapsed < expiry_ms).then(|| now_ms + u64::from(expiry_ms - elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_due_after_their_tick_never_before() {
        let mut w = Wheel::new(1_000);
        w.insert(1, 1_050);
        w.insert(2, 1_100);
        w.insert(3, 1_101);
        assert!(w.due(1_099).is_empty());
        assert_eq!(w.due(1_100), vec![1, 2]);
        assert!(w.due(1_150).is_empty());
        assert_eq!(w.due(1_200), vec![3]);
        // A deadline already passed is filed at the next tick.
        w.insert(4, 0);
        assert_eq!(w.due(1_300), vec![4]);
    }

    #[test]
    fn a_deadline_beyond_one_turn_waits_for_its_turn() {
        let span = TICK_MS * SLOTS as u64;
        let mut w = Wheel::new(0);
        w.insert(7, span * 2 + 5);
        // The slot comes round every turn; the owner re-files it until it is really due.
        let mut seen = Vec::new();
        for t in (0..=span * 3).step_by(TICK_MS as usize) {
            for id in w.due(t) {
                match deadline(t, 0, (span * 2 + 5) as u32) {
                    Some(later) => w.insert(id, later),
                    None => seen.push(t),
                }
            }
        }
        assert_eq!(seen, vec![span * 2 + TICK_MS]);
    }

    #[test]
    fn a_long_pause_visits_every_slot_once() {
        let mut w = Wheel::new(0);
        for id in 0..SLOTS as u64 * 2 {
            w.insert(id, id * TICK_MS / 2);
        }
        let mut due = w.due(TICK_MS * SLOTS as u64 * 10);
        due.sort_unstable();
        assert_eq!(due, (0..SLOTS as u64 * 2).collect::<Vec<_>>());
        assert!(w.due(TICK_MS * SLOTS as u64 * 10 + 1).is_empty());
    }

    #[test]
    fn deadlines_across_the_stamp_wrap() {
        let now = (1u64 << 32) + 10;
        let last = stamp(now - 30);
        assert_eq!(deadline(now, last, 100), Some(now + 70));
        assert_eq!(deadline(now, last, 30), None);
    }
}
