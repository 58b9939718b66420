//! Per-room batching (reference §4.3, with a low-latency deadline).
//!
//! Each room's messages are appended, already encoded as goim frames, to that room's buffer. A
//! buffer is flushed when it holds `batch` messages or when its first message has waited
//! `max_delay`. One task owns the batcher, so a room's batches leave in order.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::BytesMut;
use imgate_shared::bus::DeliveryGuard;
use imgate_shared::frame;
use imgate_shared::link::PushRoom;
use tokio::time::Instant;

struct Pending {
    frames: BytesMut,
    count: u32,
    /// The delivery guards of the messages in `frames`.
    guards: Vec<DeliveryGuard>,
    /// Tells this buffer's deadline entry apart from one of an earlier, already flushed buffer.
    generation: u64,
}

/// A flushed room batch with the delivery guards of its messages.
pub(crate) struct Batch {
    pub push: PushRoom,
    pub guards: Vec<DeliveryGuard>,
}

pub(crate) struct RoomBatcher {
    batch: u32,
    max_delay: Duration,
    rooms: HashMap<String, Pending>,
    /// Flush deadlines in arrival order; every room uses the same delay, so this is sorted.
    deadlines: VecDeque<(Instant, String, u64)>,
    next_generation: u64,
}

impl RoomBatcher {
    pub(crate) fn new(batch: usize, max_delay: Duration) -> Self {
        RoomBatcher {
            batch: u32::try_from(batch.max(1)).unwrap_or(u32::MAX),
            max_delay,
            rooms: HashMap::new(),
            deadlines: VecDeque::new(),
            next_generation: 0,
        }
    }

    /// Adds one message (with its delivery guard); returns the room's batch if it is now full.
    /// `seq` is the message's room-history sequence (0 when it has none); it goes into the
    /// frame header.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        room: &str,
        op: i32,
        seq: u64,
        body: &[u8],
        guard: DeliveryGuard,
        now: Instant,
    ) -> Option<Batch> {
        if !self.rooms.contains_key(room) {
            self.next_generation += 1;
            self.rooms.insert(
                room.to_owned(),
                Pending {
                    frames: BytesMut::new(),
                    count: 0,
                    guards: Vec::new(),
                    generation: self.next_generation,
                },
            );
            self.deadlines
                .push_back((now + self.max_delay, room.to_owned(), self.next_generation));
        }
        let pending = self.rooms.get_mut(room)?;
        frame::encode_into(&mut pending.frames, frame::PUSH_VER, op, seq as i32, body);
        pending.count += 1;
        pending.guards.push(guard);
        if pending.count >= self.batch {
            return self.take(room);
        }
        None
    }

    /// When the oldest pending buffer is due (possibly one already flushed; harmless).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, _, _)| *at)
    }

    /// Takes every buffer whose deadline has passed, oldest first.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<Batch> {
        let mut out = Vec::new();
        while let Some((at, _, _)) = self.deadlines.front() {
            if *at > now {
                break;
            }
            if let Some((_, room, generation)) = self.deadlines.pop_front() {
                out.extend(self.take_current(&room, generation));
            }
        }
        out
    }

    /// Takes every pending buffer, oldest first (shutdown).
    pub(crate) fn drain(&mut self) -> Vec<Batch> {
        let mut out = Vec::new();
        while let Some((_, room, generation)) = self.deadlines.pop_front() {
            out.extend(self.take_current(&room, generation));
        }
        out
    }

    /// The room's batch, if the deadline entry (`generation`) still belongs to it: a batch
    /// flushed early by size leaves its deadline behind, and a new batch gets a new one.
    fn take_current(&mut self, room: &str, generation: u64) -> Option<Batch> {
        if self
            .rooms
            .get(room)
            .is_some_and(|p| p.generation == generation)
        {
            self.take(room)
        } else {
            None
        }
    }

    fn take(&mut self, room: &str) -> Option<Batch> {
        let (room, pending) = self.rooms.remove_entry(room)?;
        Some(Batch {
            push: PushRoom {
                room,
                frames: pending.frames.freeze(),
                count: pending.count,
            },
            guards: pending.guards,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> DeliveryGuard {
        DeliveryGuard::untracked()
    }

    #[test]
    fn full_batches_flush_at_once_and_stragglers_at_the_deadline() {
        let mut b = RoomBatcher::new(3, Duration::from_millis(10));
        let t0 = Instant::now();
        assert!(b.push("r", 1, 0, b"a", g(), t0).is_none());
        assert!(b.push("s", 1, 0, b"x", g(), t0).is_none());
        assert!(b.push("r", 1, 0, b"b", g(), t0).is_none());
        let full = b
            .push("r", 1, 0, b"c", g(), t0)
            .expect("third message fills the batch");
        assert_eq!(full.push.count, 3);
        assert_eq!(full.guards.len(), 3);
        let bodies: Vec<&[u8]> = frame::split_frames(&full.push.frames)
            .map(|f| f.unwrap().1)
            .collect();
        assert_eq!(bodies, vec![&b"a"[..], b"b", b"c"]);
        assert!(b
            .push("r", 1, 0, b"d", g(), t0 + Duration::from_millis(5))
            .is_none());
        assert!(b.expired(t0 + Duration::from_millis(9)).is_empty());
        let due = b.expired(t0 + Duration::from_millis(10));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].push.room, "s");
        let due = b.expired(t0 + Duration::from_millis(15));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].push.room.as_str(), due[0].push.count), ("r", 1));
        assert!(b.next_deadline().is_none());
        assert!(b.rooms.is_empty());
    }

    #[test]
    fn drain_takes_everything() {
        let mut b = RoomBatcher::new(10, Duration::from_secs(1));
        let t0 = Instant::now();
        b.push("a", 1, 0, b"1", g(), t0);
        b.push("b", 1, 0, b"2", g(), t0);
        let all = b.drain();
        assert_eq!(all.len(), 2);
        assert!(b.rooms.is_empty());
    }
}
