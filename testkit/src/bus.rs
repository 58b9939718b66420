//! What the tests of the bus (and of job over it) share: a bus of any kind on a real server of
//! its own ([`Bus`]), its consumers behind one type ([`Consumer`]), and building and reading
//! messages. Each bus gets a topic, stream, group and durable name of its own, and short timers
//! so rebalances and expiries happen within a test's patience.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imgate_bus::kafka::{ConsumerProgress, KafkaConsumer, KafkaProducer};
use imgate_bus::nats::{NatsConsumer, NatsProducer, NatsProgress};
use imgate_bus::{
    BusConsumer, BusEvent, BusMessage, BusProducer, DeliveryGuard, EmbeddedConsumer,
    EmbeddedProducer, KeysPush, LagProbe, Push, ReadyProbe, RoomPush,
};
use imgate_shared::config::{KafkaConfig, NatsConfig};
use imgate_shared::link::ShardKeys;
use tokio::time::Instant;

use crate::{Kafka, Nats};

/// How long a test waits for a bus to do something it should.
pub const WAIT: Duration = Duration::from_secs(20);

/// A name no other test of this process (or of another test binary running now) uses.
fn unique(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{what}-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A topic and consumer group of their own on `kafka`, with `partitions` partitions.
pub fn kafka_config(kafka: &Kafka, partitions: i32) -> KafkaConfig {
    let id = unique("imgate-test");
    KafkaConfig {
        brokers: kafka.bootstrap(),
        topic: id.clone(),
        group: format!("{id}-group"),
        partitions,
        commit_interval: Duration::from_millis(100),
        session_timeout: Duration::from_secs(3),
    }
}

/// A stream, subjects and durable name of their own on `nats`, with `partitions` partitions;
/// a job silent for 2 s loses its partitions.
pub fn nats_config(nats: &Nats, partitions: u32) -> NatsConfig {
    let id = unique("t");
    NatsConfig {
        url: nats.url(),
        subjects: format!("{}.push.*", id.replace('-', "_")),
        stream: id.clone(),
        durable: format!("{id}-job"),
        partitions,
        commit_interval: Duration::from_millis(100),
        session_timeout: Duration::from_secs(2),
        ..NatsConfig::default()
    }
}

/// A room push of `body` to `room`, accepted now.
pub fn room(room: &str, body: impl Into<String>) -> BusMessage {
    BusMessage::new(Push::Room(RoomPush {
        room: room.into(),
        op: 1000,
        body: bytes::Bytes::from(body.into()),
        ..Default::default()
    }))
}

/// A push of `body` to key `k1` on shard 0 of `comet`, accepted now.
pub fn keys(comet: &str, body: impl Into<String>) -> BusMessage {
    BusMessage::new(Push::Keys(KeysPush {
        comet: comet.into(),
        targets: vec![ShardKeys {
            shard: 0,
            keys: vec!["k1".into()],
        }],
        op: 1000,
        body: bytes::Bytes::from(body.into()),
        ..Default::default()
    }))
}

/// The body of a push, as text.
pub fn body_of(msg: &BusMessage) -> String {
    let body = match &msg.push {
        Some(Push::Room(r)) => &r.body,
        Some(Push::Keys(k)) => &k.body,
        Some(Push::All(b)) => &b.body,
        Some(Push::Close(_)) | Some(Push::Control(_)) | Some(Push::Event(_)) | None => {
            panic!("a message without a push body: {msg:?}")
        }
    };
    String::from_utf8(body.to_vec()).expect("a text body")
}

/// The next message (answering revokes on the way), or None if none comes within `wait`.
pub async fn next_message(
    consumer: &mut (impl BusConsumer + ?Sized),
    wait: Duration,
) -> Option<(BusMessage, DeliveryGuard)> {
    let deadline = Instant::now() + wait;
    loop {
        let event = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .ok()?;
        match event.expect("the consumer does not close") {
            BusEvent::Message(msg, guard) => return Some((msg, guard)),
            BusEvent::Revoking { done, .. } => {
                let _ = done.send(());
            }
        }
    }
}

/// Polls `condition` every 20 ms until it holds; fails the test after `wait`.
pub async fn wait_until(what: &str, wait: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Kafka,
    Nats,
}

/// A bus for one test: the embedded queue, or a real broker of its own with a topic or
/// stream of its own.
pub enum Bus {
    Embedded {
        /// The two ends until a test takes them (the embedded bus has one of each).
        producer: EmbeddedProducer,
        consumer: Option<EmbeddedConsumer>,
        capacity: usize,
        wait: Duration,
    },
    Kafka {
        broker: Kafka,
        config: KafkaConfig,
    },
    Nats {
        server: Nats,
        config: NatsConfig,
    },
}

impl Bus {
    /// The embedded bus with a queue of `capacity`; a publish waits `wait` for room.
    pub fn embedded(capacity: usize, wait: Duration) -> Bus {
        let (producer, consumer) = imgate_bus::embedded(capacity, wait);
        Bus::Embedded {
            producer,
            consumer: Some(consumer),
            capacity,
            wait,
        }
    }

    /// A Kafka-protocol broker (nisshi, in memory) and a topic of `partitions` partitions.
    pub fn kafka(partitions: i32) -> Bus {
        let broker = Kafka::start();
        let config = kafka_config(&broker, partitions);
        Bus::Kafka { broker, config }
    }

    /// nats-server with JetStream and a stream of `partitions` partition subjects.
    pub fn nats(partitions: u32) -> Bus {
        let server = Nats::start();
        let config = nats_config(&server, partitions);
        Bus::Nats { server, config }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Bus::Embedded { .. } => Kind::Embedded,
            Bus::Kafka { .. } => Kind::Kafka,
            Bus::Nats { .. } => Kind::Nats,
        }
    }

    /// Whether messages outlive their consumer: a later consumer gets what an earlier one did
    /// not deliver. The embedded bus lives and dies with its process.
    pub fn durable(&self) -> bool {
        self.kind() != Kind::Embedded
    }

    /// A producer (connected, its topic or stream made sure of).
    pub async fn producer(&self) -> Arc<dyn BusProducer> {
        match self {
            Bus::Embedded { producer, .. } => Arc::new(producer.clone()),
            Bus::Kafka { config, .. } => Arc::new(
                tokio::time::timeout(WAIT, KafkaProducer::connect(config))
                    .await
                    .expect("the Kafka producer connects within the deadline")
                    .expect("the Kafka producer connects"),
            ),
            Bus::Nats { config, .. } => Arc::new(
                tokio::time::timeout(WAIT, NatsProducer::connect(config))
                    .await
                    .expect("the NATS producer connects within the deadline")
                    .expect("the NATS producer connects"),
            ),
        }
    }

    /// A consumer (a new member of the jobs' group). The embedded bus has one.
    pub async fn consumer(&mut self) -> Consumer {
        match self {
            Bus::Embedded { consumer, .. } => Consumer::Embedded(
                consumer
                    .take()
                    .expect("the embedded bus has one consumer, taken already"),
            ),
            Bus::Kafka { config, .. } => {
                Consumer::Kafka(KafkaConsumer::connect(config).expect("the Kafka consumer starts"))
            }
            Bus::Nats { config, .. } => Consumer::Nats(
                NatsConsumer::connect(config)
                    .await
                    .expect("the NATS consumer starts"),
            ),
        }
    }

    /// The embedded queue's capacity and publish wait.
    pub fn embedded_limits(&self) -> Option<(usize, Duration)> {
        match self {
            Bus::Embedded { capacity, wait, .. } => Some((*capacity, *wait)),
            _ => None,
        }
    }

    /// How long a publish the bus cannot take may take to fail.
    pub fn refusal_bound(&self) -> Duration {
        match self {
            Bus::Embedded { wait, .. } => *wait,
            Bus::Kafka { .. } => imgate_bus::kafka::PUBLISH_TIMEOUT,
            Bus::Nats { config, .. } => config.publish_timeout,
        }
    }

    /// Stops the broker (Kafka: SIGKILL, its log in memory is lost; NATS: a clean stop, its
    /// store kept). Not for the embedded bus.
    pub fn stop_broker(&mut self) {
        match self {
            Bus::Embedded { .. } => panic!("the embedded bus has no broker"),
            Bus::Kafka { broker, .. } => broker.stop(),
            Bus::Nats { server, .. } => server.stop(),
        }
    }

    /// Starts the broker again on the same port (and, for NATS, the same store).
    pub fn restart_broker(&mut self) {
        match self {
            Bus::Embedded { .. } => panic!("the embedded bus has no broker"),
            Bus::Kafka { broker, .. } => broker.restart(),
            Bus::Nats { server, .. } => server.restart(),
        }
    }

    /// The NATS server and config, for NATS-only checks.
    pub fn nats_parts(&self) -> Option<(&Nats, &NatsConfig)> {
        match self {
            Bus::Nats { server, config } => Some((server, config)),
            _ => None,
        }
    }
}

/// A consumer of any bus, with what the tests need beyond [`BusConsumer`]: how to close or
/// kill it, and what it has had its bus record as consumed.
pub enum Consumer {
    Embedded(EmbeddedConsumer),
    Kafka(KafkaConsumer),
    Nats(NatsConsumer),
}

/// What a consumer has done, read from any task.
#[derive(Clone)]
pub enum Progress {
    /// The embedded bus records nothing.
    Embedded,
    Kafka(ConsumerProgress),
    Nats(NatsProgress),
}

impl Progress {
    /// Messages this consumer has had its bus record as consumed: Kafka's committed offsets
    /// summed (on a fresh topic, the messages committed), NATS's acknowledged messages.
    pub fn committed(&self) -> u64 {
        match self {
            Progress::Embedded => 0,
            Progress::Kafka(p) => p.committed_all().values().sum::<i64>() as u64,
            Progress::Nats(p) => p.acked(),
        }
    }

    /// Messages handed out and not yet delivered.
    pub fn outstanding(&self) -> usize {
        match self {
            Progress::Embedded => 0,
            Progress::Kafka(p) => p.outstanding(),
            Progress::Nats(p) => p.outstanding(),
        }
    }

    /// How many partitions this consumer holds now.
    pub fn partitions(&self) -> usize {
        match self {
            Progress::Embedded => 1,
            Progress::Kafka(p) => p.assigned().len(),
            Progress::Nats(p) => p.held().len(),
        }
    }
}

impl Consumer {
    pub fn progress(&self) -> Progress {
        match self {
            Consumer::Embedded(_) => Progress::Embedded,
            Consumer::Kafka(c) => Progress::Kafka(c.progress()),
            Consumer::Nats(c) => Progress::Nats(c.progress()),
        }
    }

    /// Records what is delivered and leaves the group, waiting for that.
    pub async fn close(self) {
        match self {
            Consumer::Embedded(c) => drop(c),
            Consumer::Kafka(c) => c.close().await,
            Consumer::Nats(c) => c.close().await,
        }
    }

    /// Ends the consumer as a job that dies would: NATS records nothing more and its leases
    /// expire; the Kafka consumer, which runs on its own thread, commits what is delivered as
    /// it goes (the tests that kill one deliver nothing first).
    pub fn kill(self) {
        match self {
            Consumer::Embedded(c) => drop(c),
            Consumer::Kafka(c) => drop(c),
            Consumer::Nats(c) => c.kill(),
        }
    }
}

#[async_trait::async_trait]
impl BusConsumer for Consumer {
    fn lag_probe(&self) -> Option<LagProbe> {
        match self {
            Consumer::Embedded(c) => c.lag_probe(),
            Consumer::Kafka(c) => c.lag_probe(),
            Consumer::Nats(c) => c.lag_probe(),
        }
    }

    fn ready_probe(&self) -> Option<ReadyProbe> {
        match self {
            Consumer::Embedded(c) => c.ready_probe(),
            Consumer::Kafka(c) => c.ready_probe(),
            Consumer::Nats(c) => c.ready_probe(),
        }
    }

    async fn recv(&mut self) -> Option<BusEvent> {
        match self {
            Consumer::Embedded(c) => c.recv().await,
            Consumer::Kafka(c) => c.recv().await,
            Consumer::Nats(c) => c.recv().await,
        }
    }
}
