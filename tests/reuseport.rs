//! Several comet processes on one host as one gateway, on the embedded bus and store: `imgate`
//! plus `imgate comet --join` started twice, all three binding the same client port with
//! SO_REUSEPORT. This is how a host whose open-file limit cannot be raised holds more
//! connections than one process may (see tuning/README.md).

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imgate::client::Transport;
use imgate_testkit::free_port;
use support::{eventually, http, push, Subscriber};

const IMGATE: &str = env!("CARGO_BIN_EXE_imgate");

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Children killed on drop, so a failed assertion leaves no process behind.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(IMGATE)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("imgate starts")
}

#[test]
fn comets_in_three_processes_share_the_client_port_and_serve_as_one() {
    let (tcp, ws, http_port, logic_link) = (free_port(), free_port(), free_port(), free_port());
    let own: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let mut procs = Procs(Vec::new());
    procs.0.push(spawn(&[
        "--tcp-bind".into(),
        addr(tcp),
        "--ws-bind".into(),
        addr(ws),
        "--http-bind".into(),
        addr(http_port),
        "--logic-link-bind".into(),
        addr(logic_link),
        "--comet-link-bind".into(),
        "127.0.0.1:0".into(),
        "--shards".into(),
        "1".into(),
    ]));
    let http_addr: SocketAddr = addr(http_port).parse().unwrap();
    eventually(
        Duration::from_secs(20),
        "the first process serving HTTP",
        || std::net::TcpStream::connect(http_addr).is_ok(),
    );
    for port in &own {
        // Each extra comet also has a port of its own, so the test can reach it for sure.
        procs.0.push(spawn(&[
            "comet".into(),
            "--join".into(),
            addr(logic_link),
            "--tcp-bind".into(),
            addr(tcp),
            "--tcp-bind".into(),
            addr(*port),
            "--ws-bind".into(),
            addr(ws),
            "--comet-link-bind".into(),
            "127.0.0.1:0".into(),
            "--shards".into(),
            "1".into(),
        ]));
    }
    let instances = || http(http_addr, "GET", "/goim/nodes/instances", b"").json["data"].clone();
    eventually(Duration::from_secs(20), "three comets registered", || {
        instances().as_array().is_some_and(|a| a.len() == 3)
    });

    // Two clients for sure on the extra comets, and 40 on the shared ports: the kernel spreads
    // those over the three processes.
    let shared: SocketAddr = addr(tcp).parse().unwrap();
    let shared_ws: SocketAddr = addr(ws).parse().unwrap();
    let mut subs = Vec::new();
    for (i, port) in own.iter().enumerate() {
        let a: SocketAddr = addr(*port).parse().unwrap();
        subs.push(Subscriber::start(
            a,
            Transport::Tcp,
            1 + i as i64,
            &format!("own-{i}"),
            "live://all",
            &[1000],
        ));
    }
    for i in 0..40 {
        let (a, t) = if i % 2 == 0 {
            (shared, Transport::Tcp)
        } else {
            (shared_ws, Transport::WebSocket)
        };
        subs.push(Subscriber::start(
            a,
            t,
            100 + i,
            &format!("shared-{i}"),
            "live://all",
            &[1000],
        ));
    }
    eventually(
        Duration::from_secs(10),
        "every comet's connections reported",
        || {
            let total: u64 = instances()
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c["metadata"]["conn_count"].as_str()?.parse::<u64>().ok())
                        .sum()
                })
                .unwrap_or(0);
            total == subs.len() as u64
        },
    );
    let per_comet: Vec<u64> = instances()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["metadata"]["conn_count"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    eprintln!("connections per comet process: {per_comet:?}");
    assert!(
        per_comet.iter().all(|n| *n > 0),
        "a comet process got no connection: {per_comet:?}"
    );

    // A room push, a push by mid and a push by key reach clients on every process.
    push(
        http_addr,
        "/goim/push/room?operation=1000&type=live&room=all",
        "to all",
    );
    for s in &subs {
        assert_eq!(s.next(Duration::from_secs(5)).1, "to all");
    }
    let answer = push(
        http_addr,
        "/goim/push/mids?operation=1000&mids=1&mids=2",
        "to mids",
    );
    assert_eq!(answer["data"]["connections"], 2, "{answer}");
    for s in &subs[..2] {
        assert_eq!(s.next(Duration::from_secs(5)).1, "to mids");
    }
    let answer = push(
        http_addr,
        "/goim/push/keys?operation=1000&keys=shared-7&keys=own-1",
        "to keys",
    );
    assert_eq!(answer["data"]["connections"], 2, "{answer}");
    assert_eq!(subs[1].next(Duration::from_secs(5)).1, "to keys");
    assert_eq!(subs[2 + 7].next(Duration::from_secs(5)).1, "to keys");
    drop(subs);
    drop(procs);
}
