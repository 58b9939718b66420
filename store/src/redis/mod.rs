//! The Redis store: sessions, online reports, the comet registry, inboxes and room histories in a
//! single Redis node or a Redis Cluster, shared by every logic (and job) process.
//!
//! Key schema (every key starts with `redis.prefix`, `imgate:` by default):
//!
//! | Key | Type | Content | TTL |
//! | :--- | :--- | :--- | :--- |
//! | `key:{<key>}` | string | `<mid>|<prost ConnRef>`: the connection holding the key | `session_ttl` |
//! | `mid:{<mid>}` | hash | `<key>` → prost `ConnRef` (only for mid > 0) | `session_ttl`, renewed by any device |
//! | `conns:{<mid>}` | hash | `<key>` → `<expires ms>|<connected ms>|<hex platform>|<hex rooms, comma-separated>|<prost ConnRef>` (mid > 0): presence (every room the connection is in) and the per-user limit; one script admits a connection within the limit | `session_ttl`, renewed by heartbeats |
//! | `online` | hash | `<comet>/<shard>` → `<unix ms>|<prost RenewOnline>` | `online_ttl` after the last report |
//! | `inbox:{<mid>}` | hash | `last` (newest sequence), `acked` (acknowledged up to) | `inbox_ttl` after the last append |
//! | `inbox:{<mid>}:m` | list | kept messages, oldest first: `<seq>:<unix ms>:<op, 4 bytes BE><body>` | `inbox_ttl` after the last append |
//! | `history:{<room>}` | hash | `last` (newest sequence) | `room_history_ttl` after the last append |
//! | `history:{<room>}:m` | list | kept messages, as in an inbox | `room_history_ttl` after the last append |
//!
//! An inbox or a room history is a *log*: its two keys share one hash tag (so one cluster slot)
//! and every operation on it is one Lua script, so appends from any number of processes get
//! distinct consecutive sequences. Messages only ever leave a log from its head (trimmed to
//! `*_max_messages`, older than `*_ttl` by the Redis server clock, or acknowledged), so the list
//! always holds consecutive sequences and reads index it directly. Reads, acks and state queries
//! of an unknown user or room create nothing. The empty room cannot have a history (its hash tag
//! would be empty, splitting the log across slots); goim rooms are `type://id`.
//!
//! Every session or online step touches a single key (so a single cluster slot); operations
//! spanning a session's key entry and its user's index are split into such steps, ordered so that
//! a race can only leave a *stale index field*, never a wrong session:
//!
//! * the key entry is the authority: `mid:` fields only say where to look, and
//!   [`RedisStore::sessions_by_mids`] returns a session only if the key entry still names that
//!   user (stale fields it meets are removed, compare-and-delete);
//! * a claim of a key is one script on its key entry: it refuses another user's live key
//!   (signed-token deployments) or replaces the holder and returns it, so two connections
//!   claiming one key at once cannot both win;
//! * removals and refreshes compare the connection ([`ConnRef`]) inside Lua scripts, so a
//!   replaced connection's late disconnect or heartbeat never touches its successor's session
//!   (goim's race: docs/goim-compatibility.md, "Duplicate keys");
//! * an online report replaces its shard's whole previous report (goim's stale rooms: docs/goim-compatibility.md, "Online counts")
//!   and carries the Redis server's clock, so readers on any host agree on staleness; readers
//!   drop and delete reports older than `online_ttl` in the same script.
//!
//! Every command has the deadline `redis.timeout`; failures and timeouts are
//! [`StoreError::Unavailable`]. A single node goes through a [`ConnectionManager`], which
//! reconnects by itself; a cluster through the async cluster connection, which does the same.

//!
//! | file | seam |
//! | --- | --- |
//! | `sessions.rs` | [`SessionStore`](crate::SessionStore): the `key:` entries and `mid:` indexes |
//! | `registry.rs` | [`RegistryStore`](crate::RegistryStore): the `online` hash |
//! | `messages.rs` | [`MessageStore`](crate::MessageStore): the `inbox:` and `history:` logs |

mod messages;
mod registry;
mod sessions;

use std::future::Future;
use std::time::Duration;

use imgate_shared::config::{RedisConfig, Retention, StoreConfig};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::StoreError;
use messages::LogScripts;
use registry::RegistryScripts;
use sessions::SessionScripts;

/// A connection to a single node or to a cluster; both multiplex and reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Sessions, online reports, the comet registry, inboxes and room histories in Redis (single node
/// or cluster): one connection serving all three seams.
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    session_ttl_ms: u64,
    online_ttl_ms: u64,
    inbox: Retention,
    room_history: Retention,
    sessions: SessionScripts,
    registry: RegistryScripts,
    logs: LogScripts,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis {what}: {e}"))
}

fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// Connects to `redis` (a single node, or a Redis Cluster when `redis.cluster`), with the
    /// lifetimes and retention of `store`. Fails with a clear error if Redis is unreachable at
    /// start. The options are as [`Config::validate`](imgate_shared::config::Config::validate)
    /// accepts them.
    pub async fn connect(
        redis: &RedisConfig,
        store: &StoreConfig,
    ) -> Result<RedisStore, StoreError> {
        let timeout = redis.timeout;
        let where_ = redis.urls.join(", ");
        let connect_err = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("cannot connect to Redis at {where_}: {e}"))
        };
        let conn = if redis.cluster {
            let client = ClusterClientBuilder::new(redis.urls.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .min_retry_wait(20)
                .max_retry_wait(200)
                .build()
                .map_err(|e| connect_err(&e))?;
            let conn = tokio::time::timeout(timeout * 2, client.get_async_connection())
                .await
                .map_err(|_| connect_err(&format!("no answer within {:?}", timeout * 2)))?
                .map_err(|e| connect_err(&e))?;
            Conn::Cluster(conn)
        } else {
            let url = redis
                .urls
                .first()
                .ok_or_else(|| connect_err(&"store.redis.urls names no server"))?;
            let client = redis::Client::open(url.as_str()).map_err(|e| connect_err(&e))?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(3)
                .set_min_delay(Duration::from_millis(20))
                .set_max_delay(Duration::from_millis(500));
            let manager = tokio::time::timeout(
                timeout * 2,
                ConnectionManager::new_with_config(client, manager_config),
            )
            .await
            .map_err(|_| connect_err(&format!("no answer within {:?}", timeout * 2)))?
            .map_err(|e| connect_err(&e))?;
            Conn::Single(manager)
        };
        let store = RedisStore {
            conn,
            prefix: redis.prefix.clone(),
            timeout,
            session_ttl_ms: ttl_ms(store.session_ttl),
            online_ttl_ms: ttl_ms(store.online_ttl),
            inbox: store.inbox(),
            room_history: store.room_history(),
            sessions: SessionScripts::new(),
            registry: RegistryScripts::new(),
            logs: LogScripts::new(),
        };
        let mut c = store.conn.clone();
        store
            .run("PING", redis::cmd("PING").query_async::<()>(&mut c))
            .await
            .map_err(|e| connect_err(&e))?;
        Ok(store)
    }

    /// Runs one command (or one pipeline / batch) under the deadline.
    async fn run<T>(
        &self,
        what: &str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(what, e)),
            Err(_) => Err(unavailable(
                what,
                format!("no reply within {:?}", self.timeout),
            )),
        }
    }
}
