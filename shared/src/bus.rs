//! The bus seam between logic (producer) and job (consumer).
//!
//! Messages are prost-encoded so the Kafka bus can carry the same bytes; the embedded bus is a
//! bounded in-process queue. A full bus is an error the caller reports, never a silent drop.

use std::time::Duration;

use bytes::Bytes;

use crate::link::{CloseConn, ShardKeys};

/// One push, as logic publishes it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BusMessage {
    #[prost(oneof = "Push", tags = "1, 2, 3, 4")]
    pub push: Option<Push>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Push {
    #[prost(message, tag = "1")]
    Keys(KeysPush),
    #[prost(message, tag = "2")]
    Room(RoomPush),
    #[prost(message, tag = "3")]
    All(BroadcastPush),
    /// Not a push: close one connection of a comet (its session was replaced by a newer
    /// connection's claim on another comet).
    #[prost(message, tag = "4")]
    Close(CloseConn),
}

/// Connections on one comet, grouped by shard.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeysPush {
    #[prost(string, tag = "1")]
    pub comet: String,
    #[prost(message, repeated, tag = "2")]
    pub targets: Vec<ShardKeys>,
    #[prost(int32, tag = "3")]
    pub op: i32,
    #[prost(bytes = "bytes", tag = "4")]
    pub body: Bytes,
    /// Inbox sequence of a stored push to user `mid` (0: not stored).
    #[prost(uint64, tag = "5")]
    pub seq: u64,
    #[prost(int64, tag = "6")]
    pub mid: i64,
}

/// A message for every member of a room (`type://id`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoomPush {
    #[prost(string, tag = "1")]
    pub room: String,
    #[prost(int32, tag = "2")]
    pub op: i32,
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
    /// The room-history sequence when the push opted into history (0: none); it travels in
    /// the frame header's seq so a client can catch up with SYNC.
    #[prost(uint64, tag = "4")]
    pub seq: u64,
}

/// A message for every connection watching `op`, paced at `speed` connections per second.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BroadcastPush {
    #[prost(int32, tag = "1")]
    pub op: i32,
    #[prost(bytes = "bytes", tag = "2")]
    pub body: Bytes,
    #[prost(uint32, tag = "3")]
    pub speed: u32,
}

impl BusMessage {
    pub fn new(push: Push) -> Self {
        BusMessage { push: Some(push) }
    }

    /// The ordering key: one comet's, one room's and the broadcasts' messages keep their order.
    pub fn partition_key(&self) -> String {
        match &self.push {
            Some(Push::Keys(k)) => format!("comet:{}", k.comet),
            Some(Push::Room(r)) => format!("room:{}", r.room),
            Some(Push::Close(c)) => format!("comet:{}", c.conn.as_ref().map_or("", |c| &c.comet)),
            Some(Push::All(_)) | None => "all".to_string(),
        }
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus queue full: job is not keeping up (waited {0:?})")]
    Full(Duration),
    #[error("bus closed: no consumer is running")]
    Closed,
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// The producing side of the bus.
#[async_trait::async_trait]
pub trait BusProducer: Send + Sync {
    /// Returns once the bus has accepted the message (for Kafka: the broker acknowledged it).
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError>;
}

/// Told when a consumed message has been delivered (or given up on), so the bus can commit
/// its position. Called once per message, in any order.
pub trait DeliveryTracker: Send + Sync {
    fn delivered(&self, partition: i32, offset: i64);
}

/// Travels with a consumed message until job has written it to every comet it was for;
/// dropping it reports the message delivered. A job that dies drops nothing, so what it had
/// not delivered is consumed again (at least once).
pub struct DeliveryGuard {
    tracker: Option<std::sync::Arc<dyn DeliveryTracker>>,
    partition: i32,
    offset: i64,
}

impl DeliveryGuard {
    /// A guard that reports to `tracker` when dropped.
    pub fn new(tracker: std::sync::Arc<dyn DeliveryTracker>, partition: i32, offset: i64) -> Self {
        DeliveryGuard {
            tracker: Some(tracker),
            partition,
            offset,
        }
    }

    /// A guard that reports nowhere (the embedded bus has nothing to commit).
    pub fn untracked() -> Self {
        DeliveryGuard {
            tracker: None,
            partition: 0,
            offset: 0,
        }
    }

    /// Partition and offset of the message (0, 0 when untracked).
    pub fn position(&self) -> (i32, i64) {
        (self.partition, self.offset)
    }
}

impl Drop for DeliveryGuard {
    fn drop(&mut self) {
        if let Some(tracker) = self.tracker.take() {
            tracker.delivered(self.partition, self.offset);
        }
    }
}

impl std::fmt::Debug for DeliveryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeliveryGuard({}, {})", self.partition, self.offset)
    }
}

/// What a consumer hands job.
#[derive(Debug)]
pub enum BusEvent {
    /// A message, with the guard to drop once it is delivered.
    Message(BusMessage, DeliveryGuard),
    /// These partitions are being taken away (a rebalance): job sends out everything it holds
    /// (room batches) and then answers on `done`; the consumer waits for the guards of those
    /// partitions and commits before letting them go.
    Revoking {
        partitions: Vec<i32>,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

/// The consuming side of the bus.
#[async_trait::async_trait]
pub trait BusConsumer: Send {
    /// The next event, or `None` once the bus is closed and drained.
    async fn recv(&mut self) -> Option<BusEvent>;
}

/// Creates the embedded bus: a bounded in-process queue of `capacity` messages. A publish waits
/// up to `wait` for room, then fails with [`BusError::Full`].
pub fn embedded(capacity: usize, wait: Duration) -> (EmbeddedProducer, EmbeddedConsumer) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (EmbeddedProducer { tx, wait }, EmbeddedConsumer { rx })
}

/// Producer half of the embedded bus.
#[derive(Clone)]
pub struct EmbeddedProducer {
    tx: tokio::sync::mpsc::Sender<BusMessage>,
    wait: Duration,
}

/// Consumer half of the embedded bus.
pub struct EmbeddedConsumer {
    rx: tokio::sync::mpsc::Receiver<BusMessage>,
}

#[async_trait::async_trait]
impl BusProducer for EmbeddedProducer {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        match self.tx.send_timeout(msg, self.wait).await {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                Err(BusError::Full(self.wait))
            }
            Err(tokio::sync::mpsc::error::SendTimeoutError::Closed(_)) => Err(BusError::Closed),
        }
    }
}

#[async_trait::async_trait]
impl BusConsumer for EmbeddedConsumer {
    async fn recv(&mut self) -> Option<BusEvent> {
        let msg = self.rx.recv().await?;
        Some(BusEvent::Message(msg, DeliveryGuard::untracked()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_bus_is_reported() {
        let (tx, mut rx) = embedded(1, Duration::from_millis(10));
        let msg = BusMessage::new(Push::All(BroadcastPush {
            op: 1,
            body: Bytes::new(),
            speed: 0,
        }));
        tx.publish(msg.clone()).await.unwrap();
        assert!(matches!(
            tx.publish(msg.clone()).await,
            Err(BusError::Full(_))
        ));
        match rx.recv().await {
            Some(BusEvent::Message(got, _)) => assert_eq!(got, msg),
            other => panic!("expected the message, got {other:?}"),
        }
    }
}
