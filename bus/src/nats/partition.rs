//! One partition a job holds: the pull loop of its consumer, the tracking of what job has
//! delivered, and the acknowledgements that allows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::Subject;
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use tokio::sync::{mpsc, watch, Notify};

use super::consumer::Shared;
use crate::{BusEvent, BusMessage, DeliveryGuard, DeliveryTracker};

/// Messages asked for per pull request.
const PULL_BATCH: usize = 256;
/// How long a pull request waits on the server, and the idle heartbeat within it (a missing
/// heartbeat tells a dead connection).
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Pull errors for this long make the loop ask whether its consumer still exists.
const ERRORS_BEFORE_CHECK: Duration = Duration::from_secs(3);

#[derive(Default)]
struct TrackState {
    /// Stream sequences handed to job and not yet delivered.
    outstanding: BTreeSet<u64>,
    /// Every sequence handed out (or skipped as undecodable) and not yet acknowledged, with
    /// the subject its acknowledgement goes to.
    unacked: BTreeMap<u64, Subject>,
    /// The highest sequence handed out or skipped: one owner sees a partition in order, so
    /// anything at or below it again is a redelivery of a message still held.
    highest: u64,
    /// Messages acknowledged (confirmed by the server) since this partition was taken.
    acked: u64,
    /// The lowest sequence given up on undelivered (the holder stops): nothing from it on is
    /// acknowledged, so the next holder delivers it.
    abandoned: Option<u64>,
}

/// Delivery tracking of one partition, for one holding of it: a partition taken again gets a
/// fresh one, so a guard of an earlier holding dropping late changes nothing.
pub(super) struct Track {
    state: Mutex<TrackState>,
    /// Woken when nothing is outstanding any more (a revoke waits for it).
    drained: Notify,
    /// Woken when enough is delivered to acknowledge before the next interval.
    ack_now: Notify,
    /// Delivered and unacknowledged messages that trigger an early acknowledgement.
    ack_early: usize,
}

impl Track {
    pub(super) fn new(max_ack_pending: u32) -> Track {
        Track {
            state: Mutex::default(),
            drained: Notify::new(),
            ack_now: Notify::new(),
            ack_early: (max_ack_pending as usize / 2).max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if `seq` is new to this holding (a redelivery of a held message is not).
    fn is_new(&self, seq: u64) -> bool {
        seq > self.lock().highest
    }

    fn dispatched(&self, seq: u64, ack: Subject) {
        let mut state = self.lock();
        state.outstanding.insert(seq);
        state.unacked.insert(seq, ack);
        state.highest = state.highest.max(seq);
    }

    fn skipped(&self, seq: u64, ack: Subject) {
        let mut state = self.lock();
        state.unacked.insert(seq, ack);
        state.highest = state.highest.max(seq);
    }

    /// The message to acknowledge (AckAll) now: the highest one below which everything is
    /// delivered, with how many messages that acknowledges.
    fn ack_point(&self) -> Option<(u64, Subject, u64)> {
        let state = self.lock();
        let bound = state
            .outstanding
            .first()
            .copied()
            .unwrap_or(u64::MAX)
            .min(state.abandoned.unwrap_or(u64::MAX));
        let (&seq, subject) = state.unacked.range(..bound).next_back()?;
        let count = state.unacked.range(..=seq).count() as u64;
        Some((seq, subject.clone(), count))
    }

    fn acked(&self, seq: u64, count: u64) {
        let mut state = self.lock();
        state.unacked = state.unacked.split_off(&(seq + 1));
        state.acked += count;
    }

    /// Messages handed out and not yet delivered.
    pub(super) fn outstanding(&self) -> usize {
        self.lock().outstanding.len()
    }

    /// Messages acknowledged since this partition was taken.
    #[cfg(test)]
    fn acked_count(&self) -> u64 {
        self.lock().acked
    }

    /// Waits until nothing is outstanding, or `deadline`; true if drained.
    pub(super) async fn drained(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.drained.notified();
            if self.lock().outstanding.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lock().outstanding.is_empty();
            }
        }
    }
}

impl DeliveryTracker for Track {
    fn delivered(&self, _partition: i32, offset: i64) {
        let mut state = self.lock();
        state.outstanding.remove(&(offset as u64));
        if state.outstanding.is_empty() {
            self.drained.notify_waiters();
        }
        if state.unacked.len() - state.outstanding.len() >= self.ack_early {
            self.ack_now.notify_one();
        }
    }

    fn abandoned(&self, _partition: i32, offset: i64) {
        let mut state = self.lock();
        let seq = offset as u64;
        state.outstanding.remove(&seq);
        state.abandoned = Some(state.abandoned.map_or(seq, |a| a.min(seq)));
        if state.outstanding.is_empty() {
            self.drained.notify_waiters();
        }
    }
}

/// Acknowledges (AckAll, confirmed by the server) up to the current ack point, if it moved;
/// false if the server did not confirm (tried again at the next interval).
pub(super) async fn acknowledge(shared: &Shared, track: &Track) -> bool {
    if shared.killed.load(Ordering::Relaxed) {
        return false;
    }
    let Some((seq, subject, count)) = track.ack_point() else {
        return true;
    };
    let asked = tokio::time::timeout(
        shared.config.publish_timeout,
        shared.client.request(subject, Bytes::from_static(b"+ACK")),
    )
    .await;
    match asked {
        Ok(Ok(_)) => {
            track.acked(seq, count);
            shared.acked.fetch_add(count, Ordering::Relaxed);
            true
        }
        Ok(Err(e)) => {
            shared.ack_failures.fetch_add(1, Ordering::Relaxed);
            shared.warn(&format!("nats: acknowledgement failed; retrying: {e}"));
            false
        }
        Err(_) => {
            shared.ack_failures.fetch_add(1, Ordering::Relaxed);
            shared.warn("nats: acknowledgement not confirmed in time; retrying");
            false
        }
    }
}

/// Why a partition's loop ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// Asked to (the partition is released, lost, or the consumer closes).
    Stopped,
    /// Its consumer is gone (deleted, or the server lost its state): take the partition again.
    ConsumerGone,
}

/// Pulls partition `partition` from `consumer` and hands its messages to job, acknowledging
/// what job delivered every `commit_interval` (and early when much is delivered), until
/// `stop` or the consumer is gone. Acknowledges once more at the end.
pub(super) async fn run(
    partition: u32,
    consumer: PullConsumer,
    track: Arc<Track>,
    shared: Arc<Shared>,
    events: mpsc::Sender<BusEvent>,
    mut stop: watch::Receiver<bool>,
) -> Ended {
    let mut ack_tick = tokio::time::interval(shared.config.commit_interval);
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut messages = None;
    // An event waiting for room in job's queue (backpressure: no more pulls meanwhile).
    let mut waiting: Option<BusEvent> = None;
    let mut failing_since: Option<Instant> = None;
    let ended = loop {
        // Asked to stop, or whoever could ask is gone.
        if *stop.borrow() || stop.has_changed().is_err() {
            break Ended::Stopped;
        }
        if messages.is_none() {
            match consumer
                .stream()
                .max_messages_per_batch(PULL_BATCH)
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_HEARTBEAT)
                .messages()
                .await
            {
                Ok(stream) => messages = Some(stream),
                Err(e) => {
                    shared.warn(&format!("nats: partition {partition}: cannot pull: {e}"));
                    if gone(&consumer, &mut failing_since).await {
                        break Ended::ConsumerGone;
                    }
                    tokio::select! {
                        _ = stop.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            }
        }
        let Some(stream) = messages.as_mut() else {
            continue;
        };
        tokio::select! {
            _ = stop.changed() => {}
            _ = ack_tick.tick() => {
                acknowledge(&shared, &track).await;
            }
            _ = track.ack_now.notified() => {
                acknowledge(&shared, &track).await;
            }
            permit = events.reserve(), if waiting.is_some() => match permit {
                Ok(permit) => {
                    if let Some(event) = waiting.take() {
                        permit.send(event);
                    }
                }
                Err(_) => break Ended::Stopped, // job is gone
            },
            next = stream.next(), if waiting.is_none() => match next {
                Some(Ok(message)) => {
                    failing_since = None;
                    waiting = handle(partition, message, &track, &shared);
                }
                Some(Err(e)) => {
                    if e.kind() == MessagesErrorKind::ConsumerDeleted {
                        break Ended::ConsumerGone;
                    }
                    shared.warn(&format!("nats: partition {partition}: {e}"));
                    if gone(&consumer, &mut failing_since).await {
                        break Ended::ConsumerGone;
                    }
                }
                None => messages = None,
            },
        }
    };
    // Never handed on: abandoned, so the last acknowledgement stops below it and the next
    // holder delivers it (a drop would report it delivered).
    if let Some(event) = waiting {
        event.abandon();
    }
    acknowledge(&shared, &track).await;
    ended
}

/// Turns a pulled message into job's event (or skips it): a redelivery of a message this
/// holding already has is dropped; an undecodable one is counted and acknowledged with the rest.
fn handle(
    partition: u32,
    message: async_nats::jetstream::Message,
    track: &Arc<Track>,
    shared: &Shared,
) -> Option<BusEvent> {
    let (seq, ack) = match (message.info(), message.reply.clone()) {
        (Ok(info), Some(reply)) => (info.stream_sequence, reply),
        _ => {
            shared.warn(&format!(
                "nats: partition {partition}: a message without JetStream metadata skipped"
            ));
            return None;
        }
    };
    if !track.is_new(seq) {
        return None; // redelivered after ack_wait while still held: the original is on its way
    }
    match BusMessage::decode(message.payload.clone()) {
        Ok(decoded) => {
            track.dispatched(seq, ack);
            let tracker: Arc<dyn DeliveryTracker> = track.clone();
            let guard = DeliveryGuard::new(tracker, partition as i32, seq as i64);
            Some(BusEvent::Message(decoded, guard))
        }
        Err(e) => {
            shared.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(partition, seq, error = %e, "nats: undecodable bus message skipped");
            track.skipped(seq, ack);
            None
        }
    }
}

/// After pull errors for [`ERRORS_BEFORE_CHECK`]: whether the consumer is gone (the server
/// says it does not exist). Errors of a server that is down keep the loop waiting.
async fn gone(consumer: &PullConsumer, failing_since: &mut Option<Instant>) -> bool {
    let since = *failing_since.get_or_insert_with(Instant::now);
    if since.elapsed() < ERRORS_BEFORE_CHECK {
        return false;
    }
    *failing_since = Some(Instant::now());
    match consumer.get_info().await {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(seq: u64) -> Subject {
        Subject::from(format!("$JS.ACK.s.c.1.{seq}.{seq}.0.0"))
    }

    #[test]
    fn the_ack_point_is_below_the_lowest_undelivered() {
        let track = Track::new(1000);
        assert!(track.ack_point().is_none());
        // A filtered consumer sees gaps in stream sequences.
        for seq in [3, 5, 9, 12] {
            track.dispatched(seq, subject(seq));
        }
        track.skipped(14, subject(14));
        assert!(!track.is_new(12) && track.is_new(15));
        track.delivered(0, 5);
        assert!(track.ack_point().is_none(), "3 is not delivered");
        track.delivered(0, 3);
        let (seq, ack, count) = track.ack_point().unwrap();
        assert_eq!((seq, count), (5, 2));
        assert_eq!(ack, subject(5));
        track.acked(5, 2);
        assert_eq!(track.acked_count(), 2);
        assert!(track.ack_point().is_none(), "9 is not delivered");
        track.delivered(0, 12);
        track.delivered(0, 9);
        assert_eq!(track.ack_point().map(|(s, _, n)| (s, n)), Some((14, 3)));
        assert_eq!(track.outstanding(), 0);
    }
}
