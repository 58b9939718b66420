//! The harness against real servers: a real imgate gateway (in this process, on free ports),
//! and a fake gateway that loses and duplicates pushes on purpose, which the harness must
//! report.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imgate::standalone::Gateway;
use imgate_shared::config::Config;
use imgate_shared::frame;
use serde_json::Value;

const HARNESS: &str = env!("CARGO_BIN_EXE_bench-harness");

fn gateway() -> Gateway {
    let mut c = Config::default();
    c.comet.tcp_bind = vec!["127.0.0.1:0".into()];
    c.comet.ws_bind = vec!["127.0.0.1:0".into()];
    c.comet.link_bind = "127.0.0.1:0".into();
    c.comet.shards = 2;
    c.comet.pin = false;
    c.comet.io_memory = 256 << 10;
    c.logic.http_bind = "127.0.0.1:0".into();
    c.logic.link_bind = "127.0.0.1:0".into();
    c.job.registry_interval = Duration::from_millis(100);
    Gateway::start(c).expect("gateway starts")
}

/// Runs the harness with `args` and returns its JSON report.
fn harness(name: &str, args: &[String]) -> Value {
    let json = std::env::temp_dir().join(format!(
        "bench-harness-test-{name}-{}.json",
        std::process::id()
    ));
    let out = Command::new(HARNESS)
        .args(args)
        .args(["--no-pin", "--settle", "0.3", "--json"])
        .arg(&json)
        .output()
        .expect("bench-harness runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-harness failed\n{stdout}\n{stderr}"
    );
    let text = std::fs::read_to_string(&json).expect("report written");
    let _ = std::fs::remove_file(&json);
    let report: Value = serde_json::from_str(&text).expect("report is JSON");
    eprintln!("{stdout}");
    report
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn room_pushes_to_a_real_gateway_are_all_counted_once_with_latency_and_server_figures() {
    let gw = gateway();
    let mut args = strings(&["--preset", "goim", "--clients", "300", "--duration", "2"]);
    args.extend([
        "--tcp-addr".into(),
        gw.tcp_addr().to_string(),
        "--http".into(),
        gw.http_addr().to_string(),
        "--server-pid".into(),
        std::process::id().to_string(),
        "--workers".into(),
        "2".into(),
    ]);
    let r = harness("room", &args);
    let pushes = r["phases"][0]["pushes_accepted"].as_u64().unwrap();
    assert!((70..=90).contains(&pushes), "40/s for 2 s: {pushes}");
    assert_eq!(r["connect"]["connected"], 300);
    assert_eq!(r["expected"].as_u64(), Some(300 * pushes));
    assert_eq!(r["delivered"], r["expected"]);
    assert_eq!(r["errors"]["total"], 0, "{:#}", r["errors"]);
    assert_eq!(r["counters"]["seq_gaps"], 0);
    assert!(
        r["msgs_per_sec"].as_f64().unwrap() > 5_000.0,
        "300 clients x 40/s"
    );
    assert!(r["frames_per_sec"].as_f64().unwrap() > 0.0);
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(r["latency_us"][key].as_u64().unwrap() > 0, "latency {key}");
    }
    assert!(r["server_cpu_ns_per_msg"].as_f64().is_some());
    assert!(r["rss_bytes_per_conn"].as_i64().is_some());
    assert!(!r["phases"][0]["samples_msgs_per_sec"]
        .as_array()
        .unwrap()
        .is_empty());
    gw.shutdown();
}

#[test]
fn websocket_user_pushes_and_idle_heartbeats_reach_a_real_gateway() {
    let gw = gateway();
    let ws = gw.ws_addr().to_string();
    let http = gw.http_addr().to_string();
    let pid = std::process::id().to_string();
    let mut args = strings(&[
        "--preset",
        "single-push",
        "--transport",
        "ws",
        "--rate",
        "300",
        "--duration",
        "1.5",
        "--mid-base",
    ]);
    // A user of its own: stored messages of other tests' users never reach it.
    args.extend([
        "7000000".into(),
        "--ws-addr".into(),
        ws.clone(),
        "--http".into(),
        http.clone(),
    ]);
    let r = harness("single", &args);
    let accepted = r["phases"][0]["pushes_accepted"].as_u64().unwrap();
    assert!(accepted > 300, "{accepted}");
    assert_eq!(r["expected"].as_u64(), Some(accepted));
    assert_eq!(r["delivered"].as_u64(), Some(accepted));
    assert_eq!(r["errors"]["total"], 0, "{:#}", r["errors"]);

    let mut idle = strings(&[
        "--preset",
        "idle",
        "--transport",
        "ws",
        "--clients",
        "400",
        "--duration",
        "1.2",
        "--heartbeat",
        "0.5",
        "--key-prefix",
        "idle-",
    ]);
    idle.extend(["--ws-addr".into(), ws, "--server-pid".into(), pid]);
    let r = harness("idle", &idle);
    assert_eq!(r["connect"]["connected"], 400);
    assert!(r["connect"]["time_us"]["p50"].as_u64().unwrap() > 0);
    let sent = r["idle"]["heartbeats_sent"].as_u64().unwrap();
    assert!(
        sent >= 400,
        "every client heartbeats twice a second: {sent}"
    );
    assert!(r["idle"]["heartbeat_replies"].as_u64().unwrap() >= sent - 400);
    assert_eq!(r["errors"]["total"], 0, "{:#}", r["errors"]);
    gw.shutdown();
}

/// A gateway that answers auth and room pushes like imgate but, to one client, drops push 3
/// and sends push 5 twice.
struct FakeGateway {
    tcp: SocketAddr,
    http: SocketAddr,
}

fn fake_gateway() -> FakeGateway {
    let clients: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = FakeGateway {
        tcp: tcp.local_addr().unwrap(),
        http: http.local_addr().unwrap(),
    };
    let accepted = clients.clone();
    std::thread::spawn(move || {
        for stream in tcp.incoming() {
            let Ok(mut s) = stream else { return };
            // Auth: read one frame, answer op 8 (heartbeats are off in this test).
            let mut head = [0u8; 16];
            if s.read_exact(&mut head).is_err() {
                continue;
            }
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let mut body = vec![0u8; len - 16];
            let _ = s.read_exact(&mut body);
            let _ = s.write_all(&frame::encode(1, 8, 1, b""));
            accepted.lock().unwrap().push(s);
        }
    });
    std::thread::spawn(move || {
        for stream in http.incoming() {
            let Ok(mut s) = stream else { return };
            let clients = clients.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    let text = String::from_utf8_lossy(&body);
                    let seq: u32 = text
                        .split("\"seq\":")
                        .nth(1)
                        .and_then(|r| r.split(',').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let push = frame::encode(1, 1000, 0, &body);
                    for (i, c) in clients.lock().unwrap().iter_mut().enumerate() {
                        let copies = match (i, seq) {
                            (0, 3) => 0,
                            (0, 5) => 2,
                            _ => 1,
                        };
                        for _ in 0..copies {
                            let _ = c.write_all(&push);
                        }
                    }
                    let answer = b"{\"code\":0,\"message\":\"\"}";
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        answer.len()
                    );
                    let _ = s.write_all(answer);
                }
            });
        }
    });
    addrs
}

#[test]
fn a_lost_and_a_duplicated_push_are_reported() {
    let fake = fake_gateway();
    let mut args = strings(&[
        "--preset",
        "room",
        "--clients",
        "20",
        "--rate",
        "20",
        "--duration",
        "0.5",
        "--heartbeat",
        "0",
        "--drain",
        "1",
        "--workers",
        "1",
        "--executors",
        "1",
    ]);
    args.extend([
        "--tcp-addr".into(),
        fake.tcp.to_string(),
        "--http".into(),
        fake.http.to_string(),
    ]);
    let r = harness("fake", &args);
    assert_eq!(r["phases"][0]["pushes_accepted"], 10);
    assert_eq!(r["expected"], 200);
    assert_eq!(r["delivered"], 200, "one lost, one extra");
    assert_eq!(r["lost"], 1);
    assert_eq!(r["duplicated"], 1);
    let e = &r["errors"];
    assert_eq!(e["pushes_mismatched"], 2);
    assert_eq!(e["first_mismatches"][0]["seq"], 3);
    assert_eq!(e["first_mismatches"][0]["delivered"], 19);
    assert_eq!(e["first_mismatches"][1]["seq"], 5);
    assert_eq!(e["first_mismatches"][1]["delivered"], 21);
    // The client that lost push 3 saw a gap; the duplicate of push 5 arrived behind.
    assert_eq!(e["seq_gaps"], 1);
    assert_eq!(e["seq_behind"], 1);
    assert!(e["total"].as_u64().unwrap() >= 4);
}

/// Runs the harness under `ulimit -n files` (soft and hard) and returns its report.
fn harness_with_open_files(name: &str, files: u32, args: &[&str]) -> Value {
    let json = std::env::temp_dir().join(format!(
        "bench-harness-test-{name}-{}.json",
        std::process::id()
    ));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
        .arg(HARNESS)
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("bench-harness runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench-harness failed\n{stderr}");
    let text = std::fs::read_to_string(&json).expect("report written");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("report is JSON")
}

#[test]
fn a_floor_larger_than_one_process_s_open_files_splits_over_processes() {
    // 200 descriptors per process: 250 connections, both ends in one process, would take 500.
    let floor = [
        "--preset",
        "floor",
        "--floor-connections",
        "250",
        "--floor-seconds",
        "0.3",
        "--floor-bytes",
        "100",
        "--no-pin",
    ];
    let mut capped = floor.to_vec();
    capped.extend(["--floor-per-process", "100"]);
    let r = harness_with_open_files("floor-split", 200, &capped);
    let f = &r["floor"]["given"];
    assert_eq!(f["processes"], 3, "{f:#}");
    assert_eq!(f["connections"], 250);
    assert_eq!(f["frame_bytes"], 100);
    assert!(f["writes"].as_u64().unwrap() > 1000, "{f:#}");
    assert_eq!(f["bytes_read"], f["bytes_written"]);
    assert!(f["cpu_ns_per_write"].as_f64().unwrap() > 0.0);

    // Without a cap given, the open-file limit sets it: 250 still splits, in two.
    let r = harness_with_open_files("floor-limit", 200, &floor);
    let f = &r["floor"]["given"];
    assert_eq!(f["processes"], 2, "{f:#}");
    assert_eq!(f["bytes_read"], f["bytes_written"]);
}
