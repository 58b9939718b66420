//! Reading a configuration and checking it: the one place that refuses a bad one, with an
//! error that names the option and the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BusConfig, Config, StoreBackend};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An option has a value that cannot be used; `file` is where it came from, when it came
    /// from a file.
    #[error("{}{option}: {reason}", in_file(file))]
    Invalid {
        file: Option<PathBuf>,
        /// The option's dotted name (`comet.max_body`), or the place in the file when the
        /// text is not TOML at all.
        option: String,
        reason: String,
    },
}

fn in_file(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!("{}: ", f.display()))
        .unwrap_or_default()
}

impl ConfigError {
    fn invalid(option: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: None,
            option: option.to_string(),
            reason: reason.into(),
        }
    }

    /// The same error, said to come from `path`.
    fn in_file(self, path: &Path) -> ConfigError {
        match self {
            ConfigError::Invalid { option, reason, .. } => ConfigError::Invalid {
                file: Some(path.to_path_buf()),
                option,
                reason,
            },
            read => read,
        }
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| e.in_file(path))
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot: values that would otherwise fail late or silently, and
    /// options that only work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |option: &str, reason: &str| Err(ConfigError::invalid(option, reason));
        let (comet, logic, job) = (&self.comet, &self.logic, &self.job);
        if let BusConfig::Kafka(kafka) = &self.bus {
            if self.store.backend == StoreBackend::Embedded {
                return bad(
                    "bus.kind",
                    "\"kafka\" needs store.kind = \"redis\": the processes share sessions there",
                );
            }
            if kafka.partitions < 1 {
                return bad("bus.kafka.partitions", "must be at least 1");
            }
        }
        if let BusConfig::Nats(nats) = &self.bus {
            if self.store.backend == StoreBackend::Embedded {
                return bad(
                    "bus.kind",
                    "\"nats\" needs store.kind = \"redis\": the processes share sessions there",
                );
            }
            validate_nats(nats)?;
        }
        if self.auth.connect_url.is_some() && self.auth.connect_timeout >= comet.logic_timeout {
            // Otherwise comet gives up on a connect logic is still admitting, and the session
            // (and its place under comet.max_conns_per_user) lingers for store.session_ttl.
            return bad(
                "auth.connect_timeout",
                "must be shorter than comet.logic_timeout (how long comet waits for logic)",
            );
        }
        for (option, value) in [
            ("logic.upstream_timeout", logic.upstream_timeout),
            ("auth.connect_timeout", self.auth.connect_timeout),
            ("logic.events_interval", logic.events_interval),
        ] {
            if value.is_zero() {
                return bad(option, "must be positive");
            }
        }
        if let StoreBackend::Redis(redis) = &self.store.backend {
            if redis.urls.is_empty() {
                return bad("store.redis.urls", "must name at least one Redis URL");
            }
            if !redis.cluster && redis.urls.len() != 1 {
                return bad(
                    "store.redis.urls",
                    "a single node takes one URL (set store.redis.cluster = true for a Redis \
                     Cluster's seed nodes)",
                );
            }
            if redis.prefix.contains(['{', '}']) {
                return bad(
                    "store.redis.prefix",
                    "must not contain '{' or '}' (they are Redis Cluster hash tags)",
                );
            }
            if redis.timeout.is_zero() {
                return bad("store.redis.timeout", "must be positive");
            }
        }
        for (option, value) in [
            ("comet.send_queue", comet.send_queue),
            ("comet.send_queue_bytes", comet.send_queue_bytes),
            ("auth.connect_concurrency", self.auth.connect_concurrency),
            ("logic.events_queue_bytes", logic.events_queue_bytes),
            ("job.room_batch", job.room_batch),
            ("job.comet_queue", job.comet_queue),
            ("job.comet_queue_bytes", job.comet_queue_bytes),
        ] {
            if value == 0 {
                return bad(option, "must be greater than 0");
            }
        }
        if !(0.0..=1.0).contains(&job.room_busy_target) {
            return bad("job.room_busy_target", "must be between 0 and 1");
        }
        if logic.heartbeat.is_zero() {
            return bad("logic.heartbeat", "must be positive");
        }
        if logic.heartbeat_max == 0 {
            return bad("logic.heartbeat_max", "must be greater than 0");
        }
        if comet.max_body == 0 || comet.max_body > 1 << 24 {
            return bad("comet.max_body", "must be between 1 and 16 MiB");
        }
        for (section, cert, key) in [
            ("comet", &comet.tls_cert_file, &comet.tls_key_file),
            ("logic", &logic.tls_cert_file, &logic.tls_key_file),
        ] {
            match (cert, key) {
                (Some(_), None) => {
                    return bad(
                        &format!("{section}.tls_key_file"),
                        "must be set with tls_cert_file",
                    )
                }
                (None, Some(_)) => {
                    return bad(
                        &format!("{section}.tls_cert_file"),
                        "must be set with tls_key_file",
                    )
                }
                _ => {}
            }
        }
        if !comet.tcp_tls_bind.is_empty() && comet.tls_cert_file.is_none() {
            return bad(
                "comet.tcp_tls_bind",
                "needs comet.tls_cert_file and comet.tls_key_file",
            );
        }
        if comet.upstream_rate > 0 && !(1..=1_000_000).contains(&comet.upstream_burst) {
            return bad("comet.upstream_burst", "must be between 1 and 1000000");
        }
        Ok(())
    }
}

/// The NATS bus's options: names JetStream accepts, a subject pattern with one partition
/// wildcard, positive timeouts.
fn validate_nats(nats: &super::NatsConfig) -> Result<(), ConfigError> {
    let bad = |option: &str, reason: &str| Err(ConfigError::invalid(option, reason));
    if nats.url.trim().is_empty() {
        return bad("bus.nats.url", "must name at least one server");
    }
    // Stream, consumer and bucket names: JetStream refuses dots, wildcards and spaces, and a
    // key-value bucket takes only these characters.
    let name_ok = |name: &str| {
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !name_ok(&nats.stream) {
        return bad(
            "bus.nats.stream",
            "must be 1 to 64 letters, digits, '-' or '_'",
        );
    }
    if !name_ok(&nats.durable) {
        return bad(
            "bus.nats.durable",
            "must be 1 to 64 letters, digits, '-' or '_'",
        );
    }
    let prefix = nats.subjects.strip_suffix(".*").unwrap_or("");
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| !c.is_whitespace() && c != '*' && c != '>' && c != '.')
    };
    if prefix.is_empty() || !prefix.split('.').all(token_ok) {
        return bad(
            "bus.nats.subjects",
            "must be a subject pattern ending in \".*\" with no other wildcard (e.g. \"imgate.push.*\")",
        );
    }
    if !(1..=1024).contains(&nats.partitions) {
        return bad("bus.nats.partitions", "must be between 1 and 1024");
    }
    if !(1..=5).contains(&nats.replicas) {
        return bad("bus.nats.replicas", "must be between 1 and 5");
    }
    if nats.max_ack_pending == 0 {
        return bad("bus.nats.max_ack_pending", "must be greater than 0");
    }
    for (option, value) in [
        ("bus.nats.max_age", nats.max_age),
        ("bus.nats.publish_timeout", nats.publish_timeout),
        ("bus.nats.connect_timeout", nats.connect_timeout),
        ("bus.nats.commit_interval", nats.commit_interval),
    ] {
        if value.is_zero() {
            return bad(option, "must be positive");
        }
    }
    if nats.session_timeout < Duration::from_secs(1) {
        return bad("bus.nats.session_timeout", "must be at least 1s");
    }
    match (&nats.tls_cert_file, &nats.tls_key_file) {
        (Some(_), None) => bad("bus.nats.tls_key_file", "must be set with tls_cert_file"),
        (None, Some(_)) => bad("bus.nats.tls_cert_file", "must be set with tls_key_file"),
        _ => Ok(()),
    }
}

/// A TOML or type error, named by the option it is in.
fn parse_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let Some(span) = error.span() else {
        return ConfigError::invalid("(file)", error.message());
    };
    let (line, column) = line_and_column(text, span.start);
    let message = error.message().trim().replace('\n', ", ");
    let message = if message.is_empty() {
        "not valid TOML".to_string()
    } else {
        message
    };
    ConfigError::invalid(
        &option_at(text, span.start),
        format!("{message} (line {line}, column {column})"),
    )
}

/// 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The dotted name of the option whose key or value is at `offset`: the nearest `key =` at or
/// above it, under the nearest `[section]` above that; a section header names itself.
fn option_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_end = text[before.len()..]
        .find('\n')
        .map_or(text.len(), |i| before.len() + i);
    let mut lines = text[..line_end].lines().rev().map(str::trim);
    let mut key = None;
    for line in lines.by_ref() {
        if let Some(section) = table_name(line) {
            return match key {
                Some(key) => format!("{section}.{key}"),
                None => section.to_string(),
            };
        }
        if key.is_none() && !line.starts_with('#') {
            if let Some((k, _)) = line.split_once('=') {
                key = Some(k.trim().trim_matches('"').to_string());
            }
        }
    }
    key.unwrap_or_else(|| "(top level)".to_string())
}

/// `comet` for a `[comet]` line, `bus.kafka` for `[bus.kafka]`.
fn table_name(line: &str) -> Option<&str> {
    let inner = line.strip_prefix('[')?.split(']').next()?;
    Some(inner.trim().trim_start_matches('['))
}

/// Parses a duration: a number and a unit, `"500ms"`, `"8s"`, `"4m"`, `"1h"`, or several
/// (`"1h 30m"`), as humantime reads them (the configuration's durations and the command
/// line's).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text.trim())
        .map_err(|e| format!("duration {text:?}: {e} (e.g. \"500ms\", \"8s\", \"4m\", \"1h\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        Config::from_toml(text)
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("4m"), Ok(Duration::from_secs(240)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("4").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1x").is_err());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn example_file_lists_the_defaults() {
        let text = include_str!("../../../imgate.example.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    #[test]
    fn the_cluster_files_are_valid() {
        for (name, text, on_kafka) in [
            (
                "comet-1",
                include_str!("../../../cluster/comet-1.toml"),
                false,
            ),
            (
                "comet-2",
                include_str!("../../../cluster/comet-2.toml"),
                false,
            ),
            (
                "logic-1",
                include_str!("../../../cluster/logic-1.toml"),
                true,
            ),
            (
                "logic-2",
                include_str!("../../../cluster/logic-2.toml"),
                true,
            ),
            ("job", include_str!("../../../cluster/job.toml"), true),
        ] {
            let config = Config::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                matches!(config.bus, BusConfig::Kafka(_)),
                on_kafka,
                "{name}'s bus"
            );
            if on_kafka {
                // `BUS=nats scripts/cluster.sh up` runs the same file with kind = "nats".
                let nats = text.replacen("kind = \"kafka\"", "kind = \"nats\"", 1);
                let config = Config::from_toml(&nats).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(
                    matches!(&config.bus, BusConfig::Nats(n) if n.subjects == "imgate.push.*"),
                    "{name} on NATS"
                );
            }
        }
    }

    #[test]
    fn empty_strings_still_mean_none() {
        let config = Config::from_toml(
            "[comet]\nid = \"\"\ntls_cert_file = \"\"\n[auth]\njwt_secret = \"\"\n",
        )
        .unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn the_backends_are_read_with_their_options() {
        let config = Config::from_toml(
            "[bus]\nkind = \"kafka\"\n[bus.kafka]\ntopic = \"t\"\n\
             [store]\nkind = \"redis\"\n[store.redis]\nprefix = \"p:\"\n",
        )
        .unwrap();
        assert!(matches!(&config.bus, BusConfig::Kafka(k) if k.topic == "t"));
        assert!(matches!(&config.store.backend, StoreBackend::Redis(r) if r.prefix == "p:"));
    }

    #[test]
    fn errors_name_the_option() {
        let e = error("[comet]\ntcp_bnid = []");
        assert!(e.starts_with("comet.tcp_bnid: unknown field"), "{e}");
        let e = error("[comet]\nhandshake_timeout = \"8\"");
        assert!(e.starts_with("comet.handshake_timeout: "), "{e}");
        let e = error("[comet]\ntcp_bind = [\n  \"0.0.0.0:1\",\n  \"localhost:2\",\n]");
        assert!(
            e.starts_with("comet.tcp_bind: invalid socket address"),
            "{e}"
        );
        assert!(e.contains("line 4"), "{e}");
        let e = error("[bus]\nkind = \"pulsar\"");
        assert!(e.starts_with("bus.kind: unknown variant `pulsar`"), "{e}");
        let e = error("[bus]\nkind = \"nats\"");
        assert!(e.starts_with("bus.kind: \"nats\" needs store.kind"), "{e}");
        let nats = |options: &str| {
            error(&format!(
                "[bus]\nkind = \"nats\"\n[bus.nats]\n{options}\n[store]\nkind = \"redis\""
            ))
        };
        for (options, expected) in [
            (
                "subjects = \"imgate.push\"",
                "bus.nats.subjects: must be a subject pattern",
            ),
            (
                "subjects = \"a.>.*\"",
                "bus.nats.subjects: must be a subject pattern",
            ),
            ("stream = \"a.b\"", "bus.nats.stream: must be"),
            ("durable = \"\"", "bus.nats.durable: must be"),
            ("partitions = 0", "bus.nats.partitions: must be between"),
            (
                "publish_timeout = \"0s\"",
                "bus.nats.publish_timeout: must be positive",
            ),
            (
                "tls_cert_file = \"c.pem\"",
                "bus.nats.tls_key_file: must be set",
            ),
        ] {
            let e = nats(options);
            assert!(e.starts_with(expected), "{options}: {e}");
        }
        let config = Config::from_toml(
            "[bus]\nkind = \"nats\"\n[bus.nats]\nstream = \"s\"\nsubjects = \"x.y.*\"\n\
             [store]\nkind = \"redis\"",
        )
        .unwrap();
        assert!(
            matches!(&config.bus, BusConfig::Nats(n) if n.stream == "s" && n.subjects == "x.y.*")
        );
        // Events for the business get a stream of their own, whose subjects the pushes'
        // pattern does not match.
        assert!(matches!(
            config.bus.events(),
            Some(BusConfig::Nats(n)) if n.stream == "s-events"
                && n.subjects == "x.y-events.*"
                && n.durable == "imgate-job-events"
        ));
        let e = error("[bus]\nkind = \"kafka\"");
        assert!(e.starts_with("bus.kind: \"kafka\" needs store.kind"), "{e}");
        let config =
            Config::from_toml("[bus]\nkind = \"kafka\"\n[store]\nkind = \"redis\"").unwrap();
        assert!(matches!(
            config.bus.events(),
            Some(BusConfig::Kafka(k)) if k.topic == "imgate-push-events" && k.group == "imgate-job-events"
        ));
        assert_eq!(Config::default().bus.events(), None);
        let e = error("[comet]\ntls_cert_file = \"c.pem\"");
        assert_eq!(e, "comet.tls_key_file: must be set with tls_cert_file");
        let e = error("[logic]\ntls_key_file = \"k.pem\"");
        assert_eq!(e, "logic.tls_cert_file: must be set with tls_key_file");
        let e = error("[comet]\ntcp_tls_bind = [\"0.0.0.0:3104\"]");
        assert!(e.starts_with("comet.tcp_tls_bind: "), "{e}");
        let e = error(
            "[store]\nkind = \"redis\"\n[store.redis]\nurls = [\"redis://a\", \"redis://b\"]",
        );
        assert!(
            e.starts_with("store.redis.urls: a single node takes one URL"),
            "{e}"
        );
        let e = error("[auth]\nconnect_url = \"http://127.0.0.1:1/c\"\nconnect_timeout = \"3s\"");
        assert!(
            e.starts_with("auth.connect_timeout: must be shorter than comet.logic_timeout"),
            "{e}"
        );
        Config::from_toml("[auth]\nconnect_url = \"http://127.0.0.1:1/c\"").unwrap();
        let e = error("[auth]\nconnect_concurrency = 0");
        assert_eq!(e, "auth.connect_concurrency: must be greater than 0");
        let e = error("[logic]\nupstream_timeout = \"0s\"");
        assert_eq!(e, "logic.upstream_timeout: must be positive");
        let e = error("[nope]\nx = 1");
        assert!(e.starts_with("nope: unknown field"), "{e}");
        assert_eq!(error("x = "), "x: not valid TOML (line 1, column 5)");
    }

    #[test]
    fn errors_from_a_file_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgate.toml");
        std::fs::write(&path, "[job]\nroom_batch = 0\n").unwrap();
        let e = Config::from_file(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}: job.room_batch: must be greater than 0", path.display())
        );
        let missing = dir.path().join("missing.toml");
        let e = Config::from_file(&missing).unwrap_err().to_string();
        assert!(e.starts_with("cannot read the configuration file"), "{e}");
    }
}
