//! What only the NATS bus does, against a real nats-server with JetStream (started by
//! imgate-testkit) over TCP: what JetStream records (stream, consumers, acknowledged floors,
//! seen from its monitoring endpoint as an operator would), partitions handed over more than
//! once, undecodable messages, and consumers that ride out a server restart, or a server that
//! comes back without its store. The contract every bus keeps is in `conformance.rs`.
//!
//! A missing nats-server fails these tests with a message saying how to install it.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use imgate_bus::nats::{partition_of, partition_subject, NatsConsumer, NatsProducer};
use imgate_bus::{BusConsumer, BusProducer};
use imgate_shared::config::NatsConfig;
use imgate_testkit::bus::{body_of, nats_config, next_message, room, wait_until, WAIT};
use imgate_testkit::Nats;
use tokio::time::Instant;

async fn server() -> Nats {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("imgate_bus=debug")
        .try_init();
    tokio::task::spawn_blocking(Nats::start).await.unwrap()
}

async fn producer(config: &NatsConfig) -> NatsProducer {
    tokio::time::timeout(WAIT, NatsProducer::connect(config))
        .await
        .expect("the producer connects within the deadline")
        .expect("the producer connects")
}

/// The `/jsz` report's figures for `stream`: its message count, and each consumer's name
/// and acknowledged stream floor.
fn jetstream_state(nats: &Nats, stream: &str) -> (u64, Vec<(String, u64)>) {
    let jsz: serde_json::Value =
        serde_json::from_str(&nats.jsz().expect("the monitoring endpoint answers")).unwrap();
    let streams = jsz["account_details"][0]["stream_detail"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(detail) = streams.iter().find(|s| s["name"] == stream) else {
        return (0, Vec::new());
    };
    let messages = detail["state"]["messages"].as_u64().unwrap_or(0);
    let mut consumers: Vec<(String, u64)> = detail["consumer_detail"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["ack_floor"]["stream_seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    consumers.sort();
    (messages, consumers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_records_the_stream_and_what_was_acknowledged() {
    let nats = server().await;
    let config = nats_config(&nats, 1);
    let producer = producer(&config).await;
    for i in 0..5 {
        producer
            .publish(room("r://1", format!("m{i}")))
            .await
            .unwrap();
    }
    let (messages, consumers) = jetstream_state(&nats, &config.stream);
    assert_eq!(messages, 5, "the pushes are in JetStream");
    assert!(consumers.is_empty(), "no job yet: {consumers:?}");
    let mut consumer = NatsConsumer::connect(&config).await.unwrap();
    let mut guards = Vec::new();
    for i in 0..5 {
        let (msg, guard) = next_message(&mut consumer, WAIT).await.unwrap();
        assert_eq!(body_of(&msg), format!("m{i}"));
        guards.push(guard);
    }
    let durable = format!("{}-0-1", config.durable);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        jetstream_state(&nats, &config.stream).1,
        vec![(durable.clone(), 0)],
        "one durable consumer for the partition, nothing acknowledged before delivery"
    );
    drop(guards.drain(..3));
    let progress = consumer.progress();
    wait_until("three acknowledged", WAIT, || progress.acked() == 3).await;
    // From outside: the acknowledged floor is the third message.
    let deadline = Instant::now() + WAIT;
    while jetstream_state(&nats, &config.stream).1 != vec![(durable.clone(), 3)] {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            jetstream_state(&nats, &config.stream)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(guards);
    wait_until("all acknowledged", WAIT, || progress.acked() == 5).await;
    consumer.close().await;
}

/// A partition that changes hands twice, the second holder dying before it acknowledged
/// anything: the third starts where the first left off, not at the start of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_over_twice_resumes_at_the_acknowledged_floor() {
    const N: usize = 10;
    const K: usize = 4;
    let nats = server().await;
    let config = nats_config(&nats, 1);
    let producer = producer(&config).await;
    // Another partition's messages interleave in the stream: sequences have gaps.
    let other = (0..100)
        .map(|i| format!("other://{i}"))
        .find(|r| partition_of(&format!("room:{r}"), 2) == 1)
        .unwrap();
    let config2 = NatsConfig {
        partitions: 2,
        ..config.clone()
    };
    let producer2 = self::producer(&config2).await;
    for i in 0..N {
        producer
            .publish(room("r://1", format!("m{i}")))
            .await
            .unwrap();
        producer2
            .publish(room(&other, format!("o{i}")))
            .await
            .unwrap();
    }
    let mut first = NatsConsumer::connect(&config).await.unwrap();
    for i in 0..K {
        let (msg, guard) = next_message(&mut first, WAIT).await.unwrap();
        assert_eq!(body_of(&msg), format!("m{i}"));
        drop(guard);
    }
    first.close().await;
    let mut second = NatsConsumer::connect(&config).await.unwrap();
    let mut held = Vec::new();
    for i in K..N {
        let (msg, guard) = next_message(&mut second, WAIT).await.unwrap();
        assert_eq!(body_of(&msg), format!("m{i}"));
        held.push(guard);
    }
    second.kill();
    let mut third = NatsConsumer::connect(&config).await.unwrap();
    for i in K..N {
        let (msg, guard) = next_message(&mut third, WAIT)
            .await
            .expect("the second holder's messages come again");
        assert_eq!(
            body_of(&msg),
            format!("m{i}"),
            "from the acknowledged floor, in order"
        );
        drop(guard);
    }
    assert!(next_message(&mut third, Duration::from_millis(700))
        .await
        .is_none());
    drop(held);
    // Only the newest generation of the partition's consumer is left.
    let consumers = jetstream_state(&nats, &config.stream).1;
    assert_eq!(consumers.len(), 1, "{consumers:?}");
    assert_eq!(consumers[0].0, format!("{}-0-3", config.durable));
    third.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_skipped_and_acknowledged() {
    let nats = server().await;
    let config = nats_config(&nats, 1);
    let producer = producer(&config).await;
    producer.publish(room("r://1", "a")).await.unwrap();
    let raw = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    raw.publish(
        partition_subject(&config, 0),
        Bytes::from_static(&[0xff, 0xff, 0xff]),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    producer.publish(room("r://1", "b")).await.unwrap();
    let mut consumer = NatsConsumer::connect(&config).await.unwrap();
    let progress = consumer.progress();
    let (a, ga) = next_message(&mut consumer, WAIT).await.unwrap();
    let (b, gb) = next_message(&mut consumer, WAIT).await.unwrap();
    assert_eq!((body_of(&a), body_of(&b)), ("a".into(), "b".into()));
    assert_eq!(gb.position(), (0, 3), "partition and stream sequence");
    assert_eq!(progress.undecodable(), 1);
    drop((ga, gb));
    wait_until("all three acknowledged", WAIT, || progress.acked() == 3).await;
    consumer.close().await;
}

/// The server stops and starts again on its store while a producer and a consumer run: both
/// recover by themselves, within seconds, and every message acknowledged before, and
/// published after, arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_ride_out_a_server_restart() {
    let mut nats = server().await;
    let config = nats_config(&nats, 2);
    let producer = producer(&config).await;
    let mut consumer = NatsConsumer::connect(&config).await.unwrap();
    let ready = consumer.ready_probe().expect("a readiness probe");
    for i in 0..5 {
        producer
            .publish(room("r://1", format!("m{i}")))
            .await
            .unwrap();
    }
    for i in 0..5 {
        let (msg, guard) = next_message(&mut consumer, WAIT).await.unwrap();
        assert_eq!(body_of(&msg), format!("m{i}"));
        drop(guard);
    }
    let progress = consumer.progress();
    wait_until("five acknowledged", WAIT, || progress.acked() == 5).await;
    tokio::task::block_in_place(|| nats.stop());
    let started = Instant::now();
    assert!(producer.publish(room("r://1", "lost")).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused at once"
    );
    assert!(ready().await.is_err(), "not ready while the server is down");
    tokio::task::block_in_place(|| nats.restart());
    let back = Instant::now();
    let mut i = 5;
    loop {
        match producer.publish(room("r://1", format!("m{i}"))).await {
            Ok(()) => break,
            Err(e) => {
                assert!(back.elapsed() < Duration::from_secs(15), "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    i += 1;
    for n in i..i + 4 {
        producer
            .publish(room("r://1", format!("m{n}")))
            .await
            .unwrap();
    }
    for n in 5..i + 4 {
        let (msg, guard) = next_message(&mut consumer, Duration::from_secs(15))
            .await
            .expect("the consumer recovers within 15 s");
        assert_eq!(body_of(&msg), format!("m{n}"), "once each, in order");
        drop(guard);
    }
    ready().await.expect("ready again");
    consumer.close().await;
}

/// The server comes back without its store (a new machine, a wiped volume): the stream, the
/// consumers and the lease bucket are gone. The producer creates the stream again, the
/// consumer takes its partitions afresh, and pushes flow again by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_comes_back_empty_is_set_up_again() {
    let mut nats = server().await;
    let config = nats_config(&nats, 2);
    let producer = producer(&config).await;
    let mut consumer = NatsConsumer::connect(&config).await.unwrap();
    producer.publish(room("r://1", "before")).await.unwrap();
    let (msg, guard) = next_message(&mut consumer, WAIT).await.unwrap();
    assert_eq!(body_of(&msg), "before");
    drop(guard);
    tokio::task::block_in_place(|| nats.restart_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    'recovered: loop {
        assert!(
            Instant::now() < deadline,
            "no push got through after the empty restart"
        );
        attempt += 1;
        let body = format!("after-{attempt}");
        if producer.publish(room("r://1", body)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        while let Some((msg, _guard)) =
            next_message(&mut consumer, Duration::from_millis(500)).await
        {
            if body_of(&msg).starts_with("after-") {
                break 'recovered;
            }
        }
    }
    for n in 0..5 {
        producer
            .publish(room("r://1", format!("final-{n}")))
            .await
            .unwrap();
    }
    let mut finals = Vec::new();
    while finals.len() < 5 {
        let (msg, _guard) = next_message(&mut consumer, WAIT)
            .await
            .expect("the finals arrive");
        let body = body_of(&msg);
        if body.starts_with("final-") {
            finals.push(body);
        }
    }
    assert_eq!(
        finals,
        (0..5).map(|n| format!("final-{n}")).collect::<Vec<_>>()
    );
    consumer.close().await;
}

/// Credentials in the URL and TLS with a private CA (`bus.nats.tls_ca_file`): the producer
/// connects and publishes; a wrong password, or no CA to trust the server's certificate,
/// is a clear error at connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_and_tls_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let args = [
        "--user".to_string(),
        "imgate".to_string(),
        "--pass".to_string(),
        "s3cret".to_string(),
        "--tls".to_string(),
        "--tlscert".to_string(),
        cert.display().to_string(),
        "--tlskey".to_string(),
        key.display().to_string(),
    ];
    let nats = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Nats::start_with(&args)
    })
    .await
    .unwrap();
    let at = |credentials: &str| format!("tls://{credentials}@127.0.0.1:{}", nats.port());
    let config = NatsConfig {
        url: at("imgate:s3cret"),
        tls_ca_file: Some(cert.clone()),
        connect_timeout: Duration::from_secs(3),
        ..nats_config(&nats, 1)
    };
    let producer = producer(&config).await;
    producer.publish(room("r://1", "over TLS")).await.unwrap();
    producer.ready().await.expect("ready over TLS");

    let wrong_password = NatsConfig {
        url: at("imgate:wrong"),
        ..config.clone()
    };
    let refused = NatsProducer::connect(&wrong_password).await;
    assert!(refused.is_err(), "a wrong password is refused");
    let untrusted = NatsConfig {
        tls_ca_file: None,
        ..config.clone()
    };
    let refused = NatsProducer::connect(&untrusted).await;
    let error = refused
        .err()
        .expect("an untrusted certificate is refused")
        .to_string();
    assert!(error.contains("nats: connecting to"), "{error}");
}
