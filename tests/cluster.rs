//! Cluster mode end to end: separate `imgate comet`, `imgate logic` and `imgate job`
//! processes on a real Redis and a real broker (a Kafka-protocol broker; the pushes across
//! comets and logics on nats-server with JetStream too), real clients, real HTTP, and
//! processes killed with SIGKILL. Restarts and kills of every service, with every push
//! counted, are in `faults.rs`.

mod support;

use std::time::Duration;

use imgate::client::Transport;
use support::cluster::{Bus, Cluster, Setup, Timers};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_push_through_one_logic_reaches_a_client_on_another_comet_via_kafka() {
    a_push_through_one_logic_reaches_a_client_on_another_comet(Bus::Kafka);
}

#[test]
fn a_push_through_one_logic_reaches_a_client_on_another_comet_via_nats() {
    a_push_through_one_logic_reaches_a_client_on_another_comet(Bus::Nats);
}

fn on(bus: Bus, comets: usize, logics: usize, jobs: usize) -> Cluster {
    Cluster::start_setup(
        comets,
        logics,
        jobs,
        Setup {
            bus,
            ..Setup::default()
        },
    )
}

fn a_push_through_one_logic_reaches_a_client_on_another_comet(bus: Bus) {
    let c = on(bus, 2, 2, 1);
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
    room_messages_reach_members_on_both_comets(Bus::Kafka);
}

/// Through two logics and two jobs sharing the partitions.
#[test]
fn room_messages_reach_members_on_both_comets_exactly_once_and_in_order_via_nats() {
    room_messages_reach_members_on_both_comets(Bus::Nats);
}

fn room_messages_reach_members_on_both_comets(bus: Bus) {
    let c = on(bus, 2, 2, if bus == Bus::Nats { 2 } else { 1 });
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

/// The per-user limit holds across comets and logics: with one connection per user and
/// `kick_oldest`, a user connecting on another comet closes the first connection there (through
/// the bus); presence through either logic lists the one that is left.
#[test]
fn a_users_connection_limit_and_presence_hold_across_comets() {
    let c = Cluster::start_setup(
        2,
        2,
        1,
        support::cluster::Setup {
            comet_extra: "max_conns_per_user = 1\nkick_oldest = true",
            ..Default::default()
        },
    );
    let auth = |platform: &str| {
        serde_json::json!({"mid": 31, "platform": platform, "accepts": [1000]}).to_string()
    };
    let mut first = imgate::client::Client::connect(c.comets[0].tcp, Transport::Tcp).unwrap();
    first.auth(&auth("web")).unwrap();
    let presence = |logic: usize| {
        let a = http(c.http(logic), "GET", "/goim/online/mids?mids=31", b"");
        assert_eq!(a.status, 200, "{:?}", a.json);
        a.json["data"]["31"].as_array().unwrap().clone()
    };
    let listed = presence(1);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["comet"], c.comets[0].id.as_str());
    assert_eq!(listed[0]["platform"], "web");
    let mut second = imgate::client::Client::connect(c.comets[1].ws, Transport::WebSocket).unwrap();
    second.auth(&auth("ios")).unwrap();
    assert!(
        first.wait_closed(WAIT),
        "the oldest closed on the other comet\n{}",
        c.logs()
    );
    for logic in [0, 1] {
        let listed = presence(logic);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["comet"], c.comets[1].id.as_str());
        assert_eq!(listed[0]["platform"], "ios");
    }
    let answer = push(
        c.http(0),
        "/goim/push/mids?operation=1000&mids=31",
        "to the newest",
    );
    assert_eq!(answer["data"]["connections"], 1);
    assert_eq!(second.recv_op(1000, WAIT).unwrap().body, b"to the newest");
}

/// The business side in cluster mode: the connect hook admits, a client message goes to the
/// business and back through whichever logic the comet talks to, and the events arrive.
#[test]
fn the_business_hooks_work_across_logics() {
    use base64::Engine;
    use support::business::{Business, Reply};
    let business = Business::start(|r| match r.path.as_str() {
        "/connect" => Reply::With(200, br#"{"mid": 61, "platform": "ios"}"#.to_vec()),
        "/upstream" => {
            let body = r.json()["body"].as_str().unwrap().to_string();
            let mut answer = b"echo:".to_vec();
            answer.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .unwrap(),
            );
            Reply::With(200, answer)
        }
        _ => Reply::With(204, Vec::new()),
    });
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let c = Cluster::start_setup(
        2,
        2,
        1,
        support::cluster::Setup {
            logic_extra: leak(format!(
                "upstream_url = \"{}\"\nevents_url = \"{}\"\nevents_interval = \"100ms\"",
                business.url("/upstream"),
                business.url("/events")
            )),
            auth_extra: leak(format!(
                "connect_url = \"{}\"\nconnect_timeout = \"1s\"",
                business.url("/connect")
            )),
            ..Default::default()
        },
    );
    let mut clients = Vec::new();
    for (i, comet) in c.comets.iter().enumerate() {
        let mut client = imgate::client::Client::connect(comet.tcp, Transport::Tcp).unwrap();
        client
            .auth(&format!(
                r#"{{"token": "session-{i}", "key": "hooked-{i}"}}"#
            ))
            .unwrap();
        client
            .send(1, imgate_shared::frame::op::SEND_MSG, 9, b"ping")
            .unwrap();
        let answer = client
            .recv_op(imgate_shared::frame::op::SEND_MSG_REPLY, WAIT)
            .unwrap();
        assert_eq!((answer.seq, answer.body.as_slice()), (9, &b"echo:ping"[..]));
        clients.push(client);
    }
    let a = http(c.http(0), "GET", "/goim/online/mids?mids=61", b"");
    let listed = a.json["data"]["61"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|e| e["platform"] == "ios"));
    let upstream: Vec<serde_json::Value> = business
        .received()
        .iter()
        .filter(|r| r.path == "/upstream")
        .map(|r| r.json())
        .collect();
    assert_eq!(upstream.len(), 2);
    assert!(upstream
        .iter()
        .all(|m| m["mid"] == 61 && m["platform"] == "ios"));
    drop(clients);
    eventually(WAIT, "two connects and two disconnects", || {
        let events: Vec<serde_json::Value> = business
            .received()
            .iter()
            .filter(|r| r.path == "/events")
            .flat_map(|r| r.json().as_array().unwrap().clone())
            .collect();
        events.iter().filter(|e| e["event"] == "connect").count() == 2
            && events.iter().filter(|e| e["event"] == "disconnect").count() == 2
    });
}

/// The business's join, leave and kick in cluster mode: asked of either logic, they travel
/// logic → Kafka → job → the comet holding each connection, like pushes.
#[test]
fn the_business_joins_leaves_and_kicks_connections_on_other_comets() {
    let c = Cluster::start(2, 2, 1);
    let a = Subscriber::start(
        c.comets[0].tcp,
        Transport::Tcp,
        71,
        "ck-a",
        "live://c-home",
        &[1000],
    );
    let b = Subscriber::start(
        c.comets[1].ws,
        Transport::WebSocket,
        72,
        "ck-b",
        "",
        &[1000],
    );
    let answer = push(
        c.http(1),
        "/goim/rooms/join?type=live&room=c1&mids=71&mids=72",
        "",
    );
    assert_eq!(answer["data"]["connections"], 2, "{}", c.logs());
    assert_eq!(a.next(WAIT), (25, "live://c1".into()), "{}", c.logs());
    assert_eq!(b.next(WAIT), (25, "live://c1".into()), "{}", c.logs());
    // Presence lists the joined room, from the store any logic reads (Redis here).
    eventually(WAIT, "presence to list the joined room", || {
        let a = http(c.http(0), "GET", "/goim/online/mids?mids=71", b"");
        a.json["data"]["71"][0]["rooms"] == serde_json::json!(["live://c-home", "live://c1"])
    });
    push(
        c.http(0),
        "/goim/push/room?operation=1000&type=live&room=c1",
        "both",
    );
    assert_eq!(a.next(WAIT), (1000, "both".into()));
    assert_eq!(b.next(WAIT), (1000, "both".into()));

    let answer = push(
        c.http(0),
        "/goim/rooms/leave?type=live&room=c1&keys=ck-a",
        "",
    );
    assert_eq!(answer["data"]["connections"], 1);
    assert_eq!(a.next(WAIT), (27, "live://c1".into()));
    push(
        c.http(0),
        "/goim/push/room?operation=1000&type=live&room=c1",
        "only b",
    );
    assert_eq!(b.next(WAIT), (1000, "only b".into()));
    push(
        c.http(1),
        "/goim/push/room?operation=1000&type=live&room=c-home",
        "sentinel",
    );
    assert_eq!(a.next(WAIT), (1000, "sentinel".into()), "a still got c1");

    let answer = push(c.http(0), "/goim/kick?mids=72&reason=bye", "");
    assert_eq!(answer["data"]["connections"], 1);
    assert_eq!(b.next(WAIT), (6, "bye".into()), "{}", c.logs());
    assert!(
        matches!(
            b.pushes.recv_timeout(WAIT),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ),
        "the kicked connection stays open"
    );
}

#[test]
fn events_survive_a_logic_and_a_job_killed_while_the_business_fails_via_kafka() {
    events_survive_a_logic_and_a_job_killed_while_the_business_fails(Bus::Kafka);
}

#[test]
fn events_survive_a_logic_and_a_job_killed_while_the_business_fails_via_nats() {
    events_survive_a_logic_and_a_job_killed_while_the_business_fails(Bus::Nats);
}

/// Cluster mode: logic publishes each event to the bus before it answers the comet, and the
/// job process POSTs them, acknowledging each only once the business answered 2xx. So events
/// taken while the business fails outlive the logic that took them and the job that was posting
/// them (both SIGKILL), and every user's arrive in order once the business recovers.
fn events_survive_a_logic_and_a_job_killed_while_the_business_fails(bus: Bus) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use support::business::{Business, Reply};
    let failing = Arc::new(AtomicBool::new(true));
    let failed = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let business = {
        let (failing, failed, accepted) = (failing.clone(), failed.clone(), accepted.clone());
        Business::start(move |r| {
            if failing.load(Ordering::SeqCst) {
                failed.fetch_add(1, Ordering::SeqCst);
                return Reply::With(503, Vec::new());
            }
            accepted
                .lock()
                .unwrap()
                .extend(r.json().as_array().cloned().unwrap_or_default());
            Reply::With(200, Vec::new())
        })
    };
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut c = Cluster::start_setup(
        1,
        1,
        1,
        Setup {
            bus,
            logic_extra: leak(format!(
                "events_url = \"{}\"\nevents_interval = \"50ms\"\nevents_batch = 2",
                business.url("/events")
            )),
            ..Setup::default()
        },
    );
    let mids = [71, 72, 73];
    let clients: Vec<_> = mids
        .iter()
        .map(|&mid| {
            let key = format!("ev-{mid}");
            client(c.comets[0].tcp, Transport::Tcp, mid, &key, "", &[])
        })
        .collect();
    // Each connect was answered, so its event is on the bus; the business fails them.
    eventually(WAIT, "a failed POST of events", || {
        failed.load(Ordering::SeqCst) >= 1
    });
    c.logics[0].proc.kill();
    // The job process posting them dies too, before any was answered 2xx: the next one takes
    // them from the bus.
    let failed_before = failed.load(Ordering::SeqCst);
    c.jobs[0].kill();
    c.jobs[0].start();
    eventually(WAIT * 2, "the restarted job posting the events", || {
        failed.load(Ordering::SeqCst) > failed_before
    });
    failing.store(false, Ordering::SeqCst);
    let of = |mid: i64| -> Vec<String> {
        accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["mid"] == mid)
            .map(|e| e["event"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    eventually(WAIT * 2, "the connects taken by the killed logic", || {
        mids.iter().all(|&mid| of(mid) == ["connect"])
    });
    // A new logic takes the disconnects; each user's events stay in order.
    c.logics[0].proc.start();
    imgate_testkit::wait_for_port(c.logics[0].http.port(), WAIT, "logic");
    drop(clients);
    eventually(WAIT * 2, "the disconnects", || {
        mids.iter().all(|&mid| of(mid).len() >= 2)
    });
    for mid in mids {
        assert_eq!(
            of(mid),
            ["connect", "disconnect"],
            "user {mid}\n{}",
            c.logs()
        );
    }
}
