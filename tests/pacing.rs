//! Adaptive room batching end to end: a room big for its cluster is paced (its pushes leave in
//! few, growing batches), a lone push still arrives in milliseconds, every message arrives
//! once and in order either way, and an idle gateway spends its spare time on latency.

mod support;

use std::time::{Duration, Instant};

use imgate::client::Transport;
use imgate::standalone::Gateway;
use support::{eventually, test_config, Subscriber};

const PATH: &str = "/goim/push/room?operation=1000&type=live&room=paced";

#[test]
fn a_big_room_gets_few_growing_batches_and_a_lone_push_stays_fast() {
    let mut config = test_config();
    // 2 shards x 10 writes/s: a 20-member room flushes at most once a second (the budget
    // fixed: not learned from the comets' load).
    config.job.room_writes_per_shard = 10;
    config.job.room_busy_target = 0.0;
    config.job.room_max_interval = Duration::from_secs(1);
    let g = Gateway::start(config).expect("gateway starts");
    let members: Vec<Subscriber> = (0..20)
        .map(|i| {
            Subscriber::start(
                g.tcp_addr(),
                Transport::Tcp,
                0,
                &format!("p{i}"),
                "live://paced",
                &[],
            )
        })
        .collect();
    // job learns room sizes from the comets' online reports (every 200 ms here).
    eventually(Duration::from_secs(5), "room size reported", || {
        let online = support::http(
            g.http_addr(),
            "GET",
            "/goim/online/room?type=live&rooms=paced",
            b"",
        );
        online.json["data"]["paced"] == 20
    });
    std::thread::sleep(Duration::from_millis(300)); // one more registry read (100 ms)
                                                    // Operators see how often the room may flush: 20 members / (2 shards x 10) = 1 s.
    eventually(Duration::from_secs(2), "the paced interval shown", || {
        g.job().unwrap().stats().paced_interval_ms == 1_000
    });

    // Light load: the room has not flushed for a while, so a lone push goes out at once.
    let sent = Instant::now();
    support::push(g.http_addr(), PATH, "lone");
    for m in &members {
        assert_eq!(m.next(Duration::from_secs(5)).1, "lone");
    }
    let lone = sent.elapsed();

    // A stream right after: 30 pushes in about 300 ms leave in at most two batches (one when
    // the second since the lone push's flush is up, one for any stragglers).
    let batches_before = g.job().unwrap().stats().room_batches;
    for i in 0..30 {
        support::push(g.http_addr(), PATH, &format!("m{i:02}"));
        std::thread::sleep(Duration::from_millis(10));
    }
    for (n, m) in members.iter().enumerate() {
        for i in 0..30 {
            let (_, body) = m.next(Duration::from_secs(5));
            assert_eq!(body, format!("m{i:02}"), "member {n}");
        }
    }
    let batches = g.job().unwrap().stats().room_batches - batches_before;
    eprintln!("lone push took {lone:?}; 30 pushes left in {batches} batches");
    assert!(lone < Duration::from_millis(500), "lone push took {lone:?}");
    assert!(
        batches <= 2,
        "30 pushes to a paced room left in {batches} batches"
    );
    g.shutdown();
}

/// With the comets idle, job learns it may write to big rooms more often than the nominal
/// budget says: a room that the nominal budget would flush four times a second gets its
/// pushes in tens of milliseconds.
#[test]
fn an_idle_gateway_delivers_big_room_pushes_in_tens_of_milliseconds() {
    let mut config = test_config();
    // 2 shards x 200 writes/s nominal: 100 members would flush every 250 ms.
    config.job.room_writes_per_shard = 200;
    config.job.room_max_interval = Duration::from_secs(1);
    let g = Gateway::start(config).expect("gateway starts");
    let members: Vec<Subscriber> = (0..100)
        .map(|i| {
            Subscriber::start(
                g.tcp_addr(),
                Transport::Tcp,
                0,
                &format!("i{i}"),
                "live://idle",
                &[],
            )
        })
        .collect();
    // Idle comets: the learned budget climbs to four times the nominal one (an interval of
    // about 60 ms, less than the pushes' spacing below).
    eventually(Duration::from_secs(15), "the budget to grow", || {
        g.job().unwrap().stats().room_budget_permille >= 4_000
    });
    let mut took = Vec::new();
    for i in 0..10 {
        let sent = Instant::now();
        support::push(
            g.http_addr(),
            "/goim/push/room?operation=1000&type=live&room=idle",
            &format!("n{i}"),
        );
        for m in &members {
            assert_eq!(m.next(Duration::from_secs(5)).1, format!("n{i}"));
        }
        took.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(80));
    }
    took.sort();
    eprintln!("room push to 100 idle members: {took:?}");
    // The fastest shows what the gateway does when nothing disturbs it; the median allows for
    // a busy test machine. Paced by the nominal budget, most would wait out the 250 ms.
    assert!(took[0] < Duration::from_millis(50), "{took:?}");
    assert!(took[5] < Duration::from_millis(150), "{took:?}");
    g.shutdown();
}

/// A room that fills up between two online reports is reported early, so job paces it within
/// seconds instead of at the next scheduled report (a minute here).
#[test]
fn a_room_that_fills_up_is_reported_and_paced_early() {
    let mut config = test_config();
    config.comet.online_interval = Duration::from_secs(60);
    config.comet.online_early_members = 5;
    // 2 shards x 10 writes/s: once job knows of at least 5 members, the room is paced.
    config.job.room_writes_per_shard = 10;
    config.job.room_busy_target = 0.0;
    config.job.room_max_interval = Duration::from_secs(1);
    let g = Gateway::start(config).expect("gateway starts");
    // The start-up report (no rooms yet) is in before the members come.
    eventually(Duration::from_secs(5), "the comet registered", || {
        g.job().unwrap().stats().connected >= 1
    });
    let _members: Vec<Subscriber> = (0..20)
        .map(|i| {
            Subscriber::start(
                g.tcp_addr(),
                Transport::Tcp,
                0,
                &format!("f{i}"),
                "live://filling",
                &[],
            )
        })
        .collect();
    let joined = Instant::now();
    eventually(Duration::from_secs(10), "the room paced", || {
        g.job().unwrap().stats().paced_interval_ms > 0
    });
    eprintln!("paced {:?} after the members joined", joined.elapsed());
    g.shutdown();
}
