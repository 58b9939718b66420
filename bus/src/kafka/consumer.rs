//! The consuming half of the Kafka bus; see the module docs of [`crate::kafka`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imgate_shared::config::KafkaConfig;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::offsets::{ConsumerProgress, Shared};
use super::{ensure_topic, unavailable};
use crate::{BusConsumer, BusError, BusEvent, BusMessage, DeliveryGuard, DeliveryTracker};

/// Bound on each of a revoke's waits: for job's answer, then for the guards to drop.
pub const REVOKE_WAIT: Duration = Duration::from_secs(5);
/// How long one consumer poll waits for a message (also the stop-flag latency).
const POLL_WAIT: Duration = Duration::from_millis(50);
/// Events (messages, revokes) buffered between the poll thread and job.
const EVENT_QUEUE: usize = 1024;
/// How often librdkafka reports its statistics, the consumer lag among them.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

struct Context {
    shared: Arc<Shared>,
    events: mpsc::Sender<BusEvent>,
}

impl ClientContext for Context {
    /// librdkafka's statistics (every `LAG_INTERVAL`): the consumer lag of the partitions
    /// this consumer holds, summed.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag = statistics
            .topics
            .get(&self.shared.topic)
            .map(|topic| {
                topic
                    .partitions
                    .iter()
                    .filter(|(&p, part)| p >= 0 && part.consumer_lag >= 0)
                    .map(|(_, part)| part.consumer_lag as u64)
                    .sum::<u64>()
            })
            .unwrap_or(u64::MAX);
        self.shared.lag.store(lag, Ordering::Relaxed);
    }
}

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
    /// The client, for the readiness probe's metadata requests (the poll thread owns it).
    client: std::sync::Weak<BaseConsumer<Context>>,
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
            lag: AtomicU64::new(u64::MAX),
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
            // Statistics carry the consumer lag (imgate_bus_lag_messages).
            .set(
                "statistics.interval.ms",
                LAG_INTERVAL.as_millis().to_string(),
            )
            .create_with_context(Context {
                shared: shared.clone(),
                events: tx.clone(),
            })
            .map_err(|e| unavailable("kafka consumer", e))?;
        let consumer = Arc::new(consumer);
        let client = Arc::downgrade(&consumer);
        let config = config.clone();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || poll_loop(consumer, config, thread_shared, tx))
            .map_err(|e| unavailable("kafka consumer thread", e))?;
        Ok(KafkaConsumer {
            events,
            shared,
            client,
            thread: Some(thread),
        })
    }

    /// A view of this consumer's commits, for tests and metrics.
    pub fn progress(&self) -> ConsumerProgress {
        ConsumerProgress::new(self.shared.clone())
    }

    /// Commits what is delivered, leaves the group and waits for the poll thread to end.
    /// Dropping the consumer does the same without waiting.
    pub async fn close(mut self) {
        BusConsumer::close(&mut self).await;
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        crate::delivery::abandon_unread(&mut self.events);
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl BusConsumer for KafkaConsumer {
    async fn recv(&mut self) -> Option<BusEvent> {
        self.events.recv().await
    }

    async fn close(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        crate::delivery::abandon_unread(&mut self.events);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// A metadata request for the topic, with a timeout.
    fn ready_probe(&self) -> Option<crate::ReadyProbe> {
        let client = self.client.clone();
        let topic = self.shared.topic.clone();
        Some(Arc::new(move || {
            let (client, topic) = (client.clone(), topic.clone());
            Box::pin(super::topic_ready(topic, move |topic| {
                let consumer = client
                    .upgrade()
                    .ok_or_else(|| "the Kafka consumer is closed".to_string())?;
                consumer
                    .client()
                    .fetch_metadata(Some(topic), crate::READY_TIMEOUT)
                    .map_err(|e| format!("the Kafka broker does not answer: {e}"))
            }))
        }))
    }

    fn lag_probe(&self) -> Option<crate::LagProbe> {
        let shared = self.shared.clone();
        Some(Arc::new(move || {
            let lag = shared.lag.load(Ordering::Relaxed);
            (lag != u64::MAX).then_some(lag)
        }))
    }
}

fn poll_loop(
    consumer: Arc<BaseConsumer<Context>>,
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
                        // Backpressure: a job that does not keep up stops the poll loop. An
                        // event never sent is abandoned: nothing from its offset on is
                        // committed, so the partition's next consumer delivers it.
                        let mut event = Some(event);
                        while let Some(e) = event.take() {
                            match events.try_send(e) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Closed(unsent)) => {
                                    unsent.abandon();
                                    break;
                                }
                                Err(mpsc::error::TrySendError::Full(back)) => {
                                    if shared.stop.load(Ordering::Relaxed) {
                                        back.abandon();
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
    // callback commits again, sends job nothing: job is gone or going). A readiness probe may
    // hold it for one metadata request more; the last holder drops it.
    shared.stop.store(true, Ordering::Relaxed);
    shared.commit(&consumer, None);
    drop(consumer);
    tracing::debug!("kafka consumer closed");
}
