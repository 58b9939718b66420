//! Delivery tracking of the Kafka consumer: per partition, the offsets handed to job and not
//! yet delivered, and the commits that allows (everything below the lowest outstanding offset).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::DeliveryTracker;

#[derive(Default)]
struct TrackState {
    /// Offsets handed to job and not yet delivered.
    outstanding: BTreeSet<i64>,
    /// One past the highest offset handed out (or skipped as undecodable).
    next: Option<i64>,
    /// The offset last committed (or being committed) for this partition.
    committed: Option<i64>,
    /// The lowest offset the consumer gave up on undelivered (it stops): nothing from it on
    /// is committed.
    abandoned: Option<i64>,
}

impl TrackState {
    /// The offset to commit: everything below it is delivered.
    fn commit_point(&self) -> Option<i64> {
        let below = self.outstanding.first().copied().or(self.next);
        match (below, self.abandoned) {
            (Some(b), Some(a)) => Some(b.min(a)),
            (below, abandoned) => below.or(abandoned),
        }
    }
}

/// One partition of one assignment. A partition assigned again gets a fresh one, so a guard
/// of an earlier assignment dropping late cannot release a message consumed again.
#[derive(Default)]
pub(super) struct PartitionTrack {
    state: Mutex<TrackState>,
    drained: Condvar,
}

impl PartitionTrack {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn dispatched(&self, offset: i64) {
        let mut state = self.lock();
        state.outstanding.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    pub(super) fn skipped(&self, offset: i64) {
        let mut state = self.lock();
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Waits until nothing is outstanding or `deadline` passes; true if drained.
    pub(super) fn wait_drained(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        while !state.outstanding.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .drained
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl DeliveryTracker for PartitionTrack {
    fn delivered(&self, _partition: i32, offset: i64) {
        let mut state = self.lock();
        state.outstanding.remove(&offset);
        if state.outstanding.is_empty() {
            self.drained.notify_all();
        }
    }

    fn abandoned(&self, _partition: i32, offset: i64) {
        let mut state = self.lock();
        state.outstanding.remove(&offset);
        state.abandoned = Some(state.abandoned.map_or(offset, |a| a.min(offset)));
        if state.outstanding.is_empty() {
            self.drained.notify_all();
        }
    }
}

/// What the consumer shares with its poll thread, its rebalance callback and observers.
pub(super) struct Shared {
    pub topic: String,
    pub partitions: Mutex<HashMap<i32, Arc<PartitionTrack>>>,
    /// Partition → offset committed by this consumer (confirmed by the broker).
    pub committed: Mutex<HashMap<i32, i64>>,
    pub undecodable: AtomicU64,
    pub commit_failures: AtomicU64,
    pub stop: AtomicBool,
    /// Messages on this consumer's partitions it has not taken yet, from librdkafka's
    /// statistics (`consumer_lag`); `u64::MAX` until known.
    pub lag: AtomicU64,
}

impl Shared {
    pub fn track(&self, partition: i32) -> Arc<PartitionTrack> {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(partition)
            .or_default()
            .clone()
    }

    /// The partitions (of `only`, or all) whose commit point moved since the last commit.
    fn due(&self, only: Option<&[i32]>) -> Vec<(i32, i64)> {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        for (&partition, track) in partitions.iter() {
            if only.is_some_and(|only| !only.contains(&partition)) {
                continue;
            }
            let state = track.lock();
            if let Some(point) = state.commit_point() {
                if state.committed.is_none_or(|c| point > c) {
                    due.push((partition, point));
                }
            }
        }
        due
    }

    /// Records `offsets` as sent to the broker (`sent`) or as failed (retried at the next tick).
    pub fn mark(&self, offsets: &[(i32, i64)], sent: bool) {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        for &(partition, offset) in offsets {
            if let Some(track) = partitions.get(&partition) {
                let mut state = track.lock();
                if sent {
                    state.committed = Some(state.committed.map_or(offset, |c| c.max(offset)));
                } else if state.committed == Some(offset) {
                    state.committed = None;
                }
            }
        }
    }

    /// Records `offsets` as confirmed by the broker.
    pub fn confirmed(&self, offsets: &[(i32, i64)]) {
        let mut map = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        for &(partition, offset) in offsets {
            let entry = map.entry(partition).or_insert(offset);
            *entry = (*entry).max(offset);
        }
    }

    /// Commits the delivered offsets of `only` (or of every partition) and waits for the
    /// broker (bounded by `socket.timeout.ms`). Synchronous because librdkafka reports
    /// asynchronous commits to this event-based consumer unreliably, and a commit every
    /// `commit_interval` costs one round trip of the poll thread.
    pub fn commit<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, only: Option<&[i32]>) {
        let due = self.due(only);
        if due.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for &(partition, offset) in &due {
            if let Err(e) = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
            {
                tracing::warn!(error = %e, partition, offset, "kafka: cannot build commit");
                return;
            }
        }
        // Marked before the call: a concurrent tick must not send the same commit again.
        self.mark(&due, true);
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => self.confirmed(&due),
            Err(e) => {
                self.commit_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "kafka: committing offsets failed; retrying");
                self.mark(&due, false);
            }
        }
    }
}

/// A cheap, cloneable view of a [`KafkaConsumer`](super::KafkaConsumer)'s progress (tests,
/// metrics).
#[derive(Clone)]
pub struct ConsumerProgress(Arc<Shared>);

impl ConsumerProgress {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        ConsumerProgress(shared)
    }

    /// The offset this consumer last committed for `partition` (the next one to consume).
    pub fn committed(&self, partition: i32) -> Option<i64> {
        self.0
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .copied()
    }

    /// Every partition's last committed offset.
    pub fn committed_all(&self) -> HashMap<i32, i64> {
        self.0
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Messages that could not be decoded (skipped, and committed as delivered).
    pub fn undecodable(&self) -> u64 {
        self.0.undecodable.load(Ordering::Relaxed)
    }

    /// Commits the broker refused (they are retried).
    pub fn commit_failures(&self) -> u64 {
        self.0.commit_failures.load(Ordering::Relaxed)
    }

    /// Messages handed out and not yet delivered, over the assigned partitions.
    pub fn outstanding(&self) -> usize {
        self.0
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|t| t.lock().outstanding.len())
            .sum()
    }

    /// The partitions assigned to this consumer right now.
    pub fn assigned(&self) -> Vec<i32> {
        let mut out: Vec<i32> = self
            .0
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeliveryGuard;
    use std::time::Duration;

    #[test]
    fn commit_point_is_the_lowest_outstanding_offset() {
        let track = Arc::new(PartitionTrack::default());
        assert_eq!(track.lock().commit_point(), None);
        for offset in 10..15 {
            track.dispatched(offset);
        }
        assert_eq!(track.lock().commit_point(), Some(10));
        track.delivered(0, 12);
        track.delivered(0, 11);
        assert_eq!(
            track.lock().commit_point(),
            Some(10),
            "10 is still outstanding"
        );
        track.delivered(0, 10);
        assert_eq!(track.lock().commit_point(), Some(13));
        track.skipped(15);
        track.delivered(0, 13);
        track.delivered(0, 14);
        assert_eq!(track.lock().commit_point(), Some(16));
        assert!(track.wait_drained(Instant::now()));
    }

    #[test]
    fn a_guard_reports_to_its_partition_track() {
        let track = Arc::new(PartitionTrack::default());
        track.dispatched(7);
        let tracker: Arc<dyn DeliveryTracker> = track.clone();
        let guard = DeliveryGuard::new(tracker, 3, 7);
        assert!(!track.wait_drained(Instant::now() + Duration::from_millis(5)));
        let waiter = {
            let track = track.clone();
            std::thread::spawn(move || track.wait_drained(Instant::now() + Duration::from_secs(5)))
        };
        std::thread::sleep(Duration::from_millis(10));
        drop(guard);
        assert!(waiter.join().unwrap());
        assert_eq!(track.lock().commit_point(), Some(8));
    }
}
