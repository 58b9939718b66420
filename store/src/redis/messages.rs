//! Inboxes and room histories in Redis: each a log of two keys under one hash tag (its state
//! hash and its message list), every operation one Lua script; see the key schema in [`super`].

use imgate_shared::config::Retention;
use redis::Script;

use super::{ttl_ms, RedisStore};
use crate::{InboxState, MessageStore, StoreError, StoredMessage};

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

/// The log scripts, loaded once per store.
pub(super) struct LogScripts {
    append: Script,
    read: Script,
    ack: Script,
    state: Script,
}

impl LogScripts {
    pub(super) fn new() -> Self {
        LogScripts {
            append: Script::new(&format!("{LOG_PRELUDE}{LOG_APPEND}")),
            read: Script::new(&format!("{LOG_PRELUDE}{LOG_READ}")),
            ack: Script::new(&format!("{LOG_PRELUDE}{LOG_ACK}")),
            state: Script::new(&format!("{LOG_PRELUDE}{LOG_STATE}")),
        }
    }
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

impl RedisStore {
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
        let mut inv = self.logs.append.prepare_invoke();
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
        let mut inv = self.logs.read.prepare_invoke();
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
}

#[async_trait::async_trait]
impl MessageStore for RedisStore {
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
        let mut inv = self.logs.ack.prepare_invoke();
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
        let mut inv = self.logs.state.prepare_invoke();
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
