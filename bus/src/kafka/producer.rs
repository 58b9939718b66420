//! The producing half of the Kafka bus; see the module docs of [`crate::kafka`].

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use imgate_shared::config::KafkaConfig;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use super::{ensure_topic, unavailable};
use crate::{BusError, BusMessage, BusProducer};

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
    /// A metadata request for the topic, with a timeout.
    async fn ready(&self) -> Result<(), String> {
        let producer = self.current();
        super::topic_ready(self.config.topic.clone(), move |topic| {
            producer
                .client()
                .fetch_metadata(Some(topic), crate::READY_TIMEOUT)
                .map_err(|e| format!("the Kafka broker does not answer: {e}"))
        })
        .await
    }

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
