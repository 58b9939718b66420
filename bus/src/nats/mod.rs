//! The NATS JetStream bus, over async-nats, with the Kafka bus's guarantees.
//!
//! **Partitions.** Every push goes to one of `partitions` subjects of one stream (the
//! `subjects` pattern with its `*` replaced by the partition number), chosen by a stable hash
//! of [`BusMessage::partition_key`]: one room's, one comet's and the broadcasts' messages stay
//! on one subject, as on one Kafka partition. JetStream keeps a subject's messages in order.
//!
//! **Producer.** [`NatsProducer::publish`] returns only once JetStream acknowledged the message
//! (it is stored, on every replica), within `publish_timeout`; while the client is not
//! connected it fails at once. The client reconnects by itself; a stream that is missing (a
//! server that came back without its store) is created again.
//!
//! **Consumer: one owner per partition.** A single durable consumer pulled by every job would
//! interleave a room's messages between jobs, and JetStream redelivers an unacknowledged
//! message after later ones. So each partition has its own durable pull consumer, and one job
//! at a time holds it: a lease, a key in a key-value bucket (`<durable>-<stream>`) that expires
//! `session_timeout` after its holder last renewed it. Jobs also renew a membership key there
//! and each takes its fair share of the partitions ([`consumer`]); a job that leaves or dies
//! gives its partitions up, at once or when its leases expire.
//!
//! **At least once.** Every message travels with a [`crate::DeliveryGuard`]; job drops it once
//! the message was written to every comet it was for. The owner acknowledges (AckAll) up to
//! the highest message below which everything is delivered, every `commit_interval`
//! ([`partition`]). A partition that changes hands gets a fresh consumer (a new generation,
//! `<durable>-<partition>-<n>`) starting right after the old one's acknowledged floor, so what
//! the old owner had not delivered comes again, first and in order; late acknowledgements of
//! the old owner go to the deleted consumer and change nothing.
//!
//! | file | holds |
//! | --- | --- |
//! | `producer.rs` | [`NatsProducer`] |
//! | `consumer.rs` | [`NatsConsumer`]: membership, leases, the fair share, lag |
//! | `partition.rs` | one owned partition: its pull loop, delivery tracking, acknowledgements |

mod consumer;
mod partition;
mod producer;

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, ConnectOptions, ServerAddr};
use imgate_shared::config::NatsConfig;

use crate::BusError;

pub use consumer::{NatsConsumer, NatsProgress};
pub use producer::NatsProducer;

/// Longest pause between reconnect attempts (the first is immediate): a restarted server is
/// found within about a second.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}"))
}

/// The partition of an ordering key: FNV-1a (64 bits) of its bytes, so every logic, whatever
/// its build or platform, picks the same one.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// The subject of partition `partition`: the `subjects` pattern with `*` replaced.
pub fn partition_subject(config: &NatsConfig, partition: u32) -> String {
    let prefix = config
        .subjects
        .strip_suffix('*')
        .unwrap_or(&config.subjects);
    format!("{prefix}{partition}")
}

/// Connects a client named `name` with the configured servers, timeouts and TLS. With
/// `in_background` the call returns at once and the client keeps trying (a job may start
/// before NATS); otherwise a server that cannot be reached is an error.
async fn connect(config: &NatsConfig, name: &str, in_background: bool) -> Result<Client, BusError> {
    let servers = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ServerAddr>()
                .map_err(|e| unavailable(&format!("bus.nats.url {:?}", redacted(s)), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = ConnectOptions::new();
    // async-nats reads no credentials from a URL: the first URL's user and password (or
    // token, a user without a password) go into the options.
    if let Some(server) = servers.iter().find(|s| s.username().is_some()) {
        let user = percent_decoded(server.username().unwrap_or_default());
        options = match server.password() {
            Some(password) => options.user_and_password(user, percent_decoded(password)),
            None => options.token(user),
        };
    }
    options = options
        .name(name)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.publish_timeout))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            RECONNECT_MAX.min(Duration::from_millis(100) * attempts.saturating_sub(1) as u32)
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats: connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("nats: disconnected; reconnecting")
                }
                other => tracing::info!(event = %other, "nats"),
            }
        });
    if in_background {
        options = options.retry_on_initial_connect();
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options
        .connect(servers)
        .await
        .map_err(|e| unavailable(&format!("nats: connecting to {}", redacted(&config.url)), e))
}

/// `url` (or a comma-separated list of them) with any credentials replaced by `***`, for logs
/// and errors.
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(str::trim)
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &one[..scheme + 3], &one[at..])
            }
            _ => one.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A URL's user or password, `%XX` escapes decoded.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JetStream context whose requests (and publish acknowledgements) are bounded by
/// `publish_timeout`.
fn context(client: Client, config: &NatsConfig) -> jetstream::Context {
    jetstream::context::ContextBuilder::new()
        .timeout(config.publish_timeout)
        .build(client)
}

/// Creates the stream with the configured subjects unless it exists; an existing stream must
/// carry them.
async fn ensure_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<jetstream::stream::Stream, BusError> {
    let wanted = jetstream::stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.subjects.clone()],
        storage: jetstream::stream::StorageType::File,
        num_replicas: config.replicas,
        max_age: config.max_age,
        retention: jetstream::stream::RetentionPolicy::Limits,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(wanted)
        .await
        .map_err(|e| unavailable(&format!("nats: stream {}", config.stream), e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| unavailable(&format!("nats: stream {}", config.stream), e))?;
    if !info.config.subjects.contains(&config.subjects) {
        return Err(BusError::Unavailable(format!(
            "nats: stream {} exists with subjects {:?}, not {:?} (bus.nats.subjects)",
            config.stream, info.config.subjects, config.subjects
        )));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // The same key, the same partition, in every process and build.
        assert_eq!(
            partition_of("room:live://1", 8),
            partition_of("room:live://1", 8)
        );
        assert_eq!(partition_of("", 8), (0xcbf2_9ce4_8422_2325u64 % 8) as u32);
        let mut seen = [0u32; 8];
        for i in 0..800 {
            seen[partition_of(&format!("room:live://{i}"), 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn credentials_never_show_and_are_decoded() {
        assert_eq!(
            redacted("nats://u:p%40ss@a:4222, tls://tok@b:4222,nats://c:4222"),
            "nats://***@a:4222,tls://***@b:4222,nats://c:4222"
        );
        assert_eq!(percent_decoded("p%40ss%2"), "p@ss%2");
        assert_eq!(percent_decoded("plain"), "plain");
    }

    #[test]
    fn partition_subjects_replace_the_wildcard() {
        let config = NatsConfig {
            subjects: "a.b.*".into(),
            ..NatsConfig::default()
        };
        assert_eq!(partition_subject(&config, 7), "a.b.7");
    }
}
