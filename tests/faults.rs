//! Faults in cluster mode, with real processes: Redis restarted, the broker restarted (Kafka, and
//! nats-server in `on_nats`), a comet killed with SIGKILL, a job killed mid-batch (on either
//! bus), logic restarted.
//!
//! Every test counts the same way. A [`Pusher`] sends a numbered stream of pushes throughout
//! the fault and records every answer; a push answered HTTP 200 with code 0 is *acknowledged*
//! (for a push by mid, with the sequence each user's inbox gave it). [`Device`]s are real
//! clients, on their own threads, that behave as a client app does: they acknowledge stored
//! messages (op 20) and reconnect, to the next comet when theirs is gone. Once the fault has
//! cleared, each device must hold every acknowledged push meant for it, each stored one with
//! its sequence, within a bounded wait; a failure lists the missing numbers. Nothing arrives
//! twice on one connection; across reconnects a client gets again what it had not
//! acknowledged yet, and room pushes are at least once (README, "Delivery guarantees"): those
//! duplicates are counted and printed. Each test's doc comment says what the client sees.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imgate::client::{Client, ClientError, Transport};
use imgate_shared::frame::op;
use support::cluster::{try_http, Bus, Cluster, Setup, Timers};
use support::{eventually, http, push, Subscriber};

/// The business op every test pushes.
const OP: i32 = 1000;
/// How long a fault test waits for one phase (a fault to show, a service to come back).
const PHASE: Duration = Duration::from_secs(60);
/// How long the devices get, once the fault has cleared, to receive everything.
const CATCH_UP: Duration = Duration::from_secs(30);
/// How long a plain subscriber waits for its next push.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The business side: a numbered stream of pushes and what each one got back.

/// What one push got back.
#[derive(Debug, Clone)]
enum Answered {
    /// HTTP 200, code 0. `stored`: the inbox sequence per user (pushes by mid only).
    Acked { stored: BTreeMap<i64, u64> },
    /// Any other answer.
    Refused {
        status: u16,
        code: i64,
        message: String,
    },
    /// No logic answered.
    Unanswered,
}

/// One numbered push: which logic answered (if any), what, how fast, and the logics that
/// could not be reached before it.
#[derive(Debug, Clone)]
struct Outcome {
    n: u32,
    answered: Answered,
    via: Option<SocketAddr>,
    took: Duration,
    unreachable: Vec<(SocketAddr, String)>,
}

/// A numbered stream of pushes on its own thread: push `n` has the body `<tag><n>` and goes to
/// `path(n)` on the logics in turn; a logic that cannot be reached is skipped for the next
/// one, as a business server behind several logics would. One push at a time, paced.
struct Pusher {
    tag: &'static str,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pusher {
    fn start(
        tag: &'static str,
        logics: Vec<SocketAddr>,
        path: impl Fn(u32) -> String + Send + 'static,
    ) -> Pusher {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (outcomes, stop) = (outcomes.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let outcome = push_once(&logics, n as usize, n, &path(n), tag);
                    outcomes.lock().unwrap().push(outcome);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Pusher {
            tag,
            outcomes,
            stop,
            thread: Some(thread),
        }
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Waits until `count` more outcomes than now satisfy `which`; returns the first of them.
    fn wait_more(
        &self,
        count: usize,
        what: &str,
        c: &Cluster,
        which: impl Fn(&Outcome) -> bool,
    ) -> Outcome {
        let seen = self.outcomes().len();
        let deadline = Instant::now() + PHASE;
        loop {
            let fresh: Vec<Outcome> = self.outcomes()[seen..]
                .iter()
                .filter(|o| which(o))
                .cloned()
                .collect();
            if fresh.len() >= count {
                return fresh[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "stream {:?}: waited {PHASE:?} for {count} more pushes that {what}; got {}\n{}\n{}",
                self.tag,
                fresh.len(),
                summary(&self.outcomes()),
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `count` more acknowledged pushes.
    fn wait_acked(&self, count: usize, c: &Cluster) -> Outcome {
        self.wait_more(count, "are acknowledged", c, |o| {
            matches!(o.answered, Answered::Acked { .. })
        })
    }

    /// Stops the stream (after the push in flight) and returns every outcome.
    fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the pusher thread");
        }
        self.outcomes()
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn push_once(logics: &[SocketAddr], first: usize, n: u32, path: &str, tag: &str) -> Outcome {
    let body = format!("{tag}{n}");
    let started = Instant::now();
    let mut unreachable = Vec::new();
    for i in 0..logics.len() {
        let logic = logics[(first + i) % logics.len()];
        match try_http(logic, "POST", path, body.as_bytes()) {
            Ok(a) => {
                let code = a.json["code"].as_i64().unwrap_or(i64::MIN);
                let answered = if a.status == 200 && code == 0 {
                    let stored = a.json["data"]["stored"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(mid, seq)| {
                                    (mid.parse().expect("a mid"), seq.as_u64().expect("a seq"))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Answered::Acked { stored }
                } else {
                    Answered::Refused {
                        status: a.status,
                        code,
                        message: a.json["message"].as_str().unwrap_or_default().to_string(),
                    }
                };
                return Outcome {
                    n,
                    answered,
                    via: Some(logic),
                    took: started.elapsed(),
                    unreachable,
                };
            }
            Err(e) => unreachable.push((logic, e)),
        }
    }
    Outcome {
        n,
        answered: Answered::Unanswered,
        via: None,
        took: started.elapsed(),
        unreachable,
    }
}

/// "120 pushes: 100 acknowledged, 15 HTTP 500 code -500 (first: …), 5 unanswered".
fn summary(outcomes: &[Outcome]) -> String {
    let mut refused: BTreeMap<(u16, i64), (usize, String)> = BTreeMap::new();
    let (mut acked, mut unanswered) = (0, 0);
    for o in outcomes {
        match &o.answered {
            Answered::Acked { .. } => acked += 1,
            Answered::Refused {
                status,
                code,
                message,
            } => {
                refused
                    .entry((*status, *code))
                    .or_insert((0, message.clone()))
                    .0 += 1
            }
            Answered::Unanswered => unanswered += 1,
        }
    }
    let mut out = format!("{} pushes: {acked} acknowledged", outcomes.len());
    for ((status, code), (count, message)) in refused {
        out.push_str(&format!(
            ", {count} HTTP {status} code {code} (first: {message:?})"
        ));
    }
    if unanswered > 0 {
        out.push_str(&format!(", {unanswered} unanswered"));
    }
    out
}

/// The pushes a device must receive: body → the sequence its user's inbox gave it (`None`
/// for room pushes, which carry none).
type Expected = BTreeMap<String, Option<u64>>;

/// The acknowledged pushes of a stream for user `mid` (pushes by mid).
fn acked_for_mid(tag: &str, outcomes: &[Outcome], mid: i64) -> Expected {
    outcomes
        .iter()
        .filter_map(|o| match &o.answered {
            Answered::Acked { stored } => Some((
                format!("{tag}{}", o.n),
                Some(
                    *stored
                        .get(&mid)
                        .expect("an acknowledged push stored for the user"),
                ),
            )),
            _ => None,
        })
        .collect()
}

/// The acknowledged pushes of a stream numbered `n` with `keep(n)` (room pushes).
fn acked_where(tag: &str, outcomes: &[Outcome], keep: impl Fn(u32) -> bool) -> Expected {
    outcomes
        .iter()
        .filter(|o| matches!(o.answered, Answered::Acked { .. }) && keep(o.n))
        .map(|o| (format!("{tag}{}", o.n), None))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The client side: devices that behave like a client app.

/// One push a device received.
#[derive(Debug, Clone)]
struct Received {
    /// Which of the device's connections (0 = the first).
    connection: usize,
    seq: i32,
    body: String,
    /// It came while the device's sync (op 22) was being answered.
    during_sync: bool,
}

/// One connection of a device: where, and how it ended (`None` while open).
#[derive(Debug, Clone)]
struct Connection {
    comet: SocketAddr,
    ended: Option<String>,
}

#[derive(Debug, Default)]
struct DeviceLog {
    received: Vec<Received>,
    connections: Vec<Connection>,
    /// Connection attempts that did not reach an auth reply, and why.
    failed: Vec<String>,
    /// The highest sequence acknowledged with op 20.
    acked: u64,
    /// Syncs (op 22) sent.
    syncs: usize,
}

/// A user's device as a client app runs it: connects to its first comet that takes it,
/// authenticates with `acks`, heartbeats, acknowledges every stored message once it has all
/// before it, and when the connection ends, connects again (the same comet first, then the
/// next). A device started with [`Device::start_syncing`] also asks for what it misses (op 22
/// after the last sequence it has without a gap) when a gap in its sequences stays open for
/// half a second. Runs on its own thread until dropped.
struct Device {
    mid: i64,
    log: Arc<Mutex<DeviceLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    /// Starts the device and waits (bounded) until its first connection is authenticated.
    fn start(comets: &[SocketAddr], mid: i64, room: &str) -> Device {
        Self::start_with(comets, mid, room, false)
    }

    /// As [`Device::start`], for a device that syncs when it sees a gap in its sequences (no
    /// fault test needs it since job keeps departed comets' links for a grace period).
    #[allow(dead_code)]
    fn start_syncing(comets: &[SocketAddr], mid: i64, room: &str) -> Device {
        Self::start_with(comets, mid, room, true)
    }

    fn start_with(comets: &[SocketAddr], mid: i64, room: &str, sync_gaps: bool) -> Device {
        let log = Arc::new(Mutex::new(DeviceLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let auth = serde_json::json!({
            "mid": mid, "key": format!("device-{mid}"), "room_id": room, "platform": "test",
            "accepts": [OP], "acks": true,
        })
        .to_string();
        let thread = {
            let (log, stop, comets) = (log.clone(), stop.clone(), comets.to_vec());
            std::thread::spawn(move || run_device(&comets, &auth, sync_gaps, &log, &stop))
        };
        let device = Device {
            mid,
            log,
            stop,
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while device.log.lock().unwrap().connections.is_empty() {
            assert!(
                Instant::now() < deadline,
                "device of user {mid} could not connect: {:?}",
                device.log.lock().unwrap().failed
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        device
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().received.clone()
    }

    fn connections(&self) -> Vec<Connection> {
        self.log.lock().unwrap().connections.clone()
    }

    /// Waits (bounded) until the device has a connection number `index` open.
    fn wait_connection(&self, index: usize, c: &Cluster) -> Connection {
        let deadline = Instant::now() + PHASE;
        loop {
            let log = self.log.lock().unwrap();
            if let Some(conn) = log.connections.get(index) {
                return conn.clone();
            }
            assert!(
                Instant::now() < deadline,
                "device of user {} did not make connection {index}: {:?}, failed attempts {:?}\n{}",
                self.mid,
                log.connections,
                log.failed,
                c.logs()
            );
            drop(log);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the device has received every push in `expected`, then checks them (each
    /// stored push with its sequence, none twice on one connection) and counts the rest.
    fn wait_for_all(&self, expected: &Expected, c: &Cluster) -> Tally {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let missing: Vec<&String> = {
                let log = self.log.lock().unwrap();
                let have: BTreeSet<&str> = log.received.iter().map(|r| r.body.as_str()).collect();
                expected
                    .keys()
                    .filter(|b| !have.contains(b.as_str()))
                    .collect()
            };
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "device of user {}: {} of {} acknowledged pushes missing after {CATCH_UP:?}: \
                 {missing:?}\nconnections: {:?}\n{}",
                self.mid,
                missing.len(),
                expected.len(),
                self.connections(),
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.tally(expected)
    }

    fn tally(&self, expected: &Expected) -> Tally {
        let log = self.log.lock().unwrap();
        let mut tally = Tally {
            expected: expected.len(),
            connections: log.connections.len(),
            ..Tally::default()
        };
        let mut seen: BTreeSet<(usize, &str)> = BTreeSet::new();
        let mut first: BTreeSet<&str> = BTreeSet::new();
        tally.syncs = log.syncs;
        for r in &log.received {
            if let Some(Some(seq)) = expected.get(&r.body) {
                assert_eq!(
                    r.seq as u64, *seq,
                    "user {}: {} arrived with sequence {}, stored as {seq}",
                    self.mid, r.body, r.seq
                );
            }
            if !expected.contains_key(&r.body) {
                tally.unacknowledged.push(r.body.clone());
            }
            // A sync asks for everything after a sequence again: those copies are requested.
            if !seen.insert((r.connection, &r.body)) && !r.during_sync {
                tally.same_connection.push(r.body.clone());
            }
            if !first.insert(&r.body) {
                tally.duplicates += 1;
            } else if r.during_sync && expected.contains_key(&r.body) {
                tally.synced.push(r.body.clone());
            }
        }
        tally.first_arrivals = log
            .received
            .iter()
            .filter(|r| expected.contains_key(&r.body))
            .map(|r| r.body.clone())
            .fold(Vec::new(), |mut order, body| {
                if !order.contains(&body) {
                    order.push(body);
                }
                order
            });
        tally
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a device received against what it had to.
#[derive(Debug, Default)]
struct Tally {
    expected: usize,
    connections: usize,
    /// Arrivals beyond the first of the same push (on any connection).
    duplicates: usize,
    /// Pushes that came twice on one connection (a stored push never may).
    same_connection: Vec<String>,
    /// Pushes received that were never acknowledged (refused after they were stored).
    unacknowledged: Vec<String>,
    /// Acknowledged pushes in the order they first arrived.
    first_arrivals: Vec<String>,
    /// Syncs the device sent, and the acknowledged pushes that first arrived in answer to one
    /// (not delivered live).
    syncs: usize,
    synced: Vec<String>,
}

impl Tally {
    fn report(&self, who: &str) {
        eprintln!(
            "{who}: {} acknowledged pushes all received over {} connection(s); {} duplicate \
             arrivals; {} unacknowledged pushes received; {} syncs brought {} acknowledged \
             pushes first {:?}",
            self.expected,
            self.connections,
            self.duplicates,
            self.unacknowledged.len(),
            self.syncs,
            self.synced.len(),
            self.synced
        );
    }
}

fn run_device(
    comets: &[SocketAddr],
    auth: &str,
    sync_gaps: bool,
    log: &Mutex<DeviceLog>,
    stop: &AtomicBool,
) {
    let mut comet = 0;
    let mut have: BTreeSet<u64> = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let addr = comets[comet % comets.len()];
        let mut client = match Client::connect(addr, Transport::Tcp).and_then(|mut c| {
            c.auth(auth)?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                log.lock().unwrap().failed.push(format!("{addr}: {e}"));
                comet += 1;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let connection = {
            let mut log = log.lock().unwrap();
            log.connections.push(Connection {
                comet: addr,
                ended: None,
            });
            log.connections.len() - 1
        };
        let ended = serve(&mut client, connection, sync_gaps, &mut have, log, stop);
        log.lock().unwrap().connections[connection].ended = Some(ended);
    }
}

/// Serves one connection until it ends or the device stops; returns how it ended.
fn serve(
    client: &mut Client,
    connection: usize,
    sync_gaps: bool,
    have: &mut BTreeSet<u64>,
    log: &Mutex<DeviceLog>,
    stop: &AtomicBool,
) -> String {
    let mut next_heartbeat = Instant::now();
    let mut frame_seq = 2;
    // Since when sequences above the acknowledged floor have waited for a missing one.
    let mut gap_since: Option<Instant> = None;
    let mut syncing = false;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_heartbeat {
            if let Err(e) = client.send(1, op::HEARTBEAT, frame_seq, &[]) {
                return format!("heartbeat not sent: {e}");
            }
            frame_seq += 1;
            next_heartbeat = now + Duration::from_millis(300);
        }
        let floor = log.lock().unwrap().acked;
        let gap = have.last().is_some_and(|&top| top > floor);
        gap_since = if gap { gap_since.or(Some(now)) } else { None };
        if sync_gaps
            && !syncing
            && gap_since.is_some_and(|t| t.elapsed() >= Duration::from_millis(500))
        {
            if let Err(e) = client.send(1, op::SYNC, frame_seq, floor.to_string().as_bytes()) {
                return format!("sync not sent: {e}");
            }
            frame_seq += 1;
            syncing = true;
            log.lock().unwrap().syncs += 1;
        }
        let frame = match client.recv(Duration::from_millis(50)) {
            Ok(f) => f,
            Err(ClientError::Timeout) => continue,
            Err(e) => return e.to_string(),
        };
        if frame.op == op::SYNC_REPLY {
            syncing = false;
            gap_since = None;
        }
        if frame.op != OP {
            continue; // heartbeat, ack and sync replies
        }
        let body = String::from_utf8_lossy(&frame.body).to_string();
        let mut log = log.lock().unwrap();
        log.received.push(Received {
            connection,
            seq: frame.seq,
            body,
            during_sync: syncing,
        });
        if frame.seq > 0 {
            // A stored message: acknowledge everything up to the first one still missing.
            have.insert(frame.seq as u64);
            let mut floor = log.acked;
            while have.contains(&(floor + 1)) {
                floor += 1;
            }
            if floor > log.acked {
                log.acked = floor;
                drop(log);
                if let Err(e) = client.send(1, op::ACK, frame_seq, floor.to_string().as_bytes()) {
                    return format!("ack not sent: {e}");
                }
                frame_seq += 1;
            }
        }
    }
    "stopped".into()
}

fn tcp_addrs(c: &Cluster) -> Vec<SocketAddr> {
    c.comets.iter().map(|comet| comet.tcp).collect()
}

fn mids_path(mids: &[i64]) -> String {
    let mut path = format!("/goim/push/mids?operation={OP}");
    for mid in mids {
        path.push_str(&format!("&mids={mid}"));
    }
    path
}

fn room_path(room: u32) -> String {
    format!("/goim/push/room?operation={OP}&type=live&room={room}")
}

/// Waits (bounded) until logic has recorded user `mid`'s acknowledgements up to at least
/// `at_least`, and returns the sequence recorded.
fn acked_seq(c: &Cluster, mid: i64, at_least: u64) -> u64 {
    let deadline = Instant::now() + PHASE;
    loop {
        let path = format!("/goim/inbox/state?mids={mid}");
        let state = try_http(c.http(0), "GET", &path, b"");
        if let Some(acked) = state
            .as_ref()
            .ok()
            .and_then(|a| a.json["data"][mid.to_string()]["acked_seq"].as_u64())
            .filter(|&acked| acked >= at_least)
        {
            return acked;
        }
        assert!(
            Instant::now() < deadline,
            "user {mid}'s acknowledgements did not reach {at_least}: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_refused(o: &Outcome) -> bool {
    matches!(o.answered, Answered::Refused { .. })
}

// ---------------------------------------------------------------------------------------
// The faults.

/// Redis (running with an append-only file, as a Redis holding inboxes must) is SIGKILLed and
/// restarted while pushes by mid stream in for user 1, online, and user 2, offline.
///
/// What the clients see: while Redis is down, every push is answered at once (within the
/// store timeout) with HTTP 500, code -500 and the store's error, and nothing is stored; the
/// connected device stays connected (comet answers its heartbeats), but a device connecting
/// now is closed before its auth reply. Once Redis is back, pushes are acknowledged and
/// delivered again on the same connection; user 2, connecting at the end, gets every
/// acknowledged push from before, during and after the outage in its backlog.
///
/// The comets' online reports go stale while Redis is down; job keeps a comet's link for a
/// grace period after it goes missing from the registry, so the pushes routed before the
/// comets report again are delivered live (user 1's device does not sync to fill gaps).
#[test]
fn redis_restarted_loses_no_acknowledged_push() {
    let mut c = Cluster::start_setup(
        1,
        1,
        1,
        Setup {
            durable_redis: true,
            ..Setup::default()
        },
    );
    let online = Device::start(&tcp_addrs(&c), 1, "");
    let pusher = Pusher::start("m", vec![c.http(0)], |_| mids_path(&[1, 2]));
    pusher.wait_acked(20, &c);

    c.redis.stop();
    let first = pusher.wait_more(3, "are refused", &c, is_refused);
    let Answered::Refused {
        status,
        code,
        message,
    } = &first.answered
    else {
        unreachable!()
    };
    assert_eq!((*status, *code), (500, -500), "{first:?}");
    assert!(!message.is_empty(), "the refusal says why: {first:?}");
    assert!(
        first.took < Duration::from_secs(3),
        "refused within the store timeout, not hanging: {first:?}"
    );
    let late = Client::connect(c.comets[0].tcp, Transport::Tcp)
        .and_then(|mut client| client.auth(r#"{"mid": 3, "accepts": [1000]}"#));
    assert!(
        late.is_err(),
        "a client connecting while Redis is down is not let in"
    );
    c.redis.restart();
    pusher.wait_acked(20, &c);
    let outcomes = pusher.finish();
    eprintln!("redis restarted: {}", summary(&outcomes));

    let tally = online.wait_for_all(&acked_for_mid("m", &outcomes, 1), &c);
    tally.report("user 1, online throughout");
    assert_eq!(tally.connections, 1, "{:?}", online.connections());
    assert!(tally.same_connection.is_empty(), "{tally:?}");
    let offline = Device::start(&tcp_addrs(&c), 2, "");
    let tally = offline.wait_for_all(&acked_for_mid("m", &outcomes, 2), &c);
    tally.report("user 2, offline until the end");
    assert!(tally.same_connection.is_empty(), "{tally:?}");
}

/// The broker (storing its log in PostgreSQL) is SIGKILLed and restarted twice while pushes
/// by mid (user 1 online, user 2 offline) and room pushes (room 9, where user 1's device is)
/// stream in: once with job consuming, once while job is down, so acknowledged pushes wait in
/// the broker's log across the restart.
///
/// What the clients see: while the broker is down, pushes are answered with HTTP 503, code
/// -500 and the bus error after `bus.publish_timeout`; a push by mid refused this way was
/// already stored, so it is not acknowledged but may still arrive (user 2 gets it in its
/// backlog). The device stays on its one connection throughout and, once the broker and job
/// are back, gets every acknowledged push live, the ones that waited in the log included.
/// Room pushes are at least once: duplicates are counted.
#[test]
fn broker_restarted_loses_no_acknowledged_push() {
    broker_restarted(Bus::Kafka);
}

fn broker_restarted(bus: Bus) {
    let mut c = Cluster::start_setup(
        1,
        1,
        1,
        Setup {
            durable_broker: true,
            bus,
            ..Setup::default()
        },
    );
    let device = Device::start(&tcp_addrs(&c), 1, "live://9");
    let mids = Pusher::start("m", vec![c.http(0)], |_| mids_path(&[1, 2]));
    let room = Pusher::start("r", vec![c.http(0)], |_| room_path(9));
    mids.wait_acked(10, &c);
    room.wait_acked(10, &c);

    // 1. Restarted under a consuming job.
    c.broker.stop();
    let first = mids.wait_more(2, "are refused", &c, is_refused);
    let Answered::Refused { status, code, .. } = &first.answered else {
        unreachable!()
    };
    assert_eq!((*status, *code), (503, -500), "{first:?}");
    room.wait_more(2, "are refused", &c, is_refused);
    c.broker.restart();
    mids.wait_acked(10, &c);
    room.wait_acked(10, &c);

    // 2. Restarted while holding acknowledged pushes no job has consumed.
    c.jobs[0].kill();
    mids.wait_acked(10, &c);
    room.wait_acked(10, &c);
    c.broker.stop();
    mids.wait_more(1, "are refused", &c, is_refused);
    c.broker.restart();
    c.jobs[0].start();
    mids.wait_acked(10, &c);
    room.wait_acked(10, &c);

    let (mids, room) = (mids.finish(), room.finish());
    eprintln!("broker restarted, mids: {}", summary(&mids));
    eprintln!("broker restarted, room: {}", summary(&room));
    let mut expected = acked_for_mid("m", &mids, 1);
    expected.extend(acked_where("r", &room, |_| true));
    let tally = device.wait_for_all(&expected, &c);
    tally.report("user 1 in room 9");
    assert_eq!(tally.connections, 1, "{:?}", device.connections());
    assert!(tally.same_connection.iter().all(|b| b.starts_with('r')));
    let offline = Device::start(&tcp_addrs(&c), 2, "");
    let tally = offline.wait_for_all(&acked_for_mid("m", &mids, 2), &c);
    tally.report("user 2, offline until the end");
}

/// The comet holding user 1's device is SIGKILLed while pushes by mid stream in.
///
/// What the client sees: its connection is cut (reset or closed, no goodbye); connecting to
/// the dead comet is refused, so it connects to the other comet and, right after the auth
/// reply, gets every stored push it had not acknowledged, among them those acknowledged while
/// it had no connection. Pushes never fail: they are stored first.
#[test]
fn a_comet_killed_with_sigkill_loses_no_acknowledged_push() {
    let mut c = Cluster::start(2, 1, 1);
    let device = Device::start(&tcp_addrs(&c), 1, "");
    let pusher = Pusher::start("m", vec![c.http(0)], |_| mids_path(&[1]));
    pusher.wait_acked(20, &c);
    // What logic has recorded as acknowledged before the kill is never sent again.
    let acked = acked_seq(&c, 1, 10);
    c.comets[0].proc.kill();
    let again = device.wait_connection(1, &c);
    assert_eq!(
        again.comet, c.comets[1].tcp,
        "reconnected to the live comet"
    );
    pusher.wait_acked(20, &c);
    let outcomes = pusher.finish();
    eprintln!("comet killed: {}", summary(&outcomes));
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o.answered, Answered::Acked { .. })),
        "pushes by mid do not fail when a comet dies"
    );
    let tally = device.wait_for_all(&acked_for_mid("m", &outcomes, 1), &c);
    tally.report("user 1");
    let connections = device.connections();
    assert_eq!(connections[0].comet, c.comets[0].tcp);
    assert!(connections[0].ended.is_some(), "{connections:?}");
    assert!(tally.same_connection.is_empty(), "{tally:?}");
    let resent: Vec<String> = device
        .received()
        .into_iter()
        .filter(|r| r.connection > 0 && r.seq as u64 <= acked)
        .map(|r| r.body)
        .collect();
    assert!(
        resent.is_empty(),
        "acknowledged up to {acked}, yet sent again: {resent:?}"
    );
}

/// The only job is SIGKILLed while pushes by mid (user 1) and room pushes (room 5, where user
/// 1's device is) stream in, then started again, as a supervisor would.
///
/// What the client sees: nothing new while no job runs (pushes are still acknowledged: they
/// wait in the broker); then the restarted job resumes at what the dead one had committed,
/// which is at most what it had delivered, and the device gets everything on the same
/// connection. The restarted job may deliver again what the dead one had delivered but not
/// committed: comet drops a stored push the connection already has (by its sequence), while
/// room pushes are at least once and are counted.
#[test]
fn a_job_killed_mid_batch_loses_no_acknowledged_push() {
    a_job_killed_mid_batch(Bus::Kafka);
}

fn a_job_killed_mid_batch(bus: Bus) {
    let mut c = Cluster::start_setup(
        1,
        1,
        1,
        Setup {
            bus,
            ..Setup::default()
        },
    );
    let device = Device::start(&tcp_addrs(&c), 1, "live://5");
    let mids = Pusher::start("m", vec![c.http(0)], |_| mids_path(&[1]));
    let room = Pusher::start("r", vec![c.http(0)], |_| room_path(5));
    mids.wait_acked(20, &c);
    room.wait_acked(20, &c);
    c.jobs[0].kill();
    mids.wait_acked(15, &c);
    room.wait_acked(15, &c);
    c.jobs[0].start();
    mids.wait_acked(20, &c);
    room.wait_acked(20, &c);
    let (mids, room) = (mids.finish(), room.finish());
    eprintln!("job killed, mids: {}", summary(&mids));
    eprintln!("job killed, room: {}", summary(&room));
    let mut expected = acked_for_mid("m", &mids, 1);
    expected.extend(acked_where("r", &room, |_| true));
    let tally = device.wait_for_all(&expected, &c);
    tally.report("user 1 in room 5");
    assert_eq!(tally.connections, 1, "{:?}", device.connections());
    assert!(
        tally.same_connection.iter().all(|b| b.starts_with('r')),
        "a stored push came twice on one connection: {tally:?}"
    );
    let room_order: Vec<&String> = tally
        .first_arrivals
        .iter()
        .filter(|b| b.starts_with('r'))
        .collect();
    let mut sorted = room_order.clone();
    sorted.sort_by_key(|b| b[1..].parse::<u32>().unwrap());
    assert_eq!(room_order, sorted, "room pushes first arrived out of order");
}

/// One of two jobs is SIGKILLed while room pushes stream into eight rooms spread over the
/// topic's partitions, so both jobs carry some; the other job takes the dead one's partitions
/// over once its session times out.
///
/// What the clients see: a pause in the dead job's rooms, then every acknowledged push, in
/// order of first arrival; the pushes the dead job had delivered but not committed come again
/// (at least once) and are counted.
#[test]
fn a_killed_job_s_rooms_move_to_the_other_job_without_loss() {
    a_killed_job_s_rooms_move(Bus::Kafka);
}

fn a_killed_job_s_rooms_move(bus: Bus) {
    const ROOMS: u32 = 8;
    let mut c = Cluster::start_setup(
        1,
        1,
        2,
        Setup {
            bus,
            ..Setup::default()
        },
    );
    let members: Vec<Device> = (0..ROOMS)
        .map(|r| Device::start(&tcp_addrs(&c), r as i64 + 1, &format!("live://{r}")))
        .collect();
    let room = Pusher::start("r", vec![c.http(0)], |n| room_path(n % ROOMS));
    room.wait_acked(40, &c);
    c.jobs[0].kill();
    room.wait_acked(80, &c);
    let room = room.finish();
    eprintln!("one of two jobs killed: {}", summary(&room));
    let mut duplicates = 0;
    for (r, member) in members.iter().enumerate() {
        let expected = acked_where("r", &room, |n| n % ROOMS == r as u32);
        let tally = member.wait_for_all(&expected, &c);
        duplicates += tally.duplicates;
        let mut sorted = tally.first_arrivals.clone();
        sorted.sort_by_key(|b| b[1..].parse::<u32>().unwrap());
        assert_eq!(
            tally.first_arrivals, sorted,
            "room {r}: pushes first arrived out of order"
        );
        assert_eq!(tally.connections, 1);
    }
    eprintln!("duplicates after the job was killed: {duplicates}");
}

/// logic-1 of two is SIGKILLed and started again while pushes by mid stream in through both;
/// user 1's device is on the comet that prefers logic-1.
///
/// What the clients see: the business side gets no answer from logic-1 (connection refused)
/// and sends the push to logic-2, which acknowledges it; the comet moves its link to logic-2,
/// so the device keeps its connection and gets every push, and a device connecting meanwhile
/// is let in through logic-2. Once logic-1 is back on its ports it acknowledges pushes again.
#[test]
fn logic_restarted_loses_no_acknowledged_push() {
    let mut c = Cluster::start(1, 2, 1);
    let device = Device::start(&tcp_addrs(&c), 1, "");
    let logic_1 = c.http(0);
    let pusher = Pusher::start("m", vec![c.http(0), c.http(1)], |_| mids_path(&[1]));
    pusher.wait_acked(20, &c);
    c.logics[0].proc.kill();
    let first = pusher.wait_more(3, "found logic-1 unreachable", &c, |o| {
        !o.unreachable.is_empty()
    });
    assert_eq!(first.unreachable[0].0, logic_1);
    assert!(
        matches!(first.answered, Answered::Acked { .. }),
        "logic-2 took it: {first:?}"
    );
    let newcomer = Device::start(&tcp_addrs(&c), 2, "");
    assert_eq!(newcomer.connections().len(), 1);
    c.logics[0].proc.start();
    pusher.wait_more(10, "logic-1 acknowledged again", &c, |o| {
        o.via == Some(logic_1) && matches!(o.answered, Answered::Acked { .. })
    });
    let outcomes = pusher.finish();
    eprintln!("logic restarted: {}", summary(&outcomes));
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o.answered, Answered::Acked { .. })),
        "with a second logic every push is acknowledged: {}",
        summary(&outcomes)
    );
    let tally = device.wait_for_all(&acked_for_mid("m", &outcomes, 1), &c);
    tally.report("user 1");
    assert_eq!(tally.connections, 1, "{:?}", device.connections());
    assert!(tally.same_connection.is_empty(), "{tally:?}");
    assert!(tally.synced.is_empty());
}

/// Redis without persistence is SIGKILLed and comes back empty: sessions, registry and
/// inboxes are gone. No push can be kept across that (use a durable Redis, as
/// [`redis_restarted_loses_no_acknowledged_push`] does); this checks that the cluster
/// recovers by itself.
///
/// What the clients see: while Redis is down, pushes fail at once with HTTP 500, code -500;
/// the connected client stays connected, and once Redis is back its next heartbeat to logic
/// re-creates its session (until then pushes to it are stored as for an offline user), the
/// comets' online reports re-create the registry, and new clients connect again.
///
/// Known gap: an inbox that vanished starts its sequence at 1 again, and a connection that
/// already had stored messages drops the new ones as duplicates of what it has (its
/// sequence window), until it reconnects; so this client has none before the restart.
#[test]
fn a_redis_that_comes_back_empty_fails_pushes_clearly_and_then_recovers() {
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

/// The broker with in-memory storage is SIGKILLed and comes back empty (no topic, no
/// offsets). [`broker_restarted_loses_no_acknowledged_push`] runs on a durable broker; this
/// checks that the cluster recovers from losing the whole log by itself.
///
/// What the clients see: while the broker is down, pushes fail with a 5xx within the publish
/// timeout; after it is back the producer re-creates the topic and pushes flow again, in
/// order. The consumer still holds its old position, so the first pushes of the new log can
/// be skipped: only pushes after the first one that arrives are checked.
///
/// Ignored until job recovers from this reliably: when the job's consumer group rejoins the
/// empty broker before logic's producer has re-created the topic, the job is assigned no
/// partitions and did not pick them up within 90 s once the topic was back (seen in about one
/// run in four with the other fault tests beside it). `cargo test --test faults -- --ignored`
/// runs it.
#[test]
#[ignore = "job stays without partitions when its group rejoins before the topic is re-created"]
fn a_broker_that_comes_back_empty_fails_pushes_clearly_and_then_recovers() {
    let mut c = Cluster::start(1, 1, 1);
    let sub = Subscriber::start(c.comets[0].tcp, Transport::Tcp, 1, "", "live://9", &[]);
    push(
        c.http(0),
        "/goim/push/room?operation=1000&type=live&room=9",
        "before",
    );
    assert_eq!(sub.next(WAIT).1, "before");
    c.broker.stop();
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
    c.broker.restart();
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

/// The same faults with the bus on NATS JetStream (a real `nats-server -js`, its store kept
/// across restarts). A job killed there keeps its partitions' leases until they expire
/// (`bus.nats.session_timeout`, 3 s here); the next holder starts a fresh consumer at the
/// acknowledged floor, so what the dead job had not delivered comes again, in order.
mod on_nats {
    use super::*;

    /// As [`super::broker_restarted_loses_no_acknowledged_push`]: nats-server stopped (and
    /// started again on its store) twice, once under a consuming job, once while job is down.
    #[test]
    fn broker_restarted_loses_no_acknowledged_push() {
        broker_restarted(Bus::Nats);
    }

    /// As [`super::a_job_killed_mid_batch_loses_no_acknowledged_push`].
    #[test]
    fn a_job_killed_mid_batch_loses_no_acknowledged_push() {
        a_job_killed_mid_batch(Bus::Nats);
    }

    /// As [`super::a_killed_job_s_rooms_move_to_the_other_job_without_loss`]: the other job
    /// takes the dead one's partitions once their leases expire.
    #[test]
    fn a_killed_job_s_rooms_move_to_the_other_job_without_loss() {
        a_killed_job_s_rooms_move(Bus::Nats);
    }

    /// What an operator checks from outside: room and user pushes arrive and JetStream's
    /// message count grows (they went through NATS); with nats-server stopped a push answers
    /// HTTP 5xx within 3 s; once it is started again on its store, pushes arrive again within
    /// 15 s, with no imgate process restarted.
    #[test]
    fn pushes_go_through_jetstream_fail_fast_while_it_is_down_and_flow_again_after() {
        let mut c = Cluster::start_setup(
            1,
            1,
            1,
            Setup {
                bus: Bus::Nats,
                ..Setup::default()
            },
        );
        let stream_messages = |c: &Cluster| -> u64 {
            let jsz: serde_json::Value =
                serde_json::from_str(&c.broker.nats().jsz().expect("/jsz answers")).unwrap();
            jsz["messages"].as_u64().expect("a message count")
        };
        let before = stream_messages(&c);
        let user = Subscriber::start(c.comets[0].tcp, Transport::Tcp, 1, "", "live://7", &[OP]);
        push(c.http(0), &mids_path(&[1]), "to user 1");
        assert_eq!(user.next(WAIT).1, "to user 1");
        push(c.http(0), &room_path(7), "to room 7");
        assert_eq!(user.next(WAIT).1, "to room 7");
        assert!(
            stream_messages(&c) >= before + 2,
            "JetStream holds the pushes: {} then {}",
            before,
            stream_messages(&c)
        );

        c.broker.stop();
        for path in [mids_path(&[1]), room_path(7)] {
            let started = Instant::now();
            let a = http(c.http(0), "POST", &path, b"while down");
            assert!(
                a.status >= 500,
                "{path}: a 5xx while NATS is down: {:?}",
                a.json
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{path}: refused within 3 s, took {:?}",
                started.elapsed()
            );
        }

        c.broker.restart();
        let back = Instant::now();
        let http_addr = c.http(0);
        eventually(
            Duration::from_secs(15),
            "a room push to be accepted again",
            || try_http(http_addr, "POST", &room_path(7), b"after").is_ok_and(|a| a.status == 200),
        );
        // Pushes the user may have stored while NATS was down arrive too; wait for ours.
        let deadline = back + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((_, body)) = user.pushes.recv_timeout(left) else {
                panic!("no push arrived within 15 s of the restart\n{}", c.logs());
            };
            if body == "after" {
                break;
            }
        }
        push(c.http(0), &mids_path(&[1]), "user again");
        let deadline = back + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((_, body)) = user.pushes.recv_timeout(left) else {
                panic!(
                    "the user push did not arrive within 15 s of the restart\n{}",
                    c.logs()
                );
            };
            if body == "user again" {
                break;
            }
        }
        eprintln!(
            "pushes flowed again {:?} after nats-server restarted",
            back.elapsed()
        );
    }
}
