//! job over a real bus, Kafka (nisshi) and NATS JetStream (nats-server), both started by
//! imgate-testkit and reached over TCP: job has a message recorded as consumed (a Kafka commit,
//! a JetStream acknowledgement) only once it was written to the comet it was for. The buses
//! alone are tested in `bus/tests/`.
//!
//! A missing broker fails these tests with a message saying how to install it; nothing skips.

mod common;

use common::register;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use imgate_bus::BusConsumer;
use imgate_shared::config::Config;
use imgate_shared::frame;
use imgate_shared::link::{self, Body, Envelope};
use imgate_store::embedded::EmbeddedRegistry;
use imgate_testkit::bus::{keys, room, wait_until, Bus, WAIT};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

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

/// Keys pushes and room pushes wait on the bus while the comet they are for is down: job
/// consumes them but records nothing; once the comet is up, job writes them, in order, and
/// only then has them recorded.
async fn job_records_only_what_reached_the_comet(mut bus: Bus) {
    let producer = bus.producer().await;
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
    let consumer = bus.consumer().await;
    let progress = consumer.progress();
    assert!(
        consumer.ready_probe().is_some(),
        "a broker's consumer has a readiness probe"
    );
    let job = imgate_job::start(&config, store, Box::new(consumer)).await;
    let ready = job.bus_probe().expect("job exposes its bus's readiness");
    ready().await.expect("the broker answers");

    for i in 0..5 {
        producer
            .publish(keys("c1", format!("keys{i}")))
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
    // Several commit intervals pass: nothing was written to the comet, nothing is recorded.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(job.comet_count(), 0);
    assert_eq!(
        progress.committed(),
        0,
        "{:?}: nothing recorded before delivery",
        bus.kind()
    );
    assert_eq!(progress.outstanding(), 8);

    // The comet comes up: job connects, writes, and only then has them recorded.
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
    wait_until("all 8 recorded after delivery", WAIT, || {
        progress.committed() == 8
    })
    .await;
    assert_eq!(progress.outstanding(), 0);
    job.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_job_commits_only_what_reached_the_comet() {
    let bus = tokio::task::spawn_blocking(|| Bus::kafka(2)).await.unwrap();
    job_records_only_what_reached_the_comet(bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_job_acknowledges_only_what_reached_the_comet() {
    let bus = tokio::task::spawn_blocking(|| Bus::nats(2)).await.unwrap();
    job_records_only_what_reached_the_comet(bus).await;
}
