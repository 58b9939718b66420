//! What the store's tests share: the stores of each backend under test ([`Backend`]), and
//! building sessions, reports and connections.

#![allow(dead_code)] // each test file uses a part

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imgate_shared::config::{RedisConfig, Retention, StoreBackend, StoreConfig};
use imgate_shared::link::{CometInfo, ConnRef};
use imgate_store::redis::RedisStore;
use imgate_store::{OnlineReport, Session, StoredMessage, Stores};
use imgate_testkit::{Redis, RedisCluster};

/// Long enough to never expire within a test.
pub const LONG: Duration = Duration::from_secs(60);

pub fn conn(comet: &str, id: u64) -> ConnRef {
    ConnRef {
        comet: comet.into(),
        shard: (id % 4) as u32,
        conn_id: id,
    }
}

pub fn session(mid: i64, key: &str, id: u64) -> Session {
    Session {
        mid,
        key: key.into(),
        conn: conn("c1", id),
    }
}

pub fn info(id: &str, weight: u32) -> CometInfo {
    CometInfo {
        id: id.into(),
        link_addr: format!("{id}:3109"),
        weight,
        shards: 2,
        ..Default::default()
    }
}

pub fn report(comet: CometInfo, shard: u32, conns: u32, rooms: &[(&str, u32)]) -> OnlineReport {
    OnlineReport {
        comet,
        shard,
        conn_count: conns,
        ip_count: 1,
        rooms: rooms.iter().map(|(r, n)| ((*r).into(), *n)).collect(),
        lag_us: conns * 10,
    }
}

pub fn seqs(v: &[StoredMessage]) -> Vec<u64> {
    v.iter().map(|m| m.seq).collect()
}

/// A store config (embedded backend; [`Backend::stores`] puts the backend in) with these
/// session and online-report lifetimes.
pub fn config(session_ttl: Duration, online_ttl: Duration) -> StoreConfig {
    StoreConfig {
        session_ttl,
        online_ttl,
        ..StoreConfig::default()
    }
}

/// A store config with these inbox and room-history retentions.
pub fn log_config(inbox: Retention, history: Retention) -> StoreConfig {
    let mut cfg = config(LONG, LONG);
    cfg.inbox_max_messages = inbox.max_messages;
    cfg.inbox_ttl = inbox.ttl;
    cfg.room_history_max_messages = history.max_messages;
    cfg.room_history_ttl = history.ttl;
    cfg
}

/// Redis options with a key prefix of their own, so stores sharing a server never see each
/// other.
pub fn redis_options(urls: Vec<String>, cluster: bool) -> RedisConfig {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    RedisConfig {
        urls,
        cluster,
        prefix: format!(
            "t{}-{}:",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        timeout: Duration::from_millis(500),
    }
}

/// A store backend under test, with its servers.
pub enum Backend {
    /// In-process maps.
    Embedded,
    /// One redis-server.
    Redis(Redis),
    /// A Redis Cluster of three primaries.
    Cluster(RedisCluster),
}

impl Backend {
    /// A single redis-server (started on a blocking thread: it waits for its port).
    pub async fn redis() -> Backend {
        Backend::Redis(tokio::task::spawn_blocking(Redis::start).await.unwrap())
    }

    /// A three-node Redis Cluster.
    pub async fn cluster() -> Backend {
        Backend::Cluster(
            tokio::task::spawn_blocking(|| RedisCluster::start(3))
                .await
                .unwrap(),
        )
    }

    /// Fresh stores with `config`'s lifetimes and retention, sharing nothing with other
    /// stores made here.
    pub async fn stores(&self, mut config: StoreConfig) -> Stores {
        let (urls, cluster) = match self {
            Backend::Embedded => return imgate_store::embedded::stores(&config),
            Backend::Redis(redis) => (vec![redis.url()], false),
            Backend::Cluster(cluster) => (cluster.urls(), true),
        };
        let redis = redis_options(urls, cluster);
        config.backend = StoreBackend::Redis(redis.clone());
        let store = RedisStore::connect(&redis, &config)
            .await
            .unwrap_or_else(|e| panic!("connect to {:?}: {e}", redis.urls));
        Stores::all_in(Arc::new(store))
    }
}
