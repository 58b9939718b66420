//! Helpers for end-to-end tests: a gateway on free loopback ports, clients, and requests to
//! logic's API.

#![allow(dead_code)]

pub mod business;
pub mod cluster;
pub mod process;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use imgate::client::http::{HttpClient, Response};
use imgate::client::{Client, Transport};
use imgate::standalone::Gateway;
use imgate_shared::config::Config;

/// A configuration for tests: every listener on 127.0.0.1:0, two unpinned shards, short
/// timers so reports and expiries happen within a test's patience.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.comet.tcp_bind = vec![([127, 0, 0, 1], 0).into()];
    c.comet.ws_bind = vec![([127, 0, 0, 1], 0).into()];
    c.comet.link_bind = ([127, 0, 0, 1], 0).into();
    c.comet.shards = 2;
    c.comet.pin = false;
    c.comet.handshake_timeout = Duration::from_secs(1);
    c.comet.online_interval = Duration::from_millis(200);
    c.logic.http_bind = ([127, 0, 0, 1], 0).into();
    c.logic.link_bind = ([127, 0, 0, 1], 0).into();
    c.logic.online_refresh = Duration::from_millis(100);
    c.job.registry_interval = Duration::from_millis(100);
    c
}

/// Starts a gateway with the test configuration.
pub fn gateway() -> Gateway {
    Gateway::start(test_config()).expect("gateway starts")
}

/// The goim auth body.
pub fn auth_body(mid: i64, key: &str, room: &str, accepts: &[i32]) -> String {
    serde_json::json!({"mid": mid, "key": key, "room_id": room, "platform": "test", "accepts": accepts})
        .to_string()
}

/// Connects and authenticates.
pub fn client(
    addr: SocketAddr,
    transport: Transport,
    mid: i64,
    key: &str,
    room: &str,
    accepts: &[i32],
) -> Client {
    let mut c = Client::connect(addr, transport).expect("connect");
    c.auth(&auth_body(mid, key, room, accepts))
        .expect("auth accepted");
    c
}

/// An HTTP answer: status and the parsed JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub json: serde_json::Value,
}

/// Sends one HTTP/1.1 request and reads the whole answer.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Answer {
    request(addr, method, path, &[], body)
}

/// [`http`] with extra headers.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let answer = HttpClient::new(addr)
        .timeout(Duration::from_secs(20))
        .request(method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    Answer::from(answer)
}

impl From<Response> for Answer {
    fn from(answer: Response) -> Answer {
        let json = serde_json::from_slice(&answer.body).unwrap_or_else(|e| {
            panic!(
                "status {}: JSON body ({e}): {:?}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )
        });
        Answer {
            status: answer.status,
            json,
        }
    }
}

/// POSTs a push and checks that logic accepted it (HTTP 200, code 0).
pub fn push(addr: SocketAddr, path: &str, body: &str) -> serde_json::Value {
    let a = http(addr, "POST", path, body.as_bytes());
    assert_eq!(a.status, 200, "push {path}: {:?}", a.json);
    assert_eq!(a.json["code"], 0, "push {path}: {:?}", a.json);
    a.json
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Receives the next push (skipping nothing) and returns (op, body as text).
pub fn next_push(c: &mut Client) -> (i32, String) {
    let f = c.recv(Duration::from_secs(5)).expect("a push arrives");
    (f.op, String::from_utf8_lossy(&f.body).to_string())
}

/// A client on its own thread: it heartbeats every `heartbeat` and forwards every push
/// (op, body) to a channel, until dropped.
pub struct Subscriber {
    pub pushes: std::sync::mpsc::Receiver<(i32, String)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Connects and authenticates before returning, so the session exists when it returns.
    pub fn start(
        addr: SocketAddr,
        transport: Transport,
        mid: i64,
        key: &str,
        room: &str,
        accepts: &[i32],
    ) -> Subscriber {
        let mut c = client(addr, transport, mid, key, room, accepts);
        let (tx, pushes) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let heartbeat = Duration::from_millis(300);
            let mut next = Instant::now();
            let mut seq = 1;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if Instant::now() >= next {
                    if c.send(1, imgate_shared::frame::op::HEARTBEAT, seq, &[])
                        .is_err()
                    {
                        return;
                    }
                    seq += 1;
                    next = Instant::now() + heartbeat;
                }
                match c.recv(Duration::from_millis(50)) {
                    Ok(f) if f.op == imgate_shared::frame::op::HEARTBEAT_REPLY => {}
                    Ok(f) => {
                        if tx
                            .send((f.op, String::from_utf8_lossy(&f.body).to_string()))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(imgate::client::ClientError::Timeout) => {}
                    Err(_) => return,
                }
            }
        });
        Subscriber {
            pushes,
            stop,
            thread: Some(thread),
        }
    }

    /// The next push, within `timeout`.
    pub fn next(&self, timeout: Duration) -> (i32, String) {
        self.pushes
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no push within {timeout:?}: {e}"))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
