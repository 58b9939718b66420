//! Per-room batching, adaptive to the room's size (goim's fixed one-second window and imgate's
//! reasons to differ: docs/goim-compatibility.md, "Room batching").
//!
//! Each room's messages are appended, already encoded as goim frames, to that room's buffer. A
//! buffer is flushed when its first message has waited `max_delay`, or earlier when it holds
//! `batch` messages. That is all a small room sees: a push reaches it in milliseconds.
//!
//! A flush to a big room costs one socket write per member, so big rooms are paced: a room
//! with `n` members flushes at most once every `n / (shards × writes_per_shard)` (capped at
//! `max_interval`), and what arrives in between waits in one growing batch. Under light load a
//! big room's push still goes out after `max_delay`, because its last flush is long past;
//! under a steady stream its batches grow until each member gets about
//! `shards × writes_per_shard / n` writes a second. Room sizes and the cluster's shard count
//! come from the comets' online reports ([`RoomBatcher::set_sizes`]).
//!
//! `writes_per_shard` is a nominal figure: job uses a share of it, learned from how busy the
//! comets' event loops are ([`crate::pacing`]), so big rooms flush more often where the cores
//! have time to spare and batch more where they do not.
//!
//! One task owns the batcher, so a room's batches leave in order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use imgate_bus::DeliveryGuard;
use imgate_shared::frame;
use imgate_shared::link::PushRoom;
use tokio::time::Instant;

/// A paced room's batch is sent anyway once it holds this many bytes.
const MAX_BATCH_BYTES: usize = 1 << 20;

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

/// How batches are cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    /// Messages that make a batch full (for rooms not held back by pacing).
    pub batch: usize,
    /// Longest a message waits for its batch in a room that is not paced.
    pub max_delay: Duration,
    /// Writes per second one comet shard is asked to spend on one room; 0 = no pacing.
    pub writes_per_shard: u64,
    /// Longest interval between two flushes of a paced room.
    pub max_interval: Duration,
}

pub(crate) struct RoomBatcher {
    pacing: Pacing,
    rooms: HashMap<String, Pending>,
    /// Flush deadlines, earliest first.
    deadlines: BinaryHeap<Reverse<(Instant, u64, String)>>,
    next_generation: u64,
    /// Flush intervals of the rooms big enough to be paced.
    intervals: HashMap<String, Duration>,
    /// When each paced room last flushed.
    last_flush: HashMap<String, Instant>,
    /// The share of `writes_per_shard` in use ([`crate::pacing::Budget`]).
    share: f64,
    /// The room sizes and shard count of the last [`RoomBatcher::set_sizes`] (the names
    /// shared with the registry's, not copied).
    sizes: Arc<HashMap<Arc<str>, u64>>,
    shards: u64,
    last_paced_flush: Option<Instant>,
}

impl RoomBatcher {
    pub(crate) fn new(pacing: Pacing) -> Self {
        RoomBatcher {
            pacing: Pacing {
                batch: pacing.batch.max(1),
                ..pacing
            },
            rooms: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_generation: 0,
            intervals: HashMap::new(),
            last_flush: HashMap::new(),
            share: 1.0,
            sizes: Arc::default(),
            shards: 1,
            last_paced_flush: None,
        }
    }

    /// Uses `share` of `writes_per_shard` from now on (the budget [`crate::pacing::Budget`]
    /// learned), re-working out which rooms are paced and how.
    pub(crate) fn set_share(&mut self, share: f64) {
        if share != self.share {
            self.share = share;
            self.pace();
        }
    }

    /// The paced room with the most members, and its flush interval.
    pub(crate) fn biggest_paced(&self) -> Option<(&str, u64, Duration)> {
        self.intervals
            .iter()
            .map(|(room, interval)| {
                (
                    room.as_str(),
                    self.sizes.get(room.as_str()).copied().unwrap_or(0),
                    *interval,
                )
            })
            .max_by_key(|(_, members, _)| *members)
    }

    /// Takes the cluster's room sizes (members per room) and its number of comet shards, and
    /// works out which rooms are paced and how.
    pub(crate) fn set_sizes(&mut self, sizes: Arc<HashMap<Arc<str>, u64>>, shards: u64) {
        self.sizes = sizes;
        self.shards = shards.max(1);
        self.pace();
    }

    fn pace(&mut self) {
        let p = self.pacing;
        self.intervals.clear();
        if p.writes_per_shard > 0 {
            let rate = (self.shards * p.writes_per_shard) as f64 * self.share;
            for (room, members) in self.sizes.iter() {
                let interval = Duration::from_secs_f64(*members as f64 / rate).min(p.max_interval);
                if interval > p.max_delay {
                    self.intervals.insert(room.to_string(), interval);
                }
            }
        }
        let intervals = &self.intervals;
        self.last_flush
            .retain(|room, _| intervals.contains_key(room));
    }

    /// The flush interval of a paced room (None: not paced).
    #[cfg(test)]
    pub(crate) fn interval(&self, room: &str) -> Option<Duration> {
        self.intervals.get(room).copied()
    }

    /// Adds one message (with its delivery guard); returns the room's batch if it should go
    /// now. `seq` is the message's room-history sequence (0 when it has none); it goes into the
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
            let mut deadline = now + self.pacing.max_delay;
            if let Some(paced) = self.paced_until(room) {
                deadline = deadline.max(paced);
            }
            self.deadlines
                .push(Reverse((deadline, self.next_generation, room.to_owned())));
        }
        let pending = self.rooms.get_mut(room)?;
        frame::encode_into(&mut pending.frames, frame::PUSH_VER, op, seq as i32, body);
        pending.count += 1;
        pending.guards.push(guard);
        let full = if self.intervals.contains_key(room) {
            pending.frames.len() >= MAX_BATCH_BYTES
        } else {
            pending.count as usize >= self.pacing.batch
        };
        if full {
            return self.take(room, now);
        }
        None
    }

    /// When a paced room that flushed before may flush next.
    fn paced_until(&self, room: &str) -> Option<Instant> {
        Some(*self.last_flush.get(room)? + *self.intervals.get(room)?)
    }

    /// When the earliest pending buffer is due (possibly one already flushed; harmless).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes every buffer whose deadline has passed, earliest first.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<Batch> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, generation, room))) = self.deadlines.pop() {
                out.extend(self.take_current(&room, generation, now));
            }
        }
        out
    }

    /// Takes every pending buffer, earliest deadline first (shutdown, rebalance).
    pub(crate) fn drain(&mut self) -> Vec<Batch> {
        let now = Instant::now();
        let mut out = Vec::new();
        while let Some(Reverse((_, generation, room))) = self.deadlines.pop() {
            out.extend(self.take_current(&room, generation, now));
        }
        out
    }

    /// The room's batch, if the deadline entry (`generation`) still belongs to it: a batch
    /// flushed early by size leaves its deadline behind, and a new batch gets a new one.
    fn take_current(&mut self, room: &str, generation: u64, now: Instant) -> Option<Batch> {
        if self
            .rooms
            .get(room)
            .is_some_and(|p| p.generation == generation)
        {
            self.take(room, now)
        } else {
            None
        }
    }

    /// When a paced room last flushed (what the budget is spent on).
    pub(crate) fn last_paced_flush(&self) -> Option<Instant> {
        self.last_paced_flush
    }

    fn take(&mut self, room: &str, now: Instant) -> Option<Batch> {
        let (room, pending) = self.rooms.remove_entry(room)?;
        if self.intervals.contains_key(&room) {
            self.last_flush.insert(room.clone(), now);
            self.last_paced_flush = Some(now);
        }
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

    fn pacing(batch: usize, max_delay_ms: u64) -> Pacing {
        Pacing {
            batch,
            max_delay: Duration::from_millis(max_delay_ms),
            writes_per_shard: 50_000,
            max_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_learned_share_sets_the_intervals_of_big_rooms() {
        let ms = Duration::from_millis;
        let mut b = RoomBatcher::new(pacing(20, 10));
        let sizes: HashMap<Arc<str>, u64> = [("room".into(), 10_000)].into();
        b.set_sizes(sizes.into(), 2);
        assert_eq!(b.interval("room"), Some(ms(100)), "the nominal budget");
        // Half the budget: twice the interval; ten times: below the usual delay, not paced.
        b.set_share(0.5);
        assert_eq!(b.interval("room"), Some(ms(200)));
        b.set_share(10.0);
        assert_eq!(b.interval("room"), None);
        // Capped at max_interval however small the share.
        b.set_share(0.01);
        assert_eq!(b.interval("room"), Some(Duration::from_secs(1)));
        assert_eq!(
            b.biggest_paced(),
            Some(("room", 10_000, Duration::from_secs(1)))
        );
        // New sizes keep the share.
        b.set_sizes(Arc::new([("room".into(), 500)].into()), 2);
        assert_eq!(b.interval("room"), Some(ms(500)));
    }

    #[test]
    fn full_batches_flush_at_once_and_stragglers_at_the_deadline() {
        let mut b = RoomBatcher::new(pacing(3, 10));
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
    fn big_rooms_are_paced_and_small_ones_are_not() {
        let ms = Duration::from_millis;
        let mut b = RoomBatcher::new(pacing(20, 10));
        let sizes: HashMap<Arc<str>, u64> = [
            ("big".into(), 100_000),
            ("mid".into(), 10_000),
            ("small".into(), 500),
        ]
        .into();
        // Two shards at 50k writes/s each: 100k members get a flush a second, 10k members
        // one every 100 ms; 500 members (5 ms) are not paced beyond the 10 ms delay.
        b.set_sizes(sizes.into(), 2);
        assert_eq!(b.interval("big"), Some(Duration::from_secs(1)));
        assert_eq!(b.interval("mid"), Some(ms(100)));
        assert_eq!(b.interval("small"), None);

        // Light load: a lone message in a big room goes out after the usual delay.
        let t0 = Instant::now();
        assert!(b.push("big", 1, 0, b"first", g(), t0).is_none());
        assert_eq!(b.next_deadline(), Some(t0 + ms(10)));
        let first = b.expired(t0 + ms(10));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].push.count, 1);

        // A steady stream right after: no batch leaves before a second has passed since that
        // flush, however many messages arrive, and then they all leave together.
        for i in 0..40 {
            let at = t0 + ms(20 + i * 25);
            assert!(
                b.push("big", 1, 0, b"m", g(), at).is_none(),
                "message {i} flushed"
            );
            // A small room keeps its batch size and delay meanwhile.
            let small = b.push("small", 1, 0, b"s", g(), at);
            assert!(small.is_none() || small.unwrap().push.count == 20);
        }
        assert!(b
            .expired(t0 + ms(1009))
            .iter()
            .all(|x| x.push.room != "big"));
        let due = b.expired(t0 + ms(1010));
        let big: Vec<_> = due.iter().filter(|x| x.push.room == "big").collect();
        assert_eq!(big.len(), 1);
        assert_eq!(big[0].push.count, 40);

        // The room shrinks: it is no longer held back.
        b.set_sizes(Arc::default(), 2);
        assert_eq!(b.interval("big"), None);
        let t1 = t0 + ms(1020);
        assert!(b.push("big", 1, 0, b"x", g(), t1).is_none());
        assert_eq!(b.next_deadline(), Some(t1 + ms(10)));
    }

    #[test]
    fn pacing_caps_at_max_interval_and_batch_bytes() {
        let mut b = RoomBatcher::new(pacing(20, 10));
        b.set_sizes(Arc::new([("huge".into(), 10_000_000)].into()), 1);
        assert_eq!(b.interval("huge"), Some(Duration::from_secs(1)));
        let t0 = Instant::now();
        b.push("huge", 1, 0, b"a", g(), t0);
        assert_eq!(b.expired(t0 + Duration::from_millis(10)).len(), 1);
        // A paced batch still leaves at once when it reaches MAX_BATCH_BYTES.
        let body = vec![b'x'; 64 << 10];
        let mut flushed = None;
        for i in 0..20 {
            if let Some(batch) = b.push("huge", 1, 0, &body, g(), t0 + Duration::from_millis(20)) {
                flushed = Some((i, batch));
                break;
            }
        }
        let (i, batch) = flushed.expect("byte cap flushes");
        assert_eq!(i, 15, "16 x 64 KiB (+ headers) pass 1 MiB");
        assert_eq!(batch.push.count, 16);
        // Pacing off: every room behaves like a small one.
        let mut off = RoomBatcher::new(Pacing {
            writes_per_shard: 0,
            ..pacing(20, 10)
        });
        off.set_sizes(Arc::new([("huge".into(), 10_000_000)].into()), 1);
        assert_eq!(off.interval("huge"), None);
    }

    #[test]
    fn drain_takes_everything() {
        let mut b = RoomBatcher::new(pacing(10, 1000));
        let t0 = Instant::now();
        b.push("a", 1, 0, b"1", g(), t0);
        b.push("b", 1, 0, b"2", g(), t0);
        let all = b.drain();
        assert_eq!(all.len(), 2);
        assert!(b.rooms.is_empty());
    }
}
