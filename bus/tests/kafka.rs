//! What only the Kafka bus does, against a real broker (nisshi, started by imgate-testkit) over
//! TCP: its guards carry partition and offset, and an undecodable message is skipped and
//! committed with the rest. The contract every bus keeps (order, commits only of delivered
//! messages, redelivery, consumer groups, a broker outage) is in `conformance.rs`; job over
//! the bus is in `job/tests/bus.rs`.
//!
//! A missing nisshi fails these tests with a message saying how to install it; nothing skips.

use std::time::Duration;

use imgate_bus::kafka::{KafkaConsumer, KafkaProducer};
use imgate_bus::BusProducer;
use imgate_testkit::bus::{body_of, kafka_config, next_message, room, wait_until, WAIT};
use imgate_testkit::Kafka;

fn broker() -> Kafka {
    // Blocking start (waits for the port): fine, each test owns its runtime.
    Kafka::start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_carry_partition_and_offset() {
    let kafka = broker();
    let config = kafka_config(&kafka, 1);
    let producer = KafkaProducer::connect(&config).await.unwrap();
    for i in 0..3 {
        producer
            .publish(room("r://1", i.to_string()))
            .await
            .unwrap();
    }
    let mut consumer = KafkaConsumer::connect(&config).unwrap();
    for i in 0..3 {
        let (msg, guard) = next_message(&mut consumer, WAIT).await.unwrap();
        assert_eq!(body_of(&msg), i.to_string());
        assert_eq!(guard.position(), (0, i));
    }
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_skipped_and_committed() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = broker();
    let config = kafka_config(&kafka, 1);
    let producer = KafkaProducer::connect(&config).await.unwrap();
    producer.publish(room("r://1", "a")).await.unwrap();
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
    producer.publish(room("r://1", "b")).await.unwrap();
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
