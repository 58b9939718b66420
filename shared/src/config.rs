//! Configuration: one TOML file with a section per service. Every option has a default, so an
//! empty file (or no file) is a complete configuration; `imgate.example.toml` at the repository
//! root lists every option with its default and a comment.
//!
//! Durations are strings with a unit: `"500ms"`, `"8s"`, `"4m"`, `"1h"`.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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
}

/// Who may connect and who may push.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret: clients must present a JWT signed with it (`IMGATE_JWT_SECRET` overrides).
    pub jwt_secret: String,
    /// PEM public key file for RS256 / ES256 tokens, instead of a secret.
    pub jwt_public_key_file: String,
    /// The business API requires `Authorization: Bearer <api_key>` (`IMGATE_API_KEY` overrides).
    pub api_key: String,
    /// Run a configured deployment without tokens and API key (goim's trust model). Without it,
    /// `imgate --config FILE` refuses to start unless a JWT key and an API key are set.
    pub insecure: bool,
}

impl AuthConfig {
    /// Whether clients must present signed tokens.
    pub fn tokens_required(&self) -> bool {
        !self.jwt_secret.is_empty() || !self.jwt_public_key_file.is_empty()
    }
}

/// The connection server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CometConfig {
    /// This comet's id in the registry and in sessions; empty = `comet-<hostname>-<link port>`.
    pub id: String,
    /// goim TCP client listeners.
    pub tcp_bind: Vec<String>,
    /// WebSocket (`ws://host:port/sub`) client listeners.
    pub ws_bind: Vec<String>,
    /// WebSocket over TLS (`wss://host:port/sub`) listeners; bound only when `tls_cert_file`
    /// is set.
    pub wss_bind: Vec<String>,
    /// goim TCP protocol over TLS listeners; need `tls_cert_file`.
    pub tcp_tls_bind: Vec<String>,
    /// PEM certificate chain (leaf first) of the TLS listeners.
    pub tls_cert_file: String,
    /// PEM private key of the TLS listeners.
    pub tls_key_file: String,
    /// Cluster-link listener where job delivers pushes.
    pub link_bind: String,
    /// Address job should dial for this comet; empty = `link_bind` with its bound port.
    pub link_advertise: String,
    /// Addresses of logic's cluster link (comet sends connect/disconnect/heartbeat/online here).
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
    /// Listen backlog for client listeners.
    #[serde(rename = "backlog")]
    pub backlog: u32,
    /// Accept → auth deadline.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// Largest frame body accepted from a client.
    pub max_body: usize,
    /// Largest WebSocket upgrade request head.
    pub ws_max_header: usize,
    /// Most client connections (authenticated or not) the comet holds; 0 = no limit.
    pub max_conns: usize,
    /// Most client connections from one source IP address; 0 = no limit.
    pub max_conns_per_ip: usize,
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
    #[serde(deserialize_with = "duration")]
    pub online_interval: Duration,
    /// Deadline for a request to logic (connect, heartbeat, online).
    #[serde(deserialize_with = "duration")]
    pub logic_timeout: Duration,
}

/// The business HTTP API and session logic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicConfig {
    /// goim's HTTP API.
    pub http_bind: String,
    /// Cluster-link listener for comets.
    pub link_bind: String,
    /// Client heartbeat interval advertised by `/goim/nodes/weighted`.
    #[serde(deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// Missed heartbeats tolerated; the server closes after `heartbeat × heartbeat_max`.
    pub heartbeat_max: u32,
    /// Refresh interval of the online-count cache behind `/goim/online/*`.
    #[serde(deserialize_with = "duration")]
    pub online_refresh: Duration,
    /// PEM certificate chain of the HTTP API; set, the API serves HTTPS only.
    pub tls_cert_file: String,
    /// PEM private key of the HTTP API.
    pub tls_key_file: String,
    /// A client must send a request's head within this time (slowloris); idle keep-alive
    /// connections are closed after it too.
    #[serde(deserialize_with = "duration")]
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
    #[serde(deserialize_with = "duration")]
    pub room_max_delay: Duration,
    /// Big rooms are paced: a room of `n` members flushes at most once every
    /// `n / (comet shards × room_writes_per_shard)`, its batch growing meanwhile. 0 = off.
    pub room_writes_per_shard: u64,
    /// Longest interval between two flushes of a paced room.
    #[serde(deserialize_with = "duration")]
    pub room_max_interval: Duration,
    /// The comets' tick lag job aims at: when the busiest comet's shards run their ticks later
    /// than twice this on average, job spends less of `room_writes_per_shard` (30 % less per
    /// report, up to half when far behind; down to 1 %), and 25 % more again, up to all of
    /// it, below half of it. 0 = always the whole budget.
    #[serde(deserialize_with = "duration")]
    pub room_lag_target: Duration,
    /// Messages queued per comet link before the link reports itself full.
    pub comet_queue: usize,
    /// Bytes queued per comet link before the link reports itself full (a frame shared by
    /// several comets counts for each).
    pub comet_queue_bytes: usize,
    /// How often the comet registry is read for joins and departures.
    #[serde(deserialize_with = "duration")]
    pub registry_interval: Duration,
}

/// Which bus carries pushes from logic to job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `embedded` (in-process queue) or `kafka`.
    pub kind: String,
    /// Capacity of the embedded queue.
    pub capacity: usize,
    /// How long a publish waits for room before the push is refused.
    #[serde(deserialize_with = "duration")]
    pub publish_timeout: Duration,
    /// Used when `kind = "kafka"`.
    pub kafka: KafkaConfig,
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
    #[serde(deserialize_with = "duration")]
    pub commit_interval: Duration,
    /// Consumer group session timeout: a job silent this long is replaced.
    #[serde(deserialize_with = "duration")]
    pub session_timeout: Duration,
}

/// Where sessions, online counts and the comet registry live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (in-process) or `redis`.
    pub kind: String,
    /// Session lifetime without a heartbeat refresh.
    #[serde(deserialize_with = "duration")]
    pub session_ttl: Duration,
    /// A comet shard that has not reported for this long is gone.
    #[serde(deserialize_with = "duration")]
    pub online_ttl: Duration,
    /// Messages kept per user for delivery on (re)connect.
    pub inbox_max_messages: usize,
    /// How long a user's stored messages (and their sequence) are kept after the last push.
    #[serde(deserialize_with = "duration")]
    pub inbox_ttl: Duration,
    /// Messages kept per room for pushes that opt into history (`history=1`).
    pub room_history_max_messages: usize,
    /// How long a room's history is kept.
    #[serde(deserialize_with = "duration")]
    pub room_history_ttl: Duration,
    /// Used when `kind = "redis"`.
    pub redis: RedisConfig,
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
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for CometConfig {
    fn default() -> Self {
        CometConfig {
            id: String::new(),
            tcp_bind: vec!["0.0.0.0:3101".into()],
            ws_bind: vec!["0.0.0.0:3102".into()],
            wss_bind: vec!["0.0.0.0:3103".into()],
            tcp_tls_bind: Vec::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            link_bind: "127.0.0.1:3109".into(),
            link_advertise: String::new(),
            logic_addrs: vec!["127.0.0.1:3119".into()],
            addrs: Vec::new(),
            ws_addrs: Vec::new(),
            wss_addrs: Vec::new(),
            weight: 10,
            shards: 0,
            pin: true,
            backlog: 65535,
            handshake_timeout: Duration::from_secs(8),
            max_body: crate::frame::DEFAULT_MAX_BODY,
            ws_max_header: 8192,
            max_conns: 0,
            max_conns_per_ip: 0,
            upstream_rate: 50,
            upstream_burst: 100,
            send_queue: 128,
            send_queue_bytes: 1 << 20,
            online_interval: Duration::from_secs(5),
            logic_timeout: Duration::from_secs(3),
        }
    }
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            http_bind: "0.0.0.0:3111".into(),
            link_bind: "127.0.0.1:3119".into(),
            heartbeat: Duration::from_secs(240),
            heartbeat_max: 2,
            online_refresh: Duration::from_secs(1),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
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
            room_lag_target: Duration::from_millis(5),
            comet_queue: 8192,
            comet_queue_bytes: 64 << 20,
            registry_interval: Duration::from_secs(1),
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            kind: "embedded".into(),
            capacity: 65536,
            publish_timeout: Duration::from_secs(1),
            kafka: KafkaConfig::default(),
        }
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
        StoreConfig {
            kind: "embedded".into(),
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

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that would otherwise fail late or silently.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !matches!(self.bus.kind.as_str(), "embedded" | "kafka") {
            return bad(format!(
                "bus.kind {:?} must be \"embedded\" or \"kafka\"",
                self.bus.kind
            ));
        }
        if !matches!(self.store.kind.as_str(), "embedded" | "redis") {
            return bad(format!(
                "store.kind {:?} must be \"embedded\" or \"redis\"",
                self.store.kind
            ));
        }
        if self.bus.kind == "kafka" && self.store.kind != "redis" {
            return bad("bus.kind = \"kafka\" needs store.kind = \"redis\": processes share sessions through it".into());
        }
        if self.store.kind == "redis" && self.store.redis.urls.is_empty() {
            return bad("store.redis.urls is empty".into());
        }
        if self.bus.kafka.partitions < 1 {
            return bad("bus.kafka.partitions must be >= 1".into());
        }
        if self.comet.send_queue == 0
            || self.comet.send_queue_bytes == 0
            || self.job.room_batch == 0
            || self.job.comet_queue == 0
        {
            return bad(
                "comet.send_queue, comet.send_queue_bytes, job.room_batch and job.comet_queue \
                 must be > 0"
                    .into(),
            );
        }
        if self.logic.heartbeat.is_zero() || self.logic.heartbeat_max == 0 {
            return bad("logic.heartbeat and logic.heartbeat_max must be > 0".into());
        }
        if self.comet.max_body == 0 || self.comet.max_body > 1 << 24 {
            return bad("comet.max_body must be between 1 and 16 MiB".into());
        }
        for (section, cert, key) in [
            ("comet", &self.comet.tls_cert_file, &self.comet.tls_key_file),
            ("logic", &self.logic.tls_cert_file, &self.logic.tls_key_file),
        ] {
            if cert.is_empty() != key.is_empty() {
                return bad(format!(
                    "{section}.tls_cert_file and {section}.tls_key_file go together"
                ));
            }
        }
        if !self.comet.tcp_tls_bind.is_empty() && self.comet.tls_cert_file.is_empty() {
            return bad("comet.tcp_tls_bind needs comet.tls_cert_file and tls_key_file".into());
        }
        if self.comet.upstream_rate > 0 && !(1..=1_000_000).contains(&self.comet.upstream_burst) {
            return bad("comet.upstream_burst must be between 1 and 1000000".into());
        }
        Ok(())
    }
}

/// Parses `"500ms"`, `"8s"`, `"4m"`, `"1h"` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("duration {text:?} must be a whole number followed by ms, s, m or h")
    })?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("duration {text:?} needs a unit: ms, s, m or h")),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("4m"), Ok(Duration::from_secs(240)));
        assert!(parse_duration("4").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn example_file_lists_the_defaults() {
        let text = include_str!("../../imgate.example.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_toml("[comet]\ntcp_bnid = []").is_err());
        assert!(Config::from_toml("[comet]\nhandshake_timeout = \"8\"").is_err());
        assert!(Config::from_toml("[bus]\nkind = \"nats\"").is_err());
        assert!(
            Config::from_toml("[bus]\nkind = \"kafka\"").is_err(),
            "kafka needs redis"
        );
        Config::from_toml("[bus]\nkind = \"kafka\"\n[store]\nkind = \"redis\"").unwrap();
        assert!(Config::from_toml("[comet]\ntls_cert_file = \"c.pem\"").is_err());
        assert!(Config::from_toml("[logic]\ntls_key_file = \"k.pem\"").is_err());
        assert!(Config::from_toml("[comet]\ntcp_tls_bind = [\"0.0.0.0:3104\"]").is_err());
    }
}
