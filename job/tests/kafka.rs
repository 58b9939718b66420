//! job over the Kafka bus, against a real broker (nisshi, started by imgate-testkit) over TCP:
//! job commits a message only once it was written to the comet it was for. The bus alone is
//! tested in `bus/tests/kafka.rs`.
//!
//! A missing nisshi fails these tests with a message saying how to install it; nothing skips.

mod common;

use common::register;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use imgate_bus::kafka::{ConsumerProgress, KafkaConsumer, KafkaProducer};
use imgate_bus::{BusMessage, BusProducer, KeysPush, Push, RoomPush};
use imgate_shared::config::{Config, KafkaConfig};
use imgate_shared::frame;
use imgate_shared::link::{self, Body, Envelope, ShardKeys};
use imgate_store::embedded::EmbeddedRegistry;
use imgate_testkit::Kafka;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

/// A topic and group of their own for every test.
fn kafka_config(kafka: &Kafka, partitions: i32) -> KafkaConfig {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{n}", std::process::id());
    KafkaConfig {
        brokers: kafka.bootstrap(),
        topic: format!("imgate-job-test-{id}"),
        group: format!("imgate-job-test-group-{id}"),
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

fn store() -> Arc<EmbeddedRegistry> {
    Arc::new(EmbeddedRegistry::new(Duration::from_secs(60)))
}

async fn next_body(stream: &mut TcpStream, buf: &mut BytesMut) -> Body {
    let read = async {
        loop {
            match link::decode_frame(buf).unwrap() {
                // Each link starts by naming its comet shard.
                Some(env) if matches!(env.body, Some(Body::LinkHello(_))) => continue,
                Some(env) => return env,
                None => {}
            }
            let n = stream.read_buf(buf).await.unwrap();
            assert!(n > 0, "job closed the link");
        }
    };
    let env: Envelope = tokio::time::timeout(WAIT, read)
        .await
        .expect("a link frame within the deadline");
    env.body.expect("a body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_commits_only_what_reached_the_comet() {
    let kafka = Kafka::start();
    let kafka_config = kafka_config(&kafka, 2);
    let producer = tokio::time::timeout(WAIT, KafkaProducer::connect(&kafka_config))
        .await
        .expect("the producer connects within the deadline")
        .expect("the producer connects");

    // The comet's link address, with nothing listening yet: job cannot deliver.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store = store();
    register(&store, "c1", format!("127.0.0.1:{port}")).await;
    let mut config = Config::default();
    config.job.room_batch = 20;
    config.job.room_max_delay = Duration::from_millis(50);
    config.job.registry_interval = Duration::from_millis(100);
    let consumer = KafkaConsumer::connect(&kafka_config).unwrap();
    let progress = consumer.progress();
    let job = imgate_job::start(&config, store, Box::new(consumer)).await;

    let targets = vec![ShardKeys {
        shard: 0,
        keys: vec!["k1".into()],
    }];
    for i in 0..5 {
        producer
            .publish(BusMessage::new(Push::Keys(KeysPush {
                comet: "c1".into(),
                targets: targets.clone(),
                op: 1000,
                body: Bytes::from(format!("keys{i}")),
                ..Default::default()
            })))
            .await
            .unwrap();
    }
    for i in 0..3 {
        producer
            .publish(room("live://9", format!("room{i}")))
            .await
            .unwrap();
    }
    wait_until("job consumed all 8", WAIT, || job.stats().consumed == 8).await;
    // Several commit intervals pass: nothing was written to the comet, nothing is committed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(job.comet_count(), 0);
    assert_eq!(
        committed_total(&progress),
        0,
        "nothing committed before delivery: {:?}",
        progress.committed_all()
    );
    assert_eq!(progress.outstanding(), 8);

    // The comet comes up: job connects, writes, and only then commits.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let (mut stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("job connects")
        .unwrap();
    let mut buf = BytesMut::new();
    let mut keys = Vec::new();
    let mut room_bodies = Vec::new();
    while keys.len() < 5 || room_bodies.len() < 3 {
        match next_body(&mut stream, &mut buf).await {
            Body::PushKeys(p) => {
                let (_, body) = frame::decode_exact(&p.frame, 1 << 20).unwrap();
                keys.push(String::from_utf8(body.to_vec()).unwrap());
            }
            Body::PushRoom(p) => {
                assert_eq!(p.room, "live://9");
                for f in frame::split_frames(&p.frames) {
                    room_bodies.push(String::from_utf8(f.unwrap().1.to_vec()).unwrap());
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(keys, ["keys0", "keys1", "keys2", "keys3", "keys4"]);
    assert_eq!(room_bodies, ["room0", "room1", "room2"]);
    wait_until("all 8 committed after delivery", WAIT, || {
        committed_total(&progress) == 8
    })
    .await;
    assert_eq!(progress.outstanding(), 0);
    job.shutdown().await;
}
