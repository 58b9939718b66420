//! The bus between logic (which publishes pushes) and job (which consumes them): the messages,
//! the two traits every bus implements, and the implementations.
//!
//! | implementation | file | what it is |
//! | --- | --- | --- |
//! | [`embedded`] | `embedded.rs` | a bounded in-process queue: logic and job in one process |
//! | [`kafka`] | `kafka/` | any Kafka-protocol broker, at least once, in order per room |
//! | [`nats`] | `nats/` | NATS JetStream, at least once, in order per room |
//!
//! A new bus is one more module: a producer implementing [`BusProducer`] and a consumer
//! implementing [`BusConsumer`] that hands out [`BusEvent`]s with a [`DeliveryGuard`] per
//! message. Messages are prost-encoded ([`BusMessage`]), so every bus carries the same bytes. A
//! full bus is an error the caller reports, never a silent drop. The contract every bus keeps
//! is written once, in `bus/tests/conformance.rs`, and run against each of them.

mod delivery;
pub mod embedded;
pub mod kafka;
mod message;
pub mod nats;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use delivery::{DeliveryGuard, DeliveryTracker};
pub use embedded::{embedded, EmbeddedConsumer, EmbeddedProducer};
pub use message::{BroadcastPush, BusMessage, ConnEvent, KeysPush, Push, RoomPush};

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

    /// Messages published and not yet taken by a consumer, when this bus can tell (the
    /// embedded one can; Kafka's lag is the consumer group's, which the producer cannot see).
    fn backlog(&self) -> Option<u64> {
        None
    }

    /// Whether a publish can succeed now: the embedded bus looks at its queue, a broker is
    /// asked (one round trip, bounded by [`READY_TIMEOUT`]). `Err` says why not.
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The longest a broker's readiness probe waits for its answer.
pub const READY_TIMEOUT: Duration = Duration::from_millis(1500);

/// Asks the bus, from any thread, whether a consumer can consume now (`Err` says why not).
pub type ReadyProbe = std::sync::Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

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

/// Reads a consumer's lag (messages on its partitions it has not taken), `None` while unknown.
pub type LagProbe = std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// The consuming side of the bus.
#[async_trait::async_trait]
pub trait BusConsumer: Send {
    /// How to read this consumer's lag from another thread, when the bus can tell (Kafka: from
    /// librdkafka's statistics; the embedded bus reports its backlog on the producer side).
    fn lag_probe(&self) -> Option<LagProbe> {
        None
    }

    /// How to ask the bus whether this consumer can consume, from another thread (a broker's
    /// is a round trip bounded by [`READY_TIMEOUT`]); `None` when there is nothing to ask (the
    /// embedded bus: its producer's [`BusProducer::ready`] sees the queue).
    fn ready_probe(&self) -> Option<ReadyProbe> {
        None
    }

    /// The next event, or `None` once the bus is closed and drained.
    async fn recv(&mut self) -> Option<BusEvent>;

    /// Records what is delivered and leaves the group (a broker's: bounded), so the other
    /// consumers take over at once; nothing is received after. job calls it at shutdown, once
    /// its links have written what they held. Dropping a consumer does the same without
    /// waiting.
    async fn close(&mut self) {}
}
