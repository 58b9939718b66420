//! What only the Redis store does, against real Redis servers over TCP: its documented key
//! schema and expiries, no key for what was only read, outages and stalls on a single node and
//! on a Redis Cluster, bounded and recovered from. The contract every store keeps is in
//! `conformance.rs` (run on Redis and Redis Cluster there too).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use imgate_shared::config::{RedisConfig, Retention, StoreBackend, StoreConfig};
use imgate_store::redis::RedisStore;
use imgate_store::{
    InboxState, MessageStore, OnlineReport, RegistryStore, Session, SessionStore, StoreError,
};
use imgate_testkit::{Redis, RedisCluster};

/// A Redis store config (a key prefix of its own) with these lifetimes.
fn redis_config(
    urls: Vec<String>,
    cluster: bool,
    session_ttl: Duration,
    online_ttl: Duration,
) -> StoreConfig {
    let mut cfg = config(session_ttl, online_ttl);
    cfg.backend = StoreBackend::Redis(redis_options(urls, cluster));
    cfg
}

/// A Redis store config (a key prefix of its own) with these retentions.
fn redis_log_config(
    urls: Vec<String>,
    cluster: bool,
    inbox: Retention,
    history: Retention,
) -> StoreConfig {
    let mut cfg = log_config(inbox, history);
    cfg.backend = StoreBackend::Redis(redis_options(urls, cluster));
    cfg
}

/// The Redis options of a test config.
fn redis_of(config: &StoreConfig) -> &RedisConfig {
    match &config.backend {
        StoreBackend::Redis(redis) => redis,
        StoreBackend::Embedded => unreachable!("test configs name Redis"),
    }
}

async fn connect(config: &StoreConfig) -> RedisStore {
    RedisStore::connect(redis_of(config), config)
        .await
        .unwrap_or_else(|e| panic!("connect to {:?}: {e}", redis_of(config).urls))
}

/// The documented key schema, read back with a plain client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_schema_and_ttls() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let cfg = redis_config(
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
    let cfg = redis_log_config(
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
        let cfg = redis_config(
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
    let cfg = redis_config(vec![redis.url()], false, LONG, LONG);
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
    let s = connect(&redis_config(vec![redis.url()], false, LONG, LONG)).await;
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
    let cfg = redis_config(vec![redis.url()], false, LONG, LONG);
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
    let cfg = redis_config(cluster.urls(), true, LONG, LONG);
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

/// Reading, acknowledging or asking about unknown users and rooms creates no key; a log that
/// expired leaves none behind. On a single node and on a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_only_read_or_has_expired_leaves_no_key() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    for (urls, is_cluster) in [(vec![redis.url()], false), (cluster.urls(), true)] {
        let keep = Retention {
            max_messages: 3,
            ttl: LONG,
        };
        let cfg = redis_log_config(urls.clone(), is_cluster, keep, keep);
        let prefix = redis_of(&cfg).prefix.clone();
        let u = connect(&cfg).await;
        assert_eq!(u.inbox_state(8).await.unwrap(), InboxState::default());
        assert!(u.inbox_read(8, 5, 10).await.unwrap().is_empty());
        u.inbox_ack(8, 10).await.unwrap();
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
        let short = Retention {
            max_messages: 10,
            ttl: Duration::from_millis(300),
        };
        let cfg = redis_log_config(urls.clone(), is_cluster, short, short);
        let prefix = redis_of(&cfg).prefix.clone();
        let e = connect(&cfg).await;
        e.inbox_append(1, 1, "a".into()).await.unwrap();
        e.room_history_append("r", 1, "a".into()).await.unwrap();
        assert_eq!(keys_under(&urls, &prefix).len(), 4);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !keys_under(&urls, &prefix).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                keys_under(&urls, &prefix)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
