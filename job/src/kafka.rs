//! The Kafka bus (any Kafka-protocol broker), over rdkafka with its vendored librdkafka.
//!
//! **Producer.** [`KafkaProducer::publish`] returns only once the broker acknowledged the
//! message (`acks=all`, idempotent), keyed by [`BusMessage::partition_key`] so one room's, one
//! comet's and the broadcasts' messages stay on one partition and in order. A dead broker
//! answers with an error within [`PUBLISH_TIMEOUT`], never a hang; a producer that hit a fatal
//! error is replaced by a fresh one, so publishing recovers by itself once the broker is back.
//!
//! **Consumer: at least once.** goim commits before processing (at most once); imgate commits
//! a message only after job delivered it. Every consumed message travels with a
//! [`DeliveryGuard`]; job drops it once the message was written to every comet it was for (or
//! given up on). Per partition the consumer keeps the offsets handed out and not yet delivered
//! (they may complete in any order) and every `commit_interval` commits, per partition, the
//! lowest of them (or, when none is outstanding, one past the highest handed out): the offset
//! below which everything is delivered. A job that dies loses nothing it had not delivered:
//! what it had not committed is consumed again (duplicates are bounded by that window).
//!
//! **Rebalance.** The rdkafka poll loop runs on its own thread, so the rebalance callback may
//! block. When partitions are revoked it hands job [`BusEvent::Revoking`] (job flushes its room
//! batches and answers), waits for the guards of those partitions to drop, and commits them
//! synchronously before librdkafka lets the partitions go; every wait is bounded
//! ([`REVOKE_WAIT`]), so a stuck job delays a rebalance instead of blocking it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imgate_shared::bus::{
    BusConsumer, BusError, BusEvent, BusMessage, BusProducer, DeliveryGuard, DeliveryTracker,
};
use imgate_shared::config::KafkaConfig;
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

/// librdkafka's own bound on one message's delivery (`message.timeout.ms`).
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest [`KafkaProducer::publish`] takes: the delivery bound plus a margin.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(7);
/// How long a publish waits for room in librdkafka's local queue.
const ENQUEUE_WAIT: Duration = Duration::from_secs(1);
/// Publishes failing this long (no success in between) replace the producer.
const STUCK_AFTER: Duration = Duration::from_secs(8);
/// Least time between topic checks after failed publishes.
const TOPIC_RECHECK: Duration = Duration::from_secs(2);
/// Bound on topic creation at connect.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each of a revoke's waits: for job's answer, then for the guards to drop.
pub const REVOKE_WAIT: Duration = Duration::from_secs(5);
/// How long one consumer poll waits for a message (also the stop-flag latency).
const POLL_WAIT: Duration = Duration::from_millis(50);
/// Events (messages, revokes) buffered between the poll thread and job.
const EVENT_QUEUE: usize = 1024;

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}"))
}

/// Creates `config.topic` with `config.partitions` partitions unless it exists.
async fn ensure_topic(config: &KafkaConfig) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("socket.timeout.ms", "5000")
        .create()
        .map_err(|e| unavailable("kafka admin client", e))?;
    let options = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let partitions = config.partitions.max(1);
    // Replication -1 is the broker's default (KIP-464); brokers that refuse it get 1.
    for replication in [-1, 1] {
        let topic = NewTopic::new(
            &config.topic,
            partitions,
            TopicReplication::Fixed(replication),
        );
        let created = tokio::time::timeout(
            ADMIN_TIMEOUT + Duration::from_secs(1),
            admin.create_topics([&topic], &options),
        )
        .await
        .map_err(|_| {
            BusError::Unavailable(format!(
                "kafka: creating topic {} got no answer within {ADMIN_TIMEOUT:?}",
                config.topic
            ))
        })?
        .map_err(|e| unavailable("kafka create topic", e))?;
        match created.into_iter().next() {
            Some(Ok(_)) => {
                tracing::info!(topic = %config.topic, partitions, "kafka topic created");
                return Ok(());
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(()),
            Some(Err((_, RDKafkaErrorCode::InvalidReplicationFactor))) if replication == -1 => {
                continue
            }
            Some(Err((_, code))) => {
                return Err(BusError::Unavailable(format!(
                    "kafka: creating topic {}: {code}",
                    config.topic
                )))
            }
            None => return Ok(()),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Producer

/// Publishes to the Kafka bus; see the module docs.
pub struct KafkaProducer {
    config: KafkaConfig,
    client_config: ClientConfig,
    /// The producer and when it was created.
    producer: RwLock<(Arc<FutureProducer>, Instant)>,
    /// Since when publishes fail without a success in between.
    failing_since: Mutex<Option<Instant>>,
    /// When a failed publish last made sure the topic exists (a broker that lost its data,
    /// like an in-memory one restarted, has no topic any more).
    topic_checked: Mutex<Option<Instant>>,
}

impl KafkaProducer {
    /// Creates the topic if it is missing and connects the producer. Fails if the broker does
    /// not answer the topic creation within a few seconds.
    pub async fn connect(config: &KafkaConfig) -> Result<KafkaProducer, BusError> {
        ensure_topic(config).await?;
        let mut client_config = ClientConfig::new();
        client_config
            .set("bootstrap.servers", &config.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                MESSAGE_TIMEOUT.as_millis().to_string(),
            )
            .set("socket.timeout.ms", "5000")
            .set("linger.ms", "1")
            .set("reconnect.backoff.max.ms", "1000");
        let producer = client_config
            .create()
            .map_err(|e| unavailable("kafka producer", e))?;
        Ok(KafkaProducer {
            config: config.clone(),
            client_config,
            producer: RwLock::new((Arc::new(producer), Instant::now())),
            failing_since: Mutex::new(None),
            topic_checked: Mutex::new(None),
        })
    }

    /// After a failed publish: makes sure the topic exists, in the background, at most once
    /// every [`TOPIC_RECHECK`].
    fn recheck_topic(&self) {
        let mut checked = self.topic_checked.lock().unwrap_or_else(|e| e.into_inner());
        if checked.is_some_and(|at| at.elapsed() < TOPIC_RECHECK) {
            return;
        }
        *checked = Some(Instant::now());
        let config = self.config.clone();
        tokio::spawn(async move {
            if let Err(e) = ensure_topic(&config).await {
                tracing::debug!(error = %e, "kafka: topic check after a failed publish failed");
            }
        });
    }

    fn current(&self) -> Arc<FutureProducer> {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Replaces `failed` with a fresh producer if it hit a fatal error, or if publishing has
    /// been failing for [`STUCK_AFTER`] (an idempotent producer whose broker lost its producer
    /// state, as a restarted in-memory broker does, keeps timing out without a fatal error).
    fn replace_if_stuck(&self, failed: &Arc<FutureProducer>) {
        let fatal = failed.client().fatal_error();
        let stuck = {
            let mut since = self.failing_since.lock().unwrap_or_else(|e| e.into_inner());
            let since = *since.get_or_insert_with(Instant::now);
            since.elapsed() >= STUCK_AFTER
        };
        if fatal.is_none() && !stuck {
            return;
        }
        let mut slot = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&slot.0, failed) || (fatal.is_none() && slot.1.elapsed() < STUCK_AFTER) {
            return; // replaced already, or too recently to tell
        }
        match self.client_config.create::<FutureProducer>() {
            Ok(fresh) => {
                match &fatal {
                    Some((code, reason)) => {
                        tracing::warn!(%code, %reason, "kafka producer hit a fatal error; replaced it")
                    }
                    None => tracing::warn!(
                        "kafka publishes failing for {STUCK_AFTER:?}; replaced the producer"
                    ),
                }
                let old = std::mem::replace(&mut *slot, (Arc::new(fresh), Instant::now()));
                drop(slot);
                // Dropping a producer purges and flushes (blocking): not on the runtime.
                std::thread::spawn(move || drop(old));
            }
            Err(e) => tracing::warn!(error = %e, "kafka producer cannot be replaced"),
        }
    }
}

#[async_trait::async_trait]
impl BusProducer for KafkaProducer {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        let payload = msg.encode_to_vec();
        let key = msg.partition_key();
        let producer = self.current();
        let record = FutureRecord::to(&self.config.topic)
            .key(&key)
            .payload(&payload);
        let sent = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            producer.send(record, Timeout::After(ENQUEUE_WAIT)),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                *self.failing_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(())
            }
            Ok(Err((e, _))) => {
                self.replace_if_stuck(&producer);
                self.recheck_topic();
                Err(unavailable("kafka publish", e))
            }
            Err(_) => {
                self.replace_if_stuck(&producer);
                self.recheck_topic();
                Err(BusError::Unavailable(format!(
                    "kafka publish: no acknowledgement within {PUBLISH_TIMEOUT:?}"
                )))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery tracking

#[derive(Default)]
struct TrackState {
    /// Offsets handed to job and not yet delivered.
    outstanding: BTreeSet<i64>,
    /// One past the highest offset handed out (or skipped as undecodable).
    next: Option<i64>,
    /// The offset last committed (or being committed) for this partition.
    committed: Option<i64>,
}

impl TrackState {
    /// The offset to commit: everything below it is delivered.
    fn commit_point(&self) -> Option<i64> {
        self.outstanding.first().copied().or(self.next)
    }
}

/// One partition of one assignment. A partition assigned again gets a fresh one, so a guard
/// of an earlier assignment dropping late cannot release a message consumed again.
#[derive(Default)]
struct PartitionTrack {
    state: Mutex<TrackState>,
    drained: Condvar,
}

impl PartitionTrack {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dispatched(&self, offset: i64) {
        let mut state = self.lock();
        state.outstanding.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    fn skipped(&self, offset: i64) {
        let mut state = self.lock();
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Waits until nothing is outstanding or `deadline` passes; true if drained.
    fn wait_drained(&self, deadline: Instant) -> bool {
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
}

/// What the consumer shares with its poll thread, its rebalance callback and observers.
struct Shared {
    topic: String,
    partitions: Mutex<HashMap<i32, Arc<PartitionTrack>>>,
    /// Partition → offset committed by this consumer (confirmed by the broker).
    committed: Mutex<HashMap<i32, i64>>,
    undecodable: AtomicU64,
    commit_failures: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn track(&self, partition: i32) -> Arc<PartitionTrack> {
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
    fn mark(&self, offsets: &[(i32, i64)], sent: bool) {
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
    fn confirmed(&self, offsets: &[(i32, i64)]) {
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
    fn commit(&self, consumer: &BaseConsumer<Context>, only: Option<&[i32]>) {
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

/// A cheap, cloneable view of a [`KafkaConsumer`]'s progress (tests, metrics).
#[derive(Clone)]
pub struct ConsumerProgress(Arc<Shared>);

impl ConsumerProgress {
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

// ---------------------------------------------------------------------------------------------
// Consumer

struct Context {
    shared: Arc<Shared>,
    events: mpsc::Sender<BusEvent>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned: Vec<i32> = tpl
                    .elements_for_topic(&self.shared.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                tracing::info!(?assigned, "kafka: partitions assigned");
                let mut partitions = self
                    .shared
                    .partitions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for partition in assigned {
                    partitions.insert(partition, Arc::default());
                }
            }
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<i32> = tpl
                    .elements_for_topic(&self.shared.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                self.revoke(consumer, &revoked);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka: rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let offsets: Vec<(i32, i64)> = offsets
            .elements_for_topic(&self.shared.topic)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect();
        match result {
            Ok(()) => self.shared.confirmed(&offsets),
            Err(e) => {
                self.shared.commit_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "kafka: commit failed; retrying");
                self.shared.mark(&offsets, false);
            }
        }
    }
}

impl Context {
    /// Lets job hand out what it holds for `revoked`, waits for their guards and commits them.
    fn revoke(&self, consumer: &BaseConsumer<Self>, revoked: &[i32]) {
        let closing = self.shared.stop.load(Ordering::Relaxed) || self.events.is_closed();
        tracing::info!(?revoked, closing, "kafka: partitions revoked");
        if !closing && !revoked.is_empty() {
            let deadline = Instant::now() + REVOKE_WAIT;
            let (done, answered) = oneshot::channel();
            let event = BusEvent::Revoking {
                partitions: revoked.to_vec(),
                done,
            };
            if send_bounded(&self.events, event, deadline, &self.shared.stop) {
                if !recv_bounded(answered, deadline) {
                    tracing::warn!(
                        "kafka: job did not answer a revoke within {REVOKE_WAIT:?}; committing what is delivered"
                    );
                }
                let deadline = Instant::now() + REVOKE_WAIT;
                for &partition in revoked {
                    if !self.shared.track(partition).wait_drained(deadline) {
                        tracing::warn!(
                            partition,
                            "kafka: messages of a revoked partition still undelivered after {REVOKE_WAIT:?}; the next owner consumes them again"
                        );
                    }
                }
            }
        }
        if consumer.assignment_lost() {
            tracing::warn!(
                "kafka: assignment lost (session timed out); uncommitted messages are consumed again"
            );
        } else {
            self.shared.commit(consumer, Some(revoked));
        }
        let mut partitions = self
            .shared
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for partition in revoked {
            partitions.remove(partition);
        }
    }
}

/// Sends `event` unless the receiver is gone, the consumer stops or `deadline` passes.
fn send_bounded(
    events: &mpsc::Sender<BusEvent>,
    mut event: BusEvent,
    deadline: Instant,
    stop: &AtomicBool,
) -> bool {
    loop {
        match events.try_send(event) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => {
                if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                    return false;
                }
                event = back;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn recv_bounded(mut answer: oneshot::Receiver<()>, deadline: Instant) -> bool {
    loop {
        match answer.try_recv() {
            Ok(()) => return true,
            Err(oneshot::error::TryRecvError::Closed) => return false,
            Err(oneshot::error::TryRecvError::Empty) => {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Consumes the Kafka bus in a consumer group; see the module docs.
pub struct KafkaConsumer {
    events: mpsc::Receiver<BusEvent>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaConsumer {
    /// Starts the poll thread: creates the topic if missing (best effort), joins the group and
    /// subscribes. Fails only if the client cannot be created (bad configuration).
    pub fn connect(config: &KafkaConfig) -> Result<KafkaConsumer, BusError> {
        let shared = Arc::new(Shared {
            topic: config.topic.clone(),
            partitions: Mutex::default(),
            committed: Mutex::default(),
            undecodable: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let session = config.session_timeout.max(Duration::from_millis(1000));
        let heartbeat = (session / 3).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let consumer: BaseConsumer<Context> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session.as_millis().to_string())
            .set("heartbeat.interval.ms", heartbeat.as_millis().to_string())
            .set("topic.metadata.refresh.interval.ms", "10000")
            // Bounds a synchronous commit's wait on a dead broker.
            .set("socket.timeout.ms", "5000")
            .set("reconnect.backoff.max.ms", "1000")
            // A push is latency-bound: ask the broker to answer a fetch within 10 ms rather
            // than librdkafka's 500 ms (brokers that hold a fetch to its deadline added up to
            // a quarter of a second per push).
            .set("fetch.wait.max.ms", "10")
            .create_with_context(Context {
                shared: shared.clone(),
                events: tx.clone(),
            })
            .map_err(|e| unavailable("kafka consumer", e))?;
        let config = config.clone();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || poll_loop(consumer, config, thread_shared, tx))
            .map_err(|e| unavailable("kafka consumer thread", e))?;
        Ok(KafkaConsumer {
            events,
            shared,
            thread: Some(thread),
        })
    }

    /// A view of this consumer's commits, for tests and metrics.
    pub fn progress(&self) -> ConsumerProgress {
        ConsumerProgress(self.shared.clone())
    }

    /// Commits what is delivered, leaves the group and waits for the poll thread to end.
    /// Dropping the consumer does the same without waiting.
    pub async fn close(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.events.close();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl BusConsumer for KafkaConsumer {
    async fn recv(&mut self) -> Option<BusEvent> {
        self.events.recv().await
    }
}

fn poll_loop(
    consumer: BaseConsumer<Context>,
    config: KafkaConfig,
    shared: Arc<Shared>,
    events: mpsc::Sender<BusEvent>,
) {
    // Best effort: a consumer started before any producer still finds its topic.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            if let Err(e) = rt.block_on(ensure_topic(&config)) {
                tracing::warn!(error = %e, "kafka consumer: cannot make sure the topic exists");
            }
        }
        Err(e) => tracing::warn!(error = %e, "kafka consumer: no runtime for topic creation"),
    }
    if let Err(e) = consumer.subscribe(&[&config.topic]) {
        tracing::error!(error = %e, topic = %config.topic, "kafka consumer cannot subscribe");
        return;
    }
    let interval = config.commit_interval.max(Duration::from_millis(10));
    let mut last_commit = Instant::now();
    let mut last_error: Option<Instant> = None;
    while !shared.stop.load(Ordering::Relaxed) && !events.is_closed() {
        match consumer.poll(POLL_WAIT) {
            Some(Ok(message)) => {
                let partition = message.partition();
                let offset = message.offset();
                let track = shared.track(partition);
                match message.payload().map(BusMessage::decode) {
                    Some(Ok(decoded)) => {
                        drop(message);
                        track.dispatched(offset);
                        let tracker: Arc<dyn DeliveryTracker> = track;
                        let guard = DeliveryGuard::new(tracker, partition, offset);
                        let event = BusEvent::Message(decoded, guard);
                        // Backpressure: a job that does not keep up stops the poll loop (the
                        // guard of an event that is never sent drops and releases the offset).
                        let mut event = Some(event);
                        while let Some(e) = event.take() {
                            match events.try_send(e) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Closed(_)) => break,
                                Err(mpsc::error::TrySendError::Full(back)) => {
                                    if shared.stop.load(Ordering::Relaxed) {
                                        break;
                                    }
                                    if last_commit.elapsed() >= interval {
                                        shared.commit(&consumer, None);
                                        last_commit = Instant::now();
                                    }
                                    std::thread::sleep(Duration::from_millis(1));
                                    event = Some(back);
                                }
                            }
                        }
                    }
                    other => {
                        let error = match other {
                            Some(Err(e)) => e.to_string(),
                            _ => "empty payload".to_string(),
                        };
                        drop(message);
                        shared.undecodable.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(partition, offset, %error, "kafka: undecodable bus message skipped");
                        track.skipped(offset);
                    }
                }
            }
            // Broker down and the like: librdkafka retries by itself; log once a second.
            Some(Err(e)) if last_error.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) => {
                tracing::warn!(error = %e, "kafka consumer error");
                last_error = Some(Instant::now());
            }
            Some(Err(_)) | None => {}
        }
        if last_commit.elapsed() >= interval {
            shared.commit(&consumer, None);
            last_commit = Instant::now();
        }
    }
    // Commit what is delivered; dropping the consumer then leaves the group (its revoke
    // callback commits again, sends job nothing: job is gone or going).
    shared.stop.store(true, Ordering::Relaxed);
    shared.commit(&consumer, None);
    drop(consumer);
    tracing::debug!("kafka consumer closed");
}

#[cfg(test)]
mod tests {
    use super::*;

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
