//! The harness against real servers: a real imgate gateway (in this process, on free ports),
//! a real redis-server and a real nats-server (the peers, in their own protocols), and a fake
//! gateway that loses and duplicates pushes on purpose, which the harness must report. Every
//! report has its HTML page beside it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imgate::standalone::Gateway;
use imgate_shared::config::Config;
use imgate_shared::frame;
use serde_json::Value;

const HARNESS: &str = env!("CARGO_BIN_EXE_bench-harness");

fn gateway() -> Gateway {
    let mut c = Config::default();
    c.comet.tcp_bind = vec![([127, 0, 0, 1], 0).into()];
    c.comet.ws_bind = vec![([127, 0, 0, 1], 0).into()];
    c.comet.link_bind = ([127, 0, 0, 1], 0).into();
    c.comet.shards = 2;
    c.comet.pin = false;
    c.logic.http_bind = ([127, 0, 0, 1], 0).into();
    c.logic.link_bind = ([127, 0, 0, 1], 0).into();
    c.job.registry_interval = Duration::from_millis(100);
    Gateway::start(c).expect("gateway starts")
}

/// Runs the harness with `args` and returns its JSON report.
fn harness(name: &str, args: &[String]) -> Value {
    harness_in(&tempfile::tempdir().unwrap(), name, args).0
}

/// Runs the harness with `args`, its report in `dir`; returns the report and its HTML page.
/// Its stderr is not a terminal, so it must show no progress line.
fn harness_in(dir: &tempfile::TempDir, name: &str, args: &[String]) -> (Value, String) {
    let json = dir.path().join(format!("{name}.json"));
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
    assert!(
        !stderr.contains('\r') && !stderr.contains("connecting:"),
        "progress lines on a stderr that is not a terminal:\n{stderr}"
    );
    let text = std::fs::read_to_string(&json).expect("report written");
    let report: Value = serde_json::from_str(&text).expect("report is JSON");
    let html = std::fs::read_to_string(dir.path().join(format!("{name}.html")))
        .expect("HTML report written beside the JSON");
    assert_opens_offline(&html);
    eprintln!("{stdout}");
    (report, html)
}

/// The page has its charts inline and nothing that would fetch: no script, stylesheet, image
/// or font from an address.
fn assert_opens_offline(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<svg"), "no inline chart:\n{html}");
    for fetch in [
        "src=", "href=", "<script", "<link", "url(", "@import", "<img", "<iframe",
    ] {
        assert!(!html.contains(fetch), "the page has {fetch}");
    }
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
        "--floor".into(),
        "--floor-seconds".into(),
        "0.2".into(),
        // The gateway runs in this process, anywhere: its "cores" are all of them.
        "--server-cpus".into(),
        online_cpus(),
        "--floor-writer-cpus".into(),
        online_cpus(),
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
    // comet's writes, read from the gateway's real /metrics, against the floor at their
    // mean size, in the same run.
    let source = r["writes_source"].as_str().unwrap();
    assert_eq!(source, "comet", "{:#}", r["writes"]);
    assert_eq!(
        r["writes"]["metrics"][0],
        format!("http://{}/metrics", gw.http_addr())
    );
    assert!(r["writes"]["writes"].as_u64().unwrap() > 0);
    assert_eq!(
        r["floor"]["write"]["frame_bytes"],
        r["writes"]["mean_bytes"]
    );
    assert_eq!(
        r["floor"]["write"]["connections"], 300,
        "as many sockets as comet had"
    );
    assert_eq!(
        r["floor"]["write"]["bytes_read"],
        r["floor"]["write"]["bytes_written"]
    );
    assert!(r["floor_ratio_per_write"].as_f64().unwrap() > 0.0);
    // The same on the cores, from /proc/stat: per comet write, and over the floor's.
    assert!(
        r["server_core_ns_per_write"].as_f64().unwrap() > 0.0,
        "{:#}",
        r["server_core_ns_per_write"]
    );
    assert!(r["core_ratio_per_write"].as_f64().unwrap() > 0.0);
    gw.shutdown();
}

/// The CPUs the kernel runs (`0-1`), as `--server-cpus` takes them.
fn online_cpus() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .expect("/sys/devices/system/cpu/online")
        .trim()
        .to_string()
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
    let (r, html) = harness_in(&tempfile::tempdir().unwrap(), "idle", &idle);
    assert!(html.contains("Connected clients over time"), "{html}");
    let timeline = r["connections_over_time"].as_array().unwrap();
    assert_eq!(timeline.last().unwrap()[1], 400, "{timeline:?}");
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
/// and sends push 5 twice. It counts its writes to clients; with `serve_metrics` it serves
/// those counts at `GET /metrics` as imgate does, else that answers 404 (imgate before it had
/// metrics).
struct FakeGateway {
    tcp: SocketAddr,
    http: SocketAddr,
    /// Writes to clients and their bytes, auth replies included.
    written: Arc<(AtomicU64, AtomicU64)>,
}

fn fake_gateway(serve_metrics: bool) -> FakeGateway {
    let clients: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let written: Arc<(AtomicU64, AtomicU64)> = Arc::default();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = FakeGateway {
        tcp: tcp.local_addr().unwrap(),
        http: http.local_addr().unwrap(),
        written: written.clone(),
    };
    let count = |written: &(AtomicU64, AtomicU64), bytes: usize| {
        written.0.fetch_add(1, Ordering::SeqCst);
        written.1.fetch_add(bytes as u64, Ordering::SeqCst);
    };
    let accepted = clients.clone();
    let auth_written = written.clone();
    // The one thread that lives as long as the fake: named so that the harness can take its
    // CPU for comet's (`--server-threads fake-comet`).
    let acceptor = std::thread::Builder::new().name("fake-comet-tcp".into());
    let _ = acceptor.spawn(move || {
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
            let reply = frame::encode(1, 8, 1, b"");
            if s.write_all(&reply).is_ok() {
                count(&auth_written, reply.len());
            }
            accepted.lock().unwrap().push(s);
        }
    });
    std::thread::spawn(move || {
        for stream in http.incoming() {
            let Ok(mut s) = stream else { return };
            let clients = clients.clone();
            let written = written.clone();
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
                    if head.starts_with("GET /metrics ") {
                        buf.drain(..end + 4);
                        let answer = if serve_metrics {
                            let body = format!(
                                "# TYPE imgate_writes_total counter\nimgate_writes_total{{comet=\"fake\",shard=\"0\"}} {}\nimgate_bytes_sent_total{{comet=\"fake\",shard=\"0\"}} {}\n",
                                written.0.load(Ordering::SeqCst),
                                written.1.load(Ordering::SeqCst)
                            );
                            format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                        } else {
                            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_string()
                        };
                        let _ = s.write_all(answer.as_bytes());
                        continue;
                    }
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
                            if c.write_all(&push).is_ok() {
                                count(&written, push.len());
                            }
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

/// The fake's room case: 20 clients, 10 pushes.
fn fake_room_args(fake: &FakeGateway) -> Vec<String> {
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
    args
}

#[test]
fn a_lost_and_a_duplicated_push_are_reported() {
    let fake = fake_gateway(false);
    let r = harness("fake", &fake_room_args(&fake));
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

#[test]
fn without_comet_s_counters_writes_are_the_client_reads_and_the_report_says_so() {
    let fake = fake_gateway(false);
    let r = harness("fake-reads", &fake_room_args(&fake));
    assert_eq!(r["errors"]["lost"], 1);
    assert_eq!(r["writes_source"], "client_reads");
    assert_eq!(r["writes"]["writes"], r["writes"]["client_reads"]);
    let notes = r["writes"]["metrics_notes"].as_array().unwrap();
    assert!(notes[0].as_str().unwrap().contains("HTTP 404"), "{notes:?}");
}

#[test]
fn comet_s_own_write_counts_set_the_floor_size_and_the_ratio() {
    let fake = fake_gateway(true);
    let mut args = fake_room_args(&fake);
    args.extend(strings(&[
        "--server-threads",
        "fake-comet",
        "--floor",
        "--floor-connections",
        "20",
        "--floor-seconds",
        "0.2",
        "--server-pid",
    ]));
    args.push(std::process::id().to_string());
    let r = harness("fake-metrics", &args);
    // What the fake wrote during the pushes: everything but the 20 auth replies.
    let auth_reply = frame::encode(1, 8, 1, b"").len() as u64;
    let writes = fake.written.0.load(Ordering::SeqCst) - 20;
    let bytes = fake.written.1.load(Ordering::SeqCst) - 20 * auth_reply;
    assert_eq!(
        writes, 200,
        "10 pushes to 20 clients, one lost, one doubled"
    );
    let w = &r["writes"];
    assert_eq!(r["writes_source"], "comet", "{w:#}");
    assert_eq!(w["writes"], writes);
    assert_eq!(w["bytes"], bytes);
    assert_eq!(w["mean_bytes"], bytes / writes);
    assert_eq!(r["server_cpu_source"], "comet_threads");
    // The floor wrote comet's mean write size, and the ratio is against that.
    assert_eq!(r["floor"]["write"]["frame_bytes"], bytes / writes);
    assert_eq!(r["floor_ratio"]["floor_bytes"], bytes / writes);
    assert_eq!(r["floor_ratio"]["writes_source"], "comet");
    let ratio = r["floor_ratio_per_write"].as_f64().unwrap();
    let expected = r["floor_ratio"]["server_cpu_ns_per_write"]
        .as_f64()
        .unwrap()
        / r["floor"]["write"]["cpu_ns_per_write"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 0.01, "{ratio} vs {expected}");
}

/// Runs the harness under `ulimit -n files` (soft and hard) and returns its report.
fn harness_with_open_files(name: &str, files: u32, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join(format!("{name}.json"));
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

/// Options of a peers run against the server at `port`: clients connect from 127.0.0.1 (a
/// Redis in protected mode refuses other sources).
fn peer_args(system: &str, port: u16, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["--system", system, "--source-ips", "127.0.0.1"]);
    args.extend(["--tcp-addr".into(), format!("127.0.0.1:{port}")]);
    args.extend(strings(extra));
    args
}

/// The redis-server's process id, from `INFO server`.
fn redis_pid(port: u16) -> String {
    let info = imgate_testkit::redis_command(port, "INFO server").unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("INFO server has process_id")
        .trim()
        .to_string()
}

#[test]
fn redis_subscribers_count_every_publish_once_and_their_heartbeats() {
    let redis = imgate_testkit::Redis::start();
    let args = peer_args(
        "redis",
        redis.port(),
        &[
            "--preset",
            "goim",
            "--clients",
            "150",
            "--duration",
            "1.5",
            "--heartbeat",
            "0.5",
        ],
    );
    let mut args = args;
    args.extend(["--server-pid".into(), redis_pid(redis.port())]);
    let (r, html) = harness_in(&tempfile::tempdir().unwrap(), "redis", &args);
    assert_eq!(r["system"], "redis");
    assert_eq!(r["settings"]["channel"], "live.1000");
    assert_eq!(r["connect"]["connected"], 150);
    let pushes = r["phases"][0]["pushes_accepted"].as_u64().unwrap();
    assert!((50..=70).contains(&pushes), "40/s for 1.5 s: {pushes}");
    assert_eq!(r["expected"].as_u64(), Some(150 * pushes));
    assert_eq!(r["delivered"], r["expected"]);
    assert_eq!(r["errors"]["total"], 0, "{:#}", r["errors"]);
    assert_eq!(r["counters"]["seq_gaps"], 0);
    assert!(r["counters"]["heartbeat_replies"].as_u64().unwrap() >= 150);
    assert!(r["latency_us"]["p99"].as_u64().unwrap() > 0);
    assert!(r["server_cpu_ns_per_msg"].as_f64().is_some());
    assert!(html.contains("goim on redis"), "{html}");
}

#[test]
fn nats_subscribers_count_every_publish_once_and_answer_the_server_s_pings() {
    // The server pings each client every 300 ms and drops one that leaves a ping unanswered.
    // The clients connect over 1.5 s: the publisher, connected before them and idle, is
    // dropped meanwhile and must be replaced before the first push.
    let nats = imgate_testkit::Nats::start_with_config("ping_interval: \"300ms\"\nping_max: 1\n");
    let args = peer_args(
        "nats",
        nats.port(),
        &[
            "--preset",
            "goim",
            "--clients",
            "150",
            "--connect-rate",
            "100",
            "--duration",
            "2",
            "--heartbeat",
            "0",
        ],
    );
    let mut args = args;
    args.extend([
        "--server-pid".into(),
        nats.pid().expect("nats-server runs").to_string(),
    ]);
    let r = harness("nats", &args);
    assert_eq!(r["system"], "nats");
    assert_eq!(r["connect"]["connected"], 150);
    let pushes = r["phases"][0]["pushes_accepted"].as_u64().unwrap();
    assert!((70..=90).contains(&pushes), "40/s for 2 s: {pushes}");
    assert_eq!(r["expected"].as_u64(), Some(150 * pushes));
    assert_eq!(r["delivered"], r["expected"]);
    assert_eq!(r["counters"]["disconnected"], 0, "{:#}", r["errors"]);
    assert_eq!(r["errors"]["total"], 0, "{:#}", r["errors"]);
    assert!(r["rss_bytes_per_conn"].as_i64().is_some());
    // Idle subscribers get the server's pings (busy ones may not): still there after 1.5 s.
    let idle = peer_args(
        "nats",
        nats.port(),
        &[
            "--preset",
            "idle",
            "--clients",
            "50",
            "--duration",
            "1.5",
            "--heartbeat",
            "0",
        ],
    );
    let r = harness("nats-idle", &idle);
    assert_eq!(r["idle"]["min_connected"], 50, "{:#}", r["errors"]);
    assert_eq!(r["errors"]["total"], 0, "{:#}", r["errors"]);
}

#[test]
fn subscribers_beyond_redis_maxclients_are_refused_and_the_publisher_keeps_its_place() {
    let redis = imgate_testkit::Redis::start();
    let set = imgate_testkit::redis_command(redis.port(), "CONFIG SET maxclients 5").unwrap();
    assert!(set.starts_with("+OK"), "{set}");
    let args = peer_args(
        "redis",
        redis.port(),
        &["--preset", "goim", "--clients", "8", "--duration", "0.5"],
    );
    let r = harness("redis-full", &args);
    // The publisher connected first and holds one of the five places.
    assert_eq!(r["connect"]["connected"], 4, "{:#}", r["connect"]);
    assert_eq!(r["connect"]["auth_failed"], 4, "{:#}", r["connect"]);
    let messages = r["errors"]["messages"].to_string();
    assert!(messages.contains("max number of clients"), "{messages}");
    let pushes = r["phases"][0]["pushes_accepted"].as_u64().unwrap();
    assert!(pushes >= 15, "40/s for 0.5 s: {pushes}");
    assert_eq!(r["expected"].as_u64(), Some(4 * pushes));
    assert_eq!(r["delivered"], r["expected"]);
}

#[test]
fn a_peers_comparison_has_a_row_per_system_and_its_charts() {
    let redis = imgate_testkit::Redis::start();
    let nats = imgate_testkit::Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let case = ["--preset", "goim", "--clients", "60", "--duration", "1"];
    harness_in(
        &dir,
        "peers-redis",
        &peer_args("redis", redis.port(), &case),
    );
    harness_in(&dir, "peers-nats", &peer_args("nats", nats.port(), &case));
    let reports = ["peers-redis.json", "peers-nats.json"].map(|f| dir.path().join(f));
    let out = Command::new(HARNESS)
        .arg("--merge-peers")
        .arg(format!("{},{}", reports[0].display(), reports[1].display()))
        .arg("--json")
        .arg(dir.path().join("peers.json"))
        .output()
        .expect("bench-harness runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("peers.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, system) in rows.iter().zip(["redis", "nats"]) {
        assert_eq!(row["system"], system);
        assert!(row["expected"].as_u64().unwrap() >= 60 * 30, "{row:#}");
        assert_eq!(row["delivered"], row["expected"], "{row:#}");
        assert!(row["p50_ms"].as_f64().unwrap() > 0.0);
        assert!(row["p99_ms"].as_f64().unwrap() >= row["p50_ms"].as_f64().unwrap());
        assert!(row["backlog_at_push_end"].as_u64().is_some(), "{row:#}");
    }
    assert_eq!(r["server_cpu_source"], "process");
    assert_eq!(r["settings"]["clients"], 60);
    let html = std::fs::read_to_string(dir.path().join("peers.html")).unwrap();
    assert_opens_offline(&html);
    assert!(html.matches("<svg").count() >= 3, "{html}");
    assert!(html.contains("redis") && html.contains("nats"));
}

#[test]
fn a_peer_refuses_what_it_has_no_counterpart_for() {
    for (args, why) in [
        (
            &["--system", "redis", "--preset", "keys"][..],
            "imgate's only",
        ),
        (&["--system", "nats", "--transport", "ws"][..], "TCP only"),
    ] {
        let out = Command::new(HARNESS)
            .args(args)
            .args(["--tcp-addr", "127.0.0.1:1"])
            .output()
            .expect("bench-harness runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(why), "{stderr}");
    }
}
