//! The contract of each store seam, written once and run against every backend: the embedded
//! stores, a single Redis node and a three-node Redis Cluster (real servers started by
//! imgate-testkit, reached over TCP).
//!
//! - [`SessionStore`](imgate_store::SessionStore): lookups by key and by user, atomic key
//!   claims (refused or replacing, never two winners), a replaced connection's late disconnect
//!   or refresh keeping its successor's session, expiry and re-creation; users' connections,
//!   their limit and presence;
//! - [`RegistryStore`](imgate_store::RegistryStore): room counts summed over shards and comets,
//!   comets grouped, reports replaced and expiring;
//! - [`MessageStore`](imgate_store::MessageStore): inboxes and room histories, sequenced,
//!   trimmed by count and age, acknowledged.
//!
//! What only Redis does (its key schema, outages) is in `redis.rs`. A missing redis-server
//! fails these tests with a message saying how to install it; nothing skips.

mod common;

use std::time::{Duration, Instant};

use common::*;
use imgate_shared::config::Retention;
use imgate_shared::link::ConnRef;
use imgate_store::{Connected, InboxState, KeyPolicy, Rules, Session, StoredMessage, Stores};

/// Records `session` as goim would (any user takes the key, no limit).
async fn add(s: &Stores, session: &Session) {
    add_result(s, session).await.unwrap();
}

async fn add_result(s: &Stores, session: &Session) -> Result<Connected, imgate_store::StoreError> {
    s.sessions.connect(session, "", "", Rules::GOIM).await
}

/// Claims `session`'s key under `policy` (no limit per user).
async fn claim_key(s: &Stores, session: &Session, policy: KeyPolicy) -> Connected {
    let rules = Rules {
        policy,
        ..Rules::GOIM
    };
    s.sessions.connect(session, "", "", rules).await.unwrap()
}

/// Disconnects user `mid`'s connection `conn` holding `key`; whether the store had it.
async fn remove(s: &Stores, mid: i64, key: &str, conn: &ConnRef) -> bool {
    remove_result(s, mid, key, conn).await.unwrap()
}

async fn remove_result(
    s: &Stores,
    mid: i64,
    key: &str,
    conn: &ConnRef,
) -> Result<bool, imgate_store::StoreError> {
    let session = Session {
        mid,
        key: key.into(),
        conn: conn.clone(),
    };
    s.sessions.disconnect(&session).await.map(|r| r.is_some())
}

/// Connects user `mid` with `key` on connection `id` from `platform`, in room live://9, within
/// `limit` connections per user (0: none).
async fn admit(
    s: &Stores,
    mid: i64,
    key: &str,
    id: u64,
    platform: &str,
    limit: usize,
    kick_oldest: bool,
) -> Connected {
    let session = Session {
        mid,
        key: key.into(),
        conn: conn("c1", id),
    };
    let rules = Rules {
        policy: KeyPolicy::AnyUser,
        limit,
        kick_oldest,
    };
    s.sessions
        .connect(&session, platform, "live://9", rules)
        .await
        .unwrap()
}

fn sorted(mut v: Vec<imgate_store::Session>) -> Vec<imgate_store::Session> {
    v.sort_by(|a, b| a.key.cmp(&b.key));
    v
}

/// Claims decided in one step: the same user replaces its holder, another user is refused
/// only when asked to be, and two users claiming one fresh key at once never both get it.
async fn key_claims(backend: &Backend) {
    let s = backend.stores(config(LONG, LONG)).await;
    let claim = |mid, id| session(mid, "k", id);
    assert_eq!(
        claim_key(&s, &claim(1, 1), KeyPolicy::SameUser).await,
        Connected::Admitted {
            replaced: None,
            kicked: vec![]
        }
    );
    assert_eq!(
        claim_key(&s, &claim(1, 2), KeyPolicy::SameUser).await,
        Connected::Admitted {
            replaced: Some(claim(1, 1)),
            kicked: vec![]
        }
    );
    assert_eq!(
        claim_key(&s, &claim(2, 3), KeyPolicy::SameUser).await,
        Connected::KeyHeld { holder: 1 }
    );
    assert_eq!(
        s.sessions.sessions_by_keys(&["k".into()]).await.unwrap(),
        vec![claim(1, 2)],
        "a refused claim changes nothing"
    );
    // goim's model: another user takes the key over, and is told whom it replaced.
    assert_eq!(
        claim_key(&s, &claim(2, 3), KeyPolicy::AnyUser).await,
        Connected::Admitted {
            replaced: Some(claim(1, 2)),
            kicked: vec![]
        }
    );
    assert!(s.sessions.sessions_by_mids(&[1]).await.unwrap().is_empty());
    // Re-claiming with the same connection replaces nobody.
    assert_eq!(
        claim_key(&s, &claim(2, 3), KeyPolicy::SameUser).await,
        Connected::Admitted {
            replaced: None,
            kicked: vec![]
        }
    );

    // Two users claim one fresh key at the same instant: exactly one gets it, every round.
    for round in 0..50u64 {
        let key = format!("fresh-{round}");
        let claims: Vec<_> = (0..2u64)
            .map(|user| {
                let s = s.clone();
                let session = imgate_store::Session {
                    mid: user as i64 + 1,
                    key: key.clone(),
                    conn: conn("c1", 1000 + round * 2 + user),
                };
                tokio::spawn(async move { claim_key(&s, &session, KeyPolicy::SameUser).await })
            })
            .collect();
        let mut won = 0;
        for claim in claims {
            if let Connected::Admitted { replaced, .. } = claim.await.unwrap() {
                assert_eq!(replaced, None);
                won += 1;
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
}

/// Sessions (lookups, replaced connections' late disconnects, races, refresh and expiry) and
/// the registry (room counts summed, comets grouped, reports replaced and expiring).
async fn sessions_and_registry(backend: &Backend) {
    let s = backend.stores(config(LONG, LONG)).await;

    // Lookup by key and by user, two devices of one user and a guest (mid 0).
    let a = session(1, "dev-a", 1);
    let b = session(1, "dev-b", 2);
    let guest = session(0, "guest", 3);
    for x in [&a, &b, &guest] {
        add(&s, x).await;
    }
    assert_eq!(
        s.sessions
            .sessions_by_keys(&["dev-b".into(), "nope".into(), "dev-a".into()])
            .await
            .unwrap(),
        vec![b.clone(), a.clone()],
        "by key: known keys in order, unknown left out"
    );
    assert_eq!(
        sorted(s.sessions.sessions_by_mids(&[1]).await.unwrap()),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        s.sessions
            .sessions_by_keys(&["guest".into()])
            .await
            .unwrap(),
        vec![guest.clone()]
    );
    assert!(s
        .sessions
        .sessions_by_mids(&[0, 99])
        .await
        .unwrap()
        .is_empty());
    assert!(s.sessions.sessions_by_keys(&[]).await.unwrap().is_empty());
    assert!(s.sessions.sessions_by_mids(&[]).await.unwrap().is_empty());

    // A replaced connection's late disconnect keeps its successor's session.
    let a2 = session(1, "dev-a", 11);
    add(&s, &a2).await;
    assert!(!remove(&s, 1, "dev-a", &a.conn).await);
    assert_eq!(
        s.sessions
            .sessions_by_keys(&["dev-a".into()])
            .await
            .unwrap(),
        vec![a2.clone()]
    );
    assert_eq!(
        sorted(s.sessions.sessions_by_mids(&[1]).await.unwrap()),
        vec![a2.clone(), b.clone()]
    );
    assert!(remove(&s, 1, "dev-a", &a2.conn).await);
    assert!(s
        .sessions
        .sessions_by_keys(&["dev-a".into()])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.sessions.sessions_by_mids(&[1]).await.unwrap(),
        vec![b.clone()]
    );
    assert!(!remove(&s, 1, "dev-a", &a2.conn).await, "second remove");

    // A key taken by another user leaves the first user's index.
    let taken = session(2, "dev-b", 21);
    add(&s, &taken).await;
    assert!(s.sessions.sessions_by_mids(&[1]).await.unwrap().is_empty());
    assert_eq!(
        s.sessions.sessions_by_mids(&[2]).await.unwrap(),
        vec![taken.clone()]
    );
    assert_eq!(
        s.sessions.sessions_by_mids(&[1, 2]).await.unwrap(),
        vec![taken.clone()]
    );
    // The first user's late disconnect does not remove it either (whether the store still
    // had something of the first connection to drop is the backend's business).
    remove(&s, 1, "dev-b", &b.conn).await;
    assert_eq!(
        s.sessions
            .sessions_by_keys(&["dev-b".into()])
            .await
            .unwrap(),
        vec![taken.clone()]
    );

    // Racing disconnect of the old connection and connect of the new one: the new one survives.
    for round in 0..30u64 {
        let key = format!("race-{round}");
        let old = session(5, &key, 100 + round);
        let new = session(5, &key, 200 + round);
        add(&s, &old).await;
        let (removed, added) =
            tokio::join!(remove_result(&s, 5, &key, &old.conn), add_result(&s, &new));
        removed.unwrap();
        added.unwrap();
        assert_eq!(
            s.sessions
                .sessions_by_keys(std::slice::from_ref(&key))
                .await
                .unwrap(),
            vec![new.clone()]
        );
        assert!(
            s.sessions
                .sessions_by_mids(&[5])
                .await
                .unwrap()
                .contains(&new),
            "round {round}"
        );
    }

    // Refresh of a live session by its own connection keeps it; by a replaced one changes nothing.
    s.sessions.refresh(&taken).await.unwrap();
    s.sessions.refresh(&b).await.unwrap();
    assert_eq!(
        s.sessions
            .sessions_by_keys(&["dev-b".into()])
            .await
            .unwrap(),
        vec![taken.clone()]
    );
    assert!(s.sessions.sessions_by_mids(&[1]).await.unwrap().is_empty());

    // Expiry and refresh, with a short session TTL.
    let short = backend
        .stores(config(Duration::from_millis(800), LONG))
        .await;
    let e = session(3, "k3", 31);
    add(&short, &e).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    short.sessions.refresh(&e).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        short.sessions.sessions_by_mids(&[3]).await.unwrap(),
        vec![e.clone()],
        "refresh extends"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        short
            .sessions
            .sessions_by_keys(&["k3".into()])
            .await
            .unwrap()
            .is_empty(),
        "expired"
    );
    assert!(
        short
            .sessions
            .sessions_by_mids(&[3])
            .await
            .unwrap()
            .is_empty(),
        "expired"
    );
    short.sessions.refresh(&e).await.unwrap();
    assert_eq!(
        short.sessions.sessions_by_mids(&[3]).await.unwrap(),
        vec![e.clone()],
        "re-created"
    );
    assert_eq!(
        short
            .sessions
            .sessions_by_keys(&["k3".into()])
            .await
            .unwrap(),
        vec![e.clone()]
    );
    // It expires again and another user's connection takes the key: refresh must not steal it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let thief = session(4, "k3", 41);
    add(&short, &thief).await;
    short.sessions.refresh(&e).await.unwrap();
    assert_eq!(
        short
            .sessions
            .sessions_by_keys(&["k3".into()])
            .await
            .unwrap(),
        vec![thief.clone()]
    );
    assert!(short
        .sessions
        .sessions_by_mids(&[3])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        short.sessions.sessions_by_mids(&[4]).await.unwrap(),
        vec![thief.clone()]
    );

    // Room counts summed across shards and comets; comets grouped.
    let o = backend.stores(config(LONG, LONG)).await;
    assert!(o.registry.room_counts().await.unwrap().is_empty());
    assert!(o.registry.comets().await.unwrap().is_empty());
    o.registry
        .report_online(report(
            info("a", 1),
            0,
            2,
            &[("live://1", 2), ("live://2", 7)],
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    o.registry
        .report_online(report(info("b", 1), 0, 4, &[("live://1", 4)]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    o.registry
        .report_online(report(info("a", 2), 1, 3, &[("live://1", 3)]))
        .await
        .unwrap();
    let counts = o.registry.room_counts().await.unwrap();
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(counts["live://1"], 9);
    assert_eq!(counts["live://2"], 7);
    let comets = o.registry.comets().await.unwrap();
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
    o.registry
        .report_online(report(info("a", 2), 0, 1, &[]))
        .await
        .unwrap();
    let counts = o.registry.room_counts().await.unwrap();
    assert_eq!(counts.get("live://2"), None, "{counts:?}");
    assert_eq!(counts["live://1"], 7);
    assert_eq!(o.registry.comets().await.unwrap()[0].conn_count, 4);

    // Reports older than online_ttl are ignored.
    let ol = backend
        .stores(config(LONG, Duration::from_millis(600)))
        .await;
    ol.registry
        .report_online(report(info("gone", 1), 0, 5, &[("r", 5)]))
        .await
        .unwrap();
    ol.registry
        .report_online(report(info("gone", 1), 1, 5, &[("r", 5)]))
        .await
        .unwrap();
    assert_eq!(ol.registry.room_counts().await.unwrap()["r"], 10);
    tokio::time::sleep(Duration::from_millis(400)).await;
    ol.registry
        .report_online(report(info("gone", 1), 1, 5, &[("r", 5)]))
        .await
        .unwrap();
    ol.registry
        .report_online(report(info("alive", 1), 0, 1, &[("r", 1)]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // gone/0 is 700 ms old, gone/1 and alive/0 300 ms.
    assert_eq!(ol.registry.room_counts().await.unwrap()["r"], 6);
    let comets = ol.registry.comets().await.unwrap();
    assert_eq!(comets.len(), 2);
    assert_eq!(comets[0].info.id, "alive");
    assert_eq!(comets[1].conn_count, 5);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        ol.registry.room_counts().await.unwrap().is_empty(),
        "every report is stale"
    );
    assert!(ol.registry.comets().await.unwrap().is_empty());
}

/// Inboxes and room histories: sequences, trimming by count, acknowledgements, binary bodies,
/// rooms apart from users, concurrent appends, and expiry by age.
async fn inboxes_and_room_histories(backend: &Backend) {
    let keep3 = Retention {
        max_messages: 3,
        ttl: LONG,
    };
    let keep2 = Retention {
        max_messages: 2,
        ttl: LONG,
    };
    let s = backend.stores(log_config(keep3, keep2)).await;

    // Sequences 1..n; the inbox keeps the newest 3.
    for i in 1..=5u64 {
        let seq = s
            .messages
            .inbox_append(7, 1000 + i as i32, bytes::Bytes::from(format!("m{i}")))
            .await
            .unwrap();
        assert_eq!(seq, i);
    }
    let all = s.messages.inbox_read(7, 0, 10).await.unwrap();
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
    assert_eq!(
        seqs(&s.messages.inbox_read(7, 3, 1).await.unwrap()),
        vec![4]
    );
    assert_eq!(
        seqs(&s.messages.inbox_read(7, 1, 2).await.unwrap()),
        vec![3, 4]
    );
    assert_eq!(
        seqs(&s.messages.inbox_read(7, 4, 10).await.unwrap()),
        vec![5]
    );
    assert!(s.messages.inbox_read(7, 5, 10).await.unwrap().is_empty());
    assert!(s.messages.inbox_read(7, 0, 0).await.unwrap().is_empty());
    assert_eq!(
        s.messages.inbox_state(7).await.unwrap(),
        InboxState {
            last_seq: 5,
            acked_seq: 0,
            pending: 3
        }
    );
    // Acks never move back and drop what they acknowledge.
    s.messages.inbox_ack(7, 4).await.unwrap();
    s.messages.inbox_ack(7, 2).await.unwrap();
    assert_eq!(
        s.messages.inbox_state(7).await.unwrap(),
        InboxState {
            last_seq: 5,
            acked_seq: 4,
            pending: 1
        }
    );
    assert_eq!(
        seqs(&s.messages.inbox_read(7, 0, 10).await.unwrap()),
        vec![5]
    );
    // An `after` past the end (the inbox started again) reads from the start.
    assert_eq!(
        seqs(&s.messages.inbox_read(7, 99, 10).await.unwrap()),
        vec![5]
    );
    assert_eq!(
        seqs(&s.messages.inbox_read(7, u64::MAX, 10).await.unwrap()),
        vec![5]
    );
    // An ack beyond the last sequence acknowledges up to the last only.
    s.messages.inbox_ack(7, 100).await.unwrap();
    assert_eq!(
        s.messages.inbox_state(7).await.unwrap(),
        InboxState {
            last_seq: 5,
            acked_seq: 5,
            pending: 0
        }
    );
    assert!(s.messages.inbox_read(7, 0, 10).await.unwrap().is_empty());
    assert_eq!(
        s.messages
            .inbox_append(7, 1, bytes::Bytes::new())
            .await
            .unwrap(),
        6
    );
    assert_eq!(
        s.messages.inbox_state(7).await.unwrap(),
        InboxState {
            last_seq: 6,
            acked_seq: 5,
            pending: 1
        }
    );
    assert_eq!(
        seqs(&s.messages.inbox_read(7, 5, 10).await.unwrap()),
        vec![6]
    );

    // Binary bodies survive, with any op.
    let every_byte: Vec<u8> = (0..=255u8).collect();
    for (op, body) in [
        (i32::MIN, bytes::Bytes::from(every_byte.clone())),
        (-1, bytes::Bytes::new()),
        (i32::MAX, bytes::Bytes::from_static(b"1:2:3:\r\n\0")),
    ] {
        let seq = s.messages.inbox_append(70, op, body.clone()).await.unwrap();
        let got = s.messages.inbox_read(70, seq - 1, 1).await.unwrap();
        assert_eq!(got, vec![StoredMessage { seq, op, body }]);
    }

    // Room histories: independent per room, their own retention, no acks.
    let rooms = ["live://1", "live://2", "odd}{room"];
    for (n, room) in rooms.iter().enumerate() {
        for i in 1..=(n as u64 + 1) * 2 {
            assert_eq!(
                s.messages
                    .room_history_append(room, 9, bytes::Bytes::from(format!("{room}#{i}")))
                    .await
                    .unwrap(),
                i,
                "{room}"
            );
        }
    }
    assert_eq!(
        s.messages
            .room_history_read("live://1", 0, 10)
            .await
            .unwrap(),
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
        seqs(
            &s.messages
                .room_history_read("live://2", 0, 10)
                .await
                .unwrap()
        ),
        vec![3, 4]
    );
    assert_eq!(
        seqs(
            &s.messages
                .room_history_read("odd}{room", 4, 10)
                .await
                .unwrap()
        ),
        vec![5, 6]
    );
    assert_eq!(
        seqs(
            &s.messages
                .room_history_read("odd}{room", 5, 10)
                .await
                .unwrap()
        ),
        vec![6]
    );
    assert_eq!(
        seqs(
            &s.messages
                .room_history_read("live://2", 99, 1)
                .await
                .unwrap()
        ),
        vec![3]
    );
    assert!(s
        .messages
        .room_history_read("", 0, 10)
        .await
        .unwrap()
        .is_empty());
    // A room and a user with the same id do not share anything.
    assert_eq!(
        s.messages
            .room_history_append("7", 1, bytes::Bytes::new())
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.messages.inbox_state(7).await.unwrap().last_seq, 6);

    // Unknown users and rooms read as empty, and an ack for them changes nothing.
    let u = backend.stores(log_config(keep3, keep2)).await;
    assert_eq!(
        u.messages.inbox_state(8).await.unwrap(),
        InboxState::default()
    );
    assert!(u.messages.inbox_read(8, 0, 10).await.unwrap().is_empty());
    assert!(u.messages.inbox_read(8, 5, 10).await.unwrap().is_empty());
    u.messages.inbox_ack(8, 10).await.unwrap();
    assert_eq!(
        u.messages.inbox_state(8).await.unwrap(),
        InboxState::default()
    );
    assert!(u
        .messages
        .room_history_read("live://nobody", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        u.messages
            .inbox_append(8, 1, bytes::Bytes::new())
            .await
            .unwrap(),
        1
    );

    // Concurrent appends from several tasks get distinct consecutive sequences.
    let big = Retention {
        max_messages: 1000,
        ttl: LONG,
    };
    let c = backend.stores(log_config(big, big)).await;
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..25u8 {
                    got.push(
                        c.messages
                            .inbox_append(11, t, bytes::Bytes::from(vec![i]))
                            .await
                            .unwrap(),
                    );
                    got.push(
                        c.messages
                            .room_history_append("live://busy", t, bytes::Bytes::from(vec![i]))
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
    let stored = c.messages.inbox_read(11, 0, 1000).await.unwrap();
    assert_eq!(seqs(&stored), (1..=100).collect::<Vec<u64>>());
    assert_eq!(
        seqs(
            &c.messages
                .room_history_read("live://busy", 0, 1000)
                .await
                .unwrap()
        ),
        (1..=100).collect::<Vec<u64>>()
    );
    assert_eq!(c.messages.inbox_state(11).await.unwrap().pending, 100);

    // Age: messages older than the TTL are dropped; the whole log (and its sequence) expires
    // a TTL after its last append.
    let short = Retention {
        max_messages: 10,
        ttl: Duration::from_millis(1000),
    };
    let e = backend.stores(log_config(short, short)).await;
    let t0 = Instant::now();
    assert_eq!(e.messages.inbox_append(1, 1, "a".into()).await.unwrap(), 1);
    assert_eq!(
        e.messages
            .room_history_append("r", 1, "a".into())
            .await
            .unwrap(),
        1
    );
    tokio::time::sleep(Duration::from_millis(500).saturating_sub(t0.elapsed())).await;
    let t1 = Instant::now();
    assert_eq!(e.messages.inbox_append(1, 1, "b".into()).await.unwrap(), 2);
    assert_eq!(
        e.messages
            .room_history_append("r", 1, "b".into())
            .await
            .unwrap(),
        2
    );
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(t0.elapsed())).await;
    // "a" is over 1 s old, "b" about 0.6 s.
    assert!(t1.elapsed() < Duration::from_millis(950), "test too slow");
    assert_eq!(
        e.messages.inbox_read(1, 0, 10).await.unwrap(),
        vec![StoredMessage {
            seq: 2,
            op: 1,
            body: "b".into()
        }]
    );
    assert_eq!(
        e.messages.inbox_state(1).await.unwrap(),
        InboxState {
            last_seq: 2,
            acked_seq: 0,
            pending: 1
        }
    );
    assert_eq!(
        seqs(&e.messages.room_history_read("r", 0, 10).await.unwrap()),
        vec![2]
    );
    assert!(t1.elapsed() < Duration::from_millis(950), "test too slow");
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(t1.elapsed())).await;
    assert_eq!(
        e.messages.inbox_state(1).await.unwrap(),
        InboxState::default()
    );
    assert!(e.messages.inbox_read(1, 0, 10).await.unwrap().is_empty());
    assert!(e
        .messages
        .room_history_read("r", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        e.messages.inbox_append(1, 1, "c".into()).await.unwrap(),
        1,
        "restarts"
    );
    assert_eq!(
        e.messages
            .room_history_append("r", 1, "c".into())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        seqs(&e.messages.inbox_read(1, 2, 10).await.unwrap()),
        vec![1]
    );
}

/// Users' connections: presence, the per-user limit (refuse or kick the oldest), decided in
/// one step however many connects race, and entries that expire unless refreshed.
async fn user_connections(backend: &Backend) {
    let s = backend.stores(config(LONG, LONG)).await;
    for (i, key) in ["a", "b"].into_iter().enumerate() {
        assert_eq!(
            admit(&s, 7, key, i as u64, "web", 2, false).await,
            Connected::Admitted {
                replaced: None,
                kicked: vec![]
            }
        );
    }
    assert_eq!(
        admit(&s, 7, "c", 3, "web", 2, false).await,
        Connected::UserFull { held: 2 }
    );
    // The same key again replaces its entry.
    assert!(matches!(
        admit(&s, 7, "a", 4, "ios", 2, false).await,
        Connected::Admitted { .. }
    ));
    let Connected::Admitted { kicked, .. } = admit(&s, 7, "c", 5, "web", 2, true).await else {
        panic!("refused although asked to kick");
    };
    assert_eq!(kicked.len(), 1);
    assert_eq!((kicked[0].key.as_str(), kicked[0].conn.conn_id), ("b", 1));
    assert!(
        s.sessions
            .sessions_by_keys(&["b".into()])
            .await
            .unwrap()
            .is_empty(),
        "a kicked connection's session is gone with it"
    );
    let live = s.sessions.user_conns(&[7, 8]).await.unwrap();
    let keys: Vec<(&str, &str, &str)> = live[0]
        .iter()
        .map(|c| (c.key.as_str(), c.platform.as_str(), c.rooms[0].as_str()))
        .collect();
    assert_eq!(keys, [("a", "ios", "live://9"), ("c", "web", "live://9")]);
    assert!(live[1].is_empty());
    assert!(live[0][0].connected_ms < live[0][1].connected_ms);
    // Removal compares the connection.
    assert_eq!(
        s.sessions
            .disconnect(&imgate_store::Session {
                mid: 7,
                key: "a".into(),
                conn: conn("c1", 0)
            })
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.sessions
            .disconnect(&imgate_store::Session {
                mid: 7,
                key: "a".into(),
                conn: conn("c1", 4)
            })
            .await
            .unwrap()
            .map(|c| c.platform),
        Some("ios".into())
    );

    // Twenty connects of one user at once, at most three: exactly three get in.
    let racers: Vec<_> = (0..20u64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(
                async move { admit(&s, 9, &format!("r{i}"), 100 + i, "web", 3, false).await },
            )
        })
        .collect();
    let mut admitted = 0;
    for r in racers {
        if matches!(r.await.unwrap(), Connected::Admitted { .. }) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
    assert_eq!(s.sessions.user_conns(&[9]).await.unwrap()[0].len(), 3);

    // Entries live session_ttl after their admission or last refresh.
    let short = backend
        .stores(config(Duration::from_millis(300), LONG))
        .await;
    admit(&short, 11, "x", 1, "web", 0, false).await;
    admit(&short, 11, "y", 2, "web", 0, false).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        short
            .sessions
            .refresh(&imgate_store::Session {
                mid: 11,
                key: "x".into(),
                conn: conn("c1", 1),
            })
            .await
            .unwrap();
        // A refresh naming another connection changes nothing.
        short
            .sessions
            .refresh(&imgate_store::Session {
                mid: 11,
                key: "y".into(),
                conn: conn("c1", 9),
            })
            .await
            .unwrap();
    }
    let live = short.sessions.user_conns(&[11]).await.unwrap();
    let keys: Vec<&str> = live[0].iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["x"], "the refreshed one lives, the other expired");
    // A store that lost an entry gets it back from the connection's next heartbeat.
    short
        .sessions
        .refresh(&imgate_store::Session {
            mid: 12,
            key: "z".into(),
            conn: conn("c1", 3),
        })
        .await
        .unwrap();
    let live = short.sessions.user_conns(&[12]).await.unwrap();
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

/// Every room of a connection (presence): replaced as its comet reports them, kept only by the
/// connection its key names, and given back when it disconnects. A key another user holds is
/// refused without counting against the user's limit.
async fn connection_rooms(backend: &Backend) {
    let s = backend.stores(config(LONG, LONG)).await;
    let a = session(21, "ra", 1);
    s.sessions
        .connect(&a, "web", "live://1", Rules::GOIM)
        .await
        .unwrap();
    let rooms = |v: &[String]| v.to_vec();
    let set = vec!["live://1".to_string(), "chat://é, x|y".to_string()];
    let entry = s.sessions.set_rooms(&a, &set).await.unwrap().unwrap();
    assert_eq!(
        (entry.platform.as_str(), rooms(&entry.rooms)),
        ("web", set.clone())
    );
    let listed = s.sessions.user_conns(&[21]).await.unwrap();
    assert_eq!(listed[0][0].rooms, set);
    // Left every room.
    let entry = s.sessions.set_rooms(&a, &[]).await.unwrap().unwrap();
    assert!(entry.rooms.is_empty());
    // A connection the key no longer names changes nothing.
    let a2 = session(21, "ra", 2);
    add(&s, &a2).await;
    assert_eq!(s.sessions.set_rooms(&a, &set).await.unwrap(), None);
    assert!(s.sessions.user_conns(&[21]).await.unwrap()[0][0]
        .rooms
        .is_empty());
    let entry = s.sessions.set_rooms(&a2, &set[1..]).await.unwrap().unwrap();
    assert_eq!(entry.rooms, set[1..]);
    let gone = s.sessions.disconnect(&a2).await.unwrap().unwrap();
    assert_eq!(gone.rooms, set[1..]);
    assert!(s.sessions.user_conns(&[21]).await.unwrap()[0].is_empty());

    // A key held by another user is refused and leaves the user's count alone.
    let rules = Rules {
        policy: KeyPolicy::SameUser,
        limit: 1,
        kick_oldest: false,
    };
    s.sessions
        .connect(&session(22, "held", 10), "", "", rules)
        .await
        .unwrap();
    assert_eq!(
        s.sessions
            .connect(&session(23, "held", 11), "", "", rules)
            .await
            .unwrap(),
        Connected::KeyHeld { holder: 22 }
    );
    assert_eq!(
        s.sessions
            .connect(&session(23, "own", 12), "", "", rules)
            .await
            .unwrap(),
        Connected::Admitted {
            replaced: None,
            kicked: vec![]
        }
    );
    assert_eq!(
        s.sessions
            .connect(&session(23, "more", 13), "", "", rules)
            .await
            .unwrap(),
        Connected::UserFull { held: 1 }
    );
}

/// Every part of the contract, against one backend.
async fn contract(backend: Backend) {
    key_claims(&backend).await;
    sessions_and_registry(&backend).await;
    inboxes_and_room_histories(&backend).await;
    user_connections(&backend).await;
    connection_rooms(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_embedded() {
    contract(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis() {
    contract(Backend::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_cluster() {
    contract(Backend::cluster().await).await;
}
