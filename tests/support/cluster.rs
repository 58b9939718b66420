//! A cluster of real `imgate comet|logic|job` processes on a real Redis and a real broker (a
//! Kafka-protocol broker, or nats-server with JetStream), all on free loopback ports, for the
//! cluster and fault tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imgate::client::http::HttpClient;
use imgate_testkit::{free_port, Kafka, Nats, Postgres, Redis};

use super::{eventually, http, Answer};

const IMGATE: &str = env!("CARGO_BIN_EXE_imgate");

/// One imgate process; killed when dropped.
pub struct Proc {
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &str, args: Vec<String>, dir: &std::path::Path) -> Proc {
        let mut p = Proc {
            name: name.into(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        p.start();
        p
    }

    /// (Re)starts the process with its original arguments, appending to its log.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(IMGATE)
            .args(&self.args)
            .env("RUST_LOG", "info")
            // Plain text: the tests search the logs, and people read the kept ones.
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("imgate starts");
        self.child = Some(child);
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A comet process and its addresses.
pub struct CometProc {
    pub proc: Proc,
    pub id: String,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
}

/// A logic process and its addresses.
pub struct LogicProc {
    pub proc: Proc,
    pub http: SocketAddr,
    pub link: SocketAddr,
}

/// The bus's broker of a test cluster.
pub enum Broker {
    Kafka {
        kafka: Kafka,
        /// The broker's storage when it is durable (declared after `kafka`: dropped after it).
        postgres: Option<Postgres>,
    },
    /// nats-server with JetStream, on a store of its own (durable across its restarts).
    Nats(Nats),
}

impl Broker {
    /// Stops the broker: the Kafka one with SIGKILL; nats-server as `systemctl stop` does
    /// (SIGTERM, then SIGKILL after 10 s). A nats-server killed with SIGKILL is not what these
    /// tests cover.
    pub fn stop(&mut self) {
        match self {
            Broker::Kafka { kafka, .. } => kafka.stop(),
            Broker::Nats(nats) => nats.stop(),
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        match self {
            Broker::Kafka { kafka, .. } => kafka.restart(),
            Broker::Nats(nats) => nats.restart(),
        }
    }

    /// The NATS server, for JetStream checks.
    pub fn nats(&self) -> &Nats {
        match self {
            Broker::Nats(nats) => nats,
            Broker::Kafka { .. } => panic!("this cluster runs on Kafka"),
        }
    }

    fn log(&self) -> String {
        match self {
            Broker::Kafka { kafka, .. } => kafka.log(),
            Broker::Nats(nats) => nats.log(),
        }
    }

    /// The `[bus]` sections: a topic or stream, group or durable, of their own.
    fn toml(&self, unique: u16) -> String {
        match self {
            Broker::Kafka { kafka, .. } => format!(
                r#"
[bus]
kind = "kafka"
publish_timeout = "2s"

[bus.kafka]
brokers = "{bootstrap}"
topic = "imgate-test-{unique}"
group = "imgate-test-{unique}"
partitions = 4
commit_interval = "100ms"
session_timeout = "3s"
"#,
                bootstrap = kafka.bootstrap()
            ),
            Broker::Nats(nats) => format!(
                r#"
[bus]
kind = "nats"

[bus.nats]
url = "{url}"
stream = "imgate-test-{unique}"
subjects = "imgate{unique}.push.*"
durable = "imgate-test-{unique}"
partitions = 4
commit_interval = "100ms"
session_timeout = "3s"
"#,
                url = nats.url()
            ),
        }
    }
}

/// Which bus a test cluster runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    Kafka,
    Nats,
}

/// Redis, a broker, and imgate processes.
pub struct Cluster {
    pub redis: Redis,
    pub broker: Broker,
    /// The processes' logs; kept when a test fails.
    pub dir: tempfile::TempDir,
    pub logics: Vec<LogicProc>,
    pub comets: Vec<CometProc>,
    pub jobs: Vec<Proc>,
    config: PathBuf,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Cluster {
    /// Starts Redis, the broker, then `logics` logics, `comets` comets and `jobs` jobs, and
    /// waits until every comet is registered and every job has a link to every comet.
    pub fn start(comets: usize, logics: usize, jobs: usize) -> Cluster {
        Self::start_with(comets, logics, jobs, Timers::RELAXED)
    }

    /// As [`Cluster::start`], with the given heartbeat and session timers.
    pub fn start_with(comets: usize, logics: usize, jobs: usize, timers: Timers) -> Cluster {
        Self::start_setup(
            comets,
            logics,
            jobs,
            Setup {
                timers,
                ..Setup::default()
            },
        )
    }

    /// As [`Cluster::start`], with the given timers and durability.
    pub fn start_setup(comets: usize, logics: usize, jobs: usize, setup: Setup) -> Cluster {
        let redis = if setup.durable_redis {
            Redis::start_durable()
        } else {
            Redis::start()
        };
        let broker = match (setup.bus, setup.durable_broker) {
            (Bus::Kafka, true) => {
                let postgres = Postgres::start();
                Broker::Kafka {
                    kafka: Kafka::start_durable(&postgres),
                    postgres: Some(postgres),
                }
            }
            (Bus::Kafka, false) => Broker::Kafka {
                kafka: Kafka::start(),
                postgres: None,
            },
            (Bus::Nats, _) => Broker::Nats(Nats::start()),
        };
        let timers = setup.timers;
        let dir = tempfile::Builder::new()
            .prefix("imgate-cluster-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("cluster.toml");
        std::fs::write(
            &config,
            cluster_toml(&redis, &broker, timers)
                .replacen("[comet]\n", &format!("[comet]\n{}\n", setup.comet_extra), 1)
                .replacen("[logic]\n", &format!("[logic]\n{}\n", setup.logic_extra), 1)
                .replacen("[auth]\n", &format!("[auth]\n{}\n", setup.auth_extra), 1),
        )
        .unwrap();
        let mut cluster = Cluster {
            redis,
            broker,
            dir,
            logics: Vec::new(),
            comets: Vec::new(),
            jobs: Vec::new(),
            config,
        };
        for _ in 0..logics {
            cluster.add_logic();
        }
        for _ in 0..comets {
            cluster.add_comet();
        }
        for _ in 0..jobs {
            cluster.add_job();
        }
        cluster.wait_ready();
        cluster
    }

    fn config_arg(&self) -> String {
        self.config.display().to_string()
    }

    fn add_logic(&mut self) {
        let (http_port, link_port) = (free_port(), free_port());
        let i = self.logics.len() + 1;
        let args = vec![
            "logic".into(),
            "--config".into(),
            self.config_arg(),
            "--http-bind".into(),
            format!("127.0.0.1:{http_port}"),
            "--logic-link-bind".into(),
            format!("127.0.0.1:{link_port}"),
        ];
        let proc = Proc::spawn(&format!("logic-{i}"), args, self.dir.path());
        imgate_testkit::wait_for_port(http_port, Duration::from_secs(30), &proc.name);
        self.logics.push(LogicProc {
            proc,
            http: addr(http_port),
            link: addr(link_port),
        });
    }

    fn add_comet(&mut self) {
        let (tcp, ws, link) = (free_port(), free_port(), free_port());
        let i = self.comets.len() + 1;
        let id = format!("comet-{i}");
        let mut args = vec![
            "comet".into(),
            "--config".into(),
            self.config_arg(),
            "--comet-id".into(),
            id.clone(),
            "--tcp-bind".into(),
            format!("127.0.0.1:{tcp}"),
            "--ws-bind".into(),
            format!("127.0.0.1:{ws}"),
            "--comet-link-bind".into(),
            format!("127.0.0.1:{link}"),
        ];
        // Each comet prefers a different logic and falls back to the others.
        for j in 0..self.logics.len() {
            let l = &self.logics[(i - 1 + j) % self.logics.len()];
            args.push("--join".into());
            args.push(l.link.to_string());
        }
        let proc = Proc::spawn(&id, args, self.dir.path());
        imgate_testkit::wait_for_port(tcp, Duration::from_secs(30), &id);
        self.comets.push(CometProc {
            proc,
            id,
            tcp: addr(tcp),
            ws: addr(ws),
        });
    }

    fn add_job(&mut self) {
        let i = self.jobs.len() + 1;
        let args = vec!["job".into(), "--config".into(), self.config_arg()];
        self.jobs
            .push(Proc::spawn(&format!("job-{i}"), args, self.dir.path()));
    }

    /// logic `i`'s HTTP address.
    pub fn http(&self, i: usize) -> SocketAddr {
        self.logics[i].http
    }

    /// Waits until every live comet is in the registry and every live job links every comet.
    pub fn wait_ready(&self) {
        let http_addr = self.http(0);
        eventually(
            Duration::from_secs(60),
            "every comet in the registry",
            || {
                let a = http(http_addr, "GET", "/goim/nodes/instances", b"");
                self.comets
                    .iter()
                    .all(|c| a.json.to_string().contains(&format!("\"{}\"", c.id)))
            },
        );
        for job in &self.jobs {
            eventually(
                Duration::from_secs(60),
                "every job linked to every comet",
                || job.log().matches("comet link connected").count() >= self.comets.len(),
            );
        }
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let broker = self.broker.log();
        let tail: Vec<&str> = broker.lines().rev().take(10).collect();
        out.push_str("--- broker (last lines)\n");
        for line in tail.iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
        let procs = self
            .logics
            .iter()
            .map(|l| &l.proc)
            .chain(self.comets.iter().map(|c| &c.proc))
            .chain(&self.jobs);
        for p in procs {
            let log = p.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("--- {} (last lines)\n", p.name));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for j in &mut self.jobs {
            j.kill();
        }
        for c in &mut self.comets {
            c.proc.kill();
        }
        for l in &mut self.logics {
            l.proc.kill();
        }
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("cluster logs kept in {}", self.dir.path().display());
        }
    }
}

/// What a test cluster runs on.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub timers: Timers,
    pub bus: Bus,
    /// Redis with an append-only file fsynced on every write: a restart keeps sessions and
    /// inboxes, as a production Redis does. Otherwise a restart comes back empty.
    pub durable_redis: bool,
    /// The Kafka broker stores its log, groups and offsets in PostgreSQL: a restart keeps what
    /// it acknowledged. Otherwise it keeps them in memory and a restart loses them. (NATS
    /// always keeps its store across a restart.)
    pub durable_broker: bool,
    /// More `[comet]`, `[logic]` and `[auth]` options, TOML lines (every process reads the
    /// one config file).
    pub comet_extra: &'static str,
    pub logic_extra: &'static str,
    pub auth_extra: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            timers: Timers::RELAXED,
            bus: Bus::Kafka,
            durable_redis: false,
            durable_broker: false,
            comet_extra: "",
            logic_extra: "",
            auth_extra: "",
        }
    }
}

/// As [`super::http`], but a logic that does not answer (refused connection, no answer within
/// 10 s, a cut answer) is an `Err` saying so rather than a panic.
pub fn try_http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<Answer, String> {
    let answer = HttpClient::new(addr)
        .request(method, path, &[], body)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let json = serde_json::from_slice(&answer.body).map_err(|e| {
        format!(
            "JSON body ({e}): {:?}",
            String::from_utf8_lossy(&answer.body)
        )
    })?;
    Ok(Answer {
        status: answer.status,
        json,
    })
}

/// Heartbeat and session lifetimes of a test cluster.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// `logic.heartbeat`; clients are closed after twice this without a heartbeat.
    pub heartbeat: &'static str,
    /// `store.session_ttl`; must exceed twice the heartbeat (the refresh period).
    pub session_ttl: &'static str,
}

impl Timers {
    /// Clients may stay silent for 20 s.
    pub const RELAXED: Timers = Timers {
        heartbeat: "10s",
        session_ttl: "30s",
    };
    /// Sessions of a dead comet vanish within 3 s; clients must heartbeat every few hundred ms.
    pub const FAST: Timers = Timers {
        heartbeat: "1s",
        session_ttl: "3s",
    };
}

/// The shared configuration: short timers so reports, expiries and rebalances happen within
/// a test's patience; a topic (or stream) and key prefix of its own.
fn cluster_toml(redis: &Redis, broker: &Broker, timers: Timers) -> String {
    let unique = free_port();
    let bus = broker.toml(unique);
    format!(
        r#"
[comet]
shards = 1
pin = false
online_interval = "200ms"
handshake_timeout = "2s"
logic_timeout = "2s"

[logic]
heartbeat = "{heartbeat}"
heartbeat_max = 2
online_refresh = "100ms"

[job]
registry_interval = "100ms"
{bus}
[store]
kind = "redis"
session_ttl = "{session_ttl}"
online_ttl = "1s"
# The fault tests push a few hundred messages to a user who may be offline throughout.
inbox_max_messages = 1000

[auth]
insecure = true

[store.redis]
urls = ["{redis}"]
prefix = "t{unique}:"
timeout = "500ms"
"#,
        redis = redis.url(),
        heartbeat = timers.heartbeat,
        session_ttl = timers.session_ttl,
    )
}
