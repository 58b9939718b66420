//! The Redis store against real Redis servers over TCP: one conformance suite run on a single node
//! and on a 3-node Redis Cluster, plus outage and recovery on a single node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use imgate_shared::config::{RedisConfig, Retention, StoreBackend, StoreConfig};
use imgate_shared::link::{CometInfo, ConnRef};
use imgate_store::redis::RedisStore;
use imgate_store::{
    Admit, InboxState, MessageStore, OnlineReport, RegistryStore, Session, SessionStore,
    StoreError, StoredMessage, UserConn,
};
use imgate_testkit::{Redis, RedisCluster};

const LONG: Duration = Duration::from_secs(60);

fn conn(comet: &str, id: u64) -> ConnRef {
    ConnRef {
        comet: comet.into(),
        shard: (id % 4) as u32,
        conn_id: id,
    }
}

fn session(mid: i64, key: &str, id: u64) -> Session {
    Session {
        mid,
        key: key.into(),
        conn: conn("c1", id),
    }
}

fn info(id: &str, weight: u32) -> CometInfo {
    CometInfo {
        id: id.into(),
        link_addr: format!("{id}:3109"),
        weight,
        shards: 2,
        ..Default::default()
    }
}

fn report(comet: CometInfo, shard: u32, conns: u32, rooms: &[(&str, u32)]) -> OnlineReport {
    OnlineReport {
        comet,
        shard,
        conn_count: conns,
        ip_count: 1,
        rooms: rooms.iter().map(|(r, n)| ((*r).into(), *n)).collect(),
        lag_us: conns * 10,
    }
}

/// A store config with a prefix of its own, so stores sharing a server never see each other.
fn config(
    urls: Vec<String>,
    cluster: bool,
    session_ttl: Duration,
    online_ttl: Duration,
) -> StoreConfig {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    StoreConfig {
        session_ttl,
        online_ttl,
        backend: StoreBackend::Redis(RedisConfig {
            urls,
            cluster,
            prefix: format!(
                "t{}-{}:",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            timeout: Duration::from_millis(500),
        }),
        ..StoreConfig::default()
    }
}

/// The Redis options of a test config.
fn redis_of(config: &StoreConfig) -> &RedisConfig {
    match &config.backend {
        StoreBackend::Redis(redis) => redis,
        StoreBackend::Embedded => unreachable!("test configs name Redis"),
    }
}

/// A store config (own prefix) with these inbox and room-history retentions.
fn log_config(
    urls: Vec<String>,
    cluster: bool,
    inbox: Retention,
    history: Retention,
) -> StoreConfig {
    let mut cfg = config(urls, cluster, LONG, LONG);
    cfg.inbox_max_messages = inbox.max_messages;
    cfg.inbox_ttl = inbox.ttl;
    cfg.room_history_max_messages = history.max_messages;
    cfg.room_history_ttl = history.ttl;
    cfg
}

async fn connect(config: &StoreConfig) -> RedisStore {
    RedisStore::connect(redis_of(config), config)
        .await
        .unwrap_or_else(|e| panic!("connect to {:?}: {e}", redis_of(config).urls))
}

fn sorted(mut v: Vec<Session>) -> Vec<Session> {
    v.sort_by(|a, b| a.key.cmp(&b.key));
    v
}

/// The store contract, run against any Redis deployment.
async fn conformance(urls: Vec<String>, cluster: bool) {
    let s = connect(&config(urls.clone(), cluster, LONG, LONG)).await;

    // Lookup by key and by user, two devices of one user and a guest (mid 0).
    let a = session(1, "dev-a", 1);
    let b = session(1, "dev-b", 2);
    let guest = session(0, "guest", 3);
    for x in [&a, &b, &guest] {
        s.add_session(x).await.unwrap();
    }
    assert_eq!(
        s.sessions_by_keys(&["dev-b".into(), "nope".into(), "dev-a".into()])
            .await
            .unwrap(),
        vec![b.clone(), a.clone()],
        "by key: known keys in order, unknown left out"
    );
    assert_eq!(
        sorted(s.sessions_by_mids(&[1]).await.unwrap()),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        s.sessions_by_keys(&["guest".into()]).await.unwrap(),
        vec![guest.clone()]
    );
    assert!(s.sessions_by_mids(&[0, 99]).await.unwrap().is_empty());
    assert!(s.sessions_by_keys(&[]).await.unwrap().is_empty());
    assert!(s.sessions_by_mids(&[]).await.unwrap().is_empty());

    // A replaced connection's late disconnect keeps its successor's session.
    let a2 = session(1, "dev-a", 11);
    s.add_session(&a2).await.unwrap();
    assert!(!s.remove_session(1, "dev-a", &a.conn).await.unwrap());
    assert_eq!(
        s.sessions_by_keys(&["dev-a".into()]).await.unwrap(),
        vec![a2.clone()]
    );
    assert_eq!(
        sorted(s.sessions_by_mids(&[1]).await.unwrap()),
        vec![a2.clone(), b.clone()]
    );
    assert!(s.remove_session(1, "dev-a", &a2.conn).await.unwrap());
    assert!(s
        .sessions_by_keys(&["dev-a".into()])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.sessions_by_mids(&[1]).await.unwrap(), vec![b.clone()]);
    assert!(
        !s.remove_session(1, "dev-a", &a2.conn).await.unwrap(),
        "second remove"
    );

    // A key taken by another user leaves the first user's index.
    let taken = session(2, "dev-b", 21);
    s.add_session(&taken).await.unwrap();
    assert!(s.sessions_by_mids(&[1]).await.unwrap().is_empty());
    assert_eq!(s.sessions_by_mids(&[2]).await.unwrap(), vec![taken.clone()]);
    assert_eq!(
        s.sessions_by_mids(&[1, 2]).await.unwrap(),
        vec![taken.clone()]
    );
    // The first user's late disconnect does not remove it either.
    assert!(!s.remove_session(1, "dev-b", &b.conn).await.unwrap());
    assert_eq!(
        s.sessions_by_keys(&["dev-b".into()]).await.unwrap(),
        vec![taken.clone()]
    );

    // Racing disconnect of the old connection and connect of the new one: the new one survives.
    for round in 0..30u64 {
        let key = format!("race-{round}");
        let old = session(5, &key, 100 + round);
        let new = session(5, &key, 200 + round);
        s.add_session(&old).await.unwrap();
        let (removed, added) =
            tokio::join!(s.remove_session(5, &key, &old.conn), s.add_session(&new));
        removed.unwrap();
        added.unwrap();
        assert_eq!(
            s.sessions_by_keys(std::slice::from_ref(&key))
                .await
                .unwrap(),
            vec![new.clone()]
        );
        assert!(
            s.sessions_by_mids(&[5]).await.unwrap().contains(&new),
            "round {round}"
        );
    }

    // Refresh of a live session by its own connection keeps it; by a replaced one changes nothing.
    s.refresh_session(&taken).await.unwrap();
    s.refresh_session(&b).await.unwrap();
    assert_eq!(
        s.sessions_by_keys(&["dev-b".into()]).await.unwrap(),
        vec![taken.clone()]
    );
    assert!(s.sessions_by_mids(&[1]).await.unwrap().is_empty());

    // Expiry and refresh, with a short session TTL.
    let short = connect(&config(
        urls.clone(),
        cluster,
        Duration::from_millis(800),
        LONG,
    ))
    .await;
    let e = session(3, "k3", 31);
    short.add_session(&e).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    short.refresh_session(&e).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        short.sessions_by_mids(&[3]).await.unwrap(),
        vec![e.clone()],
        "refresh extends"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        short
            .sessions_by_keys(&["k3".into()])
            .await
            .unwrap()
            .is_empty(),
        "expired"
    );
    assert!(
        short.sessions_by_mids(&[3]).await.unwrap().is_empty(),
        "expired"
    );
    short.refresh_session(&e).await.unwrap();
    assert_eq!(
        short.sessions_by_mids(&[3]).await.unwrap(),
        vec![e.clone()],
        "re-created"
    );
    assert_eq!(
        short.sessions_by_keys(&["k3".into()]).await.unwrap(),
        vec![e.clone()]
    );
    // It expires again and another user's connection takes the key: refresh must not steal it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let thief = session(4, "k3", 41);
    short.add_session(&thief).await.unwrap();
    short.refresh_session(&e).await.unwrap();
    assert_eq!(
        short.sessions_by_keys(&["k3".into()]).await.unwrap(),
        vec![thief.clone()]
    );
    assert!(short.sessions_by_mids(&[3]).await.unwrap().is_empty());
    assert_eq!(
        short.sessions_by_mids(&[4]).await.unwrap(),
        vec![thief.clone()]
    );

    // Room counts summed across shards and comets; comets grouped.
    let o = connect(&config(urls.clone(), cluster, LONG, LONG)).await;
    assert!(o.room_counts().await.unwrap().is_empty());
    assert!(o.comets().await.unwrap().is_empty());
    o.report_online(report(
        info("a", 1),
        0,
        2,
        &[("live://1", 2), ("live://2", 7)],
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    o.report_online(report(info("b", 1), 0, 4, &[("live://1", 4)]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    o.report_online(report(info("a", 2), 1, 3, &[("live://1", 3)]))
        .await
        .unwrap();
    let counts = o.room_counts().await.unwrap();
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(counts["live://1"], 9);
    assert_eq!(counts["live://2"], 7);
    let comets = o.comets().await.unwrap();
    assert_eq!(comets.len(), 2);
    assert_eq!(
        comets[0].info,
        info("a", 2),
        "the newest report's info wins"
    );
    // Every shard reports its comet's distinct addresses: not summed.
    assert_eq!((comets[0].conn_count, comets[0].ip_count), (5, 1));
    assert_eq!(comets[1].info, info("b", 1));
    assert_eq!((comets[1].conn_count, comets[1].ip_count), (4, 1));
    assert_eq!(
        (comets[0].lag_us, comets[1].lag_us),
        (30, 40),
        "a comet's lag is its busiest shard's"
    );
    assert!(comets[0].updated_ms >= comets[1].updated_ms);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        comets[0].updated_ms.abs_diff(now_ms) < 10_000,
        "updated_ms is unix ms"
    );

    // A shard's report replaces its previous one: the emptied room disappears.
    o.report_online(report(info("a", 2), 0, 1, &[]))
        .await
        .unwrap();
    let counts = o.room_counts().await.unwrap();
    assert_eq!(counts.get("live://2"), None, "{counts:?}");
    assert_eq!(counts["live://1"], 7);
    assert_eq!(o.comets().await.unwrap()[0].conn_count, 4);

    // Reports older than online_ttl are ignored.
    let ol = connect(&config(urls, cluster, LONG, Duration::from_millis(600))).await;
    ol.report_online(report(info("gone", 1), 0, 5, &[("r", 5)]))
        .await
        .unwrap();
    ol.report_online(report(info("gone", 1), 1, 5, &[("r", 5)]))
        .await
        .unwrap();
    assert_eq!(ol.room_counts().await.unwrap()["r"], 10);
    tokio::time::sleep(Duration::from_millis(400)).await;
    ol.report_online(report(info("gone", 1), 1, 5, &[("r", 5)]))
        .await
        .unwrap();
    ol.report_online(report(info("alive", 1), 0, 1, &[("r", 1)]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // gone/0 is 700 ms old, gone/1 and alive/0 300 ms.
    assert_eq!(ol.room_counts().await.unwrap()["r"], 6);
    let comets = ol.comets().await.unwrap();
    assert_eq!(comets.len(), 2);
    assert_eq!(comets[0].info.id, "alive");
    assert_eq!(comets[1].conn_count, 5);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        ol.room_counts().await.unwrap().is_empty(),
        "every report is stale"
    );
    assert!(ol.comets().await.unwrap().is_empty());
}

fn seqs(v: &[StoredMessage]) -> Vec<u64> {
    v.iter().map(|m| m.seq).collect()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Every key under `prefix` on every node (each node asked with a plain inline KEYS).
fn keys_under(urls: &[String], prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for url in urls {
        let reply =
            imgate_testkit::redis_command(port_of(url), &format!("KEYS {prefix}*")).unwrap();
        assert!(reply.starts_with('*'), "KEYS: {reply}");
        out.extend(
            reply
                .split("\r\n")
                .filter(|l| l.starts_with(prefix))
                .map(str::to_owned),
        );
    }
    out.sort();
    out
}

/// The inbox and room-history contract (the same as the embedded store's), run against any
/// Redis deployment.
async fn log_conformance(urls: Vec<String>, cluster: bool) {
    let keep3 = Retention {
        max_messages: 3,
        ttl: LONG,
    };
    let keep2 = Retention {
        max_messages: 2,
        ttl: LONG,
    };
    let s = connect(&log_config(urls.clone(), cluster, keep3, keep2)).await;

    // Sequences 1..n; the inbox keeps the newest 3.
    for i in 1..=5u64 {
        let seq = s
            .inbox_append(7, 1000 + i as i32, bytes::Bytes::from(format!("m{i}")))
            .await
            .unwrap();
        assert_eq!(seq, i);
    }
    let all = s.inbox_read(7, 0, 10).await.unwrap();
    assert_eq!(
        all,
        (3..=5u64)
            .map(|i| StoredMessage {
                seq: i,
                op: 1000 + i as i32,
                body: bytes::Bytes::from(format!("m{i}")),
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(seqs(&s.inbox_read(7, 3, 1).await.unwrap()), vec![4]);
    assert_eq!(seqs(&s.inbox_read(7, 1, 2).await.unwrap()), vec![3, 4]);
    assert_eq!(seqs(&s.inbox_read(7, 4, 10).await.unwrap()), vec![5]);
    assert!(s.inbox_read(7, 5, 10).await.unwrap().is_empty());
    assert!(s.inbox_read(7, 0, 0).await.unwrap().is_empty());
    assert_eq!(
        s.inbox_state(7).await.unwrap(),
        InboxState {
            last_seq: 5,
            acked_seq: 0,
            pending: 3
        }
    );
    // Acks never move back and drop what they acknowledge.
    s.inbox_ack(7, 4).await.unwrap();
    s.inbox_ack(7, 2).await.unwrap();
    assert_eq!(
        s.inbox_state(7).await.unwrap(),
        InboxState {
            last_seq: 5,
            acked_seq: 4,
            pending: 1
        }
    );
    assert_eq!(seqs(&s.inbox_read(7, 0, 10).await.unwrap()), vec![5]);
    // An `after` past the end (the inbox started again) reads from the start.
    assert_eq!(seqs(&s.inbox_read(7, 99, 10).await.unwrap()), vec![5]);
    assert_eq!(seqs(&s.inbox_read(7, u64::MAX, 10).await.unwrap()), vec![5]);
    // An ack beyond the last sequence acknowledges up to the last only.
    s.inbox_ack(7, 100).await.unwrap();
    assert_eq!(
        s.inbox_state(7).await.unwrap(),
        InboxState {
            last_seq: 5,
            acked_seq: 5,
            pending: 0
        }
    );
    assert!(s.inbox_read(7, 0, 10).await.unwrap().is_empty());
    assert_eq!(s.inbox_append(7, 1, bytes::Bytes::new()).await.unwrap(), 6);
    assert_eq!(
        s.inbox_state(7).await.unwrap(),
        InboxState {
            last_seq: 6,
            acked_seq: 5,
            pending: 1
        }
    );
    assert_eq!(seqs(&s.inbox_read(7, 5, 10).await.unwrap()), vec![6]);

    // Binary bodies survive, with any op.
    let every_byte: Vec<u8> = (0..=255u8).collect();
    for (op, body) in [
        (i32::MIN, bytes::Bytes::from(every_byte.clone())),
        (-1, bytes::Bytes::new()),
        (i32::MAX, bytes::Bytes::from_static(b"1:2:3:\r\n\0")),
    ] {
        let seq = s.inbox_append(70, op, body.clone()).await.unwrap();
        let got = s.inbox_read(70, seq - 1, 1).await.unwrap();
        assert_eq!(got, vec![StoredMessage { seq, op, body }]);
    }

    // Room histories: independent per room, their own retention, no acks.
    let rooms = ["live://1", "live://2", "odd}{room"];
    for (n, room) in rooms.iter().enumerate() {
        for i in 1..=(n as u64 + 1) * 2 {
            assert_eq!(
                s.room_history_append(room, 9, bytes::Bytes::from(format!("{room}#{i}")))
                    .await
                    .unwrap(),
                i,
                "{room}"
            );
        }
    }
    assert_eq!(
        s.room_history_read("live://1", 0, 10).await.unwrap(),
        vec![
            StoredMessage {
                seq: 1,
                op: 9,
                body: bytes::Bytes::from("live://1#1")
            },
            StoredMessage {
                seq: 2,
                op: 9,
                body: bytes::Bytes::from("live://1#2")
            }
        ]
    );
    assert_eq!(
        seqs(&s.room_history_read("live://2", 0, 10).await.unwrap()),
        vec![3, 4]
    );
    assert_eq!(
        seqs(&s.room_history_read("odd}{room", 4, 10).await.unwrap()),
        vec![5, 6]
    );
    assert_eq!(
        seqs(&s.room_history_read("odd}{room", 5, 10).await.unwrap()),
        vec![6]
    );
    assert_eq!(
        seqs(&s.room_history_read("live://2", 99, 1).await.unwrap()),
        vec![3]
    );
    assert!(s.room_history_read("", 0, 10).await.unwrap().is_empty());
    // A room and a user with the same id do not share anything.
    assert_eq!(
        s.room_history_append("7", 1, bytes::Bytes::new())
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.inbox_state(7).await.unwrap().last_seq, 6);

    // Unknown users and rooms cost nothing: no key is created by reading, acking or asking.
    let ucfg = log_config(urls.clone(), cluster, keep3, keep2);
    let prefix = redis_of(&ucfg).prefix.clone();
    let u = connect(&ucfg).await;
    assert_eq!(u.inbox_state(8).await.unwrap(), InboxState::default());
    assert!(u.inbox_read(8, 0, 10).await.unwrap().is_empty());
    assert!(u.inbox_read(8, 5, 10).await.unwrap().is_empty());
    u.inbox_ack(8, 10).await.unwrap();
    assert_eq!(u.inbox_state(8).await.unwrap(), InboxState::default());
    assert!(u
        .room_history_read("live://nobody", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(keys_under(&urls, &prefix), Vec::<String>::new());
    assert_eq!(u.inbox_append(8, 1, bytes::Bytes::new()).await.unwrap(), 1);
    assert_eq!(
        keys_under(&urls, &prefix),
        vec![
            format!("{prefix}inbox:{{8}}"),
            format!("{prefix}inbox:{{8}}:m")
        ]
    );

    // Concurrent appends from several tasks get distinct consecutive sequences.
    let big = Retention {
        max_messages: 1000,
        ttl: LONG,
    };
    let c = std::sync::Arc::new(connect(&log_config(urls.clone(), cluster, big, big)).await);
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..25u8 {
                    got.push(
                        c.inbox_append(11, t, bytes::Bytes::from(vec![i]))
                            .await
                            .unwrap(),
                    );
                    got.push(
                        c.room_history_append("live://busy", t, bytes::Bytes::from(vec![i]))
                            .await
                            .unwrap(),
                    );
                }
                got
            })
        })
        .collect();
    let mut inbox_seqs = Vec::new();
    let mut room_seqs = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        for pair in got.chunks(2) {
            inbox_seqs.push(pair[0]);
            room_seqs.push(pair[1]);
        }
    }
    inbox_seqs.sort_unstable();
    room_seqs.sort_unstable();
    assert_eq!(inbox_seqs, (1..=100).collect::<Vec<u64>>());
    assert_eq!(room_seqs, (1..=100).collect::<Vec<u64>>());
    let stored = c.inbox_read(11, 0, 1000).await.unwrap();
    assert_eq!(seqs(&stored), (1..=100).collect::<Vec<u64>>());
    assert_eq!(
        seqs(&c.room_history_read("live://busy", 0, 1000).await.unwrap()),
        (1..=100).collect::<Vec<u64>>()
    );
    assert_eq!(c.inbox_state(11).await.unwrap().pending, 100);

    // Age: messages older than the TTL are dropped; the whole log (and its sequence) expires
    // a TTL after its last append.
    let short = Retention {
        max_messages: 10,
        ttl: Duration::from_millis(1000),
    };
    let ecfg = log_config(urls.clone(), cluster, short, short);
    let eprefix = redis_of(&ecfg).prefix.clone();
    let e = connect(&ecfg).await;
    let t0 = Instant::now();
    assert_eq!(e.inbox_append(1, 1, "a".into()).await.unwrap(), 1);
    assert_eq!(e.room_history_append("r", 1, "a".into()).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(500).saturating_sub(t0.elapsed())).await;
    let t1 = Instant::now();
    assert_eq!(e.inbox_append(1, 1, "b".into()).await.unwrap(), 2);
    assert_eq!(e.room_history_append("r", 1, "b".into()).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(t0.elapsed())).await;
    // "a" is over 1 s old, "b" about 0.6 s.
    assert!(t1.elapsed() < Duration::from_millis(950), "test too slow");
    assert_eq!(
        e.inbox_read(1, 0, 10).await.unwrap(),
        vec![StoredMessage {
            seq: 2,
            op: 1,
            body: "b".into()
        }]
    );
    assert_eq!(
        e.inbox_state(1).await.unwrap(),
        InboxState {
            last_seq: 2,
            acked_seq: 0,
            pending: 1
        }
    );
    assert_eq!(
        seqs(&e.room_history_read("r", 0, 10).await.unwrap()),
        vec![2]
    );
    assert!(t1.elapsed() < Duration::from_millis(950), "test too slow");
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(t1.elapsed())).await;
    assert_eq!(e.inbox_state(1).await.unwrap(), InboxState::default());
    assert!(e.inbox_read(1, 0, 10).await.unwrap().is_empty());
    assert!(e.room_history_read("r", 0, 10).await.unwrap().is_empty());
    assert_eq!(keys_under(&urls, &eprefix), Vec::<String>::new(), "expired");
    assert_eq!(
        e.inbox_append(1, 1, "c".into()).await.unwrap(),
        1,
        "restarts"
    );
    assert_eq!(e.room_history_append("r", 1, "c".into()).await.unwrap(), 1);
    assert_eq!(seqs(&e.inbox_read(1, 2, 10).await.unwrap()), vec![1]);
}

fn user_conn(key: &str, id: u64, platform: &str) -> UserConn {
    UserConn {
        key: key.into(),
        conn: conn("c1", id),
        platform: platform.into(),
        room: "live://9".into(),
        connected_ms: 0,
    }
}

/// Users' connections: presence, the per-user limit (refuse or kick the oldest), decided in
/// one step however many connects race, and entries that expire unless refreshed.
async fn user_conns_conformance(urls: Vec<String>, cluster: bool) {
    let s = std::sync::Arc::new(connect(&config(urls.clone(), cluster, LONG, LONG)).await);
    for (i, key) in ["a", "b"].into_iter().enumerate() {
        assert_eq!(
            s.admit_conn(7, &user_conn(key, i as u64, "web"), 2, false)
                .await
                .unwrap(),
            Admit::Admitted { kicked: vec![] }
        );
    }
    assert_eq!(
        s.admit_conn(7, &user_conn("c", 3, "web"), 2, false)
            .await
            .unwrap(),
        Admit::Refused { held: 2 }
    );
    // The same key again replaces its entry.
    assert!(matches!(
        s.admit_conn(7, &user_conn("a", 4, "ios"), 2, false)
            .await
            .unwrap(),
        Admit::Admitted { .. }
    ));
    let Admit::Admitted { kicked } = s
        .admit_conn(7, &user_conn("c", 5, "web"), 2, true)
        .await
        .unwrap()
    else {
        panic!("refused although asked to kick");
    };
    assert_eq!(kicked.len(), 1);
    assert_eq!((kicked[0].key.as_str(), kicked[0].conn.conn_id), ("b", 1));
    let live = s.user_conns(&[7, 8]).await.unwrap();
    let keys: Vec<(&str, &str, &str)> = live[0]
        .iter()
        .map(|c| (c.key.as_str(), c.platform.as_str(), c.room.as_str()))
        .collect();
    assert_eq!(keys, [("a", "ios", "live://9"), ("c", "web", "live://9")]);
    assert!(live[1].is_empty());
    assert!(live[0][0].connected_ms < live[0][1].connected_ms);
    // Removal compares the connection.
    assert_eq!(s.remove_conn(7, "a", &conn("c1", 0)).await.unwrap(), None);
    assert_eq!(
        s.remove_conn(7, "a", &conn("c1", 4))
            .await
            .unwrap()
            .map(|c| c.platform),
        Some("ios".into())
    );

    // Twenty connects of one user at once, at most three: exactly three get in.
    let racers: Vec<_> = (0..20u64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.admit_conn(9, &user_conn(&format!("r{i}"), 100 + i, "web"), 3, false)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for r in racers {
        if matches!(r.await.unwrap(), Admit::Admitted { .. }) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
    assert_eq!(s.user_conns(&[9]).await.unwrap()[0].len(), 3);

    // Entries live session_ttl after their admission or last refresh.
    let short = connect(&config(urls, cluster, Duration::from_millis(300), LONG)).await;
    short
        .admit_conn(11, &user_conn("x", 1, "web"), 0, false)
        .await
        .unwrap();
    short
        .admit_conn(11, &user_conn("y", 2, "web"), 0, false)
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        short.refresh_conn(11, "x", &conn("c1", 1)).await.unwrap();
        // A refresh naming another connection changes nothing.
        short.refresh_conn(11, "y", &conn("c1", 9)).await.unwrap();
    }
    let live = short.user_conns(&[11]).await.unwrap();
    let keys: Vec<&str> = live[0].iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["x"], "the refreshed one lives, the other expired");
    // A store that lost an entry gets it back from the connection's next heartbeat.
    short.refresh_conn(12, "z", &conn("c1", 3)).await.unwrap();
    let live = short.user_conns(&[12]).await.unwrap();
    assert_eq!(live[0].len(), 1);
    assert_eq!(
        (
            live[0][0].key.as_str(),
            live[0][0].conn.conn_id,
            live[0][0].platform.as_str()
        ),
        ("z", 3, "")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_single_node() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    conformance(vec![redis.url()], false).await;
    log_conformance(vec![redis.url()], false).await;
    user_conns_conformance(vec![redis.url()], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cluster() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    conformance(cluster.urls(), true).await;
    log_conformance(cluster.urls(), true).await;
    user_conns_conformance(cluster.urls(), true).await;
}

/// The documented key schema, read back with a plain client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_schema_and_ttls() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let cfg = config(
        vec![redis.url()],
        false,
        Duration::from_secs(100),
        Duration::from_secs(20),
    );
    let p = redis_of(&cfg).prefix.clone();
    let s = connect(&cfg).await;
    s.add_session(&session(7, "k7", 1)).await.unwrap();
    s.report_online(report(info("a", 1), 3, 1, &[("r", 1)]))
        .await
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{p}key:{{k7}}"),
            format!("{p}mid:{{7}}"),
            format!("{p}online")
        ]
    );
    for (key, max) in [
        (format!("{p}key:{{k7}}"), 100_000),
        (format!("{p}mid:{{7}}"), 100_000),
        (format!("{p}online"), 20_000),
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(ttl > max - 5_000 && ttl <= max, "{key}: PTTL {ttl}");
    }
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{p}mid:{{7}}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(fields, vec!["k7"]);
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{p}online"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(fields, vec!["a/3"]);

    // A stale index field (its key entry gone behind the store's back) is never returned, and
    // reading prunes it.
    let _: () = redis::cmd("DEL")
        .arg(format!("{p}key:{{k7}}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(s.sessions_by_mids(&[7]).await.unwrap().is_empty());
    let n: i64 = redis::cmd("HLEN")
        .arg(format!("{p}mid:{{7}}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0, "stale field pruned");

    // A field left in another user's index (as a lost race could leave it) never yields the
    // session the key entry gives to someone else, and reading prunes it.
    let owner = session(8, "k8", 81);
    s.add_session(&owner).await.unwrap();
    let field: Vec<u8> = redis::cmd("HGET")
        .arg(format!("{p}mid:{{8}}"))
        .arg("k8")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{p}mid:{{7}}"))
        .arg("k8")
        .arg(field)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(s.sessions_by_mids(&[7]).await.unwrap().is_empty());
    assert_eq!(s.sessions_by_mids(&[8]).await.unwrap(), vec![owner]);
    let n: i64 = redis::cmd("HLEN")
        .arg(format!("{p}mid:{{7}}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0, "field of another user's key pruned");

    // The indexes are cleaned by the writes themselves, not only by readers.
    let hlen = |mid: i64| {
        let mut c = c.clone();
        let key = format!("{p}mid:{{{mid}}}");
        async move {
            redis::cmd("HLEN")
                .arg(key)
                .query_async::<i64>(&mut c)
                .await
                .unwrap()
        }
    };
    s.add_session(&session(9, "k9", 91)).await.unwrap();
    assert_eq!(hlen(9).await, 1);
    s.add_session(&session(10, "k9", 101)).await.unwrap();
    assert_eq!(
        hlen(9).await,
        0,
        "a key taken by another user leaves the first index"
    );
    assert!(s.remove_session(10, "k9", &conn("c1", 101)).await.unwrap());
    assert_eq!(hlen(10).await, 0, "remove_session clears the index field");
}

/// The documented inbox and room-history keys, read back with a plain client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_key_schema_and_ttls() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let cfg = log_config(
        vec![redis.url()],
        false,
        Retention {
            max_messages: 2,
            ttl: Duration::from_secs(100),
        },
        Retention {
            max_messages: 5,
            ttl: Duration::from_secs(20),
        },
    );
    let p = redis_of(&cfg).prefix.clone();
    let s = connect(&cfg).await;
    for _ in 0..3 {
        s.inbox_append(7, 5, bytes::Bytes::from_static(b"hi"))
            .await
            .unwrap();
    }
    s.inbox_ack(7, 2).await.unwrap();
    s.room_history_append("live://1", 6, bytes::Bytes::from_static(b"yo"))
        .await
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    let inbox = format!("{p}inbox:{{7}}");
    let inbox_m = format!("{p}inbox:{{7}}:m");
    let history = format!("{p}history:{{live://1}}");
    let history_m = format!("{p}history:{{live://1}}:m");
    assert_eq!(
        keys,
        vec![
            history.clone(),
            history_m.clone(),
            inbox.clone(),
            inbox_m.clone()
        ]
    );
    for (key, max) in [
        (&inbox, 100_000),
        (&inbox_m, 100_000),
        (&history, 20_000),
        (&history_m, 20_000),
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(ttl > max - 5_000 && ttl <= max, "{key}: PTTL {ttl}");
    }
    let state: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(&inbox)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        state,
        BTreeMap::from([
            ("last".to_string(), "3".to_string()),
            ("acked".to_string(), "2".to_string())
        ])
    );
    let messages: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(&inbox_m)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(messages.len(), 1, "trimmed to 2, then 2 acknowledged");
    let m = &messages[0];
    assert!(m.starts_with(b"3:"), "{m:?}");
    assert!(m.ends_with(b":\0\0\0\x05hi"), "{m:?}");
    let state: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(&history)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        state,
        BTreeMap::from([("last".to_string(), "1".to_string())])
    );

    // Acks and reads do not extend a log's life.
    let _: () = redis::cmd("PEXPIRE")
        .arg(&inbox)
        .arg(60_000)
        .query_async(&mut c)
        .await
        .unwrap();
    s.inbox_ack(7, 3).await.unwrap();
    s.inbox_read(7, 0, 10).await.unwrap();
    s.inbox_state(7).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&inbox)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl <= 60_000, "PTTL {ttl}");

    // A log whose state expired before its messages (a clock race) starts again cleanly.
    let _: () = redis::cmd("DEL")
        .arg(&history)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(s
        .room_history_read("live://1", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.room_history_append("live://1", 1, bytes::Bytes::new())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        seqs(&s.room_history_read("live://1", 0, 10).await.unwrap()),
        vec![1]
    );
    // The empty room cannot hold a history (its hash tag would be empty).
    assert!(s
        .room_history_append("", 1, bytes::Bytes::new())
        .await
        .is_err());
}

#[tokio::test]
async fn connect_fails_clearly_when_redis_is_unreachable() {
    let port = imgate_testkit::free_port();
    let started = Instant::now();
    for cluster in [false, true] {
        let cfg = config(
            vec![format!("redis://127.0.0.1:{port}")],
            cluster,
            LONG,
            LONG,
        );
        let err = match RedisStore::connect(redis_of(&cfg), &cfg).await {
            Ok(_) => panic!("connected to nothing (cluster = {cluster})"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("cannot connect to Redis") && err.contains(&port.to_string()),
            "{err}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

async fn expect_unavailable<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    // Bound the wait ourselves so a hang fails the test rather than stalling it.
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung with Redis down"));
    let elapsed = started.elapsed();
    match result {
        Err(StoreError::Unavailable(reason)) => {
            assert!(!reason.is_empty());
            eprintln!("{what}: {reason} after {elapsed:?}");
        }
        Ok(v) => panic!("{what} succeeded with Redis down: {v:?}"),
    }
    // add_session and remove_session may spend one deadline per step.
    assert!(
        elapsed <= timeout * 3 + Duration::from_millis(300),
        "{what} took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_fast_and_recovers_without_a_new_store() {
    let mut redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let cfg = config(vec![redis.url()], false, LONG, LONG);
    let timeout = redis_of(&cfg).timeout;
    let s = connect(&cfg).await;
    let a = session(1, "k", 1);
    s.add_session(&a).await.unwrap();
    s.report_online(report(info("a", 1), 0, 1, &[("r", 1)]))
        .await
        .unwrap();

    redis.stop();
    // Twice: once while the dropped connection is noticed, once while reconnecting.
    for _ in 0..2 {
        expect_unavailable("add_session", timeout, s.add_session(&a)).await;
        expect_unavailable("remove_session", timeout, s.remove_session(1, "k", &a.conn)).await;
        expect_unavailable("refresh_session", timeout, s.refresh_session(&a)).await;
        expect_unavailable(
            "sessions_by_keys",
            timeout,
            s.sessions_by_keys(&["k".into()]),
        )
        .await;
        expect_unavailable("sessions_by_mids", timeout, s.sessions_by_mids(&[1])).await;
        expect_unavailable(
            "report_online",
            timeout,
            s.report_online(report(info("a", 1), 0, 1, &[])),
        )
        .await;
        expect_unavailable("room_counts", timeout, s.room_counts()).await;
        expect_unavailable("comets", timeout, s.comets()).await;
        expect_unavailable(
            "inbox_append",
            timeout,
            s.inbox_append(1, 1, bytes::Bytes::new()),
        )
        .await;
        expect_unavailable("inbox_read", timeout, s.inbox_read(1, 0, 10)).await;
        expect_unavailable("inbox_ack", timeout, s.inbox_ack(1, 1)).await;
        expect_unavailable("inbox_state", timeout, s.inbox_state(1)).await;
        expect_unavailable(
            "room_history_append",
            timeout,
            s.room_history_append("r", 1, bytes::Bytes::new()),
        )
        .await;
        expect_unavailable(
            "room_history_read",
            timeout,
            s.room_history_read("r", 0, 10),
        )
        .await;
    }
    // Stay down longer than the reconnect backoff lasts, so recovery cannot rely on it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    expect_unavailable(
        "sessions_by_keys",
        timeout,
        s.sessions_by_keys(&["k".into()]),
    )
    .await;

    let redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.add_session(&a).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no recovery within 10 s: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    eprintln!("recovered after restart");
    // The restarted server is empty; the store works normally on it.
    assert_eq!(s.sessions_by_mids(&[1]).await.unwrap(), vec![a.clone()]);
    assert!(s.remove_session(1, "k", &a.conn).await.unwrap());
    s.report_online(report(info("a", 1), 0, 1, &[("r", 1)]))
        .await
        .unwrap();
    assert_eq!(s.room_counts().await.unwrap()["r"], 1);
    assert_eq!(s.inbox_append(1, 1, bytes::Bytes::new()).await.unwrap(), 1);
    drop(redis);
}

/// Sanity of the reports' map shape (a BTreeMap round-trips through the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rooms_round_trip() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let s = connect(&config(vec![redis.url()], false, LONG, LONG)).await;
    let rooms: BTreeMap<std::sync::Arc<str>, u32> = (0..5000)
        .map(|i| (format!("live://{i}").into(), i % 7 + 1))
        .collect();
    s.report_online(OnlineReport {
        comet: info("big", 1),
        shard: 0,
        conn_count: 9,
        ip_count: 9,
        rooms: rooms.clone(),
        lag_us: 0,
    })
    .await
    .unwrap();
    let counts = s.room_counts().await.unwrap();
    assert_eq!(counts.len(), rooms.len());
    for (room, n) in rooms {
        assert_eq!(counts[&room], u64::from(n));
    }
}

/// A server that accepts but does not answer (clients paused): calls time out instead of
/// hanging, and the connection gives correct answers once the server answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_server_times_out_then_answers_correctly() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let cfg = config(vec![redis.url()], false, LONG, LONG);
    let timeout = redis_of(&cfg).timeout;
    let s = connect(&cfg).await;
    let a = session(1, "a", 1);
    let b = session(2, "b", 2);
    s.add_session(&a).await.unwrap();
    s.add_session(&b).await.unwrap();

    // Long enough for the three calls below to time out one after the other even on a busy
    // machine (each waits up to `timeout`); 1.5 s was not.
    let reply = imgate_testkit::redis_command(redis.port(), "CLIENT PAUSE 5000 ALL").unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
    let paused = Instant::now();
    expect_unavailable(
        "sessions_by_keys",
        timeout,
        s.sessions_by_keys(&["a".into()]),
    )
    .await;
    expect_unavailable("sessions_by_mids", timeout, s.sessions_by_mids(&[2])).await;
    expect_unavailable("room_counts", timeout, s.room_counts()).await;
    assert!(
        paused.elapsed() < Duration::from_millis(5000),
        "the pause ended before the checks"
    );
    let left = Duration::from_millis(5200).saturating_sub(paused.elapsed());
    tokio::time::sleep(left).await;
    // Late replies to the abandoned commands must not be taken for the answers to these.
    for _ in 0..3 {
        assert_eq!(
            s.sessions_by_keys(&["b".into()]).await.unwrap(),
            vec![b.clone()]
        );
        assert_eq!(s.sessions_by_mids(&[1]).await.unwrap(), vec![a.clone()]);
        assert!(s.room_counts().await.unwrap().is_empty());
    }
}

/// A cluster node goes away: calls stay bounded (keys on other nodes keep working), and the
/// store recovers by itself when the node returns on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_outage_is_bounded_and_recovers() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    let cfg = config(cluster.urls(), true, LONG, LONG);
    let timeout = redis_of(&cfg).timeout;
    let s = connect(&cfg).await;
    let sessions: Vec<Session> = (0..30)
        .map(|i| session(i + 1, &format!("k{i}"), i as u64))
        .collect();
    let keys: Vec<String> = sessions.iter().map(|x| x.key.clone()).collect();
    for x in &sessions {
        s.add_session(x).await.unwrap();
    }

    let mut node = cluster.nodes.remove(0);
    node.stop();
    let (mut ok, mut failed) = (0, 0);
    for x in &sessions {
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            s.sessions_by_keys(std::slice::from_ref(&x.key)),
        )
        .await
        .expect("a call hung with a cluster node down");
        assert!(
            started.elapsed() <= timeout * 3,
            "took {:?}",
            started.elapsed()
        );
        match r {
            Ok(v) => {
                assert_eq!(v, vec![x.clone()]);
                ok += 1;
            }
            Err(StoreError::Unavailable(_)) => failed += 1,
        }
    }
    eprintln!("with one node down: {ok} keys answered, {failed} unavailable");
    assert!(failed > 0, "no key lived on the stopped node");

    let node = tokio::task::spawn_blocking(move || {
        node.restart();
        node
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut all_ok = true;
        for x in &sessions {
            if let Err(e) = s.add_session(x).await {
                assert!(Instant::now() < deadline, "no recovery within 15 s: {e}");
                all_ok = false;
                break;
            }
        }
        if all_ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.sessions_by_keys(&keys).await.unwrap(), sessions);
    drop(node);
}
