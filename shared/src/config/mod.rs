//! Configuration: one TOML file with a section per service. Every option has a default, so an
//! empty file (or no file) is a complete configuration; `imgate.example.toml` at the repository
//! root lists every option with its default and a comment.
//!
//! Types say what a value is: listen addresses are [`SocketAddr`]s, durations are humantime
//! strings (`"500ms"`, `"8s"`, `"4m"`, `"1h 30m"`), the bus and the store are enums carrying
//! their backend's options, and a file or secret that may be absent is an `Option` (an empty
//! string, which older files wrote for "none", still means none). [`Config::validate`] is the
//! one place that checks what types cannot; every error names the option, and the file when
//! there is one ([`ConfigError`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

mod load;

pub use load::{parse_duration, ConfigError};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub comet: CometConfig,
    pub logic: LogicConfig,
    pub job: JobConfig,
    pub bus: BusConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

/// How the processes log (the level comes from `RUST_LOG`, `info` by default).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// A log line's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Who may connect and who may push.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret: clients must present a JWT signed with it (`IMGATE_JWT_SECRET` overrides).
    #[serde(deserialize_with = "none_if_empty")]
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256 / ES256 tokens, instead of a secret.
    #[serde(deserialize_with = "none_if_empty")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// The business API requires `Authorization: Bearer <api_key>` (`IMGATE_API_KEY` overrides).
    #[serde(deserialize_with = "none_if_empty")]
    pub api_key: Option<String>,
    /// Run a configured deployment without tokens and API key (goim's trust model). Without it,
    /// `imgate --config FILE` refuses to start unless a JWT key and an API key are set.
    pub insecure: bool,
    /// Connect hook: logic POSTs each client's auth JSON (and address) here and the business
    /// answers who the client is; non-2xx or no answer in `connect_timeout` refuses it. With a
    /// JWT key too, a client presenting a `token` is verified as a JWT and the hook is skipped.
    #[serde(deserialize_with = "none_if_empty")]
    pub connect_url: Option<String>,
    /// How long the connect hook may take; shorter than `comet.logic_timeout`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Connects one logic may have waiting for the connect hook at once (each holds a
    /// connection to it); more are refused at once with op 6 "connect hook busy", counted.
    pub connect_concurrency: usize,
    /// Clock skew tolerated for a token's `exp` and `nbf`; a connection is closed as expired
    /// this long after its token's `exp` (or the connect hook's `expire_at`).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl AuthConfig {
    /// Whether clients must present signed tokens.
    pub fn tokens_required(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key_file.is_some()
    }

    /// Whether the business or a token vouches for each client (keys are then protected from
    /// other users, as with tokens).
    pub fn clients_verified(&self) -> bool {
        self.tokens_required() || self.connect_url.is_some()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_public_key_file: None,
            api_key: None,
            insecure: false,
            connect_url: None,
            connect_timeout: Duration::from_secs(2),
            connect_concurrency: 1024,
            leeway: Duration::from_secs(60),
        }
    }
}

/// The certificate chain and key files of a TLS listener, when both are set
/// ([`Config::validate`] refuses one without the other).
fn tls_files<'a>(
    cert: &'a Option<PathBuf>,
    key: &'a Option<PathBuf>,
) -> Option<(&'a Path, &'a Path)> {
    Some((cert.as_deref()?, key.as_deref()?))
}

impl CometConfig {
    /// The TLS listeners' certificate chain and key, when TLS is on.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        tls_files(&self.tls_cert_file, &self.tls_key_file)
    }
}

impl LogicConfig {
    /// The HTTPS certificate chain and key, when the API serves HTTPS.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        tls_files(&self.tls_cert_file, &self.tls_key_file)
    }
}

/// The connection server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CometConfig {
    /// This comet's id in the registry and in sessions; none = `comet-<hostname>-<link port>`.
    #[serde(deserialize_with = "none_if_empty")]
    pub id: Option<String>,
    /// goim TCP client listeners.
    pub tcp_bind: Vec<SocketAddr>,
    /// WebSocket (`ws://host:port/sub`) client listeners.
    pub ws_bind: Vec<SocketAddr>,
    /// WebSocket over TLS (`wss://host:port/sub`) listeners; bound only when `tls_cert_file`
    /// is set.
    pub wss_bind: Vec<SocketAddr>,
    /// goim TCP protocol over TLS listeners; need `tls_cert_file`.
    pub tcp_tls_bind: Vec<SocketAddr>,
    /// PEM certificate chain (leaf first) of the TLS listeners.
    #[serde(deserialize_with = "none_if_empty")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the TLS listeners.
    #[serde(deserialize_with = "none_if_empty")]
    pub tls_key_file: Option<PathBuf>,
    /// Cluster-link listener where job delivers pushes.
    pub link_bind: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz` of a comet-only process (`imgate comet`); none =
    /// off. Standalone imgate serves them on logic's HTTP listener. On a loopback address
    /// `/metrics` is open; elsewhere it needs the API key when one is configured.
    #[serde(deserialize_with = "addr_or_empty")]
    pub metrics_bind: Option<SocketAddr>,
    /// `host:port` job should dial for this comet (a name or an address); none = `link_bind`
    /// with its bound port.
    #[serde(deserialize_with = "none_if_empty")]
    pub link_advertise: Option<String>,
    /// `host:port` of logic's cluster link, names or addresses (comet sends connect,
    /// disconnect, heartbeat and online reports to the first that answers).
    pub logic_addrs: Vec<String>,
    /// Public TCP addresses advertised to clients by `/goim/nodes/*`; empty = the bound
    /// addresses (an unspecified host replaced by the host's own address).
    pub addrs: Vec<String>,
    /// Public WebSocket addresses (`host:port`) advertised by `/goim/nodes/weighted`'s
    /// `ws_port`; empty = the bound ones.
    pub ws_addrs: Vec<String>,
    /// Public `wss://` addresses, likewise; empty = the bound ones.
    pub wss_addrs: Vec<String>,
    /// Weight in logic's node balancing.
    pub weight: u32,
    /// Shards (a thread and event loop each); 0 = one per CPU the process may use.
    pub shards: usize,
    /// Pin each shard to one of the CPUs the process may use.
    pub pin: bool,
    /// What the shards' event loops park in: io_uring where this process may use it
    /// (`auto`), or always one of the two.
    pub io: IoEngine,
    /// Listen backlog for client listeners.
    #[serde(rename = "backlog")]
    pub backlog: u32,
    /// Accept → auth deadline.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Largest frame body accepted from a client.
    pub max_body: usize,
    /// Largest WebSocket upgrade request head.
    pub ws_max_header: usize,
    /// Most client connections (authenticated or not) the comet holds; 0 = no limit.
    pub max_conns: usize,
    /// Most client connections from one source IP address; 0 = no limit.
    pub max_conns_per_ip: usize,
    /// Most connections one user (mid) may hold across the cluster; 0 = no limit. Enforced by
    /// logic at auth, atomically in the store, so set it where logic runs.
    pub max_conns_per_user: usize,
    /// Over `max_conns_per_user`, close the user's oldest connection instead of refusing the
    /// new one.
    pub kick_oldest: bool,
    /// Rooms one connection may be in at once, its main room included (op 24 joins more).
    pub max_rooms_per_conn: usize,
    /// TCP keep-alive on client sockets (goim's `tcp.keepalive`): probes after
    /// `tcp_keepalive_idle` of silence, every `tcp_keepalive_interval`.
    pub tcp_keepalive: bool,
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive_idle: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive_interval: Duration,
    /// Kernel send and receive buffer sizes of client sockets, in bytes (goim's `tcp.sndbuf` /
    /// `tcp.rcvbuf`); 0 = the kernel's autotuning.
    pub sndbuf: usize,
    pub rcvbuf: usize,
    /// Client messages (op 4) one shard may have waiting for the business at once; more are
    /// answered at once with an empty op 5.
    pub upstream_concurrency: usize,
    /// Frames per second a client may send, on average; 0 = no limit.
    pub upstream_rate: u32,
    /// Frames a client may send in a burst above `upstream_rate`.
    pub upstream_burst: u32,
    /// Pushes queued per connection before it is closed as too slow.
    pub send_queue: usize,
    /// Bytes queued per connection (beyond what its socket took) before it is closed as too
    /// slow; one entry of any size is always taken by an empty queue.
    pub send_queue_bytes: usize,
    /// How often each shard reports its connections and rooms to logic.
    #[serde(with = "humantime_serde")]
    pub online_interval: Duration,
    /// A room that reaches this many members on a shard, and at least twice what the shard
    /// last reported for it, is reported within a second instead of at the next
    /// `online_interval`, so job paces a room that fills up quickly. 0 = off.
    pub online_early_members: u32,
    /// Deadline for a request to logic (connect, heartbeat, online).
    #[serde(with = "humantime_serde")]
    pub logic_timeout: Duration,
}

/// The business HTTP API and session logic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicConfig {
    /// goim's HTTP API.
    pub http_bind: SocketAddr,
    /// Cluster-link listener for comets.
    pub link_bind: SocketAddr,
    /// Client heartbeat interval advertised by `/goim/nodes/weighted`.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Missed heartbeats tolerated; the server closes after `heartbeat × heartbeat_max`.
    pub heartbeat_max: u32,
    /// Refresh interval of the online-count cache behind `/goim/online/*`.
    #[serde(with = "humantime_serde")]
    pub online_refresh: Duration,
    /// PEM certificate chain of the HTTP API; set, the API serves HTTPS only.
    #[serde(deserialize_with = "none_if_empty")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the HTTP API.
    #[serde(deserialize_with = "none_if_empty")]
    pub tls_key_file: Option<PathBuf>,
    /// A client must send a request's head within this time (slowloris); idle keep-alive
    /// connections are closed after it too.
    #[serde(with = "humantime_serde")]
    pub http_header_timeout: Duration,
    /// Largest HTTP push body.
    pub max_push_body: usize,
    /// Most keys or mids in one push request.
    pub max_push_targets: usize,
    /// Largest body of a keys or mids push that carries its targets in the body (form or
    /// JSON) beside the message; the message in it is still bounded by `max_push_body`.
    pub max_push_request: usize,
    /// Domain returned by `/goim/nodes/weighted` when no comet qualifies.
    pub default_domain: String,
    /// Suffix of web node names (`<comet id><host_domain>`).
    pub host_domain: String,
    /// Ports `/goim/nodes/weighted` tells clients; 0 = the ones the comets advertise (their
    /// bound ports, or `comet.addrs` / `ws_addrs` / `wss_addrs`). Set them when clients reach
    /// the comets through something listening elsewhere (a load balancer).
    pub tcp_port: u16,
    pub ws_port: u16,
    pub wss_port: u16,
    /// Reconnect backoff advertised to clients.
    pub backoff: Backoff,
    /// Serve the demo app (built on the JavaScript SDK) at `/demo/` on the HTTP listener. The
    /// binary turns it on in development mode (no config file, no secrets).
    pub demo: bool,
    /// Where client messages (op 4) are POSTed as JSON; the answer's body goes back in op 5.
    /// None: clients get an empty op 5.
    #[serde(deserialize_with = "none_if_empty")]
    pub upstream_url: Option<String>,
    /// How long the business may take to answer a client message.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Largest business answer passed back to a client; a larger one is dropped (empty op 5).
    pub upstream_max_body: usize,
    /// Client messages one logic has waiting for the business at once; more are answered
    /// empty at once.
    pub upstream_concurrency: usize,
    /// Where connect, disconnect, join and leave events are POSTed, in batches; none = not
    /// sent. In cluster mode (a Kafka or NATS bus) logic publishes them to the bus
    /// ([`BusConfig::events`]) and the process running job POSTs them.
    #[serde(deserialize_with = "none_if_empty")]
    pub events_url: Option<String>,
    /// Events waiting to be sent, at most; more are dropped and counted.
    pub events_queue: usize,
    /// Bytes of events waiting to be sent (their keys and names, and the batch being sent),
    /// at most; more are dropped and counted. An event's key is the client's, so the count
    /// alone does not bound the memory.
    pub events_queue_bytes: usize,
    /// Events in one POST, at most…
    pub events_batch: usize,
    /// …and the longest an event waits for its batch.
    #[serde(with = "humantime_serde")]
    pub events_interval: Duration,
    /// On a graceful stop, how long logic keeps delivering the events it holds before it
    /// gives up on the rest (dropped and counted, reason `shutdown`).
    #[serde(with = "humantime_serde")]
    pub events_drain_timeout: Duration,
}

/// Client reconnect backoff hints (seconds), passed through as goim does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    pub max_delay: i32,
    pub base_delay: i32,
    pub factor: f32,
    pub jitter: f32,
}

/// The push router.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    /// A room batch is flushed when it holds this many messages…
    pub room_batch: usize,
    /// …or when its first message has waited this long.
    #[serde(with = "humantime_serde")]
    pub room_max_delay: Duration,
    /// Big rooms are paced: a room of `n` members flushes at most once every
    /// `n / (comet shards × room_writes_per_shard)`, its batch growing meanwhile. 0 = off.
    pub room_writes_per_shard: u64,
    /// Longest interval between two flushes of a paced room.
    #[serde(with = "humantime_serde")]
    pub room_max_interval: Duration,
    /// How busy (0–1, the share of time its event loop is not parked) job lets the busiest
    /// comet shard get before it batches big rooms more: it learns the share of
    /// `room_writes_per_shard` (1 % to 4×) that keeps that shard within 0.1 of this.
    /// 0 = always exactly `room_writes_per_shard`.
    pub room_busy_target: f64,
    /// Messages queued per comet link before the link reports itself full.
    pub comet_queue: usize,
    /// Bytes queued per comet link before the link reports itself full (a frame shared by
    /// several comets counts for each).
    pub comet_queue_bytes: usize,
    /// How often the comet registry is read for joins and departures.
    #[serde(with = "humantime_serde")]
    pub registry_interval: Duration,
    /// `/metrics`, `/healthz` and `/readyz` of a job-only process (`imgate job`); none = off.
    /// When job runs inside logic's process, logic's HTTP listener serves them.
    #[serde(deserialize_with = "addr_or_empty")]
    pub metrics_bind: Option<SocketAddr>,
}

/// Which bus carries pushes from logic to job, with its options. In TOML: `[bus]` with
/// `kind = "embedded"` (and `capacity`, `publish_timeout`), `kind = "kafka"` (and
/// `[bus.kafka]`) or `kind = "nats"` (and `[bus.nats]`); the options of the kinds not chosen
/// may be present and are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "BusSection")]
pub enum BusConfig {
    /// A bounded in-process queue: logic and job run in one process.
    Embedded(EmbeddedBusConfig),
    /// A Kafka-protocol broker shared by every logic and job.
    Kafka(KafkaConfig),
    /// A NATS JetStream stream shared by every logic and job.
    Nats(NatsConfig),
}

impl BusConfig {
    /// Where events for the business (`logic.events_url`) travel in cluster mode: the same
    /// broker, on their own topic (`<topic>-events`, consumer group `<group>-events`) or stream
    /// (`<stream>-events`, subjects `<prefix>-events.*`, durables `<durable>-events`), so a
    /// business that is down holds back events and never pushes. None with the embedded bus:
    /// logic and job share one process, and logic's own queue delivers them.
    pub fn events(&self) -> Option<BusConfig> {
        match self {
            BusConfig::Embedded(_) => None,
            BusConfig::Kafka(kafka) => Some(BusConfig::Kafka(KafkaConfig {
                topic: format!("{}-events", kafka.topic),
                group: format!("{}-events", kafka.group),
                ..kafka.clone()
            })),
            BusConfig::Nats(nats) => {
                let prefix = nats.subjects.strip_suffix(".*").unwrap_or(&nats.subjects);
                Some(BusConfig::Nats(NatsConfig {
                    stream: format!("{}-events", nats.stream),
                    subjects: format!("{prefix}-events.*"),
                    durable: format!("{}-events", nats.durable),
                    ..nats.clone()
                }))
            }
        }
    }
}

/// The embedded bus.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedBusConfig {
    /// Capacity of the queue.
    pub capacity: usize,
    /// How long a publish waits for room before the push is refused.
    pub publish_timeout: Duration,
}

/// `[bus]` as written in TOML; [`BusConfig`] is what it means.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BusSection {
    kind: BusKind,
    capacity: usize,
    #[serde(with = "humantime_serde")]
    publish_timeout: Duration,
    kafka: KafkaConfig,
    nats: NatsConfig,
}

/// What comet's event loops park in (`comet.io`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum IoEngine {
    /// io_uring where the process may create a ring with the features the loop uses (probed
    /// once at start), else epoll with one warning line. Containers' default seccomp profiles
    /// (Docker 25+, containerd), gVisor and `kernel.io_uring_disabled` refuse io_uring.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// io_uring or nothing: where it is refused, comet does not start.
    #[serde(rename = "io_uring")]
    IoUring,
    /// epoll only (`epoll_wait` parks the loop); needs no io_uring at all.
    #[serde(rename = "epoll")]
    Epoll,
}

impl std::str::FromStr for IoEngine {
    type Err = String;

    fn from_str(s: &str) -> Result<IoEngine, String> {
        match s {
            "auto" => Ok(IoEngine::Auto),
            "io_uring" => Ok(IoEngine::IoUring),
            "epoll" => Ok(IoEngine::Epoll),
            other => Err(format!(
                "unknown io engine {other:?}, expected auto, io_uring or epoll"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BusKind {
    #[default]
    Embedded,
    Kafka,
    Nats,
}

impl From<BusSection> for BusConfig {
    fn from(section: BusSection) -> Self {
        match section.kind {
            BusKind::Embedded => BusConfig::Embedded(EmbeddedBusConfig {
                capacity: section.capacity,
                publish_timeout: section.publish_timeout,
            }),
            BusKind::Kafka => BusConfig::Kafka(section.kafka),
            BusKind::Nats => BusConfig::Nats(section.nats),
        }
    }
}

/// The Kafka bus (any Kafka-protocol broker).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port`.
    pub brokers: String,
    pub topic: String,
    /// Consumer group of the jobs.
    pub group: String,
    /// Partitions of the topic when imgate creates it.
    pub partitions: i32,
    /// How often job commits the offsets of delivered messages.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Consumer group session timeout: a job silent this long is replaced.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

/// The NATS JetStream bus. Pushes go to one of `partitions` subjects, chosen by the push's
/// ordering key (its room, its comet, or "all"); each partition has its own durable consumer,
/// and one job at a time holds it (a lease in a key-value bucket), so a room's pushes keep
/// their order, as on one Kafka partition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Servers, comma-separated (`nats://host:4222`, `tls://host:4222`); credentials may be in
    /// the URL (`nats://user:password@host:4222`, `nats://token@host:4222`).
    pub url: String,
    /// The JetStream stream imgate publishes to (created with `subjects` if missing).
    pub stream: String,
    /// The stream's subjects, a pattern ending in `.*`: partition `p` publishes to the
    /// pattern with `*` replaced by `p`.
    pub subjects: String,
    /// Partition subjects (and consumers); one room always lands on one partition.
    pub partitions: u32,
    /// Replicas of the stream, its consumers and the lease bucket (a JetStream cluster).
    pub replicas: usize,
    /// Stored pushes older than this are dropped from the stream, consumed or not.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Name prefix of the jobs' durable consumers (`<durable>-<partition>-<generation>`) and of
    /// the key-value bucket holding their leases (`<durable>-<stream>`).
    pub durable: String,
    /// How long a push waits for JetStream's acknowledgement (and any other request to
    /// JetStream) before it is refused with 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long connecting to a server may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often job acknowledges the messages it has delivered to the comets.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// A job silent this long loses its partitions (their leases expire) to the others.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Messages a job may hold unacknowledged per partition (JetStream's `max_ack_pending`).
    pub max_ack_pending: u32,
    /// A CA certificate (PEM) to trust for the servers' TLS; setting it requires TLS.
    #[serde(deserialize_with = "none_if_empty")]
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate chain and its key (PEM), for servers that verify clients.
    #[serde(deserialize_with = "none_if_empty")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "none_if_empty")]
    pub tls_key_file: Option<PathBuf>,
}

/// Where sessions, online counts, the comet registry and stored messages live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "StoreSection")]
pub struct StoreConfig {
    /// In process, or Redis with its options. In TOML: `kind = "embedded"` or
    /// `kind = "redis"` with `[store.redis]`.
    pub backend: StoreBackend,
    /// Session lifetime without a heartbeat refresh.
    pub session_ttl: Duration,
    /// A comet shard that has not reported for this long is gone.
    pub online_ttl: Duration,
    /// Messages kept per user for delivery on (re)connect.
    pub inbox_max_messages: usize,
    /// How long a user's stored messages (and their sequence) are kept after the last push.
    pub inbox_ttl: Duration,
    /// Messages kept per room for pushes that opt into history (`history=1`).
    pub room_history_max_messages: usize,
    /// How long a room's history is kept.
    pub room_history_ttl: Duration,
}

/// The store's backend.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    /// In-process maps: one process, nothing survives it.
    Embedded,
    /// A Redis node or Redis Cluster shared by every process.
    Redis(RedisConfig),
}

/// `[store]` as written in TOML; [`StoreConfig`] is what it means.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct StoreSection {
    kind: StoreKind,
    #[serde(with = "humantime_serde")]
    session_ttl: Duration,
    #[serde(with = "humantime_serde")]
    online_ttl: Duration,
    inbox_max_messages: usize,
    #[serde(with = "humantime_serde")]
    inbox_ttl: Duration,
    room_history_max_messages: usize,
    #[serde(with = "humantime_serde")]
    room_history_ttl: Duration,
    redis: RedisConfig,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    #[default]
    Embedded,
    Redis,
}

impl From<StoreSection> for StoreConfig {
    fn from(section: StoreSection) -> Self {
        StoreConfig {
            backend: match section.kind {
                StoreKind::Embedded => StoreBackend::Embedded,
                StoreKind::Redis => StoreBackend::Redis(section.redis),
            },
            session_ttl: section.session_ttl,
            online_ttl: section.online_ttl,
            inbox_max_messages: section.inbox_max_messages,
            inbox_ttl: section.inbox_ttl,
            room_history_max_messages: section.room_history_max_messages,
            room_history_ttl: section.room_history_ttl,
        }
    }
}

/// How many messages an inbox or a room history keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_messages: usize,
    pub ttl: Duration,
}

impl StoreConfig {
    /// Inbox retention as the store applies it.
    pub fn inbox(&self) -> Retention {
        Retention {
            max_messages: self.inbox_max_messages,
            ttl: self.inbox_ttl,
        }
    }

    /// Room-history retention as the store applies it.
    pub fn room_history(&self) -> Retention {
        Retention {
            max_messages: self.room_history_max_messages,
            ttl: self.room_history_ttl,
        }
    }
}

/// The Redis store (a single node or a Redis Cluster).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` URLs: one for a single node, the seed nodes for a cluster.
    pub urls: Vec<String>,
    /// Speak the Redis Cluster protocol.
    pub cluster: bool,
    /// Prefix of every key imgate writes.
    pub prefix: String,
    /// Deadline of each Redis command.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for CometConfig {
    fn default() -> Self {
        CometConfig {
            id: None,
            tcp_bind: vec![SocketAddr::from(([0, 0, 0, 0], 3101))],
            ws_bind: vec![SocketAddr::from(([0, 0, 0, 0], 3102))],
            wss_bind: vec![SocketAddr::from(([0, 0, 0, 0], 3103))],
            tcp_tls_bind: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            link_bind: SocketAddr::from(([127, 0, 0, 1], 3109)),
            metrics_bind: None,
            link_advertise: None,
            logic_addrs: vec!["127.0.0.1:3119".into()],
            addrs: Vec::new(),
            ws_addrs: Vec::new(),
            wss_addrs: Vec::new(),
            weight: 10,
            shards: 0,
            pin: true,
            io: IoEngine::Auto,
            backlog: 65535,
            handshake_timeout: Duration::from_secs(8),
            max_body: crate::frame::DEFAULT_MAX_BODY,
            ws_max_header: 8192,
            max_conns: 0,
            max_conns_per_ip: 0,
            max_conns_per_user: 0,
            kick_oldest: false,
            max_rooms_per_conn: 16,
            upstream_concurrency: 256,
            tcp_keepalive: false,
            tcp_keepalive_idle: Duration::from_secs(120),
            tcp_keepalive_interval: Duration::from_secs(30),
            sndbuf: 0,
            rcvbuf: 0,
            upstream_rate: 50,
            upstream_burst: 100,
            send_queue: 128,
            send_queue_bytes: 1 << 20,
            online_interval: Duration::from_secs(5),
            online_early_members: 1000,
            logic_timeout: Duration::from_secs(3),
        }
    }
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            http_bind: SocketAddr::from(([0, 0, 0, 0], 3111)),
            link_bind: SocketAddr::from(([127, 0, 0, 1], 3119)),
            heartbeat: Duration::from_secs(240),
            heartbeat_max: 2,
            online_refresh: Duration::from_secs(1),
            tls_cert_file: None,
            tls_key_file: None,
            http_header_timeout: Duration::from_secs(30),
            max_push_body: 64 << 10,
            max_push_targets: 10_000,
            // 10,000 UUID keys in JSON take about 400 KB.
            max_push_request: 1 << 20,
            default_domain: "conn.goim.io".into(),
            host_domain: ".goim.io".into(),
            tcp_port: 0,
            ws_port: 0,
            wss_port: 0,
            backoff: Backoff::default(),
            demo: false,
            upstream_url: None,
            upstream_timeout: Duration::from_secs(5),
            upstream_max_body: 64 << 10,
            upstream_concurrency: 1024,
            events_url: None,
            events_queue: 10_000,
            // 10,000 events of ordinary keys take about 2 MB.
            events_queue_bytes: 4 << 20,
            events_batch: 100,
            events_interval: Duration::from_secs(1),
            events_drain_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            max_delay: 300,
            base_delay: 3,
            factor: 1.8,
            jitter: 0.3,
        }
    }
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            room_batch: 20,
            room_max_delay: Duration::from_millis(10),
            room_writes_per_shard: 50_000,
            room_max_interval: Duration::from_secs(1),
            room_busy_target: 0.75,
            comet_queue: 8192,
            comet_queue_bytes: 64 << 20,
            registry_interval: Duration::from_secs(1),
            metrics_bind: None,
        }
    }
}

impl Default for BusSection {
    fn default() -> Self {
        BusSection {
            kind: BusKind::Embedded,
            capacity: 65536,
            publish_timeout: Duration::from_secs(1),
            kafka: KafkaConfig::default(),
            nats: NatsConfig::default(),
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        BusSection::default().into()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "imgate-push".into(),
            group: "imgate-job".into(),
            partitions: 8,
            commit_interval: Duration::from_millis(200),
            session_timeout: Duration::from_secs(6),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream: "imgate-push".into(),
            subjects: "imgate.push.*".into(),
            partitions: 8,
            replicas: 1,
            max_age: Duration::from_secs(24 * 3600),
            durable: "imgate-job".into(),
            publish_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            commit_interval: Duration::from_millis(200),
            session_timeout: Duration::from_secs(6),
            max_ack_pending: 10_000,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            prefix: "imgate:".into(),
            timeout: Duration::from_secs(1),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreSection::default().into()
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            kind: StoreKind::Embedded,
            session_ttl: Duration::from_secs(30 * 60),
            online_ttl: Duration::from_secs(20),
            inbox_max_messages: 100,
            inbox_ttl: Duration::from_secs(72 * 3600),
            room_history_max_messages: 100,
            room_history_ttl: Duration::from_secs(300),
            redis: RedisConfig::default(),
        }
    }
}

/// An option that may be absent: a missing key, or an empty string (which older files wrote
/// for "none"), is `None`.
/// An address, or none for an empty string.
fn addr_or_empty<'de, D>(d: D) -> Result<Option<SocketAddr>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not an address: {e}")))
}

fn none_if_empty<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    let text = String::deserialize(d)?;
    Ok((!text.is_empty()).then(|| T::from(text)))
}
