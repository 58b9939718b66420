//! A connection's progress through its user's stored messages (inbox sequences).
//!
//! Stored pushes for one user can reach a connection out of sequence order (two pushes racing
//! through logic), and the same message can come twice (in the connect backlog and live). So
//! a connection remembers exactly which sequences it has: everything up to a floor, and a set
//! of those above it. The same shape tracks what was *written* for a client that does not ack,
//! and only the contiguous written floor is reported to logic: a message that overtook an
//! older one never makes the older one count as delivered.

use std::cell::Cell;
use std::collections::BTreeSet;

/// Sequences held above the floor before the connection stops waiting for a missing one (a
/// message dropped before this connection was registered, or trimmed from the inbox).
const MAX_AHEAD: usize = 1024;

/// Every sequence up to `floor`, and the ones in `above`.
#[derive(Debug)]
pub(crate) struct SeqWindow {
    floor: u64,
    above: BTreeSet<u64>,
}

impl SeqWindow {
    pub fn new(floor: u64) -> Self {
        SeqWindow {
            floor,
            above: BTreeSet::new(),
        }
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.floor || self.above.contains(&seq)
    }

    /// Adds `first..=last` (the stored messages of one answer are consecutive); returns
    /// whether the floor moved.
    pub fn insert(&mut self, first: u64, last: u64) -> bool {
        let before = self.floor;
        let first = first.max(self.floor + 1);
        if last >= first {
            if last - first >= MAX_AHEAD as u64 {
                // More than the window holds: everything below the tail is covered anyway.
                self.floor = self.floor.max(last - MAX_AHEAD as u64);
            }
            for seq in first.max(self.floor + 1)..=last {
                self.above.insert(seq);
            }
        }
        self.advance();
        if self.above.len() > MAX_AHEAD {
            // Stop waiting for the oldest gap: jump the floor over it.
            while self.above.len() > MAX_AHEAD / 2 {
                if let Some(seq) = self.above.pop_first() {
                    self.floor = seq;
                }
            }
            self.advance();
        }
        self.floor != before
    }

    fn advance(&mut self) {
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
    }
}

/// What one connection has of its user's stored messages. Most connections never get one
/// (no user, or nothing stored for them while connected), so the windows are allocated on the
/// first stored message: until then both are the floor from logic and nothing above it.
pub(crate) struct Delivery {
    /// Stored messages count as delivered once written (the client does not ack them).
    report_writes: bool,
    /// Nothing at or below it will come from the store (logic's `inbox_floor`).
    floor: u64,
    /// In a `Cell` (taken out while used) to keep an idle connection's `Delivery` small.
    windows: Cell<Option<Box<Windows>>>,
}

struct Windows {
    /// Sequences queued to the connection: a live push already here is a duplicate.
    queued: SeqWindow,
    /// Sequences written to the socket (only tracked when `report_writes`).
    written: SeqWindow,
}

impl Delivery {
    /// `floor`: nothing at or below it will come from the store (logic's `inbox_floor`).
    pub fn new(report_writes: bool, floor: u64) -> Self {
        Delivery {
            report_writes,
            floor,
            windows: Cell::new(None),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Windows) -> R) -> R {
        let mut windows = self.windows.take().unwrap_or_else(|| {
            Box::new(Windows {
                queued: SeqWindow::new(self.floor),
                written: SeqWindow::new(self.floor),
            })
        });
        let result = f(&mut windows);
        self.windows.set(Some(windows));
        result
    }

    /// Reads the windows if they exist.
    fn peek<R>(&self, f: impl FnOnce(Option<&Windows>) -> R) -> R {
        let windows = self.windows.take();
        let result = f(windows.as_deref());
        self.windows.set(windows);
        result
    }

    fn queued_contains(&self, seq: u64) -> bool {
        self.peek(|w| match w {
            Some(w) => w.queued.contains(seq),
            None => seq <= self.floor,
        })
    }

    /// The dedup decision for a live stored push: `false` if the connection already has
    /// `seq`; otherwise records it as queued.
    pub fn take_push(&self, seq: u64) -> bool {
        if self.queued_contains(seq) {
            return false;
        }
        self.with(|w| w.queued.insert(seq, seq));
        true
    }

    /// Everything up to here is queued (or will never come from the store).
    pub fn queued_floor(&self) -> u64 {
        self.peek(|w| w.map_or(self.floor, |w| w.queued.floor()))
    }

    /// Whether `seq` is not queued to this connection yet.
    pub fn is_new(&self, seq: u64) -> bool {
        !self.queued_contains(seq)
    }

    /// Stored messages `first..=last` were queued (backlog, inbox sync).
    pub fn queued(&self, first: u64, last: u64) {
        self.with(|w| w.queued.insert(first, last));
    }

    /// What a queue entry holding stored messages `first..=last` reports once written.
    pub fn report_for(&self, first: u64, last: u64) -> Option<(u64, u64)> {
        self.report_writes.then_some((first, last))
    }

    /// A write holding these ranges completed: the new contiguous written floor to report to
    /// logic, if it moved.
    pub fn written(&self, ranges: &[(u64, u64)]) -> Option<u64> {
        self.with(|w| {
            let mut moved = false;
            for &(first, last) in ranges {
                moved |= w.written.insert(first, last);
            }
            moved.then(|| w.written.floor())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_pushes_are_not_duplicates() {
        let d = Delivery::new(true, 0);
        assert!(d.take_push(2), "2 overtook 1");
        assert!(d.take_push(1), "1 is not a duplicate of anything");
        assert!(!d.take_push(2));
        assert!(!d.take_push(1));
        d.queued(3, 5); // a backlog 3..=5
        assert!(!d.take_push(4));
        assert!(d.take_push(6));
    }

    #[test]
    fn the_floor_from_logic_covers_acknowledged_messages() {
        let d = Delivery::new(true, 10);
        assert!(!d.take_push(10));
        assert!(d.take_push(11));
    }

    #[test]
    fn only_the_contiguous_written_floor_is_reported() {
        let d = Delivery::new(true, 0);
        assert_eq!(d.written(&[(2, 2)]), None, "1 was not written yet");
        assert_eq!(d.written(&[(1, 1)]), Some(2));
        assert_eq!(d.written(&[(2, 2)]), None);
        assert_eq!(d.written(&[(3, 6), (8, 8)]), Some(6));
        assert_eq!(d.written(&[(7, 7)]), Some(8));
        assert_eq!(Delivery::new(false, 0).report_for(1, 2), None);
        assert_eq!(Delivery::new(true, 0).report_for(1, 2), Some((1, 2)));
    }

    #[test]
    fn nothing_is_allocated_before_the_first_stored_message() {
        let d = Delivery::new(false, 7);
        assert_eq!(d.queued_floor(), 7);
        assert!(!d.is_new(7) && d.is_new(8));
        assert!(d.peek(|w| w.is_none()));
        assert!(!d.take_push(3), "below the floor");
        assert!(d.peek(|w| w.is_none()));
        assert!(d.take_push(8));
        assert_eq!(d.queued_floor(), 8);
    }

    #[test]
    fn a_gap_that_never_fills_is_given_up_on_bounded() {
        let mut w = SeqWindow::new(0);
        for seq in 2..=(MAX_AHEAD as u64 + 2) {
            w.insert(seq, seq);
        }
        assert!(w.floor() > 1, "stopped waiting for 1");
        assert!(w.above.len() <= MAX_AHEAD);
        let mut big = SeqWindow::new(0);
        assert!(big.insert(1, u64::MAX / 2));
        assert!(big.above.len() <= MAX_AHEAD + 1);
    }
}
