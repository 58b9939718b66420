//! The contract every bus keeps, written once and run against each: the embedded queue, Kafka
//! (nisshi, a real broker started by imgate-testkit) and NATS JetStream (a real nats-server):
//!
//! - order per key: one room's (one comet's) messages arrive in the order published;
//! - acknowledged after the write: a consumer records a message as consumed only once job
//!   delivered it (dropped its guard), never past one still held;
//! - redelivery: what a consumer had not delivered when it closed, or died, comes again to the
//!   next one, in order, and nothing it had delivered does;
//! - shared work: two consumers split the keys, each message once;
//! - a full or down bus: a publish it cannot take fails within its bound, with an error, and
//!   publishing works again once the bus can take messages; readiness says so meanwhile;
//! - lag: what the consumers have not taken is reported.
//!
//! The embedded bus lives and dies with its process: the parts about a later consumer do not
//! apply to it. A missing broker fails these tests with a message saying how to install it;
//! nothing skips. Backend-specific behaviour is in `kafka.rs` and `nats.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imgate_bus::{BusConsumer, BusError, BusEvent, Push};
use imgate_testkit::bus::{
    body_of, keys, next_message, room, wait_until, Bus, Consumer, Kind, Progress, WAIT,
};
use tokio::time::Instant;

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(700);

/// Ordering keys and bodies of the messages a consumer got, for checking order per key.
fn key_and_index(msg: &imgate_bus::BusMessage) -> (String, u32) {
    let body = body_of(msg);
    let (key, index) = body.split_once('#').expect("a body key#index");
    let expected_key = match &msg.push {
        Some(Push::Room(r)) => r.room.clone(),
        Some(Push::Keys(k)) => k.comet.clone(),
        _ => panic!("a room or keys push"),
    };
    assert_eq!(key, expected_key, "the body names its key");
    (key.to_string(), index.parse().expect("an index"))
}

/// Messages of three rooms and two comets' keys, interleaved, arrive in order per key; the
/// accept time travels with them; nothing else arrives; the lag drains to zero.
async fn order_per_key(mut bus: Bus) {
    let producer = bus.producer().await;
    let rooms = ["live://1", "live://2", "chat://3"];
    let comets = ["comet-a", "comet-b"];
    const N: u32 = 60;
    for i in 0..N {
        for r in rooms {
            producer.publish(room(r, format!("{r}#{i}"))).await.unwrap();
        }
        for c in comets {
            producer.publish(keys(c, format!("{c}#{i}"))).await.unwrap();
        }
    }
    let mut consumer = bus.consumer().await;
    let total = N as usize * (rooms.len() + comets.len());
    let mut got: HashMap<String, Vec<u32>> = HashMap::new();
    for n in 0..total {
        let (msg, guard) = next_message(&mut consumer, WAIT)
            .await
            .unwrap_or_else(|| panic!("{:?}: message {n} of {total} arrives", bus.kind()));
        drop(guard);
        assert!(msg.accepted_us > 0, "the accept time travels with the push");
        let (key, index) = key_and_index(&msg);
        got.entry(key).or_default().push(index);
    }
    for key in rooms.iter().chain(comets.iter()) {
        assert_eq!(got[*key], (0..N).collect::<Vec<u32>>(), "order of {key}");
    }
    assert!(
        next_message(&mut consumer, QUIET).await.is_none(),
        "nothing more"
    );
    // What the consumers have not taken: nothing.
    match bus.kind() {
        Kind::Embedded => assert_eq!(producer.backlog(), Some(0)),
        Kind::Kafka | Kind::Nats => {
            let lag = consumer.lag_probe().expect("a broker reports its lag");
            wait_until("the lag reported as 0", WAIT, || lag() == Some(0)).await;
        }
    }
    consumer.close().await;
}

/// A consumer takes N messages, delivers them out of order and holds some: the bus records
/// nothing past the first one held. Closed holding the rest, the next consumer gets exactly
/// those again, in order, and nothing after.
async fn acknowledged_only_after_delivery(mut bus: Bus) {
    const N: usize = 20;
    const K: usize = 8;
    let producer = bus.producer().await;
    for i in 0..N {
        producer
            .publish(room("r://1", format!("r://1#{i}")))
            .await
            .unwrap();
    }
    let mut first = bus.consumer().await;
    let progress = first.progress();
    let mut guards = Vec::new();
    for i in 0..N {
        let (msg, guard) = next_message(&mut first, WAIT)
            .await
            .expect("every message arrives");
        assert_eq!(key_and_index(&msg).1, i as u32);
        guards.push(guard);
    }
    if !bus.durable() {
        return; // nothing is recorded, nothing can come again
    }
    // Delivered out of order: K-1 first, while 0..K-1 are held.
    let mut rest = guards.split_off(K);
    drop(guards.pop());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        progress.committed(),
        0,
        "{:?}: the first message is not delivered, so nothing is recorded",
        bus.kind()
    );
    drop(guards);
    wait_until("the first K recorded", WAIT, || {
        progress.committed() == K as u64
    })
    .await;
    // One more delivered beyond the first held one: still K.
    drop(rest.remove(3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(progress.committed(), K as u64, "{:?}", bus.kind());
    assert_eq!(progress.outstanding(), N - K - 1);
    // The job closes holding the rest.
    first.close().await;
    let mut second = bus.consumer().await;
    for i in K..N {
        let (msg, guard) = next_message(&mut second, WAIT)
            .await
            .expect("the undelivered messages come again");
        assert_eq!(
            key_and_index(&msg).1,
            i as u32,
            "exactly K..N again, in order"
        );
        drop(guard);
    }
    assert!(
        next_message(&mut second, QUIET).await.is_none(),
        "nothing after N"
    );
    drop(rest);
    let progress = second.progress();
    wait_until("the second consumer records the rest", WAIT, || {
        progress.committed() >= (N - K) as u64
    })
    .await;
    second.close().await;
}

/// A consumer takes every message and dies without delivering any: the next one gets them
/// all again, in order.
async fn a_dead_consumer_s_messages_come_again(mut bus: Bus) {
    const N: usize = 12;
    let producer = bus.producer().await;
    for i in 0..N {
        producer
            .publish(room("r://2", format!("r://2#{i}")))
            .await
            .unwrap();
    }
    let mut first = bus.consumer().await;
    let mut held = Vec::new();
    for _ in 0..N {
        held.push(next_message(&mut first, WAIT).await.expect("a message"));
    }
    if !bus.durable() {
        return;
    }
    first.kill();
    let mut second = bus.consumer().await;
    // The dead consumer's partitions move once its session times out.
    for i in 0..N {
        let (msg, guard) = next_message(&mut second, WAIT)
            .await
            .expect("what the dead consumer held comes again");
        assert_eq!(key_and_index(&msg).1, i as u32, "in order");
        drop(guard);
    }
    drop(held);
    second.close().await;
}

/// A consumer takes two messages, delivers them and is dropped while the rest still wait in
/// its queue, never handed on: the next consumer gets exactly the rest, in order. (A queued
/// message's guard, dropped, would report it delivered and let the record pass it.)
async fn what_a_dropped_consumer_never_handed_on_comes_again(mut bus: Bus) {
    const N: usize = 12;
    const TAKEN: usize = 2;
    let producer = bus.producer().await;
    for i in 0..N {
        producer
            .publish(room("r://4", format!("r://4#{i}")))
            .await
            .unwrap();
    }
    let mut first = bus.consumer().await;
    let progress = first.progress();
    for i in 0..TAKEN {
        let (msg, guard) = next_message(&mut first, WAIT).await.expect("a message");
        assert_eq!(key_and_index(&msg).1, i as u32);
        drop(guard);
    }
    wait_until("the taken messages recorded", WAIT, || {
        progress.committed() >= TAKEN as u64
    })
    .await;
    // Dropped, not closed: its queue goes with it while its poll loop makes the last record.
    drop(first);
    let mut second = bus.consumer().await;
    for i in TAKEN..N {
        let (msg, guard) = next_message(&mut second, WAIT)
            .await
            .expect("what the first consumer never handed on comes again");
        assert_eq!(
            key_and_index(&msg).1,
            i as u32,
            "{:?}: in order",
            bus.kind()
        );
        drop(guard);
    }
    assert!(
        next_message(&mut second, QUIET).await.is_none(),
        "nothing after N"
    );
    second.close().await;
}

type Seen = Arc<Mutex<Vec<(usize, String)>>>;

/// Consumes in the background, delivering at once; records (member, body).
fn spawn_member(
    which: usize,
    mut consumer: Consumer,
    seen: Seen,
) -> (
    Progress,
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

/// Two consumers split the work: the second one joining takes a share; every message arrives
/// once (the hand-over records what was delivered before it lets go), and each room's in order.
async fn two_consumers_share_the_work(mut bus: Bus) {
    let producer = bus.producer().await;
    let seen: Seen = Arc::default();
    let publish_range = |range: std::ops::Range<usize>| {
        let producer = producer.clone();
        async move {
            for i in range {
                let r = format!("r://{}", i % 16);
                producer
                    .publish(room(&r, format!("{r}#{i}")))
                    .await
                    .unwrap();
            }
        }
    };
    let (pa, stop_a, task_a) = spawn_member(0, bus.consumer().await, seen.clone());
    publish_range(0..100).await;
    wait_until("the first member has all of phase 1", WAIT, || {
        seen.lock().unwrap().len() >= 100
    })
    .await;
    let (pb, stop_b, task_b) = spawn_member(1, bus.consumer().await, seen.clone());
    wait_until("the partitions split between the two", WAIT, || {
        pa.partitions() > 0 && pb.partitions() > 0
    })
    .await;
    let phase1 = seen.lock().unwrap().len();
    publish_range(100..300).await;
    wait_until("every message seen", WAIT, || {
        seen.lock().unwrap().len() >= 300
    })
    .await;
    tokio::time::sleep(QUIET).await;
    let seen = seen.lock().unwrap().clone();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, body) in &seen {
        *count.entry(body).or_default() += 1;
    }
    let duplicates: Vec<_> = count.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "{:?}: duplicates {duplicates:?} (phase 1 had {phase1})",
        bus.kind()
    );
    assert_eq!(count.len(), 300);
    let by_member = |m: usize| seen[phase1..].iter().filter(|(w, _)| *w == m).count();
    assert!(
        by_member(0) > 0 && by_member(1) > 0,
        "both members got a share: {} and {}",
        by_member(0),
        by_member(1)
    );
    let mut last: HashMap<String, u32> = HashMap::new();
    for (_, body) in &seen {
        let (r, i) = body.split_once('#').unwrap();
        let i: u32 = i.parse().unwrap();
        if let Some(before) = last.insert(r.to_string(), i) {
            assert!(before < i, "{r}: {i} after {before}");
        }
    }
    for (stop, task) in [(stop_a, task_a), (stop_b, task_b)] {
        let _ = stop.send(());
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }
}

/// A publish the bus cannot take (the embedded queue full, the broker stopped) fails within
/// the bus's bound with an error, and readiness says the bus cannot serve; once the bus can
/// take messages again, publishing works by itself (no new producer) and what is published
/// then is consumed.
async fn a_publish_the_bus_cannot_take_fails_within_its_bound(mut bus: Bus) {
    let producer = bus.producer().await;
    let bound = bus.refusal_bound();
    producer.ready().await.expect("ready while the bus is up");
    producer.publish(room("r://3", "r://3#0")).await.unwrap();
    let mut consumer = bus.consumer().await;
    if let Some(probe) = consumer.ready_probe() {
        probe().await.expect("the consumer's bus is ready");
    }
    let (msg, _guard) = next_message(&mut consumer, WAIT).await.expect("a message");
    assert_eq!(key_and_index(&msg).1, 0);

    // The bus stops taking messages.
    match bus.kind() {
        Kind::Embedded => {
            let (capacity, _) = bus.embedded_limits().unwrap();
            for i in 0..capacity {
                producer
                    .publish(room("r://3", format!("r://3#fill{i}")))
                    .await
                    .unwrap();
            }
        }
        Kind::Kafka | Kind::Nats => bus.stop_broker(),
    }
    let started = Instant::now();
    let refused = tokio::time::timeout(
        bound + Duration::from_secs(2),
        producer.publish(room("r://3", "r://3#refused")),
    )
    .await
    .expect("the publish answers within its bound");
    assert!(
        started.elapsed() <= bound + Duration::from_secs(1),
        "{:?}: refused after {:?}, bound {bound:?}",
        bus.kind(),
        started.elapsed()
    );
    match (bus.kind(), refused) {
        (Kind::Embedded, Err(BusError::Full(_))) => {}
        (Kind::Kafka | Kind::Nats, Err(BusError::Unavailable(why))) => {
            assert!(!why.is_empty(), "the error says why");
            let ready = tokio::time::timeout(
                imgate_bus::READY_TIMEOUT + Duration::from_secs(1),
                producer.ready(),
            )
            .await
            .expect("readiness answers within its bound");
            assert!(
                ready.is_err(),
                "{:?}: not ready with the broker down",
                bus.kind()
            );
            if let Some(probe) = consumer.ready_probe() {
                let ready = tokio::time::timeout(
                    imgate_bus::READY_TIMEOUT + Duration::from_secs(1),
                    probe(),
                )
                .await
                .expect("the consumer's readiness answers within its bound");
                assert!(ready.is_err(), "{:?}: consumer not ready", bus.kind());
            }
        }
        (kind, other) => panic!("{kind:?}: unexpected answer {other:?}"),
    }

    // The Kafka test broker keeps its log in memory: a restarted one has an empty topic, and a
    // consumer that commits its old position there skips the start of the new log. So that
    // consumer goes while the broker is down, and a fresh one reads after the restart.
    let mut consumer = if bus.kind() == Kind::Kafka {
        consumer.close().await;
        None
    } else {
        Some(consumer)
    };
    // The bus takes messages again.
    match bus.kind() {
        Kind::Embedded => {
            let (capacity, _) = bus.embedded_limits().unwrap();
            let consumer = consumer.as_mut().expect("the embedded consumer");
            for _ in 0..capacity {
                next_message(consumer, WAIT)
                    .await
                    .expect("a queued message");
            }
        }
        Kind::Kafka | Kind::Nats => bus.restart_broker(),
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match producer.publish(room("r://3", "r://3#1")).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{:?}: publishing did not recover: {e}",
                    bus.kind()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    producer.ready().await.expect("ready again");
    let mut consumer = match consumer {
        Some(consumer) => consumer,
        None => bus.consumer().await,
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (msg, _guard) = next_message(&mut consumer, left).await.unwrap_or_else(|| {
            panic!(
                "{:?}: the message published after recovery arrives",
                bus.kind()
            )
        });
        if body_of(&msg) == "r://3#1" {
            break;
        }
    }
    if let Some(probe) = consumer.ready_probe() {
        probe().await.expect("the consumer's bus is ready again");
    }
    consumer.close().await;
}

// ---------------------------------------------------------------------------------------------
// Each backend.

/// The embedded bus, with room for every message of a scenario but the one that fills it.
fn embedded() -> Bus {
    Bus::embedded(512, Duration::from_millis(200))
}

/// A broker is started on a blocking thread (it waits for its port).
async fn kafka(partitions: i32) -> Bus {
    tokio::task::spawn_blocking(move || Bus::kafka(partitions))
        .await
        .unwrap()
}

async fn nats(partitions: u32) -> Bus {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("imgate_bus=debug,async_nats=info")
        .try_init();
    tokio::task::spawn_blocking(move || Bus::nats(partitions))
        .await
        .unwrap()
}

mod on_embedded {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn order_per_key() {
        super::order_per_key(embedded()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_only_after_delivery() {
        super::acknowledged_only_after_delivery(embedded()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_the_bus_cannot_take_fails_within_its_bound() {
        super::a_publish_the_bus_cannot_take_fails_within_its_bound(embedded()).await;
    }
}

mod on_kafka {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_dropped_consumer_never_handed_on_comes_again() {
        super::what_a_dropped_consumer_never_handed_on_comes_again(kafka(1).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn order_per_key() {
        super::order_per_key(kafka(4).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_only_after_delivery() {
        super::acknowledged_only_after_delivery(kafka(1).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_consumer_s_messages_come_again() {
        super::a_dead_consumer_s_messages_come_again(kafka(2).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_consumers_share_the_work() {
        super::two_consumers_share_the_work(kafka(4).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_the_bus_cannot_take_fails_within_its_bound() {
        super::a_publish_the_bus_cannot_take_fails_within_its_bound(kafka(2).await).await;
    }
}

mod on_nats {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_dropped_consumer_never_handed_on_comes_again() {
        super::what_a_dropped_consumer_never_handed_on_comes_again(nats(1).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn order_per_key() {
        super::order_per_key(nats(4).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_only_after_delivery() {
        super::acknowledged_only_after_delivery(nats(1).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_consumer_s_messages_come_again() {
        super::a_dead_consumer_s_messages_come_again(nats(2).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_consumers_share_the_work() {
        super::two_consumers_share_the_work(nats(4).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_the_bus_cannot_take_fails_within_its_bound() {
        super::a_publish_the_bus_cannot_take_fails_within_its_bound(nats(2).await).await;
    }
}
