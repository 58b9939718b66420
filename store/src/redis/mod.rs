//! The Redis store: sessions, online reports, the comet registry, inboxes and room histories in a
//! single Redis node or a Redis Cluster, shared by every logic (and job) process.
//!
//! Key schema (every key starts with `redis.prefix`, `imgate:` by default):
//!
//! | Key | Type | Content | TTL |
//! | :--- | :--- | :--- | :--- |
//! | `key:{<key>}` | string | `<mid>|<prost ConnRef>`: the connection holding the key | `session_ttl` |
//! | `mid:{<mid>}` | hash | `<key>` → prost `ConnRef` (only for mid > 0) | `session_ttl`, renewed by any device |
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

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use imgate_shared::config::StoreConfig;
use imgate_shared::link::{ConnRef, RenewOnline};
use imgate_shared::store::{
    Claim, CometStatus, InboxState, KeyPolicy, OnlineReport, Retention, Session, Store, StoreError,
    StoredMessage,
};
use prost::Message;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Script, Value};

/// Compare-and-delete of a key entry: deletes it only if it still names the connection.
/// KEYS[1] = key entry; ARGV[1] = encoded ConnRef. Returns 1 if deleted.
const REMOVE_KEY: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local sep = string.find(v, '|', 1, true)
  if sep and string.sub(v, sep + 1) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
return 0
";

/// Claim of a key entry, in one step: refuses when the entry names another user and the
/// claim is exclusive, otherwise (re)writes it.
/// KEYS[1] = key entry; ARGV[1] = new value; ARGV[2] = the claiming mid, as the entry spells
/// it; ARGV[3] = TTL ms; ARGV[4] = '1' to refuse another user's key.
/// Returns {0, previous} if refused, {1, previous or nil} if claimed.
const CLAIM_KEY: &str = r"
local v = redis.call('GET', KEYS[1])
if v and ARGV[4] == '1' then
  local sep = string.find(v, '|', 1, true)
  if sep and string.sub(v, 1, sep - 1) ~= ARGV[2] then
    return {0, v}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return {1, v or false}
";

/// Refresh of a key entry: (re)writes it when it is missing or names the same connection.
/// KEYS[1] = key entry; ARGV[1] = new value; ARGV[2] = encoded ConnRef; ARGV[3] = TTL ms.
/// Returns 0 if another connection holds the key, 1 if created, the previous value if renewed.
const REFRESH_KEY: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local sep = string.find(v, '|', 1, true)
  if not sep or string.sub(v, sep + 1) ~= ARGV[2] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
if v then return v end
return 1
";

/// Writes a user's index field and renews the whole hash.
/// KEYS[1] = mid hash; ARGV[1] = field (the key); ARGV[2] = encoded ConnRef; ARGV[3] = TTL ms.
const SET_FIELD: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Compare-and-delete of a user's index field.
/// KEYS[1] = mid hash; ARGV[1] = field; ARGV[2] = encoded ConnRef. Returns 1 if deleted.
const REMOVE_FIELD: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
";

/// Stores a shard's report stamped with the server clock; keeps the hash for `online_ttl`.
/// KEYS[1] = online hash; ARGV[1] = field; ARGV[2] = encoded report; ARGV[3] = TTL ms.
const REPORT_ONLINE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Returns the live reports (`<unix ms>|<report>`) and deletes the stale ones.
/// KEYS[1] = online hash; ARGV[1] = TTL ms.
const READ_ONLINE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sep = string.find(v, '|', 1, true)
  local ts = sep and tonumber(string.sub(v, 1, sep - 1))
  if ts == nil or now - ts >= ttl then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live[#live + 1] = v
  end
end
return live
";

/// Shared head of the log scripts (KEYS[1] = state hash, KEYS[2] = message list): the server
/// clock, and `trim`, which drops messages from the head while they are acknowledged or older
/// than `ttl` ms. Messages are `<seq>:<unix ms>:<payload>`.
const LOG_PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function head_seq(v)
  local s1 = string.find(v, ':', 1, true)
  local s2 = string.find(v, ':', s1 + 1, true)
  return tonumber(string.sub(v, 1, s1 - 1)), tonumber(string.sub(v, s1 + 1, s2 - 1))
end
local function trim(list, acked, ttl)
  while true do
    local v = redis.call('LINDEX', list, 0)
    if not v then return end
    local seq, at = head_seq(v)
    if seq <= acked or now - at >= ttl then
      redis.call('LPOP', list)
    else
      return
    end
  end
end
local function acked_of(state)
  return tonumber(redis.call('HGET', state, 'acked') or '0')
end
";

/// Appends a message. ARGV[1] = payload; ARGV[2] = max messages; ARGV[3] = TTL ms.
/// Returns the message's sequence.
const LOG_APPEND: &str = r"
local ttl = tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
end
local seq = redis.call('HINCRBY', KEYS[1], 'last', 1)
redis.call('RPUSH', KEYS[2], string.format('%d:%d:', seq, now) .. ARGV[1])
local max = tonumber(ARGV[2])
if max <= 0 then
  redis.call('DEL', KEYS[2])
else
  redis.call('LTRIM', KEYS[2], -max, -1)
end
trim(KEYS[2], acked_of(KEYS[1]), ttl)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return seq
";

/// Kept messages after ARGV[1], at most ARGV[2] (>= 1); ARGV[3] = TTL ms. An `after` beyond the
/// last sequence reads from the start.
const LOG_READ: &str = r"
local last = redis.call('HGET', KEYS[1], 'last')
if not last then return {} end
last = tonumber(last)
trim(KEYS[2], acked_of(KEYS[1]), tonumber(ARGV[3]))
local after = tonumber(ARGV[1])
if after > last then after = 0 end
local head = redis.call('LINDEX', KEYS[2], 0)
if not head then return {} end
local first = head_seq(head)
local start = 0
if after >= first then start = after - first + 1 end
return redis.call('LRANGE', KEYS[2], start, start + tonumber(ARGV[2]) - 1)
";

/// Acknowledges up to ARGV[1] (capped at the last sequence; never moves back) and drops the
/// acknowledged messages; ARGV[2] = TTL ms. Unknown logs are left alone.
const LOG_ACK: &str = r"
local last = redis.call('HGET', KEYS[1], 'last')
if not last then return 0 end
local acked = acked_of(KEYS[1])
local seq = math.min(tonumber(ARGV[1]), tonumber(last))
if seq > acked then
  acked = seq
  redis.call('HSET', KEYS[1], 'acked', string.format('%d', acked))
end
trim(KEYS[2], acked, tonumber(ARGV[2]))
return 1
";

/// `{last, acked, pending}` after trimming; ARGV[1] = TTL ms. Unknown logs are all zeros.
const LOG_STATE: &str = r"
local last = redis.call('HGET', KEYS[1], 'last')
if not last then return {0, 0, 0} end
local acked = acked_of(KEYS[1])
trim(KEYS[2], acked, tonumber(ARGV[1]))
return {tonumber(last), acked, redis.call('LLEN', KEYS[2])}
";

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

struct Scripts {
    claim_key: Script,
    remove_key: Script,
    refresh_key: Script,
    set_field: Script,
    remove_field: Script,
    report_online: Script,
    read_online: Script,
    log_append: Script,
    log_read: Script,
    log_ack: Script,
    log_state: Script,
}

/// Sessions, online reports, the comet registry, inboxes and room histories in Redis (single node
/// or cluster).
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    session_ttl_ms: u64,
    online_ttl_ms: u64,
    inbox: Retention,
    room_history: Retention,
    scripts: Scripts,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis {what}: {e}"))
}

fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `<mid>|<prost ConnRef>`, the value of a key entry.
fn encode_entry(mid: i64, conn: &[u8]) -> Vec<u8> {
    let mut v = format!("{mid}|").into_bytes();
    v.extend_from_slice(conn);
    v
}

/// Splits a key entry into its user and connection; `None` if it is not one.
fn decode_entry(v: &[u8]) -> Option<(i64, ConnRef)> {
    let sep = v.iter().position(|b| *b == b'|')?;
    let mid = std::str::from_utf8(&v[..sep]).ok()?.parse().ok()?;
    let conn = ConnRef::decode(&v[sep + 1..]).ok()?;
    Some((mid, conn))
}

/// Largest count passed to the log scripts (Lua numbers are doubles; Redis wants integers).
const MAX_COUNT: usize = 1 << 40;

/// A log's TTL in ms, bounded so `PEXPIRE` accepts it (about 290 years at most).
fn log_ttl_ms(keep: Retention) -> u64 {
    ttl_ms(keep.ttl).min(1 << 53)
}

/// The script's part of a stored message: `<op, 4 bytes big-endian><body>`.
fn encode_payload(op: i32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body.len());
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Splits a stored message `<seq>:<unix ms>:<op><body>`; `None` if it is not one.
fn decode_message(v: &[u8]) -> Option<StoredMessage> {
    let s1 = v.iter().position(|b| *b == b':')?;
    let seq = std::str::from_utf8(&v[..s1]).ok()?.parse().ok()?;
    let rest = &v[s1 + 1..];
    let s2 = rest.iter().position(|b| *b == b':')?;
    let payload = &rest[s2 + 1..];
    let op = i32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
    Some(StoredMessage {
        seq,
        op,
        body: bytes::Bytes::copy_from_slice(&payload[4..]),
    })
}

/// Splits a stored report into its server time and report.
fn decode_report(v: &[u8]) -> Option<(u64, OnlineReport)> {
    let sep = v.iter().position(|b| *b == b'|')?;
    let at = std::str::from_utf8(&v[..sep]).ok()?.parse().ok()?;
    let r = RenewOnline::decode(&v[sep + 1..]).ok()?;
    Some((
        at,
        OnlineReport {
            comet: r.comet.unwrap_or_default(),
            shard: r.shard,
            conn_count: r.conn_count,
            ip_count: r.ip_count,
            rooms: r.rooms,
            lag_us: r.lag_us,
        },
    ))
}

impl RedisStore {
    /// Connects (single node, or Redis Cluster when `config.redis.cluster`). Fails with a clear
    /// error if Redis is unreachable at start.
    pub async fn connect(config: &StoreConfig) -> Result<RedisStore, StoreError> {
        let redis = &config.redis;
        let timeout = redis.timeout;
        if timeout.is_zero() {
            return Err(StoreError::Unavailable(
                "store.redis.timeout must be positive".into(),
            ));
        }
        if redis.prefix.contains(['{', '}']) {
            return Err(StoreError::Unavailable(format!(
                "store.redis.prefix {:?} must not contain '{{' or '}}' (they are cluster hash tags)",
                redis.prefix
            )));
        }
        if redis.urls.is_empty() {
            return Err(StoreError::Unavailable("store.redis.urls is empty".into()));
        }
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
            if redis.urls.len() != 1 {
                return Err(StoreError::Unavailable(format!(
                    "store.redis.urls has {} URLs: a single node takes one (set cluster = true for a Redis Cluster)",
                    redis.urls.len()
                )));
            }
            let client =
                redis::Client::open(redis.urls[0].as_str()).map_err(|e| connect_err(&e))?;
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
            session_ttl_ms: ttl_ms(config.session_ttl),
            online_ttl_ms: ttl_ms(config.online_ttl),
            inbox: config.inbox(),
            room_history: config.room_history(),
            scripts: Scripts {
                claim_key: Script::new(CLAIM_KEY),
                remove_key: Script::new(REMOVE_KEY),
                refresh_key: Script::new(REFRESH_KEY),
                set_field: Script::new(SET_FIELD),
                remove_field: Script::new(REMOVE_FIELD),
                report_online: Script::new(REPORT_ONLINE),
                read_online: Script::new(READ_ONLINE),
                log_append: Script::new(&format!("{LOG_PRELUDE}{LOG_APPEND}")),
                log_read: Script::new(&format!("{LOG_PRELUDE}{LOG_READ}")),
                log_ack: Script::new(&format!("{LOG_PRELUDE}{LOG_ACK}")),
                log_state: Script::new(&format!("{LOG_PRELUDE}{LOG_STATE}")),
            },
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

    fn key_entry(&self, key: &str) -> String {
        format!("{}key:{{{key}}}", self.prefix)
    }

    fn mid_index(&self, mid: i64) -> String {
        format!("{}mid:{{{mid}}}", self.prefix)
    }

    fn online_key(&self) -> String {
        format!("{}online", self.prefix)
    }

    /// A user's inbox: its state hash and its message list (one hash tag, one slot).
    fn inbox_keys(&self, mid: i64) -> [String; 2] {
        let state = format!("{}inbox:{{{mid}}}", self.prefix);
        let list = format!("{state}:m");
        [state, list]
    }

    /// A room's history: its state hash and its message list (one hash tag, one slot).
    fn history_keys(&self, room: &str) -> Result<[String; 2], StoreError> {
        if room.is_empty() {
            return Err(StoreError::Unavailable(
                "a room history needs a non-empty room".into(),
            ));
        }
        let state = format!("{}history:{{{room}}}", self.prefix);
        let list = format!("{state}:m");
        Ok([state, list])
    }

    async fn log_append(
        &self,
        what: &str,
        [state, list]: [String; 2],
        keep: Retention,
        op: i32,
        body: &[u8],
    ) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.scripts.log_append.prepare_invoke();
        inv.key(state)
            .key(list)
            .arg(encode_payload(op, body))
            .arg(keep.max_messages.min(MAX_COUNT) as u64)
            .arg(log_ttl_ms(keep));
        self.run(what, inv.invoke_async(&mut c)).await
    }

    async fn log_read(
        &self,
        what: &str,
        [state, list]: [String; 2],
        keep: Retention,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let mut inv = self.scripts.log_read.prepare_invoke();
        inv.key(state)
            .key(list)
            .arg(after)
            .arg(limit.min(MAX_COUNT) as u64)
            .arg(log_ttl_ms(keep));
        let raw: Vec<Vec<u8>> = self.run(what, inv.invoke_async(&mut c)).await?;
        Ok(raw
            .iter()
            .filter_map(|v| {
                let m = decode_message(v);
                if m.is_none() {
                    tracing::warn!("ignoring an undecodable stored message in Redis");
                }
                m
            })
            .collect())
    }

    async fn set_field(&self, mid: i64, key: &str, conn: &[u8]) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.scripts.set_field.prepare_invoke();
        inv.key(self.mid_index(mid))
            .arg(key)
            .arg(conn)
            .arg(self.session_ttl_ms);
        self.run("HSET (session index)", inv.invoke_async::<()>(&mut c))
            .await
    }

    /// Removes `key` from `mid`'s index if the field still names `conn`.
    async fn remove_field(&self, mid: i64, key: &str, conn: &[u8]) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.scripts.remove_field.prepare_invoke();
        inv.key(self.mid_index(mid)).arg(key).arg(conn);
        self.run("HDEL (session index)", inv.invoke_async::<bool>(&mut c))
            .await
    }

    /// Drops `key` from the index of the user a previous entry named, if that was another user.
    async fn unlink_previous(&self, previous: Option<&[u8]>, key: &str, mid: i64) {
        let Some((old_mid, old_conn)) = previous.and_then(decode_entry) else {
            return;
        };
        if old_mid != mid && old_mid > 0 {
            // A failure leaves a stale field, which readers ignore and prune.
            if let Err(e) = self
                .remove_field(old_mid, key, &old_conn.encode_to_vec())
                .await
            {
                tracing::warn!(error = %e, key, old_mid, "cannot unlink a key from its previous user");
            }
        }
    }

    /// The raw key entries of `keys`, in order.
    async fn get_entries(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.key_entry(k)).collect();
        match &self.conn {
            Conn::Single(m) => {
                let mut c = m.clone();
                let mut cmd = redis::cmd("MGET");
                cmd.arg(&names);
                self.run("MGET (sessions)", cmd.query_async(&mut c)).await
            }
            Conn::Cluster(cc) => {
                // Keys of different slots: one GET each, multiplexed on the cluster connection.
                let gets = names.iter().map(|name| {
                    let mut c = cc.clone();
                    async move {
                        redis::cmd("GET")
                            .arg(name)
                            .query_async::<Option<Vec<u8>>>(&mut c)
                            .await
                    }
                });
                let all = join_all(gets);
                let results = self.run("GET (sessions)", async { Ok(all.await) }).await?;
                results
                    .into_iter()
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(|e| unavailable("GET (sessions)", e))
            }
        }
    }

    /// Every field of these users' indexes, in order.
    async fn get_indexes(&self, mids: &[i64]) -> Result<Vec<Vec<(String, Vec<u8>)>>, StoreError> {
        let names: Vec<String> = mids.iter().map(|m| self.mid_index(*m)).collect();
        match &self.conn {
            Conn::Single(m) => {
                let mut c = m.clone();
                let mut pipe = redis::pipe();
                for name in &names {
                    pipe.cmd("HGETALL").arg(name);
                }
                self.run("HGETALL (session index)", pipe.query_async(&mut c))
                    .await
            }
            Conn::Cluster(cc) => {
                let gets = names.iter().map(|name| {
                    let mut c = cc.clone();
                    async move {
                        redis::cmd("HGETALL")
                            .arg(name)
                            .query_async::<Vec<(String, Vec<u8>)>>(&mut c)
                            .await
                    }
                });
                let all = join_all(gets);
                let results = self
                    .run("HGETALL (session index)", async { Ok(all.await) })
                    .await?;
                results
                    .into_iter()
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(|e| unavailable("HGETALL (session index)", e))
            }
        }
    }

    /// The live reports with their server times.
    async fn live_reports(&self) -> Result<Vec<(u64, OnlineReport)>, StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.scripts.read_online.prepare_invoke();
        inv.key(self.online_key()).arg(self.online_ttl_ms);
        let raw: Vec<Vec<u8>> = self
            .run("HGETALL (online)", inv.invoke_async(&mut c))
            .await?;
        Ok(raw
            .iter()
            .filter_map(|v| {
                let r = decode_report(v);
                if r.is_none() {
                    tracing::warn!("ignoring an undecodable online report in Redis");
                }
                r
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn claim_session(
        &self,
        session: &Session,
        policy: KeyPolicy,
    ) -> Result<Claim, StoreError> {
        let conn = session.conn.encode_to_vec();
        let mut c = self.conn.clone();
        let mut inv = self.scripts.claim_key.prepare_invoke();
        inv.key(self.key_entry(&session.key))
            .arg(encode_entry(session.mid, &conn))
            .arg(session.mid.to_string())
            .arg(self.session_ttl_ms)
            .arg(if policy == KeyPolicy::SameUser {
                "1"
            } else {
                "0"
            });
        let (claimed, previous): (i64, Option<Vec<u8>>) = self
            .run("SET (session claim)", inv.invoke_async(&mut c))
            .await?;
        let holder = previous.as_deref().and_then(decode_entry);
        if claimed == 0 {
            return Ok(Claim::Refused {
                holder: holder.map_or(0, |(mid, _)| mid),
            });
        }
        self.unlink_previous(previous.as_deref(), &session.key, session.mid)
            .await;
        if session.mid > 0 {
            self.set_field(session.mid, &session.key, &conn).await?;
        }
        let replaced = holder
            .filter(|(_, old)| *old != session.conn)
            .map(|(mid, conn)| Session {
                mid,
                key: session.key.clone(),
                conn,
            });
        Ok(Claim::Claimed { replaced })
    }

    async fn remove_session(
        &self,
        mid: i64,
        key: &str,
        conn: &ConnRef,
    ) -> Result<bool, StoreError> {
        let conn = conn.encode_to_vec();
        let mut c = self.conn.clone();
        let mut inv = self.scripts.remove_key.prepare_invoke();
        inv.key(self.key_entry(key)).arg(&conn);
        let removed: bool = self.run("DEL (session)", inv.invoke_async(&mut c)).await?;
        if mid > 0 {
            // A field still naming this connection is stale, unless the key moved on to
            // another connection of the same user: then the field is that connection's (its
            // claim may have written the field before this one's late write did), and
            // removing it would hide the survivor from pushes by mid.
            let same_user_holds = !removed
                && self
                    .get_entries(&[key.to_string()])
                    .await?
                    .pop()
                    .flatten()
                    .as_deref()
                    .and_then(decode_entry)
                    .is_some_and(|(owner, _)| owner == mid);
            if !same_user_holds {
                self.remove_field(mid, key, &conn).await?;
            }
        }
        Ok(removed)
    }

    async fn refresh_session(&self, session: &Session) -> Result<(), StoreError> {
        let conn = session.conn.encode_to_vec();
        let mut c = self.conn.clone();
        let mut inv = self.scripts.refresh_key.prepare_invoke();
        inv.key(self.key_entry(&session.key))
            .arg(encode_entry(session.mid, &conn))
            .arg(&conn)
            .arg(self.session_ttl_ms);
        let reply: Value = self
            .run("SET (session refresh)", inv.invoke_async(&mut c))
            .await?;
        match reply {
            // Another connection holds the key: leave its session and index alone.
            Value::Int(0) => return Ok(()),
            Value::BulkString(previous) => {
                self.unlink_previous(Some(&previous), &session.key, session.mid)
                    .await;
            }
            _ => {}
        }
        // The key entry names this connection now, so the index field must name it too.
        if session.mid > 0 {
            self.set_field(session.mid, &session.key, &conn).await?;
        }
        Ok(())
    }

    async fn sessions_by_keys(&self, keys: &[String]) -> Result<Vec<Session>, StoreError> {
        let entries = self.get_entries(keys).await?;
        Ok(keys
            .iter()
            .zip(entries)
            .filter_map(|(key, v)| {
                let (mid, conn) = decode_entry(v.as_deref()?)?;
                Some(Session {
                    mid,
                    key: key.clone(),
                    conn,
                })
            })
            .collect())
    }

    async fn sessions_by_mids(&self, mids: &[i64]) -> Result<Vec<Session>, StoreError> {
        let mids: Vec<i64> = mids.iter().copied().filter(|m| *m > 0).collect();
        if mids.is_empty() {
            return Ok(Vec::new());
        }
        let indexes = self.get_indexes(&mids).await?;
        let fields: Vec<(i64, String, Vec<u8>)> = mids
            .iter()
            .zip(indexes)
            .flat_map(|(mid, fields)| fields.into_iter().map(|(k, c)| (*mid, k, c)))
            .collect();
        let keys: Vec<String> = fields.iter().map(|(_, k, _)| k.clone()).collect();
        let entries = self.get_entries(&keys).await?;
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for ((mid, key, field), entry) in fields.into_iter().zip(entries) {
            match entry.as_deref().and_then(decode_entry) {
                Some((owner, conn)) if owner == mid => out.push(Session { mid, key, conn }),
                // Expired, removed or taken by another user: the field is stale.
                _ => stale.push((mid, key, field)),
            }
        }
        for (mid, key, field) in stale {
            if let Err(e) = self.remove_field(mid, &key, &field).await {
                tracing::debug!(error = %e, mid, key, "cannot prune a stale session index field");
                break;
            }
        }
        Ok(out)
    }

    async fn report_online(&self, report: OnlineReport) -> Result<(), StoreError> {
        let field = format!("{}/{}", report.comet.id, report.shard);
        let payload = RenewOnline {
            comet: Some(report.comet),
            shard: report.shard,
            conn_count: report.conn_count,
            rooms: report.rooms,
            ip_count: report.ip_count,
            lag_us: report.lag_us,
            ..Default::default()
        }
        .encode_to_vec();
        let mut c = self.conn.clone();
        let mut inv = self.scripts.report_online.prepare_invoke();
        inv.key(self.online_key())
            .arg(field)
            .arg(payload)
            .arg(self.online_ttl_ms);
        self.run("HSET (online)", inv.invoke_async::<()>(&mut c))
            .await
    }

    async fn room_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        let mut counts = HashMap::new();
        for (_, report) in self.live_reports().await? {
            for (room, n) in report.rooms {
                *counts.entry(room).or_insert(0) += u64::from(n);
            }
        }
        Ok(counts)
    }

    async fn comets(&self) -> Result<Vec<CometStatus>, StoreError> {
        let mut by_id: BTreeMap<String, CometStatus> = BTreeMap::new();
        for (updated, report) in self.live_reports().await? {
            let entry = by_id
                .entry(report.comet.id.clone())
                .or_insert_with(|| CometStatus {
                    info: report.comet.clone(),
                    ..Default::default()
                });
            entry.conn_count += u64::from(report.conn_count);
            // Each shard reports its comet's distinct addresses: one figure per comet.
            entry.ip_count = entry.ip_count.max(u64::from(report.ip_count));
            entry.lag_us = entry.lag_us.max(report.lag_us);
            if updated >= entry.updated_ms {
                entry.updated_ms = updated;
                entry.info = report.comet;
            }
        }
        Ok(by_id.into_values().collect())
    }

    async fn inbox_append(&self, mid: i64, op: i32, body: bytes::Bytes) -> Result<u64, StoreError> {
        self.log_append("RPUSH (inbox)", self.inbox_keys(mid), self.inbox, op, &body)
            .await
    }

    async fn inbox_read(
        &self,
        mid: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.log_read(
            "LRANGE (inbox)",
            self.inbox_keys(mid),
            self.inbox,
            after,
            limit,
        )
        .await
    }

    async fn inbox_ack(&self, mid: i64, seq: u64) -> Result<(), StoreError> {
        let [state, list] = self.inbox_keys(mid);
        let mut c = self.conn.clone();
        let mut inv = self.scripts.log_ack.prepare_invoke();
        inv.key(state)
            .key(list)
            .arg(seq)
            .arg(log_ttl_ms(self.inbox));
        self.run("HSET (inbox ack)", inv.invoke_async::<()>(&mut c))
            .await
    }

    async fn inbox_state(&self, mid: i64) -> Result<InboxState, StoreError> {
        let [state, list] = self.inbox_keys(mid);
        let mut c = self.conn.clone();
        let mut inv = self.scripts.log_state.prepare_invoke();
        inv.key(state).key(list).arg(log_ttl_ms(self.inbox));
        let (last_seq, acked_seq, pending): (u64, u64, u64) = self
            .run("HGETALL (inbox state)", inv.invoke_async(&mut c))
            .await?;
        Ok(InboxState {
            last_seq,
            acked_seq,
            pending,
        })
    }

    async fn room_history_append(
        &self,
        room: &str,
        op: i32,
        body: bytes::Bytes,
    ) -> Result<u64, StoreError> {
        self.log_append(
            "RPUSH (room history)",
            self.history_keys(room)?,
            self.room_history,
            op,
            &body,
        )
        .await
    }

    async fn room_history_read(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if room.is_empty() {
            // Nothing can be appended there.
            return Ok(Vec::new());
        }
        self.log_read(
            "LRANGE (room history)",
            self.history_keys(room)?,
            self.room_history,
            after,
            limit,
        )
        .await
    }
}
