//! Offline messages and reliable delivery, end to end on the embedded store and (for the
//! storage-sensitive cases) on a real Redis: pushes by mid are
//! stored with a per-user sequence (carried in the frame header's seq) and delivered on
//! connect; clients acknowledge with op 20 or, if they never announced acks, a message written
//! to their socket counts as delivered; op 22 resends by sequence.

mod support;

use std::time::Duration;

use imgate::client::{Client, Transport};
use imgate_shared::config::{RedisConfig, StoreBackend};
use imgate_shared::frame::op;
use support::*;

const WAIT: Duration = Duration::from_secs(5);

/// A gateway on the embedded store, and one on a real Redis (kept alive beside it): the tests
/// that matter for storage run on both.
fn gateways() -> Vec<(imgate::standalone::Gateway, Option<imgate_testkit::Redis>)> {
    let redis = imgate_testkit::Redis::start();
    let mut config = test_config();
    config.store.backend = StoreBackend::Redis(RedisConfig {
        urls: vec![redis.url()],
        ..RedisConfig::default()
    });
    let on_redis = imgate::standalone::Gateway::start(config).expect("gateway on Redis starts");
    vec![(gateway(), None), (on_redis, Some(redis))]
}

fn auth_json(mid: i64, acks: bool, room: &str) -> String {
    serde_json::json!({"mid": mid, "room_id": room, "accepts": [1000], "acks": acks}).to_string()
}

fn connect(addr: std::net::SocketAddr, transport: Transport, mid: i64, acks: bool) -> Client {
    let mut c = Client::connect(addr, transport).unwrap();
    c.auth(&auth_json(mid, acks, "")).unwrap();
    c
}

/// The next push as (seq, body).
fn next(c: &mut Client) -> (i32, String) {
    let f = c.recv(WAIT).expect("a push arrives");
    assert_eq!(f.op, 1000, "unexpected frame {f:?}");
    (f.seq, String::from_utf8_lossy(&f.body).to_string())
}

fn push_mid(g: &imgate::standalone::Gateway, mid: i64, body: &str) -> serde_json::Value {
    push(
        g.http_addr(),
        &format!("/goim/push/mids?operation=1000&mids={mid}"),
        body,
    )
}

fn inbox_state(g: &imgate::standalone::Gateway, mid: i64) -> serde_json::Value {
    let a = http(
        g.http_addr(),
        "GET",
        &format!("/goim/inbox/state?mids={mid}"),
        b"",
    );
    assert_eq!(a.status, 200, "{:?}", a.json);
    a.json["data"][mid.to_string()].clone()
}

#[test]
fn an_offline_user_gets_every_message_in_order_on_connect() {
    for (g, _redis) in gateways() {
        offline_user_in_order(g);
    }
}

fn offline_user_in_order(g: imgate::standalone::Gateway) {
    for i in 1..=5 {
        let answer = push_mid(&g, 50, &format!("m{i}"));
        assert_eq!(answer["data"]["connections"], 0);
        assert_eq!(
            answer["data"]["stored"]["50"], i,
            "the answer names the stored sequence"
        );
        assert_eq!(answer["data"]["offline"], serde_json::json!([50]));
    }
    assert_eq!(
        inbox_state(&g, 50),
        serde_json::json!({"last_seq": 5, "acked_seq": 0, "pending": 5})
    );
    let mut c = connect(g.ws_addr(), Transport::WebSocket, 50, true);
    for i in 1..=5 {
        assert_eq!(next(&mut c), (i, format!("m{i}")));
    }
    drop(c);
    g.shutdown();
}

#[test]
fn a_plain_goim_client_is_not_sent_the_same_stored_message_twice() {
    let g = gateway();
    push_mid(&g, 51, "one");
    push_mid(&g, 51, "two");
    {
        // No "acks" in the auth body: written to the socket counts as delivered.
        let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
        c.auth(&auth_body(51, "", "", &[1000])).unwrap();
        assert_eq!(next(&mut c), (1, "one".into()));
        assert_eq!(next(&mut c), (2, "two".into()));
        eventually(WAIT, "the written messages to count as delivered", || {
            inbox_state(&g, 51)["acked_seq"] == 2
        });
    }
    let mut again = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    again.auth(&auth_body(51, "", "", &[1000])).unwrap();
    push_mid(&g, 51, "three");
    assert_eq!(
        next(&mut again),
        (3, "three".into()),
        "one and two came again"
    );
    g.shutdown();
}

#[test]
fn acknowledged_messages_are_not_redelivered_and_the_rest_are() {
    for (g, _redis) in gateways() {
        acked_not_redelivered(g);
    }
}

fn acked_not_redelivered(g: imgate::standalone::Gateway) {
    for body in ["a", "b", "c"] {
        push_mid(&g, 52, body);
    }
    {
        let mut c = connect(g.tcp_addr(), Transport::Tcp, 52, true);
        for i in 1..=3 {
            assert_eq!(next(&mut c).0, i);
        }
        c.send(1, op::ACK, 9, b"2").unwrap();
        let reply = c.recv_op(op::ACK_REPLY, WAIT).unwrap();
        assert_eq!((reply.seq, reply.body.as_slice()), (9, &b"2"[..]));
        eventually(WAIT, "the ack to reach the inbox", || {
            inbox_state(&g, 52)["acked_seq"] == 2
        });
        // Receiving without acking does not count for a client that acks.
        assert_eq!(inbox_state(&g, 52)["pending"], 1);
    }
    let mut c = connect(g.ws_addr(), Transport::WebSocket, 52, true);
    assert_eq!(
        next(&mut c),
        (3, "c".into()),
        "only the unacknowledged message comes again"
    );
    push_mid(&g, 52, "d");
    assert_eq!(next(&mut c), (4, "d".into()));
    g.shutdown();
}

#[test]
fn sync_resends_exactly_the_missed_messages_of_the_inbox_and_of_a_room() {
    let g = gateway();
    let mut c = connect(g.tcp_addr(), Transport::Tcp, 53, true);
    for i in 1..=6 {
        push_mid(&g, 53, &format!("m{i}"));
        assert_eq!(next(&mut c).0, i);
    }
    // The client saw up to 4 before (say) a network blip; it asks for the rest.
    c.send(1, op::SYNC, 11, b"4").unwrap();
    assert_eq!(next(&mut c), (5, "m5".into()));
    assert_eq!(next(&mut c), (6, "m6".into()));
    let reply = c.recv(WAIT).unwrap();
    assert_eq!(
        (reply.op, reply.seq, reply.body.as_slice()),
        (op::SYNC_REPLY, 11, &b"4"[..])
    );

    // Room history: opted in per push, caught up by room sequence.
    for i in 1..=3 {
        let a = push(
            g.http_addr(),
            "/goim/push/room?operation=1000&type=live&room=h&history=1",
            &format!("r{i}"),
        );
        assert_eq!(a["data"]["seq"], i);
    }
    let mut late = Client::connect(g.ws_addr(), Transport::WebSocket).unwrap();
    late.auth(&auth_json(54, true, "live://h")).unwrap();
    late.send(1, op::SYNC, 12, b"live://h 1").unwrap();
    assert_eq!(next(&mut late), (2, "r2".into()));
    assert_eq!(next(&mut late), (3, "r3".into()));
    assert_eq!(late.recv(WAIT).unwrap().op, op::SYNC_REPLY);
    // A bad SYNC body is answered, empty, without messages.
    late.send(1, op::SYNC, 13, b"not a number").unwrap();
    let reply = late.recv(WAIT).unwrap();
    assert_eq!((reply.op, reply.body.len()), (op::SYNC_REPLY, 0));
    g.shutdown();
}

#[test]
fn a_push_during_connect_is_delivered_exactly_once() {
    for (g, _redis) in gateways() {
        push_during_connect(g);
    }
}

fn push_during_connect(g: imgate::standalone::Gateway) {
    let http_addr = g.http_addr();
    for round in 0..20 {
        let mid = 1000 + round;
        // Push while the client is connecting: the message lands before, during or after the
        // session is registered; it must arrive once whichever it is.
        let pusher = std::thread::spawn(move || {
            push(
                http_addr,
                &format!("/goim/push/mids?operation=1000&mids={mid}"),
                "racing",
            );
        });
        let mut c = connect(g.tcp_addr(), Transport::Tcp, mid, true);
        pusher.join().unwrap();
        assert_eq!(next(&mut c), (1, "racing".into()), "round {round}");
        push(
            http_addr,
            &format!("/goim/push/mids?operation=1000&mids={mid}"),
            "sentinel",
        );
        assert_eq!(
            next(&mut c),
            (2, "sentinel".into()),
            "round {round}: the racing push came twice"
        );
    }
    g.shutdown();
}

#[test]
fn inboxes_are_trimmed_by_count_and_by_age() {
    let mut config = test_config();
    config.store.inbox_max_messages = 3;
    config.store.inbox_ttl = Duration::from_millis(800);
    let g = imgate::standalone::Gateway::start(config).unwrap();
    for i in 1..=5 {
        push_mid(&g, 60, &format!("m{i}"));
    }
    assert_eq!(inbox_state(&g, 60)["pending"], 3);
    {
        let mut c = connect(g.tcp_addr(), Transport::Tcp, 60, true);
        assert_eq!(
            next(&mut c),
            (3, "m3".into()),
            "the oldest two were trimmed"
        );
        assert_eq!(next(&mut c), (4, "m4".into()));
        assert_eq!(next(&mut c), (5, "m5".into()));
    }
    push_mid(&g, 61, "old");
    eventually(WAIT, "the message to expire", || {
        inbox_state(&g, 61)["pending"] == 0
    });
    let mut c = connect(g.tcp_addr(), Transport::Tcp, 61, true);
    push_mid(&g, 61, "new");
    // The expired inbox started again: the new message is 1 and "old" is not delivered.
    assert_eq!(next(&mut c), (1, "new".into()));
    g.shutdown();
}

#[test]
fn a_user_with_two_devices_gets_every_message_on_each() {
    let g = gateway();
    let mut phone = connect(g.tcp_addr(), Transport::Tcp, 70, true);
    let mut web = connect(g.ws_addr(), Transport::WebSocket, 70, true);
    for i in 1..=10 {
        let a = push_mid(&g, 70, &format!("m{i}"));
        assert_eq!(a["data"]["connections"], 2);
    }
    for c in [&mut phone, &mut web] {
        for i in 1..=10 {
            assert_eq!(next(c), (i, format!("m{i}")));
        }
    }
    let bad = http(g.http_addr(), "GET", "/goim/inbox/state?mids=x", b"");
    assert_eq!(bad.status, 400, "{:?}", bad.json);
    g.shutdown();
}

#[test]
fn concurrent_pushes_to_one_user_arrive_once_each_even_when_they_overtake() {
    for (g, _redis) in gateways() {
        concurrent_pushes(g);
    }
}

/// Pushes racing through logic reach the connection out of sequence order; none may be taken
/// for a duplicate, and a plain client's written floor must not skip a late one.
fn concurrent_pushes(g: imgate::standalone::Gateway) {
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    c.auth(&auth_body(80, "", "", &[1000])).unwrap();
    let http_addr = g.http_addr();
    let pushers: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..25 {
                    push(
                        http_addr,
                        "/goim/push/mids?operation=1000&mids=80",
                        &format!("{t}-{i}"),
                    );
                }
            })
        })
        .collect();
    let mut seqs = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let (seq, _) = next(&mut c);
        assert!(seqs.insert(seq), "seq {seq} arrived twice");
    }
    for p in pushers {
        p.join().unwrap();
    }
    assert_eq!(seqs, (1..=200).collect());
    eventually(WAIT, "every written message to count as delivered", || {
        inbox_state(&g, 80) == serde_json::json!({"last_seq": 200, "acked_seq": 200, "pending": 0})
    });
    g.shutdown();
}

/// Stored messages go out a page at a time: an offline user with more than a page waiting gets
/// every message in order on connect, and again with op 22, on both stores.
#[test]
fn a_backlog_larger_than_a_page_arrives_whole_and_in_order() {
    for (g, _redis) in gateways() {
        let body = "b".repeat(3000);
        for _ in 0..100 {
            push_mid(&g, 61, &body);
        }
        // 300 KB waiting: about five 64 KiB pages. The client acks (it never does here), so
        // what it was sent stays stored for the sync below.
        let mut c = connect(g.tcp_addr(), Transport::Tcp, 61, true);
        for seq in 1..=100 {
            let (got, text) = next(&mut c);
            assert_eq!((got, text.len()), (seq, body.len()));
        }
        c.send(1, op::SYNC, 9, b"0").unwrap();
        for seq in 1..=100 {
            assert_eq!(next(&mut c).0, seq);
        }
        let reply = c.recv(WAIT).unwrap();
        assert_eq!((reply.op, reply.seq), (op::SYNC_REPLY, 9));
        g.shutdown();
    }
}

/// A connection's op-22 requests are served one after another, in order; beyond the one being
/// served and eight waiting, a request is answered at once with an empty reply and counted.
#[test]
fn syncs_wait_their_turn_and_too_many_are_refused() {
    let g = gateway();
    for i in 1..=3 {
        push(
            g.http_addr(),
            "/goim/push/room?operation=1000&type=live&room=q&history=1",
            &format!("q{i}"),
        );
    }
    let mut c = connect(g.tcp_addr(), Transport::Tcp, 0, false);
    let mut burst = Vec::new();
    for seq in 1..=20 {
        burst.extend_from_slice(&imgate_shared::frame::encode(
            1,
            op::SYNC,
            seq,
            b"live://q 0",
        ));
    }
    c.send_bytes(&burst).unwrap();
    // The refusals are answered as they are read, before any history goes out.
    for seq in 10..=20 {
        let f = c.recv(WAIT).unwrap();
        assert_eq!((f.op, f.seq, f.body.len()), (op::SYNC_REPLY, seq, 0));
    }
    for seq in 1..=9 {
        for i in 1..=3 {
            assert_eq!(next(&mut c), (i, format!("q{i}")));
        }
        let f = c.recv(WAIT).unwrap();
        assert_eq!(
            (f.op, f.seq, f.body),
            (op::SYNC_REPLY, seq, b"live://q 0".to_vec())
        );
    }
    assert_eq!(g.comet().stats().sync_refused, 11);
    g.shutdown();
}
