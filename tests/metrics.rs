//! Operating a gateway: `/metrics` counts what really happened (connections, messages, writes,
//! closes by reason, pushes by kind), `/metrics` and `/status` need the API key when one is
//! set, `/healthz` and `/readyz` are public and `/readyz` follows the store, and a comet-only
//! process serves its own metrics on `comet.metrics_bind`.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use imgate::client::http::{HttpClient, Response};
use imgate::client::Transport;
use imgate::standalone::{Gateway, Services};
use imgate_shared::config::{RedisConfig, StoreBackend};
use imgate_testkit::Redis;
use support::*;

const SECOND: Duration = Duration::from_secs(1);

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    HttpClient::new(addr)
        .timeout(10 * SECOND)
        .request("GET", path, headers, b"")
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Every sample of a scrape: `name{labels}` → value.
fn scrape(addr: SocketAddr, headers: &[(&str, &str)]) -> HashMap<String, f64> {
    let r = get(addr, "/metrics", headers);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.ends_with("# EOF\n"), "not a whole exposition");
    // Each family is declared once (Prometheus refuses a scrape that repeats one).
    let mut families = std::collections::HashSet::new();
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        assert!(families.insert(name.to_string()), "{name} declared twice");
    }
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The value of `series` in a scrape (0 when absent would hide a renamed metric: panic).
fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

#[test]
fn metrics_count_connections_messages_writes_and_closes() {
    let g = gateway();
    let http = g.http_addr();
    let comet = g.comet().id().to_string();
    let series = |name: &str, extra: &str| format!("{name}{{comet=\"{comet}\"{extra}}}");
    let before = scrape(http, &[]);
    assert_eq!(value(&before, &series("imgate_connects_total", "")), 0.0);

    let mut a = client(g.tcp_addr(), Transport::Tcp, 1, "a", "live://m", &[1000]);
    let mut b = client(g.tcp_addr(), Transport::Tcp, 2, "b", "live://m", &[1000]);
    let mut c = client(
        g.ws_addr(),
        Transport::WebSocket,
        3,
        "c",
        "live://m",
        &[1000],
    );
    let tcp = series("imgate_connections", ",transport=\"tcp\"");
    let ws = series("imgate_connections", ",transport=\"ws\"");
    let m = scrape(http, &[]);
    assert_eq!(value(&m, &tcp), 2.0);
    assert_eq!(value(&m, &ws), 1.0);
    assert_eq!(value(&m, &series("imgate_connects_total", "")), 3.0);

    // One room push reaches three connections: three messages, at least three writes.
    let writes_before = value(&m, &series("imgate_writes_total", ""));
    let bytes_before = value(&m, &series("imgate_bytes_sent_total", ""));
    push(
        http,
        "/goim/push/room?operation=1000&type=live&room=m",
        "hello",
    );
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(next_push(client), (1000, "hello".into()));
    }
    // A shard counts a write once the kernel has reported it, which may be a moment after
    // the client read it (a ring send's completion is handled on the shard's next turn).
    let writes = series("imgate_writes_total", "");
    eventually(Duration::from_secs(5), "three writes counted", || {
        value(&scrape(http, &[]), &writes) >= writes_before + 3.0
    });
    let m = scrape(http, &[]);
    assert_eq!(value(&m, &series("imgate_messages_sent_total", "")), 3.0);
    assert!(value(&m, &series("imgate_bytes_sent_total", "")) >= bytes_before + 3.0 * 21.0);
    assert_eq!(value(&m, "imgate_pushes_total{kind=\"room\"}"), 1.0);
    assert_eq!(value(&m, "imgate_pushes_total{kind=\"keys\"}"), 0.0);
    // Latency runs from logic's accept: a lone room push waits job.room_max_delay (10 ms)
    // for its batch, so every shard that wrote it saw at least that; its own fan-out part is
    // counted apart.
    let count = value(&m, &series("imgate_push_latency_seconds_count", ""));
    let sum = value(&m, &series("imgate_push_latency_seconds_sum", ""));
    assert!(count >= 1.0, "no push latency observed");
    assert!(sum / count >= 0.009, "mean push latency {} s", sum / count);
    assert_eq!(
        value(&m, &series("imgate_push_fanout_seconds_count", "")),
        count
    );

    // A refused push is counted by kind and reason.
    let refused = HttpClient::new(http)
        .post("/goim/push/room?operation=1000", b"no room")
        .unwrap();
    assert_eq!(refused.status, 400);
    // A heartbeat is counted.
    a.heartbeat(1).unwrap();
    let m = scrape(http, &[]);
    assert_eq!(
        value(
            &m,
            "imgate_push_errors_total{kind=\"room\",reason=\"bad_request\"}"
        ),
        1.0
    );
    assert_eq!(value(&m, &series("imgate_heartbeats_total", "")), 1.0);

    // A malformed frame closes that connection, counted by reason; the others stay.
    let mut raw = TcpStream::connect(g.tcp_addr()).unwrap();
    raw.write_all(&[0xde; 16]).unwrap();
    raw.set_read_timeout(Some(5 * SECOND)).unwrap();
    let mut sink = [0u8; 64];
    assert!(
        matches!(raw.read(&mut sink), Ok(0) | Err(_)),
        "the malformed connection stays open"
    );
    let malformed = series("imgate_closes_total", ",reason=\"malformed\"");
    eventually(5 * SECOND, "the malformed close to be counted", || {
        value(&scrape(http, &[]), &malformed) == 1.0
    });
    let m = scrape(http, &[]);
    assert_eq!(
        value(&m, &series("imgate_closes_total", ",reason=\"slow\"")),
        0.0
    );
    assert_eq!(
        value(&m, &tcp),
        2.0,
        "the closed connection never authenticated"
    );

    // An auth logic refuses (goim's JSON auth needs JSON) is counted by reason.
    let mut refused = imgate::client::Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    assert!(refused.auth("not json").is_err(), "a bad auth is refused");
    let refusals = series("imgate_auth_failures_total", ",reason=\"refused\"");
    eventually(5 * SECOND, "the refusal to be counted", || {
        value(&scrape(http, &[]), &refusals) == 1.0
    });
    let m = scrape(http, &[]);
    assert_eq!(
        value(
            &m,
            &series("imgate_auth_failures_total", ",reason=\"unavailable\"")
        ),
        0.0
    );

    // A client that leaves is no longer counted.
    drop(b);
    eventually(5 * SECOND, "the tcp gauge to drop", || {
        value(&scrape(http, &[]), &tcp) == 1.0
    });

    // The process figures are there.
    let m = scrape(http, &[]);
    assert!(value(&m, "process_resident_memory_bytes") > 0.0);
    assert!(value(&m, "process_open_fds") > 0.0);
    assert!(value(&m, "imgate_comet_links") >= 1.0);
    assert_eq!(
        value(&m, "imgate_room_paced_interval_seconds"),
        0.0,
        "no room here is big enough to be paced"
    );
    assert_eq!(
        value(&m, "imgate_bus_lag_messages"),
        0.0,
        "job took every push"
    );

    // `imgate status` reads the same figures.
    let status = imgate::status::fetch(&http, None).unwrap();
    assert_eq!(status["comets"][0]["connections"], 2);
    let text = imgate::status::render(&status, &status);
    assert!(text.contains("connections   2"), "{text}");
    drop((a, c));
    g.shutdown();
}

#[test]
fn metrics_and_status_need_the_api_key_and_health_does_not() {
    let mut config = test_config();
    config.auth.api_key = Some("sesame".into());
    let g = Gateway::start(config).unwrap();
    let http = g.http_addr();
    for path in ["/metrics", "/status", "/status.json"] {
        let r = get(http, path, &[]);
        assert_eq!(r.status, 401, "{path} without the key");
        let r = get(http, path, &[("Authorization", "Bearer wrong")]);
        assert_eq!(r.status, 401, "{path} with a wrong key");
        let r = get(http, path, &[("Authorization", "Bearer sesame")]);
        assert_eq!(r.status, 200, "{path} with the key");
    }
    // A browser's login prompt: any user, the key as password (":sesame", base64).
    let r = get(http, "/status", &[("Authorization", "Basic OnNlc2FtZQ==")]);
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("id=\"connections\""));
    let r = get(http, "/status", &[]);
    assert_eq!(r.status, 401);
    assert!(scrape(http, &[("Authorization", "Bearer sesame")]).contains_key("process_open_fds"));
    // Health is public.
    assert_eq!(get(http, "/healthz", &[]).status, 200);
    eventually(5 * SECOND, "readyz", || {
        get(http, "/readyz", &[]).status == 200
    });
    // The business API is guarded as before.
    let r = HttpClient::new(http)
        .post("/goim/push/all?operation=1000", b"x")
        .unwrap();
    assert_eq!(r.status, 401);
    let m = scrape(http, &[("Authorization", "Bearer sesame")]);
    assert_eq!(
        value(
            &m,
            "imgate_push_errors_total{kind=\"all\",reason=\"unauthorized\"}"
        ),
        1.0
    );
    g.shutdown();
}

#[test]
fn readyz_turns_unready_while_redis_is_down_and_ready_when_it_returns() {
    let mut redis = Redis::start();
    let mut config = test_config();
    config.store.backend = StoreBackend::Redis(RedisConfig {
        urls: vec![redis.url()],
        timeout: Duration::from_millis(300),
        ..RedisConfig::default()
    });
    let g = Gateway::start(config).unwrap();
    let http = g.http_addr();
    eventually(10 * SECOND, "ready with Redis up", || {
        get(http, "/readyz", &[]).status == 200
    });
    redis.stop();
    eventually(10 * SECOND, "unready with Redis down", || {
        let r = get(http, "/readyz", &[]);
        r.status == 503 && String::from_utf8_lossy(&r.body).contains("store: unreachable")
    });
    // Health is about the process, not its dependencies.
    assert_eq!(get(http, "/healthz", &[]).status, 200);
    let m = scrape(http, &[]);
    assert!(value(&m, "imgate_store_errors_total{op=\"comets\"}") >= 1.0);
    redis.restart();
    eventually(20 * SECOND, "ready again with Redis back", || {
        get(http, "/readyz", &[]).status == 200
    });
    g.shutdown();
}

#[test]
fn a_comet_process_serves_its_own_metrics_on_metrics_bind() {
    let g = gateway();
    let mut config = test_config();
    config.comet.metrics_bind = Some(([127, 0, 0, 1], 0).into());
    config.comet.logic_addrs = vec![g.logic_link_addr().to_string()];
    config.comet.id = Some("comet-two".into());
    // A key is configured, but a loopback metrics bind stays open.
    config.auth.api_key = Some("sesame".into());
    let comet = Gateway::run(
        config,
        Services {
            comet: true,
            logic: false,
            job: false,
        },
    )
    .unwrap();
    let addr = comet.metrics_addr().expect("metrics_bind is served");
    let _sub = client(comet.tcp_addr(), Transport::Tcp, 9, "nine", "", &[1000]);
    let m = scrape(addr, &[]);
    assert_eq!(
        value(
            &m,
            "imgate_connections{comet=\"comet-two\",transport=\"tcp\"}"
        ),
        1.0
    );
    assert!(
        !m.keys().any(|k| k.starts_with("imgate_pushes_total")),
        "a comet process has no logic metrics"
    );
    assert_eq!(get(addr, "/healthz", &[]).status, 200);
    assert_eq!(get(addr, "/readyz", &[]).status, 200);
    assert_eq!(get(addr, "/status", &[]).status, 404, "the page is logic's");
    comet.shutdown();
    g.shutdown();
}

const IMGATE: &str = env!("CARGO_BIN_EXE_imgate");

/// `imgate comet` with `log.format = "json"` and `comet.metrics_bind`: its log lines are JSON
/// objects and its metrics answer on their own port.
#[test]
fn a_comet_process_logs_json_and_serves_metrics_on_its_bind() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = imgate_testkit::free_port();
    let file = dir.path().join("comet.toml");
    std::fs::write(
        &file,
        format!(
            "[comet]\nid = \"json-comet\"\ntcp_bind = [\"127.0.0.1:0\"]\nws_bind = \
             [\"127.0.0.1:0\"]\nlink_bind = \"127.0.0.1:0\"\nshards = 1\npin = false\n\
             logic_addrs = [\"127.0.0.1:9\"]\nmetrics_bind = \"127.0.0.1:{metrics_port}\"\n\
             [log]\nformat = \"json\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(IMGATE)
        .args(["comet", "--config", &file.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("imgate comet starts");
    let addr: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    imgate_testkit::wait_for_port(metrics_port, 20 * SECOND, "the comet's metrics_bind");
    assert_eq!(get(addr, "/healthz", &[]).status, 200);
    // Nothing listens where its logic should be: running, not ready.
    let ready = get(addr, "/readyz", &[]);
    assert_eq!(ready.status, 503);
    assert!(String::from_utf8_lossy(&ready.body).contains("logic: a comet shard has no link"));
    let m = scrape(addr, &[]);
    assert_eq!(
        value(
            &m,
            "imgate_connections{comet=\"json-comet\",transport=\"tcp\"}"
        ),
        0.0
    );
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in lines {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(parsed["level"].is_string(), "{line}");
    }
}

#[test]
fn imgate_status_prints_the_figures() {
    let g = gateway();
    let _a = client(g.tcp_addr(), Transport::Tcp, 1, "a", "live://s", &[1000]);
    let out = std::process::Command::new(IMGATE)
        .args([
            "status",
            "--http",
            &g.http_addr().to_string(),
            "--interval",
            "100ms",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("connections   1"), "{text}");
    assert!(
        text.contains(&format!(
            "comet {} ({}): 1 connections",
            g.comet().id(),
            g.comet().io_engine()
        )),
        "{text}"
    );
    g.shutdown();
}

/// Every metric the Grafana dashboard in deploy/ queries is one a gateway serves.
#[test]
fn the_dashboard_queries_only_metrics_that_exist() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/grafana/imgate.json")).unwrap();
    let g = gateway();
    let text = String::from_utf8(get(g.http_addr(), "/metrics", &[]).body).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("imgate_") || w.starts_with("process_"));
            for name in names {
                let served = text.lines().any(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                });
                assert!(
                    served,
                    "panel {:?} queries {name}, not served",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 20,
        "only {checked} metric names found in the dashboard"
    );
    g.shutdown();
}

/// A comet out of file descriptors fails every accept (it retries every 10 ms): the warning
/// is logged once per 10 s, not once per retry.
#[test]
fn accept_failures_are_logged_once_per_interval() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let tcp_port = imgate_testkit::free_port();
    let mut command = Command::new(IMGATE);
    command
        .args([
            "comet",
            "--tcp-bind",
            &format!("127.0.0.1:{tcp_port}"),
            "--ws-bind",
            "127.0.0.1:0",
            "--comet-link-bind",
            "127.0.0.1:0",
            "--join",
            "127.0.0.1:9",
            "--shards",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and only touches the child's limits.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("imgate comet starts");
    imgate_testkit::wait_for_port(tcp_port, 20 * SECOND, "the comet's TCP listener");
    // More connections than the comet has descriptors left: the rest wait in the backlog and
    // every accept retry fails with EMFILE.
    let clients: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", tcp_port)).ok())
        .collect();
    assert!(clients.len() >= 100, "only {} connected", clients.len());
    // A second of retries (about a hundred) after they started.
    std::thread::sleep(SECOND);
    let _ = child.kill();
    let _ = child.wait();
    drop(clients);
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    // Without the terminal colours (`\x1b[…m`).
    let mut plain = String::new();
    let mut rest = stderr.as_str();
    while let Some(i) = rest.find('\x1b') {
        plain.push_str(&rest[..i]);
        rest = rest[i..].split_once('m').map_or("", |(_, after)| after);
    }
    plain.push_str(rest);
    let stderr = plain;
    let failures: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("accept failed") && !l.contains("link accept failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{stderr}");
    assert!(failures[0].contains("suppressed=0"), "{}", failures[0]);
    assert!(
        !stderr.contains("Error:"),
        "the comet stopped by itself: {stderr}"
    );
}

/// `imgate job` on Kafka and Redis with `job.metrics_bind`: its own metrics (comet links, the
/// Kafka consumer lag), unready without a comet and without its store.
#[test]
fn a_job_process_serves_its_metrics_and_readiness_on_metrics_bind() {
    use imgate_shared::config::{BusConfig, KafkaConfig};
    let kafka = imgate_testkit::Kafka::start();
    let mut redis = Redis::start();
    let mut config = test_config();
    let unique = imgate_testkit::free_port();
    config.bus = BusConfig::Kafka(KafkaConfig {
        brokers: kafka.bootstrap(),
        topic: format!("imgate-metrics-{unique}"),
        group: format!("imgate-metrics-{unique}"),
        partitions: 2,
        commit_interval: Duration::from_millis(100),
        session_timeout: Duration::from_secs(3),
    });
    config.store.backend = StoreBackend::Redis(RedisConfig {
        urls: vec![redis.url()],
        timeout: Duration::from_millis(300),
        prefix: format!("m{unique}:"),
        ..RedisConfig::default()
    });
    config.job.metrics_bind = Some(([127, 0, 0, 1], 0).into());
    let job = Gateway::run(
        config,
        Services {
            comet: false,
            logic: false,
            job: true,
        },
    )
    .unwrap();
    let addr = job.metrics_addr().expect("metrics_bind is served");
    let m = scrape(addr, &[]);
    assert_eq!(value(&m, "imgate_comet_links"), 0.0);
    assert!(
        !m.keys().any(|k| k.starts_with("imgate_connections")),
        "a job process has no comet metrics"
    );
    // The consumer creates its topic on its own thread, so the bus check turns ok once the
    // broker has it; the job stays unready, as it has no comet.
    eventually(
        20 * SECOND,
        "the broker to answer a metadata request",
        || String::from_utf8_lossy(&get(addr, "/readyz", &[]).body).contains("bus: ok"),
    );
    let ready = get(addr, "/readyz", &[]);
    assert_eq!(ready.status, 503);
    let body = String::from_utf8_lossy(&ready.body).to_string();
    assert!(body.contains("job: job has no link to a comet"), "{body}");
    assert!(body.contains("store: ok"), "{body}");
    assert!(body.contains("bus: ok"), "{body}");
    // librdkafka's statistics give the consumer lag once the job holds its partitions.
    eventually(20 * SECOND, "the Kafka consumer lag", || {
        scrape(addr, &[]).get("imgate_bus_lag_messages") == Some(&0.0)
    });
    redis.stop();
    eventually(10 * SECOND, "the store check to fail", || {
        String::from_utf8_lossy(&get(addr, "/readyz", &[]).body).contains("store: unreachable")
    });
    drop(kafka);
    let body = String::from_utf8_lossy(&get(addr, "/readyz", &[]).body).to_string();
    assert!(
        body.lines()
            .any(|l| l.starts_with("bus: ") && l != "bus: ok"),
        "the bus check fails with the broker gone: {body}"
    );
    job.shutdown();
}

/// `imgate job` on NATS: `imgate_bus_lag_messages` is its consumer's pending count (a job that
/// may hold two unacknowledged messages, whose comet is down, leaves the rest pending), and
/// `/readyz` asks NATS.
#[test]
fn a_job_process_on_nats_reports_its_pending_messages_and_asks_nats_if_ready() {
    use imgate_bus::BusProducer;
    use imgate_shared::config::{BusConfig, NatsConfig};
    let mut nats = imgate_testkit::Nats::start();
    let redis = Redis::start();
    let mut config = test_config();
    let unique = imgate_testkit::free_port();
    let nats_config = NatsConfig {
        url: nats.url(),
        stream: format!("metrics-{unique}"),
        subjects: format!("metrics{unique}.push.*"),
        durable: format!("metrics-{unique}"),
        partitions: 1,
        max_ack_pending: 2,
        session_timeout: Duration::from_secs(2),
        ..NatsConfig::default()
    };
    config.bus = BusConfig::Nats(nats_config.clone());
    config.store.backend = StoreBackend::Redis(RedisConfig {
        urls: vec![redis.url()],
        timeout: Duration::from_millis(300),
        prefix: format!("m{unique}:"),
        ..RedisConfig::default()
    });
    config.job.metrics_bind = Some(([127, 0, 0, 1], 0).into());
    let config_store = config.store.clone();
    let job = Gateway::run(
        config,
        Services {
            comet: false,
            logic: false,
            job: true,
        },
    )
    .unwrap();
    let addr = job.metrics_addr().expect("metrics_bind is served");
    eventually(20 * SECOND, "the lag of a job with nothing to take", || {
        scrape(addr, &[]).get("imgate_bus_lag_messages") == Some(&0.0)
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // A comet in the registry whose link nobody answers: job holds what it takes for it.
        use imgate_store::RegistryStore;
        let store = imgate_store::redis::RedisStore::connect(
            match &config_store.backend {
                StoreBackend::Redis(redis) => redis,
                StoreBackend::Embedded => unreachable!(),
            },
            &config_store,
        )
        .await
        .unwrap();
        store
            .report_online(imgate_store::OnlineReport {
                comet: imgate_shared::link::CometInfo {
                    id: "c1".into(),
                    link_addr: format!("127.0.0.1:{}", imgate_testkit::free_port()),
                    shards: 1,
                    ..Default::default()
                },
                ..Default::default()
            })
            .await
            .unwrap();
        let producer = imgate_bus::nats::NatsProducer::connect(&nats_config)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await; // job reads the registry
        for i in 0..5 {
            let push = imgate_bus::Push::Keys(imgate_bus::KeysPush {
                comet: "c1".into(),
                targets: vec![imgate_shared::link::ShardKeys {
                    shard: 0,
                    keys: vec!["k".into()],
                }],
                body: format!("m{i}").into(),
                ..Default::default()
            });
            producer
                .publish(imgate_bus::BusMessage::new(push))
                .await
                .unwrap();
        }
    });
    eventually(
        20 * SECOND,
        "the NATS consumer's pending count as the lag",
        || scrape(addr, &[]).get("imgate_bus_lag_messages") == Some(&3.0),
    );
    let body = String::from_utf8_lossy(&get(addr, "/readyz", &[]).body).to_string();
    assert!(body.contains("bus: ok"), "{body}");
    nats.stop();
    let body = String::from_utf8_lossy(&get(addr, "/readyz", &[]).body).to_string();
    assert!(
        body.lines().any(|l| l.starts_with("bus: nats")),
        "the bus check fails with NATS stopped: {body}"
    );
    nats.restart();
    eventually(20 * SECOND, "the bus check to pass again", || {
        String::from_utf8_lossy(&get(addr, "/readyz", &[]).body).contains("bus: ok")
    });
    job.shutdown();
}
