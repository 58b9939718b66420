//! Where an idle connection's heap bytes go: a counting allocator for this crate's unit tests
//! that keeps, per allocation size, what the comet's shard threads hold live, and a test that
//! connects idle authenticated clients to a real comet and prints the difference by size.
//!
//! Run: `cargo test -p imgate-comet --release memory_probe -- --ignored --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use imgate_shared::config::CometConfig;
use imgate_shared::frame::{self, op};
use imgate_shared::link::{self, Body, ConnectReply, Envelope, InboxMessages};

/// Sizes counted one by one; larger ones share the last slot.
const SIZES: usize = 4097;

struct Counting;

static LIVE_BYTES: [AtomicI64; SIZES] = [const { AtomicI64::new(0) }; SIZES];
static LIVE_COUNT: [AtomicI64; SIZES] = [const { AtomicI64::new(0) }; SIZES];

thread_local! {
    /// 0: not decided yet, 1: a comet shard thread (counted), 2: any other thread.
    static COUNTED: Cell<u8> = const { Cell::new(0) };
    /// Bytes this thread holds (allocated minus freed by it), whatever the thread.
    static THREAD_BYTES: Cell<i64> = const { Cell::new(0) };
}

/// Bytes the calling thread holds: what it allocated and did not free, by requested size.
pub(crate) fn thread_bytes() -> i64 {
    THREAD_BYTES.with(Cell::get)
}

fn counted() -> bool {
    COUNTED.with(|c| match c.get() {
        0 => {
            // Decide once; the name lookup below must not count itself.
            c.set(2);
            let shard = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("comet-shard"));
            c.set(if shard { 1 } else { 2 });
            shard
        }
        v => v == 1,
    })
}

fn record(size: usize, sign: i64) {
    THREAD_BYTES.with(|b| b.set(b.get() + sign * size as i64));
    if counted() {
        let slot = size.min(SIZES - 1);
        LIVE_BYTES[slot].fetch_add(sign * size as i64, Ordering::Relaxed);
        LIVE_COUNT[slot].fetch_add(sign, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 1);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(layout.size(), -1);
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 1);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(layout.size(), -1);
        record(new_size, 1);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn snapshot() -> Vec<(i64, i64)> {
    (0..SIZES)
        .map(|i| {
            (
                LIVE_BYTES[i].load(Ordering::Relaxed),
                LIVE_COUNT[i].load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// Answers Connect (key = token, room `live://1`, op 1000, 60 s heartbeat), the connect
/// catch-up read (nothing stored) and everything else with an empty answer.
fn logic_stand_in() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = BytesMut::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let n = match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let mut out = Vec::new();
                    while let Ok(Some(env)) = link::decode_frame(&mut buf) {
                        let answer = match env.body {
                            Some(Body::Connect(c)) => {
                                let key = String::from_utf8_lossy(&c.token).to_string();
                                Body::ConnectReply(ConnectReply {
                                    mid: key.trim_start_matches("user-").parse().unwrap_or(1),
                                    heartbeat_ms: 60_000,
                                    key,
                                    room: "live://1".into(),
                                    accepts: vec![1000],
                                    ..Default::default()
                                })
                            }
                            Some(Body::InboxRead(_)) => {
                                Body::InboxMessages(InboxMessages::default())
                            }
                            _ => Body::Ok(link::Empty {}),
                        };
                        out.extend_from_slice(&Envelope::new(env.id, answer).to_frame());
                    }
                    if stream.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
#[ignore = "prints a breakdown; run by hand with --nocapture"]
fn memory_probe_idle_connections() {
    let clients: usize = std::env::var("PROBE_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let logic = logic_stand_in();
    let config = CometConfig {
        tcp_bind: vec![([127, 0, 0, 1], 0).into()],
        ws_bind: vec![],
        link_bind: ([127, 0, 0, 1], 0).into(),
        logic_addrs: vec![logic.to_string()],
        shards: 1,
        ..Default::default()
    };
    let comet = crate::start(&config).unwrap();
    let addr = comet.tcp_addrs()[0];
    std::thread::sleep(Duration::from_millis(300));
    let before = snapshot();
    let mut held = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&frame::encode(
            1,
            op::AUTH,
            1,
            format!("user-{}", i + 1).as_bytes(),
        ))
        .unwrap();
        let mut header = [0u8; 16];
        s.read_exact(&mut header).unwrap();
        held.push(s);
    }
    // One heartbeat each, as idle clients send.
    for s in &mut held {
        s.write_all(&frame::encode(1, op::HEARTBEAT, 2, b""))
            .unwrap();
    }
    for s in &mut held {
        let mut reply = [0u8; 20];
        s.read_exact(&mut reply).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while comet.stats().connections < clients as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = snapshot();
    let n = clients as i64;
    let mut rows: Vec<(usize, i64, i64)> = (0..SIZES)
        .map(|i| (i, after[i].0 - before[i].0, after[i].1 - before[i].1))
        .filter(|r| r.1.abs() >= n / 10)
        .collect();
    rows.sort_by_key(|r| -r.1);
    let total: i64 = (0..SIZES).map(|i| after[i].0 - before[i].0).sum();
    println!("{clients} idle connections: {} heap bytes each", total / n);
    for (size, bytes, count) in rows {
        println!(
            "  size {size:>5}: {:>7.2} allocations and {:>6} bytes per connection",
            count as f64 / n as f64,
            bytes / n
        );
    }
    drop(held);
    comet.shutdown();
}
