//! Cluster mode end to end: separate `imgate comet`, `imgate logic` and `imgate job`
//! processes on a real Redis and a real Kafka-protocol broker, real clients, real HTTP, and
//! processes killed with SIGKILL.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use imgate::client::Transport;
use support::cluster::{Cluster, Timers};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_push_through_one_logic_reaches_a_client_on_another_comet_via_kafka() {
    let c = Cluster::start(2, 2, 1);
    let a = Subscriber::start(c.comets[0].tcp, Transport::Tcp, 1, "", "", &[1000]);
    let b = Subscriber::start(
        c.comets[1].ws,
        Transport::WebSocket,
        2,
        "key-b",
        "",
        &[1000],
    );
    let answer = push(
        c.http(1),
        "/goim/push/mids?operation=1000&mids=1",
        "via logic 2",
    );
    assert_eq!(answer["data"]["connections"], 1, "{}", c.logs());
    assert_eq!(a.next(WAIT), (1000, "via logic 2".into()), "{}", c.logs());
    let answer = push(
        c.http(0),
        "/goim/push/keys?operation=1000&keys=key-b",
        "by key",
    );
    assert_eq!(answer["data"]["connections"], 1);
    assert_eq!(b.next(WAIT), (1000, "by key".into()));
}

#[test]
fn room_messages_reach_members_on_both_comets_exactly_once_and_in_order() {
    let c = Cluster::start(2, 2, 1);
    let members: Vec<Subscriber> = (0..4)
        .map(|i| {
            let comet = &c.comets[i % 2];
            let (addr, t) = if i < 2 {
                (comet.tcp, Transport::Tcp)
            } else {
                (comet.ws, Transport::WebSocket)
            };
            Subscriber::start(addr, t, i as i64 + 1, "", "live://42", &[])
        })
        .collect();
    for n in 0..50 {
        // Alternate logics: each push is acknowledged by the broker before the next is sent,
        // so the room's partition holds them in this order.
        push(
            c.http(n % 2),
            "/goim/push/room?operation=1000&type=live&room=42",
            &n.to_string(),
        );
    }
    push(
        c.http(0),
        "/goim/push/room?operation=1001&type=live&room=42",
        "end",
    );
    for (i, m) in members.iter().enumerate() {
        for n in 0..50 {
            assert_eq!(
                m.next(WAIT),
                (1000, n.to_string()),
                "member {i}\n{}",
                c.logs()
            );
        }
        assert_eq!(
            m.next(WAIT),
            (1001, "end".into()),
            "member {i} got a duplicate"
        );
    }
}

#[test]
fn a_push_by_mid_reaches_every_device_of_the_user_across_comets() {
    let c = Cluster::start(2, 1, 1);
    let devices = [
        Subscriber::start(c.comets[0].tcp, Transport::Tcp, 5, "", "", &[1000]),
        Subscriber::start(c.comets[1].ws, Transport::WebSocket, 5, "", "", &[1000]),
        Subscriber::start(c.comets[1].tcp, Transport::Tcp, 5, "", "", &[1000]),
    ];
    let other = Subscriber::start(c.comets[0].tcp, Transport::Tcp, 6, "", "", &[1000]);
    let answer = push(
        c.http(0),
        "/goim/push/mids?operation=1000&mids=5",
        "to every device",
    );
    assert_eq!(answer["data"]["connections"], 3);
    for d in &devices {
        assert_eq!(d.next(WAIT), (1000, "to every device".into()));
    }
    push(c.http(0), "/goim/push/mids?operation=1000&mids=6", "to 6");
    assert_eq!(other.next(WAIT).1, "to 6", "user 6 saw user 5's push first");
}

#[test]
fn killing_a_job_mid_stream_loses_no_message() {
    let mut c = Cluster::start(1, 1, 2);
    const ROOMS: usize = 8;
    const MESSAGES: usize = 160;
    // Eight rooms spread over the topic's partitions, so both jobs carry some of them.
    let members: Vec<Subscriber> = (0..ROOMS)
        .map(|r| {
            Subscriber::start(
                c.comets[0].tcp,
                Transport::Tcp,
                r as i64 + 1,
                "",
                &format!("live://{r}"),
                &[],
            )
        })
        .collect();
    for n in 0..MESSAGES {
        if n == MESSAGES / 3 {
            c.jobs[0].kill();
        }
        let r = n % ROOMS;
        push(
            c.http(0),
            &format!("/goim/push/room?operation=1000&type=live&room={r}"),
            &n.to_string(),
        );
    }
    let mut duplicates = 0;
    for (r, m) in members.iter().enumerate() {
        let expected: Vec<usize> = (0..MESSAGES).filter(|n| n % ROOMS == r).collect();
        let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
        let mut first_seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(40);
        while seen.len() < expected.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((_, body)) = m.pushes.recv_timeout(left) else {
                panic!(
                    "room {r}: {} of {} messages, missing {:?}\n{}",
                    seen.len(),
                    expected.len(),
                    expected
                        .iter()
                        .filter(|n| !seen.contains_key(n))
                        .collect::<Vec<_>>(),
                    c.logs()
                );
            };
            let n: usize = body.parse().expect("a message number");
            let count = seen.entry(n).or_insert(0);
            *count += 1;
            if *count == 1 {
                first_seen.push(n);
            } else {
                duplicates += 1;
            }
        }
        assert_eq!(
            first_seen, expected,
            "room {r}: messages first arrived out of order"
        );
    }
    // Redelivery is bounded by what the dead job had consumed but not committed.
    eprintln!("duplicates after the job was killed: {duplicates}");
    assert!(duplicates <= MESSAGES, "{duplicates} duplicates");
}

#[test]
fn a_dead_comet_leaves_the_registry_and_its_sessions_expire() {
    let mut c = Cluster::start_with(2, 1, 1, Timers::FAST);
    let alive = Subscriber::start(c.comets[0].tcp, Transport::Tcp, 1, "", "", &[1000]);
    let _doomed = Subscriber::start(c.comets[1].tcp, Transport::Tcp, 2, "", "", &[1000]);
    assert_eq!(
        push(c.http(0), "/goim/push/mids?operation=1000&mids=2", "x")["data"]["connections"],
        1
    );
    c.comets[1].proc.kill();
    let http_addr = c.http(0);
    eventually(WAIT, "comet-2 to leave the node list", || {
        let a = http(http_addr, "GET", "/goim/nodes/instances", b"");
        !a.json.to_string().contains("\"comet-2\"")
    });
    eventually(WAIT, "the dead comet's session to expire", || {
        push(http_addr, "/goim/push/mids?operation=1000&mids=2", "x")["data"]["connections"] == 0
    });
    // The live client's session is kept fresh by its heartbeats meanwhile.
    assert_eq!(
        push(
            http_addr,
            "/goim/push/mids?operation=1000&mids=1",
            "still here"
        )["data"]["connections"],
        1
    );
    assert_eq!(alive.next(WAIT).1, "still here");
}

#[test]
fn a_redis_restart_fails_pushes_clearly_and_then_recovers() {
    let mut c = Cluster::start_with(1, 1, 1, Timers::FAST);
    let sub = Subscriber::start(c.comets[0].tcp, Transport::Tcp, 1, "", "", &[1000]);
    c.redis.stop();
    let started = Instant::now();
    let a = http(
        c.http(0),
        "POST",
        "/goim/push/mids?operation=1000&mids=1",
        b"lost?",
    );
    assert!(
        a.status >= 500,
        "a push without Redis is a 5xx: {:?}",
        a.json
    );
    assert_eq!(a.json["code"], -500);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the failure came fast"
    );
    c.redis.restart();
    // The new Redis is empty: heartbeats re-create the session, online reports the registry.
    let http_addr = c.http(0);
    eventually(WAIT, "pushes to reach the client again", || {
        let a = http(
            http_addr,
            "POST",
            "/goim/push/mids?operation=1000&mids=1",
            b"back",
        );
        a.status == 200 && a.json["data"]["connections"] == 1
    });
    assert_eq!(sub.next(WAIT).1, "back");
    // New clients connect again too.
    let fresh = Subscriber::start(c.comets[0].ws, Transport::WebSocket, 2, "", "", &[1000]);
    push(http_addr, "/goim/push/mids?operation=1000&mids=2", "hello");
    assert_eq!(fresh.next(WAIT).1, "hello");
}

#[test]
fn a_broker_restart_fails_pushes_clearly_and_then_recovers() {
    let mut c = Cluster::start(1, 1, 1);
    let sub = Subscriber::start(c.comets[0].tcp, Transport::Tcp, 1, "", "live://9", &[]);
    push(
        c.http(0),
        "/goim/push/room?operation=1000&type=live&room=9",
        "before",
    );
    assert_eq!(sub.next(WAIT).1, "before");
    c.kafka.stop();
    let started = Instant::now();
    let a = http(
        c.http(0),
        "POST",
        "/goim/push/room?operation=1000&type=live&room=9",
        b"during",
    );
    assert!(
        a.status >= 500,
        "a push without the broker is a 5xx: {:?}",
        a.json
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the failure came without hanging"
    );
    c.kafka.restart();
    // The test broker keeps its log in memory, so it comes back with an empty topic while the
    // consumer still holds its old position; the first messages of the new log can fall below
    // that position (a durable broker keeps offsets across restarts). So: push until one push
    // after the restart arrives, then every later push must arrive, in order.
    let http_addr = c.http(0);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut attempt = 0;
    'recovered: loop {
        assert!(
            Instant::now() < deadline,
            "no push got through after the restart\n{}",
            c.logs()
        );
        attempt += 1;
        let body = format!("after-{attempt}");
        let path = "/goim/push/room?operation=1000&type=live&room=9";
        if http(http_addr, "POST", path, body.as_bytes()).status != 200 {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        while let Ok((_, got)) = sub.pushes.recv_timeout(Duration::from_millis(500)) {
            if got.starts_with("after-") {
                break 'recovered;
            }
            assert_eq!(got, "during", "only the refused push may show up late");
        }
    }
    for n in 0..5 {
        push(
            http_addr,
            "/goim/push/room?operation=1000&type=live&room=9",
            &format!("final-{n}"),
        );
    }
    let mut finals = Vec::new();
    while finals.len() < 5 {
        let (_, got) = sub.next(WAIT);
        if got.starts_with("final-") {
            finals.push(got);
        }
    }
    assert_eq!(
        finals,
        (0..5).map(|n| format!("final-{n}")).collect::<Vec<_>>()
    );
}

#[test]
fn a_comet_killed_mid_stream_loses_no_stored_message() {
    use imgate_shared::frame::op;
    let mut c = Cluster::start(2, 1, 1);
    let auth = serde_json::json!({"mid": 77, "accepts": [1000], "acks": true}).to_string();
    let mut first = imgate::client::Client::connect(c.comets[0].tcp, Transport::Tcp).unwrap();
    first.auth(&auth).unwrap();
    let mut received = std::collections::BTreeSet::new();
    for n in 1..=40 {
        if n == 21 {
            c.comets[0].proc.kill();
        }
        let a = http(
            c.http(0),
            "POST",
            "/goim/push/mids?operation=1000&mids=77",
            n.to_string().as_bytes(),
        );
        assert_eq!(a.status, 200, "push {n}: {:?}", a.json);
        if n <= 20 {
            // (ack replies, op 21, stay queued and are skipped here)
            let f = first.recv_op(1000, WAIT).expect("a push before the kill");
            assert_eq!(f.seq, n, "stored pushes carry their sequence");
            received.insert(f.seq);
            // Acknowledge the first ten only: the rest must come again.
            if n <= 10 {
                first.send(1, op::ACK, n, n.to_string().as_bytes()).unwrap();
            }
        }
    }
    let mut second = imgate::client::Client::connect(c.comets[1].tcp, Transport::Tcp).unwrap();
    second.auth(&auth).unwrap();
    let mut again = Vec::new();
    while again.last() != Some(&40) {
        let f = second
            .recv(WAIT)
            .unwrap_or_else(|e| panic!("after {again:?}: {e}\n{}", c.logs()));
        again.push(f.seq);
    }
    // Everything not acknowledged, in order, nothing acknowledged.
    assert_eq!(again, (11..=40).collect::<Vec<_>>());
    received.extend(again);
    assert_eq!(received.len(), 40);
}
