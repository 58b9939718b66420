//! job over real sockets: a fake comet registers in the store, listens on a real TCP port, and
//! reads the link frames job writes to it.

mod common;

use common::register;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use imgate_bus::{
    self, BroadcastPush, BusMessage, BusProducer, EmbeddedProducer, KeysPush, Push, RoomPush,
};
use imgate_job::JobHandle;
use imgate_shared::config::Config;
use imgate_shared::frame;
use imgate_shared::link::{self, Body, Envelope, ShardKeys};
use imgate_store::embedded::EmbeddedRegistry;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(5);
const ROOM_DELAY: Duration = Duration::from_millis(300);

fn store() -> Arc<EmbeddedRegistry> {
    Arc::new(EmbeddedRegistry::new(Duration::from_secs(60)))
}

fn config(room_delay: Duration) -> Config {
    let mut config = Config::default();
    config.job.room_batch = 20;
    config.job.room_max_delay = room_delay;
    config.job.registry_interval = Duration::from_millis(50);
    config
}

/// The comet's end of one link connection, opened for one of its shards.
struct FakeComet {
    stream: TcpStream,
    buf: BytesMut,
    shard: u32,
}

impl FakeComet {
    /// Accepts a link and reads its first message, the hello naming the shard it is for.
    async fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("job connects within the deadline")
            .unwrap();
        let mut comet = FakeComet {
            stream,
            buf: BytesMut::new(),
            shard: u32::MAX,
        };
        let Body::LinkHello(hello) = comet.next().await else {
            panic!("a link must start with its hello");
        };
        comet.shard = hello.shard;
        comet
    }

    async fn next(&mut self) -> Body {
        let read = async {
            loop {
                if let Some(env) = link::decode_frame(&mut self.buf).unwrap() {
                    return env;
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "job closed the link");
            }
        };
        let env: Envelope = tokio::time::timeout(WAIT, read)
            .await
            .expect("a link frame within the deadline");
        // One-way: the id is job's stamp, which the comet echoes in its load reports.
        env.body.expect("a body")
    }
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn publish(bus: &EmbeddedProducer, push: Push) {
    bus.publish(BusMessage::new(push)).await.unwrap();
}

async fn start_with_comet(
    room_delay: Duration,
) -> (JobHandle, EmbeddedProducer, TcpListener, FakeComet) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = store();
    register(&store, "c1", listener.local_addr().unwrap().to_string()).await;
    let (producer, consumer) = imgate_bus::embedded(1024, Duration::from_millis(100));
    let job = imgate_job::start(&config(room_delay), store, Box::new(consumer)).await;
    let comet = FakeComet::accept(&listener).await;
    wait_for("the link to be up", || job.comet_count() == 1).await;
    (job, producer, listener, comet)
}

#[tokio::test]
async fn keys_push_arrives_as_push_keys_with_one_goim_frame() {
    let (job, bus, _listener, mut comet) = start_with_comet(ROOM_DELAY).await;
    let targets = vec![ShardKeys {
        shard: 3,
        keys: vec!["k1".into(), "k2".into()],
    }];
    publish(
        &bus,
        Push::Keys(KeysPush {
            comet: "c1".into(),
            targets: targets.clone(),
            op: 1000,
            body: Bytes::from_static(b"hello"),
            ..Default::default()
        }),
    )
    .await;
    let Body::PushKeys(push) = comet.next().await else {
        panic!("expected PushKeys");
    };
    assert_eq!(push.targets, targets);
    assert_eq!(push.op, 1000);
    assert_eq!(push.frame, frame::encode(1, 1000, 0, b"hello"));
    let (header, body) = frame::decode_exact(&push.frame, 1 << 20).unwrap();
    assert_eq!(
        (header.ver, header.op, header.seq, body),
        (1, 1000, 0, &b"hello"[..])
    );

    // A comet nobody registered: counted, not delivered anywhere.
    publish(
        &bus,
        Push::Keys(KeysPush {
            comet: "ghost".into(),
            targets: vec![],
            op: 1,
            body: Bytes::new(),
            ..Default::default()
        }),
    )
    .await;
    wait_for("the ghost push to be counted", || {
        job.stats().undeliverable == 1
    })
    .await;
    assert_eq!(job.stats().keys_pushes, 1);
    job.shutdown().await;
}

#[tokio::test]
async fn room_messages_arrive_in_ordered_batches() {
    let (job, bus, _listener, mut comet) = start_with_comet(ROOM_DELAY).await;
    let started = Instant::now();
    for i in 0..25 {
        publish(
            &bus,
            Push::Room(RoomPush {
                room: "live://1".into(),
                op: 1000,
                body: Bytes::from(format!("m{i}")),
                ..Default::default()
            }),
        )
        .await;
    }
    let mut bodies = Vec::new();
    let mut counts = Vec::new();
    while bodies.len() < 25 {
        let Body::PushRoom(batch) = comet.next().await else {
            panic!("expected PushRoom");
        };
        assert_eq!(batch.room, "live://1");
        let frames: Vec<_> = frame::split_frames(&batch.frames)
            .map(|f| f.expect("well-formed frames"))
            .collect();
        assert_eq!(frames.len() as u32, batch.count);
        for (header, body) in frames {
            assert_eq!((header.ver, header.op, header.seq), (1, 1000, 0));
            bodies.push(String::from_utf8(body.to_vec()).unwrap());
        }
        counts.push(batch.count);
    }
    assert_eq!(counts, vec![20, 5]);
    assert!(
        started.elapsed() >= ROOM_DELAY - Duration::from_millis(20),
        "the partial batch waited for the max delay"
    );
    let expected: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected);
    let stats = job.stats();
    assert_eq!((stats.room_messages, stats.room_batches), (25, 2));
    job.shutdown().await;
}

#[tokio::test]
async fn broadcast_goes_to_every_comet_with_its_share_of_the_speed() {
    let (job, bus, _listener, mut comet) = start_with_comet(ROOM_DELAY).await;
    publish(
        &bus,
        Push::All(BroadcastPush {
            op: 7,
            body: Bytes::from_static(b"all"),
            speed: 100,
        }),
    )
    .await;
    let Body::Broadcast(b) = comet.next().await else {
        panic!("expected Broadcast");
    };
    assert_eq!((b.op, b.speed), (7, 100));
    assert_eq!(b.frame, frame::encode(1, 7, 0, b"all"));
    job.shutdown().await;
}

#[tokio::test]
async fn broadcast_with_no_comet_is_counted_and_job_keeps_running() {
    let (producer, consumer) = imgate_bus::embedded(16, Duration::from_millis(100));
    let job = imgate_job::start(&config(ROOM_DELAY), store(), Box::new(consumer)).await;
    let all = || {
        Push::All(BroadcastPush {
            op: 1,
            body: Bytes::from_static(b"x"),
            speed: 10,
        })
    };
    publish(&producer, all()).await;
    wait_for("the broadcast to be counted", || {
        job.stats().undeliverable == 1
    })
    .await;
    publish(&producer, all()).await;
    wait_for("the second broadcast", || job.stats().undeliverable == 2).await;
    assert_eq!(job.stats().consumed, 2);
    job.shutdown().await;
}

#[tokio::test]
async fn link_reconnects_and_delivers_what_was_queued() {
    let (job, bus, listener, comet) = start_with_comet(ROOM_DELAY).await;
    // The comet goes away entirely: reconnects are refused until it listens again.
    let addr = listener.local_addr().unwrap();
    drop(listener);
    drop(comet);
    wait_for("job to notice the closed link", || job.comet_count() == 0).await;
    publish(
        &bus,
        Push::Keys(KeysPush {
            comet: "c1".into(),
            targets: vec![ShardKeys {
                shard: 0,
                keys: vec!["k".into()],
            }],
            op: 3,
            body: Bytes::from_static(b"after"),
            ..Default::default()
        }),
    )
    .await;
    wait_for("the push to be queued", || job.stats().keys_pushes == 1).await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let mut comet = FakeComet::accept(&listener).await;
    let Body::PushKeys(push) = comet.next().await else {
        panic!("expected PushKeys");
    };
    assert_eq!(push.frame, frame::encode(1, 3, 0, b"after"));
    job.shutdown().await;
}

#[tokio::test]
async fn shutdown_flushes_pending_room_batches() {
    let (job, bus, _listener, mut comet) = start_with_comet(Duration::from_secs(30)).await;
    for i in 0..3 {
        publish(
            &bus,
            Push::Room(RoomPush {
                room: "live://2".into(),
                op: 5,
                body: Bytes::from(vec![i]),
                ..Default::default()
            }),
        )
        .await;
    }
    wait_for("the room messages to be consumed", || {
        job.stats().room_messages == 3
    })
    .await;
    tokio::time::timeout(WAIT, job.shutdown())
        .await
        .expect("shutdown completes");
    let Body::PushRoom(batch) = comet.next().await else {
        panic!("expected PushRoom");
    };
    assert_eq!(batch.count, 3);
    // Then the link closes.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, comet.stream.read_to_end(&mut rest))
        .await
        .expect("link closed within the deadline")
        .unwrap();
    assert_eq!(n, 0);
}

/// job opens one link per comet shard: each shard's keys travel on that shard's link, and a
/// room batch or a broadcast goes to every shard's link with the shard's share of the speed.
#[tokio::test]
async fn each_comet_shard_has_its_own_link() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = store();
    common::register_shards(&store, "c1", listener.local_addr().unwrap().to_string(), 2).await;
    let (bus, consumer) = imgate_bus::embedded(1024, Duration::from_millis(100));
    let job = imgate_job::start(
        &config(Duration::from_millis(10)),
        store,
        Box::new(consumer),
    )
    .await;
    let mut links = [
        FakeComet::accept(&listener).await,
        FakeComet::accept(&listener).await,
    ];
    links.sort_by_key(|l| l.shard);
    assert_eq!((links[0].shard, links[1].shard), (0, 1));
    wait_for("the comet to count as linked", || job.comet_count() == 1).await;

    publish(
        &bus,
        Push::Keys(KeysPush {
            comet: "c1".into(),
            targets: vec![
                ShardKeys {
                    shard: 1,
                    keys: vec!["on-1".into()],
                },
                ShardKeys {
                    shard: 0,
                    keys: vec!["on-0".into()],
                },
            ],
            op: 1000,
            body: Bytes::from_static(b"k"),
            ..Default::default()
        }),
    )
    .await;
    for link in &mut links {
        let Body::PushKeys(push) = link.next().await else {
            panic!("expected PushKeys on shard {}", link.shard);
        };
        assert_eq!(push.targets.len(), 1);
        assert_eq!(push.targets[0].shard, link.shard);
        assert_eq!(push.targets[0].keys, [format!("on-{}", link.shard)]);
    }

    publish(
        &bus,
        Push::All(BroadcastPush {
            op: 7,
            body: Bytes::from_static(b"all"),
            speed: 100,
        }),
    )
    .await;
    for link in &mut links {
        let Body::Broadcast(b) = link.next().await else {
            panic!("expected Broadcast on shard {}", link.shard);
        };
        assert_eq!(b.speed, 50, "each shard paces its half");
    }
    job.shutdown().await;
}
