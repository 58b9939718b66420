//! The hostile mix: while well-behaved clients receive a steady stream of room pushes, other
//! clients send garbage, half frames, oversized frames, slowloris WebSocket handshakes and
//! floods, and some authenticate and then never read. The well-behaved clients must receive
//! every acknowledged push exactly once and in order; every hostile connection must be cut
//! off by the limit meant for it; and the process's memory must stay bounded.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use imgate::client::Transport;
use imgate::standalone::Gateway;
use imgate_shared::frame::{self, op};
use socket2::{Domain, Socket, Type};
use support::{auth_body, eventually, test_config, Subscriber};

const ROOM: &str = "live://calm";
const PUSH_PATH: &str = "/goim/push/room?operation=1000&type=live&room=calm";
const NEVER_READERS: usize = 20;
/// The never-readers' room gets 16 KiB pushes: more than a socket's send buffer (4 MiB at
/// most here) holds within the test, so comet's queue for them must overflow.
const SLOW_ROOM: &str = "live://stuck";
const SLOW_PUSH_PATH: &str = "/goim/push/room?operation=1000&type=live&room=stuck";

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// Runs `attack` over and over on its own thread until `stop`, counting the attempts.
fn attacker(
    stop: &Arc<AtomicBool>,
    attempts: &Arc<AtomicU64>,
    attack: impl Fn() + Send + 'static,
) -> thread::JoinHandle<()> {
    let stop = stop.clone();
    let attempts = attempts.clone();
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            attack();
            attempts.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Reads until the server closes (or 5 s pass); true if it closed.
fn wait_server_close(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

/// Authenticates into the room with a tiny receive buffer and then never reads.
fn never_reader(addr: SocketAddr, n: usize) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    let auth = auth_body(0, &format!("never-{n}"), SLOW_ROOM, &[1000]);
    s.write_all(&frame::encode(1, op::AUTH, 1, auth.as_bytes()))
        .unwrap();
    s
}

#[test]
fn hostile_clients_cost_the_well_behaved_ones_nothing() {
    let mut config = test_config();
    config.comet.handshake_timeout = Duration::from_secs(1);
    // The default queue (128) holds more than the default burst (100), so a flood is cut off
    // by its rate, while a reader that stops is cut off by its queue.
    assert!(config.comet.send_queue > config.comet.upstream_burst as usize);
    let g = Gateway::start(config).expect("gateway starts");
    let tcp = g.tcp_addr();
    let ws = g.ws_addr();

    // The well-behaved: half TCP, half WebSocket, all in the room, all heartbeating.
    let calm: Vec<Subscriber> = (0..10)
        .map(|i| {
            let transport = if i % 2 == 0 {
                Transport::Tcp
            } else {
                Transport::WebSocket
            };
            let addr = if i % 2 == 0 { tcp } else { ws };
            Subscriber::start(
                addr,
                transport,
                100 + i,
                &format!("calm-{i}"),
                ROOM,
                &[1000],
            )
        })
        .collect();
    let never: Vec<TcpStream> = (0..NEVER_READERS).map(|n| never_reader(tcp, n)).collect();
    eventually(Duration::from_secs(5), "every client registered", || {
        g.comet().stats().connections == (calm.len() + never.len()) as u64
    });
    let rss_before = rss_bytes();

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();
    // Garbage before auth: not a goim header.
    attackers.push(attacker(&stop, &attempts, move || {
        let mut s = TcpStream::connect(tcp).unwrap();
        let _ = s.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(64));
        assert!(wait_server_close(&mut s), "garbage connection left open");
    }));
    // Oversized frames, on TCP and as a WebSocket message.
    attackers.push(attacker(&stop, &attempts, move || {
        let mut s = TcpStream::connect(tcp).unwrap();
        let mut header = Vec::new();
        header.extend_from_slice(&(16u32 << 20).to_be_bytes());
        header.extend_from_slice(&16u16.to_be_bytes());
        header.extend_from_slice(&1u16.to_be_bytes());
        header.extend_from_slice(&op::AUTH.to_be_bytes());
        header.extend_from_slice(&1i32.to_be_bytes());
        let _ = s.write_all(&header);
        let _ = s.write_all(&[b'x'; 8192]);
        assert!(wait_server_close(&mut s), "oversized frame left open");
    }));
    // Half frames: a header announcing a body that never comes.
    attackers.push(attacker(&stop, &attempts, move || {
        let mut s = TcpStream::connect(tcp).unwrap();
        let body = [b'{'; 100];
        let full = frame::encode(1, op::AUTH, 1, &body);
        let _ = s.write_all(&full[..30]);
        assert!(wait_server_close(&mut s), "half frame left open");
    }));
    // Slowloris: a WebSocket upgrade one byte every 100 ms.
    for _ in 0..3 {
        attackers.push(attacker(&stop, &attempts, move || {
            let mut s = TcpStream::connect(ws).unwrap();
            s.set_nodelay(true).unwrap();
            for b in b"GET /sub HTTP/1.1\r\nHost: x\r\nX-Slow: "
                .iter()
                .cycle()
                .take(40)
            {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            assert!(wait_server_close(&mut s), "slowloris left open");
        }));
    }
    // A flood of heartbeats after a valid auth.
    attackers.push(attacker(&stop, &attempts, move || {
        let mut c = support::client(tcp, Transport::Tcp, 0, "", "", &[]);
        let mut flood = Vec::new();
        for seq in 0..500 {
            flood.extend_from_slice(&frame::encode(1, op::HEARTBEAT, seq, &[]));
        }
        let _ = c.send_bytes(&flood);
        assert!(c.wait_closed(Duration::from_secs(5)), "flood left open");
    }));

    // The stream: room pushes of 1 KiB, numbered, for at least four seconds and until every
    // never-reader has been cut off (20 s at most); between them, 16 KiB pushes to the
    // never-readers' room.
    let mut acknowledged = 0u32;
    let started = Instant::now();
    let stuck = "s".repeat(16 << 10);
    let going = |started: Instant| {
        let elapsed = started.elapsed();
        elapsed < Duration::from_secs(4)
            || (elapsed < Duration::from_secs(20)
                && g.comet().stats().closed_slow < NEVER_READERS as u64)
    };
    while going(started) {
        let body = format!("{acknowledged:06}:{}", "p".repeat(1017));
        support::push(g.http_addr(), PUSH_PATH, &body);
        acknowledged += 1;
        support::push(g.http_addr(), SLOW_PUSH_PATH, &stuck);
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join()
            .expect("attacker saw a hostile connection left open");
    }

    // Every acknowledged push reached every well-behaved client once, in order.
    for (i, sub) in calm.iter().enumerate() {
        for expected in 0..acknowledged {
            let (op_, body) = sub.next(Duration::from_secs(10));
            assert_eq!(op_, 1000);
            let got: u32 = body[..6].parse().expect("numbered push");
            assert_eq!(
                got, expected,
                "client {i}: push {expected} missing or out of order"
            );
        }
        assert!(
            sub.pushes.recv_timeout(Duration::from_millis(100)).is_err(),
            "client {i} received a push twice"
        );
    }

    let stats = g.comet().stats();
    let rss_after = rss_bytes();
    eprintln!(
        "{acknowledged} pushes, {} hostile attempts; malformed {} handshake timeouts {} \
         slow {} rate limited {}; RSS {} -> {} MiB",
        attempts.load(Ordering::Relaxed),
        stats.closed_malformed,
        stats.handshake_timeouts,
        stats.closed_slow,
        stats.closed_rate_limited,
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(acknowledged >= 100, "only {acknowledged} pushes in 4 s");
    // Each never-reader was cut off as slow instead of being buffered for.
    assert_eq!(stats.closed_slow, NEVER_READERS as u64, "{stats:?}");
    assert!(stats.closed_malformed >= 2, "{stats:?}");
    assert!(stats.handshake_timeouts >= 4, "{stats:?}");
    assert!(stats.closed_rate_limited >= 1, "{stats:?}");
    // Bounded memory: what the never-readers did not take is dropped with them, not kept
    // (about 200 MiB of pushes were addressed to them).
    assert!(
        rss_after < rss_before + (64 << 20),
        "RSS grew from {} to {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert_eq!(
        g.comet().stats().connections,
        calm.len() as u64,
        "only the well-behaved remain"
    );
    drop(never);
    g.shutdown();
}
