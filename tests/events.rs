//! Events for the business (`logic.events_url`) that are not lost: retried while the business
//! fails, in order per user; a full queue drops and counts; a graceful stop delivers what is
//! queued. Against a real HTTP business double, clients over real sockets.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imgate::client::{Client, Transport};
use imgate::standalone::Gateway;
use serde_json::Value;
use support::business::{Business, Reply};
use support::process::{sample, Imgate};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A business whose events endpoint answers 503 while `failing` is set and 200 otherwise;
/// `accepted` holds the events of the batches it answered 200, in arrival order.
struct Flaky {
    business: Business,
    failing: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    accepted: Arc<Mutex<Vec<Value>>>,
}

impl Flaky {
    fn start(failing: bool) -> Flaky {
        let failing = Arc::new(AtomicBool::new(failing));
        let failed = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let business = {
            let (failing, failed, accepted) = (failing.clone(), failed.clone(), accepted.clone());
            Business::start(move |r| {
                if failing.load(Ordering::SeqCst) {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return Reply::With(503, b"{}".to_vec());
                }
                let events = r.json().as_array().cloned().unwrap_or_default();
                accepted.lock().unwrap().extend(events);
                Reply::With(200, b"{}".to_vec())
            })
        };
        Flaky {
            business,
            failing,
            failed,
            accepted,
        }
    }

    fn accepted(&self) -> Vec<Value> {
        self.accepted.lock().unwrap().clone()
    }

    /// (event, key) of user `mid`'s accepted events, in arrival order.
    fn of(&self, mid: i64) -> Vec<(String, String)> {
        self.accepted()
            .iter()
            .filter(|e| e["mid"] == mid)
            .map(|e| {
                (
                    e["event"].as_str().unwrap().to_string(),
                    e["key"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// The business answers 503 to the first batches, then recovers: every event arrives, each
/// user's in the order they happened.
#[test]
fn events_survive_a_failing_business_in_order_per_user() {
    let flaky = Flaky::start(true);
    let mut config = test_config();
    config.logic.events_url = Some(flaky.business.url("/events"));
    config.logic.events_interval = Duration::from_millis(20);
    config.logic.events_batch = 3;
    let g = Gateway::start(config).unwrap();
    const USERS: i64 = 3;
    const ROUNDS: usize = 4;
    let mut expected: Vec<Vec<(String, String)>> = vec![Vec::new(); USERS as usize];
    for round in 0..ROUNDS {
        for mid in 1..=USERS {
            let key = format!("u{mid}-{round}");
            let c = client(g.tcp_addr(), Transport::Tcp, mid, &key, "", &[]);
            drop(c);
            // logic took the disconnect (and queued its event) before the next connect.
            eventually(WAIT, "the disconnect reaches logic", || {
                let path = format!("/goim/online/mids?mids={mid}");
                http(g.http_addr(), "GET", &path, b"").json["data"][mid.to_string()]
                    .as_array()
                    .is_some_and(|conns| conns.is_empty())
            });
            let seen = &mut expected[mid as usize - 1];
            seen.push(("connect".into(), key.clone()));
            seen.push(("disconnect".into(), key));
        }
        if round == 1 {
            // Half the events happened while the business failed: they are being retried.
            eventually(WAIT, "a failed POST", || {
                flaky.failed.load(Ordering::SeqCst) >= 2
            });
            assert!(flaky.accepted().is_empty());
            flaky.failing.store(false, Ordering::SeqCst);
        }
    }
    let total = USERS as usize * ROUNDS * 2;
    eventually(WAIT, "every event accepted", || {
        flaky.accepted().len() >= total
    });
    for mid in 1..=USERS {
        assert_eq!(
            flaky.of(mid),
            expected[mid as usize - 1],
            "user {mid}'s events"
        );
    }
    assert_eq!(flaky.accepted().len(), total, "no event twice");
    let stats = g.logic_stats();
    assert!(stats.events_post_failed >= 2);
    assert_eq!(stats.events_dropped, 0);
    g.shutdown();
}

/// The events queue is full at `logic.events_queue`: a further event is dropped, counted by
/// reason in /metrics; what was queued arrives once the business recovers.
#[test]
fn a_full_events_queue_drops_and_counts() {
    let flaky = Flaky::start(true);
    let mut config = test_config();
    config.logic.events_url = Some(flaky.business.url("/events"));
    config.logic.events_queue = 2;
    config.logic.events_batch = 1;
    config.logic.events_interval = Duration::from_millis(10);
    let g = Gateway::start(config).unwrap();
    let clients: Vec<Client> = (0..6)
        .map(|i| client(g.tcp_addr(), Transport::Tcp, 40 + i, "", "", &[]))
        .collect();
    let dropped = || {
        let answer = imgate::client::http::HttpClient::new(g.http_addr())
            .request("GET", "/metrics", &[], b"")
            .expect("/metrics answers");
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        sample(
            &text,
            "imgate_events_dropped_total",
            "reason=\"queue_full\"",
        )
        .unwrap_or(0.0)
    };
    // One batch in flight and two queued: the other three connect events are dropped.
    eventually(WAIT, "three events dropped", || dropped() >= 3.0);
    assert_eq!(g.logic_stats().events_dropped, 3);
    flaky.failing.store(false, Ordering::SeqCst);
    eventually(WAIT, "the kept events delivered", || {
        flaky.accepted().len() >= 3
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(flaky.accepted().len(), 3);
    assert!(flaky.accepted().iter().all(|e| e["event"] == "connect"));
    assert_eq!(dropped(), 3.0);
    drop(clients);
    g.shutdown();
}

/// SIGTERM while the business fails and events are queued: logic keeps delivering until
/// `logic.events_drain_timeout`, so once the business recovers within it, every event arrives,
/// the disconnects of the stop included, before the process exits.
#[test]
fn sigterm_delivers_the_queued_events() {
    let flaky = Flaky::start(true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imgate.toml");
    std::fs::write(
        &path,
        format!(
            "[auth]\ninsecure = true\n[logic]\nevents_url = \"{}\"\nevents_interval = \"20ms\"\n\
             events_drain_timeout = \"15s\"\n",
            flaky.business.url("/events")
        ),
    )
    .unwrap();
    let mut imgate = Imgate::start(false, 1, &["--config", path.to_str().unwrap()], &[]);
    imgate.wait_log("logic started", WAIT);
    let mut clients: Vec<Client> = Vec::new();
    for mid in 61..64 {
        let addr = imgate.tcp;
        let mut c = None;
        eventually(WAIT, "a client connects", || {
            c = Client::connect(addr, Transport::Tcp)
                .ok()
                .and_then(|mut c| c.auth(&auth_body(mid, "", "", &[])).ok().map(|_| c));
            c.is_some()
        });
        clients.push(c.unwrap());
    }
    eventually(WAIT, "a failed POST", || {
        flaky.failed.load(Ordering::SeqCst) >= 1
    });
    imgate.terminate();
    // The stop has begun; the business recovers within the drain deadline.
    std::thread::sleep(Duration::from_millis(500));
    assert!(flaky.accepted().is_empty());
    flaky.failing.store(false, Ordering::SeqCst);
    let (status, log) = imgate.exit_within(Duration::from_secs(30));
    assert!(status.success(), "imgate exited with {status}:\n{log}");
    let accepted = flaky.accepted();
    for mid in 61..64 {
        let events: Vec<&str> = accepted
            .iter()
            .filter(|e| e["mid"] == mid)
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            events,
            ["connect", "disconnect"],
            "user {mid}'s events:\n{log}"
        );
    }
}

/// A 4xx other than 408 and 429 is the business refusing the batch: retrying would not change
/// it, so it is dropped, counted (`reason="rejected"`), and the events after it still go.
#[test]
fn a_batch_the_business_refuses_is_dropped_and_counted() {
    let answered = Arc::new(AtomicUsize::new(0));
    let business = {
        let answered = answered.clone();
        Business::start(move |_| {
            let status = if answered.fetch_add(1, Ordering::SeqCst) == 0 {
                400
            } else {
                200
            };
            Reply::With(status, b"{}".to_vec())
        })
    };
    let mut config = test_config();
    config.logic.events_url = Some(business.url("/events"));
    config.logic.events_batch = 1;
    config.logic.events_interval = Duration::from_millis(10);
    let g = Gateway::start(config).unwrap();
    let _refused = client(g.tcp_addr(), Transport::Tcp, 81, "", "", &[]);
    eventually(WAIT, "the first batch answered", || {
        answered.load(Ordering::SeqCst) >= 1
    });
    let _taken = client(g.tcp_addr(), Transport::Tcp, 82, "", "", &[]);
    eventually(WAIT, "the next batch answered", || {
        answered.load(Ordering::SeqCst) >= 2
    });
    let batches: Vec<Value> = business.received().iter().map(|r| r.json()).collect();
    assert_eq!(batches[0][0]["mid"], 81);
    assert_eq!(batches[1][0]["mid"], 82);
    assert_eq!(batches.len(), 2, "the refused batch is not sent again");
    let answer = imgate::client::http::HttpClient::new(g.http_addr())
        .request("GET", "/metrics", &[], b"")
        .expect("/metrics answers");
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    assert_eq!(
        sample(&text, "imgate_events_dropped_total", "reason=\"rejected\""),
        Some(1.0)
    );
    let stats = g.logic_stats();
    assert_eq!((stats.events_dropped, stats.events_sent), (1, 1));
    g.shutdown();
}
