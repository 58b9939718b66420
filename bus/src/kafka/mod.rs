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

//!
//! | file | holds |
//! | --- | --- |
//! | `producer.rs` | [`KafkaProducer`] |
//! | `consumer.rs` | [`KafkaConsumer`]: the poll thread and the rebalance callback |
//! | `offsets.rs` | per-partition delivery tracking and the commits it allows |

mod consumer;
mod offsets;
mod producer;

use std::time::Duration;

use imgate_shared::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

use crate::BusError;

pub use consumer::{KafkaConsumer, REVOKE_WAIT};
pub use offsets::ConsumerProgress;
pub use producer::{KafkaProducer, MESSAGE_TIMEOUT, PUBLISH_TIMEOUT};

/// Bound on topic creation at connect.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The readiness probe of either end: `fetch` makes one metadata request for the topic
/// (blocking, so on a blocking thread), bounded by [`crate::READY_TIMEOUT`]. Ready when the
/// broker answers and the topic has partitions.
async fn topic_ready(
    topic: String,
    fetch: impl FnOnce(&str) -> Result<rdkafka::metadata::Metadata, String> + Send + 'static,
) -> Result<(), String> {
    let asked = tokio::task::spawn_blocking(move || {
        let metadata = fetch(&topic)?;
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            Some(t) => Err(match t.error() {
                Some(e) => format!("topic {topic}: {:?}", RDKafkaErrorCode::from(e)),
                None => format!("topic {topic} has no partitions"),
            }),
            None => Err(format!("topic {topic} is missing")),
        }
    });
    asked
        .await
        .unwrap_or_else(|e| Err(format!("the readiness probe failed: {e}")))
}

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
