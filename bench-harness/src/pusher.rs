//! Drives pushes through logic's HTTP API at a fixed rate (or as fast as answers come), over a
//! few HTTP/1.1 keep-alive connections ([`HttpClient`]) on plain blocking sockets, one thread
//! each. For a peer the same pushes are a Redis `PUBLISH` ([`resp::Publisher`]) or a NATS
//! `PUB` ([`nats::Publisher`]) on the room's channel, paced the same way.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use imgate_client::http::{HttpClient, Response};
use serde::{Deserialize, Serialize};

use crate::cli::System;
use crate::payload::{self, Stamp};
use crate::tally;
use crate::{nats, resp};

/// Which push API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PushKind {
    /// `/goim/push/room`: every client in the room.
    Room,
    /// `/goim/push/keys`: one client's connection key per push, round robin.
    Keys,
    /// `/goim/push/mids`: one client's user id per push, round robin (stored, then delivered).
    Mids,
    /// `/goim/push/all`: every client.
    All,
}

/// One phase of pushing.
#[derive(Debug, Clone)]
pub struct PushPlan {
    pub kind: PushKind,
    /// Where pushes go: imgate's HTTP API at `http`, or a peer's server at `peer`, on
    /// `channel`.
    pub system: System,
    pub http: SocketAddr,
    pub peer: SocketAddr,
    pub channel: String,
    /// Publishers connected before the clients (peers only).
    pub ready: Ready,
    pub op: i32,
    pub room_type: String,
    pub room_id: String,
    /// Pushes per second; 0: each connection sends its next push when the last is answered.
    pub rate: f64,
    pub connections: usize,
    pub duration: Duration,
    /// Keys and mids pushes target client `seq % clients`.
    pub clients: u64,
    pub mid_base: i64,
    pub key_prefix: String,
    pub run: u32,
    pub phase: u32,
    /// Sequence number of this phase's first push (sequences continue across phases).
    pub first_seq: u32,
    /// Body size (0: natural, about 60 bytes).
    pub body_bytes: usize,
    /// `speed` of broadcasts (0: left out).
    pub speed: u32,
}

impl PushPlan {
    /// Path and query of push `seq`.
    pub fn path(&self, seq: u32) -> String {
        let target = u64::from(seq) % self.clients.max(1);
        match self.kind {
            PushKind::Room => format!(
                "/goim/push/room?operation={}&type={}&room={}",
                self.op, self.room_type, self.room_id
            ),
            PushKind::Keys => format!(
                "/goim/push/keys?operation={}&keys={}{}",
                self.op, self.key_prefix, target
            ),
            PushKind::Mids => format!(
                "/goim/push/mids?operation={}&mids={}",
                self.op,
                self.mid_base + target as i64
            ),
            PushKind::All if self.speed > 0 => {
                format!("/goim/push/all?operation={}&speed={}", self.op, self.speed)
            }
            PushKind::All => format!("/goim/push/all?operation={}", self.op),
        }
    }
}

/// What happened to one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushResult {
    pub seq: u32,
    /// HTTP 200 with `code` 0 (a peer: the publish was answered without an error).
    pub accepted: bool,
    /// `data.connections` of a keys or mids answer: how many connections logic routed it to
    /// (Redis: the subscribers `PUBLISH` says it reached).
    pub routed: Option<u32>,
}

/// Publishers connected before the clients. A peer that takes as many connections as its
/// open files allow (Redis's `maxclients`) would refuse the publisher once the subscribers
/// hold them all; connected first, it keeps its place. Empty for imgate (HTTP connects as
/// it goes).
#[derive(Clone, Default)]
pub struct Ready(Arc<Mutex<Vec<Publisher>>>);

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |v| v.len());
        write!(f, "Ready({n} publishers)")
    }
}

impl Ready {
    /// Connects the plan's publishers now, if it goes to a peer.
    pub fn connect(plan: &PushPlan) -> io::Result<Ready> {
        let ready = Ready::default();
        if plan.system != System::Imgate {
            let mut all = Vec::new();
            for _ in 0..plan.connections.max(1) {
                let mut publisher = Publisher::new(plan);
                publisher.check()?;
                all.push(publisher);
            }
            *ready.0.lock().unwrap_or_else(|e| e.into_inner()) = all;
        }
        Ok(ready)
    }

    /// A publisher for a pushing thread: a ready one that still answers (a NATS server drops
    /// a connection that left its pings unanswered while the clients connected), else a new
    /// one.
    fn take(&self, plan: &PushPlan) -> Publisher {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match taken {
            Some(mut publisher) => match publisher.check() {
                Ok(()) => publisher,
                Err(_) => Publisher::new(plan),
            },
            None => Publisher::new(plan),
        }
    }

    fn give_back(&self, publisher: Publisher) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(publisher);
    }
}

/// One pushing connection, in the protocol of the system under test.
enum Publisher {
    Http(HttpClient),
    Redis(resp::Publisher),
    Nats(nats::Publisher),
}

impl Publisher {
    fn new(plan: &PushPlan) -> Publisher {
        match plan.system {
            System::Imgate => Publisher::Http(HttpClient::new(plan.http)),
            System::Redis => Publisher::Redis(resp::Publisher::new(plan.peer)),
            System::Nats => Publisher::Nats(nats::Publisher::new(plan.peer)),
        }
    }

    /// Connects if need be and checks the server answers (a peer's `PING`; nothing for HTTP,
    /// which connects as it goes).
    fn check(&mut self) -> io::Result<()> {
        match self {
            Publisher::Http(_) => Ok(()),
            Publisher::Redis(p) => p.connect(),
            Publisher::Nats(p) => p.connect(),
        }
    }

    /// Sends push `seq`: `Ok(routed)` when accepted, else why not.
    fn push(&mut self, plan: &PushPlan, seq: u32, body: &[u8]) -> Result<Option<u32>, String> {
        match self {
            Publisher::Http(client) => match client.post(&plan.path(seq), body) {
                Ok(Response { status: 200, body }) if code_is_zero(&body) => Ok(connections(&body)),
                Ok(Response { status, body }) => Err(format!(
                    "HTTP {status} {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )),
                Err(e) => Err(e.to_string()),
            },
            Publisher::Redis(p) => p
                .publish(&plan.channel, body)
                .map(|n| Some(n.min(u64::from(u32::MAX)) as u32))
                .map_err(|e| format!("PUBLISH: {e}")),
            Publisher::Nats(p) => p
                .publish(&plan.channel, body)
                .map(|()| None)
                .map_err(|e| format!("PUB: {e}")),
        }
    }
}

/// A phase's pushes.
#[derive(Debug)]
pub struct PushOutcome {
    pub results: Vec<PushResult>,
    /// HTTP request written → answer read, µs.
    pub http_us: Histogram<u64>,
    pub started: Instant,
    pub elapsed: Duration,
    /// The first few failures, for the report.
    pub errors: Vec<String>,
}

impl PushOutcome {
    pub fn sent(&self) -> u64 {
        self.results.len() as u64
    }

    pub fn accepted(&self) -> u64 {
        self.results.iter().filter(|r| r.accepted).count() as u64
    }
}

/// Runs one phase. Sequences `first_seq..` are handed out in order; at a fixed rate push `i` of
/// the phase is due at `start + i / rate`, and a late push goes out at once (no catch-up burst
/// beyond what is due). `stop` ends the phase early.
pub fn run(plan: &PushPlan, stop: &AtomicBool) -> PushOutcome {
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let end = started + plan.duration;
    let shared = Mutex::new((Vec::new(), tally::new_histogram(), Vec::<String>::new()));
    std::thread::scope(|scope| {
        for _ in 0..plan.connections.max(1) {
            scope.spawn(|| {
                let mut publisher = plan.ready.take(plan);
                let mut results = Vec::new();
                let mut http_us = tally::new_histogram();
                let mut errors = Vec::new();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let due = if plan.rate > 0.0 {
                        started + Duration::from_secs_f64(i as f64 / plan.rate)
                    } else {
                        Instant::now()
                    };
                    if due >= end {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let seq = plan.first_seq + i as u32;
                    let body = payload::encode(
                        Stamp {
                            run: plan.run,
                            phase: plan.phase,
                            seq,
                            sent_ns: payload::now_ns(),
                        },
                        plan.body_bytes,
                    );
                    let t0 = Instant::now();
                    let answer = publisher.push(plan, seq, &body);
                    tally::record(&mut http_us, t0.elapsed().as_micros() as u64);
                    let result = match answer {
                        Ok(routed) => PushResult {
                            seq,
                            accepted: true,
                            routed,
                        },
                        Err(e) => {
                            if errors.len() < 5 {
                                errors.push(format!("push {seq}: {e}"));
                            }
                            PushResult {
                                seq,
                                accepted: false,
                                routed: None,
                            }
                        }
                    };
                    results.push(result);
                }
                plan.ready.give_back(publisher);
                let mut all = shared.lock().unwrap_or_else(|e| e.into_inner());
                all.0.extend(results);
                let _ = all.1.add(&http_us);
                all.2.extend(errors);
            });
        }
    });
    let (mut results, http_us, mut errors) = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.seq);
    errors.truncate(10);
    PushOutcome {
        results,
        http_us,
        started,
        elapsed: started.elapsed(),
        errors,
    }
}

fn code_is_zero(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_i64()))
        == Some(0)
}

fn connections(body: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("data")?
        .get("connections")?
        .as_u64()
        .map(|n| n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: PushKind) -> PushPlan {
        PushPlan {
            kind,
            system: System::Imgate,
            http: "127.0.0.1:1".parse().unwrap(),
            peer: "127.0.0.1:1".parse().unwrap(),
            channel: "live.1000".into(),
            ready: Ready::default(),
            op: 1000,
            room_type: "live".into(),
            room_id: "1000".into(),
            rate: 0.0,
            connections: 1,
            duration: Duration::from_secs(1),
            clients: 3,
            mid_base: 100,
            key_prefix: "bh-".into(),
            run: 1,
            phase: 0,
            first_seq: 0,
            body_bytes: 0,
            speed: 0,
        }
    }

    #[test]
    fn paths_name_goim_routes_and_spread_targets() {
        assert_eq!(
            plan(PushKind::Room).path(5),
            "/goim/push/room?operation=1000&type=live&room=1000"
        );
        assert_eq!(
            plan(PushKind::Keys).path(4),
            "/goim/push/keys?operation=1000&keys=bh-1"
        );
        assert_eq!(
            plan(PushKind::Mids).path(5),
            "/goim/push/mids?operation=1000&mids=102"
        );
        assert_eq!(plan(PushKind::All).path(0), "/goim/push/all?operation=1000");
    }

    #[test]
    fn answers_are_read_for_their_code_and_connections() {
        assert!(code_is_zero(b"{\"code\":0,\"message\":\"\"}"));
        assert!(!code_is_zero(b"{\"code\":-500}"));
        assert_eq!(
            connections(b"{\"code\":0,\"data\":{\"connections\":3}}"),
            Some(3)
        );
    }
}
