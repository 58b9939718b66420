//! The Kafka bus against a real broker (nisshi, started by imgate-testkit) over TCP: order,
//! commits only of delivered messages, undecodable messages, consumer groups, a broker outage.
//! job over the Kafka bus is in `job/tests/kafka.rs`.
//!
//! A missing nisshi fails these tests with a message saying how to install it; nothing skips.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use imgate_bus::kafka::{ConsumerProgress, KafkaConsumer, KafkaProducer, PUBLISH_TIMEOUT};
use imgate_bus::{BusConsumer, BusEvent, BusMessage, BusProducer, DeliveryGuard, Push, RoomPush};
use imgate_shared::config::KafkaConfig;
use imgate_testkit::Kafka;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

fn broker() -> Kafka {
    // Blocking start (waits for the port): fine, each test owns its runtime.
    Kafka::start()
}

/// A topic and group of their own for every test.
fn kafka_config(kafka: &Kafka, partitions: i32) -> KafkaConfig {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{n}", std::process::id());
    KafkaConfig {
        brokers: kafka.bootstrap(),
        topic: format!("imgate-test-{id}"),
        group: format!("imgate-test-group-{id}"),
        partitions,
        commit_interval: Duration::from_millis(100),
        session_timeout: Duration::from_secs(3),
    }
}

fn room(room: &str, body: String) -> BusMessage {
    BusMessage::new(Push::Room(RoomPush {
        room: room.into(),
        op: 1000,
        body: Bytes::from(body),
        ..Default::default()
    }))
}

fn body_of(msg: &BusMessage) -> String {
    match &msg.push {
        Some(Push::Room(r)) => String::from_utf8(r.body.to_vec()).unwrap(),
        Some(Push::Keys(k)) => String::from_utf8(k.body.to_vec()).unwrap(),
        Some(Push::All(b)) => String::from_utf8(b.body.to_vec()).unwrap(),
        Some(Push::Close(_)) | None => panic!("a message without a push"),
    }
}

async fn connect_producer(config: &KafkaConfig) -> KafkaProducer {
    tokio::time::timeout(WAIT, KafkaProducer::connect(config))
        .await
        .expect("the producer connects within the deadline")
        .expect("the producer connects")
}

/// The next message (answering revokes on the way), or None if none comes within `wait`.
async fn next_message(
    consumer: &mut KafkaConsumer,
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

async fn wait_until(what: &str, wait: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn committed_total(progress: &ConsumerProgress) -> i64 {
    progress.committed_all().values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_each_rooms_order() {
    let kafka = broker();
    let config = kafka_config(&kafka, 4);
    let producer = connect_producer(&config).await;
    let rooms = ["live://1", "live://2", "chat://3"];
    for i in 0..100 {
        for r in rooms {
            producer.publish(room(r, format!("{r}#{i}"))).await.unwrap();
        }
    }
    let mut consumer = KafkaConsumer::connect(&config).unwrap();
    let mut got: HashMap<String, Vec<u32>> = HashMap::new();
    for _ in 0..300 {
        let (msg, guard) = next_message(&mut consumer, WAIT)
            .await
            .expect("all 300 messages arrive");
        drop(guard);
        let body = body_of(&msg);
        let (r, i) = body.split_once('#').unwrap();
        let Some(Push::Room(push)) = &msg.push else {
            panic!("a room push")
        };
        assert_eq!(push.room, r);
        assert!(msg.accepted_us > 0, "the accept time travels with the push");
        got.entry(r.to_owned())
            .or_default()
            .push(i.parse().unwrap());
    }
    for r in rooms {
        assert_eq!(got[r], (0..100).collect::<Vec<u32>>(), "order of {r}");
    }
    assert!(
        next_message(&mut consumer, Duration::from_millis(500))
            .await
            .is_none(),
        "nothing more"
    );
    let progress = consumer.progress();
    wait_until("everything committed", WAIT, || {
        committed_total(&progress) == 300
    })
    .await;
    // librdkafka's statistics report the lag (every 2 s): nothing left to take.
    let lag = consumer.lag_probe().expect("Kafka reports its lag");
    wait_until("the consumer lag reported as 0", WAIT, || lag() == Some(0)).await;
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_delivered_messages_are_committed() {
    const N: usize = 20;
    const K: usize = 8;
    let kafka = broker();
    let config = kafka_config(&kafka, 1);
    let producer = connect_producer(&config).await;
    for i in 0..N {
        producer
            .publish(room("r://1", i.to_string()))
            .await
            .unwrap();
    }
    let mut first = KafkaConsumer::connect(&config).unwrap();
    let progress = first.progress();
    let mut guards = Vec::new();
    for i in 0..N {
        let (msg, guard) = next_message(&mut first, WAIT)
            .await
            .expect("every message arrives");
        assert_eq!(body_of(&msg), i.to_string());
        assert_eq!(guard.position(), (0, i as i64));
        guards.push(guard);
    }
    // Delivered out of order: K-1 first, then the rest below K.
    let mut rest = guards.split_off(K);
    drop(guards.pop());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        progress.committed(0).unwrap_or(0),
        0,
        "offset 0 is not delivered, so nothing is committed"
    );
    drop(guards);
    wait_until("offset K committed", WAIT, || {
        progress.committed(0) == Some(K as i64)
    })
    .await;
    // Deliver one out of order beyond K: still K, K itself is outstanding.
    drop(rest.remove(3));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(progress.committed(0), Some(K as i64));
    assert_eq!(progress.outstanding(), N - K - 1);
    // The job dies holding the rest.
    first.close().await;
    let mut second = KafkaConsumer::connect(&config).unwrap();
    for i in K..N {
        let (msg, guard) = next_message(&mut second, WAIT)
            .await
            .expect("the undelivered messages come again");
        assert_eq!(body_of(&msg), i.to_string(), "exactly K..N again, in order");
        drop(guard);
    }
    assert!(
        next_message(&mut second, Duration::from_secs(1))
            .await
            .is_none(),
        "nothing after N"
    );
    drop(rest);
    let progress = second.progress();
    wait_until("the second consumer commits N", WAIT, || {
        progress.committed(0) == Some(N as i64)
    })
    .await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_skipped_and_committed() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = broker();
    let config = kafka_config(&kafka, 1);
    let producer = connect_producer(&config).await;
    producer.publish(room("r://1", "a".into())).await.unwrap();
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()
        .unwrap();
    raw.send(
        FutureRecord::to(&config.topic)
            .key("room:r://1")
            .payload(&[0xff_u8, 0xff, 0xff][..]),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    producer.publish(room("r://1", "b".into())).await.unwrap();
    let mut consumer = KafkaConsumer::connect(&config).unwrap();
    let progress = consumer.progress();
    let (a, ga) = next_message(&mut consumer, WAIT).await.unwrap();
    let (b, gb) = next_message(&mut consumer, WAIT).await.unwrap();
    assert_eq!((body_of(&a), body_of(&b)), ("a".into(), "b".into()));
    assert_eq!(gb.position(), (0, 2));
    assert_eq!(progress.undecodable(), 1);
    drop((ga, gb));
    wait_until("all three committed", WAIT, || {
        progress.committed(0) == Some(3)
    })
    .await;
    consumer.close().await;
}

// ---------------------------------------------------------------------------------------------
// Consumer groups

type Seen = Arc<Mutex<Vec<(usize, String)>>>;

/// Consumes in the background, delivering at once; records (consumer, body).
fn spawn_member(
    which: usize,
    mut consumer: KafkaConsumer,
    seen: Seen,
) -> (
    ConsumerProgress,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let progress = consumer.progress();
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                event = consumer.recv() => match event {
                    Some(BusEvent::Message(msg, guard)) => {
                        seen.lock().unwrap().push((which, body_of(&msg)));
                        drop(guard);
                    }
                    Some(BusEvent::Revoking { done, .. }) => {
                        let _ = done.send(());
                    }
                    None => break,
                },
            }
        }
        consumer.close().await;
    });
    (progress, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_the_partitions() {
    let kafka = broker();
    let config = kafka_config(&kafka, 4);
    let producer = connect_producer(&config).await;
    let seen: Seen = Arc::default();
    let publish_range = |range: std::ops::Range<usize>| {
        let producer = &producer;
        async move {
            for i in range {
                producer
                    .publish(room(&format!("r://{}", i % 16), format!("m{i}")))
                    .await
                    .unwrap();
            }
        }
    };

    let (pa, stop_a, task_a) =
        spawn_member(0, KafkaConsumer::connect(&config).unwrap(), seen.clone());
    publish_range(0..100).await;
    wait_until("the first member has all of phase 1", WAIT, || {
        seen.lock().unwrap().len() >= 100
    })
    .await;
    assert_eq!(pa.assigned(), [0, 1, 2, 3]);

    let (pb, stop_b, task_b) =
        spawn_member(1, KafkaConsumer::connect(&config).unwrap(), seen.clone());
    wait_until("the partitions split between the two", WAIT, || {
        let (a, b) = (pa.assigned(), pb.assigned());
        let all: HashSet<i32> = a.iter().chain(b.iter()).copied().collect();
        !a.is_empty() && !b.is_empty() && a.len() + b.len() == 4 && all.len() == 4
    })
    .await;
    let phase1 = seen.lock().unwrap().len();
    publish_range(100..300).await;
    wait_until("every message seen", WAIT, || {
        let seen = seen.lock().unwrap();
        let ids: HashSet<&str> = seen.iter().map(|(_, b)| b.as_str()).collect();
        ids.len() == 300
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, body) in &seen {
        *count.entry(body).or_default() += 1;
    }
    let duplicates: Vec<_> = count.iter().filter(|(_, &n)| n > 1).collect();
    // The rebalance commits synchronously before letting go: not even phase 1 comes twice.
    assert!(
        duplicates.is_empty(),
        "duplicates: {duplicates:?} (phase 1 had {phase1})"
    );
    let by_member = |m: usize| seen[phase1..].iter().filter(|(w, _)| *w == m).count();
    assert!(
        by_member(0) > 0 && by_member(1) > 0,
        "both members got a share"
    );
    assert_eq!(by_member(0) + by_member(1), 200);
    for (stop, task) in [(stop_a, task_a), (stop_b, task_b)] {
        let _ = stop.send(());
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Broker outage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_fast_while_the_broker_is_down_and_recovers() {
    let mut kafka = broker();
    let config = kafka_config(&kafka, 2);
    let producer = connect_producer(&config).await;
    producer
        .publish(room("r://1", "before".into()))
        .await
        .unwrap();

    kafka.stop();
    let started = Instant::now();
    let result = tokio::time::timeout(
        PUBLISH_TIMEOUT + Duration::from_secs(2),
        producer.publish(room("r://1", "during".into())),
    )
    .await
    .expect("publish answers within its timeout while the broker is down");
    assert!(result.is_err(), "publish to a dead broker must fail");
    assert!(started.elapsed() <= PUBLISH_TIMEOUT + Duration::from_secs(1));

    kafka.restart();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match producer.publish(room("r://1", "after".into())).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "publish did not recover after the broker restarted: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // And what was published after the restart can be consumed.
    let mut consumer = KafkaConsumer::connect(&config).unwrap();
    let (msg, _guard) = next_message(&mut consumer, WAIT)
        .await
        .expect("the message published after the restart arrives");
    assert_eq!(body_of(&msg), "after");
    consumer.close().await;
}
