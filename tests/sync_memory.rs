//! Op 22 cannot amplify memory: a client that asks for a long history and never reads holds
//! one page of it, not the whole answer. Alone in its test binary so that the process's memory
//! is this test's.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use imgate::client::Transport;
use imgate::standalone::Gateway;
use imgate_shared::frame::{self, op};
use socket2::{Domain, Socket, Type};
use support::{auth_body, eventually, test_config};

const ROOM: &str = "live://long";
const MESSAGES: usize = 100;
const BODY: usize = 60_000;
const ATTACKERS: usize = 200;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// Authenticates with a tiny receive buffer, asks for the whole history, and never reads.
fn syncs_and_never_reads(addr: SocketAddr, n: usize) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    let auth = auth_body(0, &format!("stalled-{n}"), "", &[]);
    let mut hello = frame::encode(1, op::AUTH, 1, auth.as_bytes()).to_vec();
    hello.extend_from_slice(&frame::encode(
        1,
        op::SYNC,
        2,
        format!("{ROOM} 0").as_bytes(),
    ));
    s.write_all(&hello).unwrap();
    s
}

#[test]
fn a_client_that_syncs_a_long_history_and_never_reads_holds_one_page() {
    let mut config = test_config();
    config.store.room_history_max_messages = MESSAGES;
    // The pages, not the queue limit, are what must bound this.
    config.comet.send_queue_bytes = 1 << 30;
    let g = Gateway::start(config).expect("gateway starts");
    let body = "h".repeat(BODY);
    for _ in 0..MESSAGES {
        support::push(
            g.http_addr(),
            "/goim/push/room?operation=1000&type=live&room=long&history=1",
            &body,
        );
    }

    // A client that reads gets the whole history, in order, then the reply.
    let mut reader = support::client(g.tcp_addr(), Transport::Tcp, 0, "reader", "", &[]);
    reader
        .send(1, op::SYNC, 7, format!("{ROOM} 0").as_bytes())
        .unwrap();
    for seq in 1..=MESSAGES as i32 {
        let f = reader
            .recv(Duration::from_secs(10))
            .expect("history message");
        assert_eq!((f.op, f.seq, f.body.len()), (1000, seq, BODY));
    }
    let reply = reader.recv(Duration::from_secs(10)).unwrap();
    assert_eq!((reply.op, reply.seq), (op::SYNC_REPLY, 7));
    drop(reader);

    let before = rss_bytes();
    let mut stalled: Vec<TcpStream> = (0..ATTACKERS)
        .map(|n| syncs_and_never_reads(g.tcp_addr(), n))
        .collect();
    // Each is being answered once history bytes reach it (whatever comet queues for one
    // answer, it queues before the first byte leaves).
    let deadline = Instant::now() + Duration::from_secs(30);
    for (n, s) in stalled.iter_mut().enumerate() {
        let mut head = [0u8; 16];
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        // The auth reply (16 bytes), then the start of the first history frame.
        s.read_exact(&mut head)
            .unwrap_or_else(|e| panic!("client {n}: no auth reply: {e}"));
        let mut first = [0u8; 1];
        s.read_exact(&mut first)
            .unwrap_or_else(|e| panic!("client {n}: no history arrived: {e}"));
    }
    let grown = rss_bytes().saturating_sub(before);
    let history = (MESSAGES * BODY) as u64;
    println!(
        "{ATTACKERS} stalled syncs of a {} MB history: RSS grew {} MB",
        history >> 20,
        grown >> 20
    );
    // Whole answers would be 200 × 6 MB; a page (64 KiB, or one 60 KB message past it) each
    // is about 25 MB.
    assert!(
        grown < 100 << 20,
        "RSS grew {} MB for {ATTACKERS} stalled syncs",
        grown >> 20
    );
    eventually(Duration::from_secs(5), "all still connected", || {
        g.comet().stats().connections == ATTACKERS as u64
    });
    drop(stalled);
    g.shutdown();
}
