//! Admission and rate limits: connections per comet and per source address are refused at
//! accept and counted; a client sending frames faster than its rate is closed and counted,
//! while a well-behaved client beside it carries on.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use imgate::client::Transport;
use imgate::standalone::Gateway;
use imgate_shared::frame::{self, op};
use socket2::{Domain, Socket, Type};
use support::{eventually, test_config};

/// Connects from `source` (an address in 127.0.0.0/8).
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Whether the server closed the connection (EOF or reset) within the read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Whether the connection is still open after `wait`.
fn still_open(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    let open = matches!(s.read(&mut buf), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    open
}

#[test]
fn connections_past_the_comet_and_address_limits_are_refused_and_counted() {
    let mut config = test_config();
    config.comet.max_conns = 4;
    config.comet.max_conns_per_ip = 2;
    config.comet.handshake_timeout = Duration::from_secs(30);
    let g = Gateway::start(config).expect("gateway starts");
    let addr = g.tcp_addr();

    // Each shard accepts on its own, so the next connection waits until the comet has taken
    // the earlier ones: otherwise a later connect may be accepted first and take the place.
    let accepted = |n: u64| {
        eventually(Duration::from_secs(5), "accepted", || {
            g.comet().stats().accepted == n
        })
    };
    let mut a1 = connect_from("127.0.0.2", addr);
    let mut a2 = connect_from("127.0.0.2", addr);
    accepted(2);
    let mut a3 = connect_from("127.0.0.2", addr);
    assert!(
        closed_by_server(&mut a3),
        "third connection from one address"
    );
    eventually(Duration::from_secs(5), "refused_ip_limit", || {
        g.comet().stats().refused_ip_limit == 1
    });
    assert!(still_open(&mut a1, Duration::from_millis(200)));
    assert!(still_open(&mut a2, Duration::from_millis(200)));

    // Another address still gets in, up to the comet's limit (counted over both listeners).
    let _b1 = connect_from("127.0.0.3", addr);
    let mut b2 = connect_from("127.0.0.3", g.ws_addr());
    assert!(still_open(&mut b2, Duration::from_millis(200)));
    accepted(5);
    let mut c1 = connect_from("127.0.0.4", addr);
    assert!(closed_by_server(&mut c1), "fifth connection to the comet");
    eventually(Duration::from_secs(5), "refused_conn_limit", || {
        g.comet().stats().refused_conn_limit == 1
    });

    // A closed connection gives its places back.
    drop(a1);
    eventually(Duration::from_secs(5), "a place frees up", || {
        let mut again = connect_from("127.0.0.2", addr);
        still_open(&mut again, Duration::from_millis(100))
    });
    g.shutdown();
}

#[test]
fn a_client_over_its_frame_rate_is_closed_and_others_are_not() {
    let mut config = test_config();
    config.comet.upstream_rate = 10;
    config.comet.upstream_burst = 20;
    let g = Gateway::start(config).expect("gateway starts");

    let mut flood = support::client(g.tcp_addr(), Transport::Tcp, 1, "flood", "", &[1000]);
    let mut calm = support::client(g.ws_addr(), Transport::WebSocket, 2, "calm", "", &[1000]);
    // 200 heartbeats in one write: far past a burst of 20 (the auth frame took one).
    let mut burst = Vec::new();
    for seq in 0..200 {
        burst.extend_from_slice(&frame::encode(1, op::HEARTBEAT, seq, &[]));
    }
    flood.send_bytes(&burst).unwrap();
    assert!(
        flood.wait_closed(Duration::from_secs(5)),
        "the flooding client was not closed"
    );
    eventually(Duration::from_secs(5), "closed_rate_limited", || {
        g.comet().stats().closed_rate_limited == 1
    });

    // Five heartbeats a second stay under 10/s for as long as the test cares to look.
    for seq in 0..10 {
        assert!(calm.heartbeat(seq).is_ok(), "calm client cut off at {seq}");
        std::thread::sleep(Duration::from_millis(200));
    }
    support::push(
        g.http_addr(),
        "/goim/push/mids?operation=1000&mids=2",
        "still here",
    );
    let f = calm
        .recv(Duration::from_secs(5))
        .expect("push to the calm client");
    assert_eq!(f.body, b"still here");
    assert_eq!(g.comet().stats().closed_rate_limited, 1);
    g.shutdown();
}

#[test]
fn frames_before_auth_count_against_the_rate_too() {
    let mut config = test_config();
    config.comet.upstream_rate = 5;
    config.comet.upstream_burst = 5;
    config.comet.handshake_timeout = Duration::from_secs(30);
    let g = Gateway::start(config).expect("gateway starts");
    let mut s = TcpStream::connect(g.tcp_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut junk = Vec::new();
    for seq in 0..50 {
        junk.extend_from_slice(&frame::encode(1, 9999, seq, b"x"));
    }
    std::io::Write::write_all(&mut s, &junk).unwrap();
    assert!(closed_by_server(&mut s), "pre-auth flood not closed");
    eventually(Duration::from_secs(5), "closed_rate_limited", || {
        g.comet().stats().closed_rate_limited == 1
    });
    g.shutdown();
}

#[test]
fn a_slow_http_request_head_is_cut_off_and_others_are_served() {
    let mut config = test_config();
    config.logic.http_header_timeout = Duration::from_secs(1);
    let g = Gateway::start(config).expect("gateway starts");
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(g.http_addr()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut slow, b"GET /goim/online/total HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Meanwhile a normal request is answered.
    let a = support::http(g.http_addr(), "GET", "/goim/online/total", b"");
    assert_eq!(a.status, 200);
    // The unfinished head is dropped at the deadline (hyper may answer 408 first).
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "slow head answered: {text}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    g.shutdown();
}

/// Every WebSocket frame a client sends counts against its rate, control frames and empty
/// fragments included: a pong flood is closed like a heartbeat flood.
#[test]
fn websocket_pongs_and_empty_fragments_count_against_the_rate() {
    use imgate_shared::ws::{self, opcode};
    let mut config = test_config();
    config.comet.upstream_rate = 10;
    config.comet.upstream_burst = 20;
    let g = Gateway::start(config).expect("gateway starts");

    let mut pongs = Vec::new();
    for _ in 0..200 {
        pongs.extend_from_slice(&ws::encode_client_frame(opcode::PONG, b"", [1, 2, 3, 4]));
    }
    let mut fragments = ws::encode_client_frame(opcode::BINARY, b"", [1, 2, 3, 4]);
    fragments[0] &= 0x7f;
    for _ in 0..200 {
        let mut empty = ws::encode_client_frame(opcode::CONTINUATION, b"", [5, 6, 7, 8]);
        empty[0] &= 0x7f;
        fragments.extend_from_slice(&empty);
    }
    for (n, flood) in [pongs, fragments].into_iter().enumerate() {
        let mut c = support::client(g.ws_addr(), Transport::WebSocket, 1, "", "", &[1000]);
        c.send_bytes(&flood).unwrap();
        assert!(
            c.wait_closed(Duration::from_secs(5)),
            "flood {n} of frames that complete no message was not closed"
        );
        eventually(Duration::from_secs(5), "closed_rate_limited", || {
            g.comet().stats().closed_rate_limited == n as u64 + 1
        });
    }
    g.shutdown();
}

/// A connection's queue is bounded in bytes as well as in entries: a client that stops reading
/// large pushes is closed long before its queue holds `send_queue` of them.
#[test]
fn a_queue_is_bounded_in_bytes_as_well_as_in_entries() {
    let mut config = test_config();
    config.comet.send_queue = 10_000;
    config.comet.send_queue_bytes = 256 << 10;
    let g = Gateway::start(config).expect("gateway starts");
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&g.tcp_addr().into()).unwrap();
    let mut stalled: TcpStream = socket.into();
    let auth = support::auth_body(0, "stalled", "live://big", &[1000]);
    std::io::Write::write_all(
        &mut stalled,
        &frame::encode(1, op::AUTH, 1, auth.as_bytes()),
    )
    .unwrap();
    eventually(Duration::from_secs(5), "the client registered", || {
        g.comet().stats().connections == 1
    });
    // 200 pushes of 32 KiB: 6.4 MiB, far past the kernel's buffers and 256 KiB of queue, but
    // only 200 of 10,000 entries.
    let body = "x".repeat(32 << 10);
    for _ in 0..200 {
        support::push(
            g.http_addr(),
            "/goim/push/room?operation=1000&type=live&room=big",
            &body,
        );
        if g.comet().stats().closed_slow == 1 {
            break;
        }
    }
    eventually(Duration::from_secs(10), "closed_slow", || {
        g.comet().stats().closed_slow == 1
    });
    g.shutdown();
}

/// A paced broadcast keeps no connection alive: clients that hang up while it runs are closed
/// by the server at once (their sockets leave CLOSE-WAIT), not when the broadcast ends.
#[test]
fn a_paced_broadcast_does_not_keep_closed_connections() {
    let g = Gateway::start(test_config()).expect("gateway starts");
    let mut clients: Vec<_> = (0..20)
        .map(|i| {
            support::client(
                g.tcp_addr(),
                Transport::Tcp,
                0,
                &format!("k{i}"),
                "",
                &[1000],
            )
        })
        .collect();
    eventually(Duration::from_secs(5), "every client registered", || {
        g.comet().stats().connections == 20
    });
    // One connection a second: this broadcast takes about 20 s.
    support::push(
        g.http_addr(),
        "/goim/push/all?operation=1000&speed=1",
        "slow",
    );
    for c in &mut clients {
        c.shutdown_write().unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(
            c.wait_closed(Duration::from_secs(5)),
            "client {i} hung up but the server kept its connection open"
        );
    }
    eventually(Duration::from_secs(5), "no connection left", || {
        g.comet().stats().connections == 0
    });
    g.shutdown();
}
