//! Probes for issue 23's "Done when" figures: each starts a real `imgate` process on free
//! loopback ports, loads it from outside as the issue describes, and prints what it measured
//! (CPU from /proc/PID/stat, RSS from /proc/PID/status, open files from /proc/PID/fd). They
//! print rather than assert: the figures depend on the machine, and a regression test per fix
//! runs with the ordinary tests. Ignored by default; run them on a quiet machine against a
//! release build:
//!
//! ```sh
//! cargo build --release --bin imgate
//! IMGATE_BIN=target/release/imgate cargo test --test hardening_probes -- --ignored --nocapture --test-threads 1
//! ```
//!
//! One at a time: `... -- --ignored --nocapture probe_watch_flood` (or `probe_connect_hook_flood`,
//! `probe_room_memory`, `probe_events_queue_memory`). Without `IMGATE_BIN` the probes use the
//! binary cargo built for the tests (a debug build: CPU figures are then meaningless).
//! `PROBE_CONFIG` adds TOML to the configuration the probes start imgate with (e.g.
//! `PROBE_CONFIG=$'[comet]\nshards = 1'`); `PROBE_CLIENTS` and `PROBE_ROOMS` change
//! `probe_room_memory`'s load.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use imgate::client::http::HttpClient;
use imgate_shared::frame::{self, op};
use imgate_testkit::free_port;

/// An imgate process (standalone: comet, logic and job) on free loopback ports; killed when
/// dropped.
struct Imgate {
    child: Child,
    tcp: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Imgate {
    /// Starts imgate with `extra` appended to a configuration that binds every listener to a
    /// free loopback port and runs goim's trust model (the probes speak goim's JSON auth).
    fn start(extra: &str) -> Imgate {
        let binary = std::env::var_os("IMGATE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_imgate")));
        let dir = tempfile::tempdir().unwrap();
        let (tcp, ws, http) = (free_port(), free_port(), free_port());
        let (comet_link, logic_link) = (free_port(), free_port());
        let config = format!(
            "[comet]\ntcp_bind = [\"127.0.0.1:{tcp}\"]\nws_bind = [\"127.0.0.1:{ws}\"]\n\
             link_bind = \"127.0.0.1:{comet_link}\"\n\
             [logic]\nhttp_bind = \"127.0.0.1:{http}\"\nlink_bind = \"127.0.0.1:{logic_link}\"\n\
             [auth]\ninsecure = true\n"
        );
        let config = merge_sections(&config, extra);
        // More options for an experiment, e.g. PROBE_CONFIG=$'[comet]\nonline_interval = "1h"'.
        let config = merge_sections(&config, &std::env::var("PROBE_CONFIG").unwrap_or_default());
        let path = dir.path().join("imgate.toml");
        std::fs::write(&path, &config).unwrap();
        let log = std::fs::File::create(dir.path().join("imgate.log")).unwrap();
        let child = Command::new(&binary)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let imgate = Imgate {
            child,
            tcp: ([127, 0, 0, 1], tcp).into(),
            http: ([127, 0, 0, 1], http).into(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = HttpClient::new(imgate.http)
                .timeout(Duration::from_secs(1))
                .request("GET", "/readyz", &[], b"")
                .is_ok_and(|a| a.status == 200);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "imgate not ready within 30 s");
            thread::sleep(Duration::from_millis(100));
        }
        println!("imgate {} (pid {})", binary.display(), imgate.pid());
        imgate
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) the process has used.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) start after its ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / hz
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The `/metrics` lines whose name starts with `prefix`.
    fn metrics(&self, prefix: &str) -> Vec<String> {
        let answer = HttpClient::new(self.http)
            .timeout(Duration::from_secs(5))
            .request("GET", "/metrics", &[], b"")
            .expect("/metrics answers");
        String::from_utf8_lossy(&answer.body)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Imgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `base` with the lines of `extra` added to their `[section]` (or appended when new).
fn merge_sections(base: &str, extra: &str) -> String {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for text in [base, extra] {
        let mut current = String::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line.starts_with('[') {
                current = line.to_string();
                if !sections.iter().any(|(s, _)| *s == current) {
                    sections.push((current.clone(), Vec::new()));
                }
            } else if let Some((_, lines)) = sections.iter_mut().find(|(s, _)| *s == current) {
                lines.push(line.to_string());
            }
        }
    }
    sections
        .into_iter()
        .map(|(s, lines)| format!("{s}\n{}\n", lines.join("\n")))
        .collect()
}

/// A raw goim TCP client, authenticated with goim's JSON.
fn connect(addr: SocketAddr, auth: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&frame::encode(1, op::AUTH, 1, auth.as_bytes()))
        .unwrap();
    let (op, _, body) = read_frame(&mut s).expect("an auth reply");
    assert_eq!(op, op::AUTH_REPLY, "{}", String::from_utf8_lossy(&body));
    s
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<(i32, i32, Vec<u8>)> {
    let mut header = [0u8; 16];
    s.read_exact(&mut header)?;
    let h = frame::decode_header(&header, 1 << 20)
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .ok_or_else(|| std::io::Error::other("short header"))?;
    let mut body = vec![0u8; h.body_len()];
    s.read_exact(&mut body)?;
    Ok((h.op, h.seq, body))
}

/// Reads frames until one with `wanted` op (pushes and other replies skipped).
fn read_op(s: &mut TcpStream, wanted: i32) -> std::io::Result<(i32, Vec<u8>)> {
    loop {
        let (op, seq, body) = read_frame(s)?;
        if op == wanted {
            return Ok((seq, body));
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A small xorshift: the ops of each frame, different every frame.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Issue 23, item 1: 150 clients each send 45 frames a second; first heartbeats (the
/// reference), then op-14 frames of 680 random five-digit ops (4,079 bytes, under
/// `comet.max_body`; under `comet.upstream_rate`). A bystander heartbeats every 20 ms.
/// Prints imgate's CPU share of one core and the bystander's heartbeat RTT over 10 s.
#[test]
#[ignore = "a probe: prints figures; run by hand (see the file's doc)"]
fn probe_watch_flood() {
    const CLIENTS: usize = 150;
    const PER_SECOND: u32 = 45;
    const OPS: usize = 680;
    let imgate = Imgate::start("");
    for watch in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let flooders: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (stop, sent, addr) = (stop.clone(), sent.clone(), imgate.tcp);
                thread::spawn(move || {
                    let auth = format!(r#"{{"mid":{},"key":"f{i}","accepts":[1000]}}"#, i + 1);
                    let mut s = connect(addr, &auth);
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
                    let every = Duration::from_secs(1) / PER_SECOND;
                    let mut next =
                        Instant::now() + every.mul_f64(rng.next() as f64 / u64::MAX as f64);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut seq = 2;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let now = Instant::now();
                        if now < next {
                            thread::sleep(next - now);
                        }
                        next += every;
                        let (op, reply, body) = if watch {
                            let ops: Vec<String> = (0..OPS)
                                .map(|_| (10_000 + rng.next() % 90_000).to_string())
                                .collect();
                            (op::SUB, op::SUB_REPLY, ops.join(","))
                        } else {
                            (op::HEARTBEAT, op::HEARTBEAT_REPLY, String::new())
                        };
                        if s.write_all(&frame::encode(1, op, seq, body.as_bytes()))
                            .is_err()
                            || read_op(&mut s, reply).is_err()
                        {
                            eprintln!("flooder {i} was cut off");
                            return;
                        }
                        seq += 1;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let rtts = Arc::new(Mutex::new(Vec::new()));
        let measuring = Arc::new(AtomicBool::new(false));
        let bystander = {
            let (stop, rtts, measuring, addr) =
                (stop.clone(), rtts.clone(), measuring.clone(), imgate.tcp);
            thread::spawn(move || {
                let mut s = connect(addr, r#"{"mid":100000,"key":"bystander"}"#);
                let mut seq = 2;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let started = Instant::now();
                    s.write_all(&frame::encode(1, op::HEARTBEAT, seq, b""))
                        .unwrap();
                    read_op(&mut s, op::HEARTBEAT_REPLY).unwrap();
                    if measuring.load(Ordering::Relaxed) {
                        rtts.lock()
                            .unwrap()
                            .push(started.elapsed().as_secs_f64() * 1000.0);
                    }
                    seq += 1;
                    thread::sleep(Duration::from_millis(20));
                }
            })
        };
        // Warm up (every flooder connected and at its pace), then measure 10 s.
        thread::sleep(Duration::from_secs(4));
        measuring.store(true, Ordering::Relaxed);
        let (cpu0, sent0, t0) = (
            imgate.cpu_seconds(),
            sent.load(Ordering::Relaxed),
            Instant::now(),
        );
        thread::sleep(Duration::from_secs(10));
        let (cpu1, sent1, elapsed) = (
            imgate.cpu_seconds(),
            sent.load(Ordering::Relaxed),
            t0.elapsed(),
        );
        measuring.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        for t in flooders {
            let _ = t.join();
        }
        let _ = bystander.join();
        let mut rtts = rtts.lock().unwrap().clone();
        rtts.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{}: {CLIENTS} clients, {:.0} frames/s answered: imgate {:.1} % of a core; bystander \
             heartbeat RTT p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            if watch {
                "op-14 frames of 680 ops"
            } else {
                "heartbeats (reference)"
            },
            (sent1 - sent0) as f64 / elapsed.as_secs_f64(),
            (cpu1 - cpu0) / elapsed.as_secs_f64() * 100.0,
            percentile(&rtts, 0.5),
            percentile(&rtts, 0.99),
            rtts.last().copied().unwrap_or(f64::NAN),
            rtts.len(),
        );
    }
}

/// Issue 23, item 2: a connect hook that accepts connections and never answers, and 3,000
/// sockets that each send one auth at once. Prints the most connections the hook held at once,
/// the most files imgate held open, and how the refusals were told and counted.
#[test]
#[ignore = "a probe: prints figures; run by hand (see the file's doc)"]
fn probe_connect_hook_flood() {
    const CLIENTS: usize = 3000;
    let live = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let hook_port = {
        let (live, most) = (live.clone(), most.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                while let Ok((mut stream, _)) = listener.accept().await {
                    let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let live = live.clone();
                    tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        let mut sink = [0u8; 4096];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                        live.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        });
        rx.recv().unwrap()
    };
    let imgate = Imgate::start(&format!(
        "[auth]\nconnect_url = \"http://127.0.0.1:{hook_port}/connect\"\n"
    ));
    let files_before = imgate.open_files();
    let mut sockets: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let s = TcpStream::connect(imgate.tcp).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            s
        })
        .collect();
    let most_files = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (most_files, sampling, pid) = (most_files.clone(), sampling.clone(), imgate.pid());
        thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let n = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
                most_files.fetch_max(n, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    for (i, s) in sockets.iter_mut().enumerate() {
        let auth = format!(r#"{{"token":"session-{i}"}}"#);
        s.write_all(&frame::encode(1, op::AUTH, 1, auth.as_bytes()))
            .unwrap();
    }
    // Each answer as it arrives (a busy refusal must not wait behind a connect the hook holds).
    let mut reasons: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
    let mut waiting: Vec<usize> = (0..sockets.len()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !waiting.is_empty() && Instant::now() < deadline {
        use std::os::fd::AsRawFd;
        let mut fds: Vec<libc::pollfd> = waiting
            .iter()
            .map(|&i| libc::pollfd {
                fd: sockets[i].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the call's duration.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if ready <= 0 {
            continue;
        }
        let at = started.elapsed().as_secs_f64();
        let mut still = Vec::new();
        for (k, &i) in waiting.iter().enumerate() {
            if fds[k].revents == 0 {
                still.push(i);
                continue;
            }
            let reason = match read_frame(&mut sockets[i]) {
                Ok((op::DISCONNECT_REPLY, _, body)) => {
                    let text = String::from_utf8_lossy(&body).to_string();
                    // Group "connect hook unavailable: no answer within 2s" and the like.
                    text.split(" within").next().unwrap_or_default().to_string()
                }
                Ok((op, _, _)) => format!("op {op}"),
                Err(e) => format!("no answer: {e}"),
            };
            let entry = reasons.entry(reason).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(at);
        }
        waiting = still;
    }
    if !waiting.is_empty() {
        reasons.insert("no answer within 15 s".into(), (waiting.len(), 15.0));
    }
    thread::sleep(Duration::from_millis(500));
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    println!(
        "{CLIENTS} auths against a hook that never answers: the hook held at most {} \
         connections at once; imgate held at most {} open files ({} before)",
        most.load(Ordering::SeqCst),
        most_files.load(Ordering::Relaxed),
        files_before,
    );
    for (reason, (n, last)) in reasons {
        println!("  {n:>5} told {reason:?} (the last after {last:.2} s)");
    }
    for line in imgate.metrics("imgate_auth_failures_total") {
        println!("  {line}");
    }
    for line in imgate.metrics("imgate_logic_connect_hook") {
        println!("  {line}");
    }
}

/// Issue 23, item 4: 1,000 connections, then each joins 15 distinct rooms with 256-byte names
/// (op 24). Prints imgate's RSS growth from the connected state once the online reports have
/// carried the rooms to logic and back: its median, lowest and highest over four report cycles.
#[test]
#[ignore = "a probe: prints figures; run by hand (see the file's doc)"]
fn probe_room_memory() {
    let knob = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    // PROBE_CLIENTS and PROBE_ROOMS change the load (rooms a connection joins: at most
    // comet.max_rooms_per_conn).
    let (count, rooms_each) = (knob("PROBE_CLIENTS", 1000), knob("PROBE_ROOMS", 15));
    const NAME: usize = 256;
    let imgate = Imgate::start("");
    let mut clients: Vec<TcpStream> = (0..count)
        .map(|i| connect(imgate.tcp, &format!(r#"{{"mid":{},"key":"r{i}"}}"#, i + 1)))
        .collect();
    thread::sleep(Duration::from_secs(5));
    let before = imgate.rss_bytes();
    for (i, s) in clients.iter_mut().enumerate() {
        for j in 0..rooms_each {
            let mut name = format!("live://{i:05}-{j:02}-");
            name.extend(std::iter::repeat_n('x', NAME - name.len()));
            s.write_all(&frame::encode(1, op::JOIN, j as i32, name.as_bytes()))
                .unwrap();
        }
    }
    for s in &mut clients {
        for _ in 0..rooms_each {
            let (_, body) = read_op(s, op::JOIN_REPLY).unwrap();
            assert_eq!(body.len(), NAME, "every join accepted");
        }
    }
    // Three online reports (every 5 s) carry the rooms to logic and back; then RSS is sampled
    // for 20 s more (four report cycles), since it rises and falls with each report.
    thread::sleep(Duration::from_secs(16));
    let mut samples = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        samples.push(imgate.rss_bytes().saturating_sub(before));
        thread::sleep(Duration::from_millis(50));
    }
    samples.sort_unstable();
    let rooms = (count * rooms_each) as f64;
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    println!(
        "{count} connections x {rooms_each} rooms of {NAME}-byte names: RSS {:.1} MB before the \
         joins; growth over 20 s of reports: median {:.1} MB ({:.0} bytes a room), lowest {:.1} \
         MB, highest {:.1} MB",
        mb(before),
        mb(at(0.5)),
        at(0.5) as f64 / rooms,
        mb(at(0.0)),
        mb(at(1.0)),
    );
    for line in imgate.metrics("imgate_rooms") {
        println!("  {line}");
    }
    drop(clients);
}

/// Issue 23, item 4 (events): 12,000 connections that each authenticate with a 3,800-byte key
/// and leave, against an events endpoint that is down. Prints imgate's RSS growth and how many
/// events logic dropped.
#[test]
#[ignore = "a probe: prints figures; run by hand (see the file's doc)"]
fn probe_events_queue_memory() {
    const RECONNECTS: usize = 12_000;
    const THREADS: usize = 8;
    let imgate = Imgate::start(&format!(
        "[logic]\nevents_url = \"http://127.0.0.1:{}/events\"\n",
        free_port()
    ));
    let before = imgate.rss_bytes();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = imgate.tcp;
            thread::spawn(move || {
                for n in (t..RECONNECTS).step_by(THREADS) {
                    let key = format!("{n:06}-{}", "k".repeat(3800 - 7));
                    let s = connect(addr, &format!(r#"{{"mid":{},"key":"{key}"}}"#, n + 1));
                    drop(s);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    thread::sleep(Duration::from_secs(3));
    let after = imgate.rss_bytes();
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{RECONNECTS} reconnects with 3,800-byte keys, events endpoint down: RSS {:.1} MB -> \
         {:.1} MB (growth {:.1} MB)",
        mb(before),
        mb(after),
        mb(after.saturating_sub(before)),
    );
    for line in imgate.metrics("imgate_logic_events") {
        println!("  {line}");
    }
}
