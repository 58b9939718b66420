//! Sessions in Redis: the `key:{<key>}` entry (the authority) and the `mid:{<mid>}` index of
//! each user's keys; see the key schema in [`super`].

use futures_util::future::join_all;
use imgate_shared::link::ConnRef;
use prost::Message;
use redis::{RedisResult, Script, Value};

use super::{unavailable, Conn, RedisStore};
use crate::{Connected, KeyPolicy, Rules, Session, SessionStore, StoreError, UserConn};

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

/// A user's connection entries (`conns:{<mid>}` hash, field = key), values
/// `<expires ms>|<connected ms>|<hex platform>|<hex rooms, comma-separated>|<prost ConnRef>`
/// (an entry written before rooms were lists holds one room there), times by the Redis
/// server clock. Shared by the scripts below: `parse(v)` → expires, connected, the middle (the
/// platform and room as they are) and the ConnRef bytes.
const CONN_PARSE: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function parse(v)
  local a = string.find(v, '|', 1, true)
  local b = string.find(v, '|', a + 1, true)
  local c = string.find(v, '|', b + 1, true)
  local d = string.find(v, '|', c + 1, true)
  return tonumber(string.sub(v, 1, a - 1)), tonumber(string.sub(v, a + 1, b - 1)),
    string.sub(v, b + 1, d - 1), string.sub(v, d + 1)
end
";

/// Admission of a connection within the user's limit, in one step.
/// KEYS[1] = conns hash; ARGV[1] = key; ARGV[2] = ConnRef; ARGV[3] = `<hex platform>|<hex
/// room>`; ARGV[4] = limit (0 = none); ARGV[5] = '1' to kick the oldest; ARGV[6] = TTL ms.
/// Returns {0, held} if refused, {1, kicked key, value, key, value...} if admitted.
const ADMIT_CONN: &str = r"
local now = now_ms()
local all = redis.call('HGETALL', KEYS[1])
local others = {}
local newest = 0
for i = 1, #all, 2 do
  local exp, connected = parse(all[i + 1])
  if exp <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= ARGV[1] then
    table.insert(others, {all[i], connected, all[i + 1]})
    if connected > newest then newest = connected end
  end
end
local limit = tonumber(ARGV[4])
local out = {1}
if limit > 0 and #others >= limit then
  if ARGV[5] ~= '1' then return {0, #others} end
  table.sort(others, function(x, y) return x[2] < y[2] end)
  for i = 1, #others - limit + 1 do
    redis.call('HDEL', KEYS[1], others[i][1])
    table.insert(out, others[i][1])
    table.insert(out, others[i][3])
  end
end
local connected = math.max(now, newest + 1)
redis.call('HSET', KEYS[1], ARGV[1],
  string.format('%d|%d|%s|', now + tonumber(ARGV[6]), connected, ARGV[3]) .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return out
";

/// Renewal of a connection entry that still names the connection, or its re-creation (no
/// platform or room known) when it is missing (a Redis that lost its data).
/// KEYS[1] = conns hash; ARGV[1] = key; ARGV[2] = ConnRef; ARGV[3] = TTL ms.
const REFRESH_CONN: &str = r"
local now = now_ms()
local v = redis.call('HGET', KEYS[1], ARGV[1])
local connected, middle = now, '|'
if v then
  local exp, c, m, conn = parse(v)
  if conn ~= ARGV[2] then return 0 end
  connected, middle = c, m
end
redis.call('HSET', KEYS[1], ARGV[1],
  string.format('%d|%d|%s|', now + tonumber(ARGV[3]), connected, middle) .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Compare-and-delete of a connection entry. KEYS[1] = conns hash; ARGV[1] = key; ARGV[2] =
/// ConnRef. Returns the removed value, or nil.
const REMOVE_CONN: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local exp, connected, middle, conn = parse(v)
if conn ~= ARGV[2] then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
return v
";

/// Replacement of a connection entry's rooms, if it names the connection.
/// KEYS[1] = conns hash; ARGV[1] = key; ARGV[2] = ConnRef; ARGV[3] = hex rooms, comma-separated.
/// Returns the new value, or nil.
const SET_ROOMS: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local exp, connected, middle, conn = parse(v)
if conn ~= ARGV[2] then return false end
local sep = string.find(middle, '|', 1, true)
local nv = string.format('%d|%d|%s|%s|', exp, connected, string.sub(middle, 1, sep - 1), ARGV[3]) .. conn
redis.call('HSET', KEYS[1], ARGV[1], nv)
return nv
";

/// The live entries of one user. KEYS[1] = conns hash. Returns key, value, key, value...
const LIVE_CONNS: &str = r"
local now = now_ms()
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 2, #all, 2 do
  if parse(all[i]) > now then
    table.insert(out, all[i - 1])
    table.insert(out, all[i])
  end
end
return out
";

/// A connection entry's value back as a [`UserConn`].
fn decode_conn(key: String, v: &[u8]) -> Option<UserConn> {
    let mut parts = v.splitn(5, |b| *b == b'|');
    let _expires = parts.next()?;
    let connected: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let platform = unhex(parts.next()?)?;
    let rooms = parts
        .next()?
        .split(|b| *b == b',')
        .filter(|r| !r.is_empty())
        .map(unhex)
        .collect::<Option<Vec<String>>>()?;
    let conn = ConnRef::decode(parts.next()?).ok()?;
    Some(UserConn {
        key,
        conn,
        platform,
        rooms,
        connected_ms: connected,
    })
}

/// Text as lowercase hex, so an entry's separators never occur in it.
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Rooms as an entry holds them: each in hex, comma-separated.
fn hex_rooms(rooms: &[String]) -> String {
    rooms
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| hex(r))
        .collect::<Vec<_>>()
        .join(",")
}

fn unhex(hex: &[u8]) -> Option<String> {
    let bytes = hex
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// `key, value, key, value...` as connection entries (undecodable ones left out).
fn decode_pairs(flat: &[Vec<u8>]) -> Vec<UserConn> {
    flat.chunks_exact(2)
        .filter_map(|kv| decode_conn(String::from_utf8_lossy(&kv[0]).into_owned(), &kv[1]))
        .collect()
}

/// The session scripts, loaded once per store.
pub(super) struct SessionScripts {
    claim_key: Script,
    remove_key: Script,
    refresh_key: Script,
    set_field: Script,
    remove_field: Script,
    admit_conn: Script,
    refresh_conn: Script,
    remove_conn: Script,
    set_rooms: Script,
    live_conns: Script,
}

impl SessionScripts {
    pub(super) fn new() -> Self {
        SessionScripts {
            claim_key: Script::new(CLAIM_KEY),
            remove_key: Script::new(REMOVE_KEY),
            refresh_key: Script::new(REFRESH_KEY),
            set_field: Script::new(SET_FIELD),
            remove_field: Script::new(REMOVE_FIELD),
            admit_conn: Script::new(&format!("{CONN_PARSE}{ADMIT_CONN}")),
            refresh_conn: Script::new(&format!("{CONN_PARSE}{REFRESH_CONN}")),
            remove_conn: Script::new(&format!("{CONN_PARSE}{REMOVE_CONN}")),
            set_rooms: Script::new(&format!("{CONN_PARSE}{SET_ROOMS}")),
            live_conns: Script::new(&format!("{CONN_PARSE}{LIVE_CONNS}")),
        }
    }
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

impl RedisStore {
    fn key_entry(&self, key: &str) -> String {
        format!("{}key:{{{key}}}", self.prefix)
    }

    fn mid_index(&self, mid: i64) -> String {
        format!("{}mid:{{{mid}}}", self.prefix)
    }

    fn user_conns_key(&self, mid: i64) -> String {
        format!("{}conns:{{{mid}}}", self.prefix)
    }

    async fn set_field(&self, mid: i64, key: &str, conn: &[u8]) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.sessions.set_field.prepare_invoke();
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
        let mut inv = self.sessions.remove_field.prepare_invoke();
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
}

/// What a claim of a key entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    Claimed { replaced: Option<Session> },
    Refused { holder: i64 },
}

/// What an admission into a user's entries did.
enum Admit {
    Admitted { kicked: Vec<UserConn> },
    Refused { held: usize },
}

/// The steps a connection's life is made of, each one script on one key (one cluster slot).
/// The tests of the key schema call them one at a time.
impl RedisStore {
    /// Claims a key entry for `session` (see [`KeyPolicy`]) and indexes it under its user.
    async fn claim_session(
        &self,
        session: &Session,
        policy: KeyPolicy,
    ) -> Result<Claim, StoreError> {
        let conn = session.conn.encode_to_vec();
        let mut c = self.conn.clone();
        let mut inv = self.sessions.claim_key.prepare_invoke();
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

    /// Records `session`, replacing whoever held its key (the key entry and the index only,
    /// no user entry): what the key schema's tests start from.
    pub async fn add_session(&self, session: &Session) -> Result<(), StoreError> {
        self.claim_session(session, KeyPolicy::AnyUser)
            .await
            .map(|_| ())
    }

    /// Removes the key entry if it still names `conn`, and its index field; says whether it
    /// removed the entry.
    pub async fn remove_session(
        &self,
        mid: i64,
        key: &str,
        conn: &ConnRef,
    ) -> Result<bool, StoreError> {
        let conn = conn.encode_to_vec();
        let mut c = self.conn.clone();
        let mut inv = self.sessions.remove_key.prepare_invoke();
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

    /// Renews (or re-creates) the key entry unless another connection holds it.
    pub async fn refresh_session(&self, session: &Session) -> Result<(), StoreError> {
        let conn = session.conn.encode_to_vec();
        let mut c = self.conn.clone();
        let mut inv = self.sessions.refresh_key.prepare_invoke();
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

    /// Records a user's connection entry within the limit, in one script.
    async fn admit_conn(
        &self,
        mid: i64,
        conn: &UserConn,
        limit: usize,
        kick_oldest: bool,
    ) -> Result<Admit, StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.sessions.admit_conn.prepare_invoke();
        inv.key(self.user_conns_key(mid))
            .arg(&conn.key)
            .arg(conn.conn.encode_to_vec())
            .arg(format!(
                "{}|{}",
                hex(&conn.platform),
                hex_rooms(&conn.rooms)
            ))
            .arg(limit)
            .arg(if kick_oldest { "1" } else { "0" })
            .arg(self.session_ttl_ms);
        let reply: Vec<Value> = self
            .run("HSET (user connections)", inv.invoke_async(&mut c))
            .await?;
        let mut reply = reply.into_iter();
        match reply.next() {
            Some(Value::Int(1)) => {}
            _ => {
                let held = match reply.next() {
                    Some(Value::Int(n)) => n as usize,
                    _ => limit,
                };
                return Ok(Admit::Refused { held });
            }
        }
        let bulk: Vec<Vec<u8>> = reply
            .filter_map(|v| match v {
                Value::BulkString(v) => Some(v),
                _ => None,
            })
            .collect();
        let kicked = decode_pairs(&bulk);
        Ok(Admit::Admitted { kicked })
    }

    /// Renews the user's connection entry naming `conn` (re-creates it when missing).
    async fn refresh_conn(&self, mid: i64, key: &str, conn: &ConnRef) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.sessions.refresh_conn.prepare_invoke();
        inv.key(self.user_conns_key(mid))
            .arg(key)
            .arg(conn.encode_to_vec())
            .arg(self.session_ttl_ms);
        self.run(
            "HSET (user connection refresh)",
            inv.invoke_async::<()>(&mut c),
        )
        .await
    }

    /// Removes the user's connection entry if it names `conn`; returns it.
    async fn remove_conn(
        &self,
        mid: i64,
        key: &str,
        conn: &ConnRef,
    ) -> Result<Option<UserConn>, StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.sessions.remove_conn.prepare_invoke();
        inv.key(self.user_conns_key(mid))
            .arg(key)
            .arg(conn.encode_to_vec());
        let removed: Option<Vec<u8>> = self
            .run("HDEL (user connection)", inv.invoke_async(&mut c))
            .await?;
        Ok(removed.and_then(|v| decode_conn(key.to_string(), &v)))
    }

    /// Takes back an admission whose key claim failed, and puts back the entries it had
    /// pushed out (nothing was done to them yet), so they stay counted.
    async fn unadmit(&self, session: &Session, kicked: &[UserConn]) {
        if session.mid <= 0 {
            return;
        }
        let mut undone = self
            .remove_conn(session.mid, &session.key, &session.conn)
            .await
            .map(|_| ());
        for gone in kicked {
            if undone.is_ok() {
                undone = self
                    .admit_conn(session.mid, gone, 0, false)
                    .await
                    .map(|_| ());
            }
        }
        if let Err(e) = undone {
            tracing::warn!(error = %e, "cannot take back a connection's admission");
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    /// The user's entry first (its script applies the limit), then the key (its script
    /// applies the policy); a refused key takes the admission back, putting back the entries
    /// it had pushed out. Kicked connections lose their sessions once the key is claimed.
    async fn connect(
        &self,
        session: &Session,
        platform: &str,
        room: &str,
        rules: Rules,
    ) -> Result<Connected, StoreError> {
        let entry = UserConn {
            key: session.key.clone(),
            conn: session.conn.clone(),
            platform: platform.to_string(),
            rooms: if room.is_empty() {
                Vec::new()
            } else {
                vec![room.to_string()]
            },
            connected_ms: 0,
        };
        let kicked = if session.mid > 0 {
            match self
                .admit_conn(session.mid, &entry, rules.limit, rules.kick_oldest)
                .await?
            {
                Admit::Admitted { kicked } => kicked,
                Admit::Refused { held } => return Ok(Connected::UserFull { held }),
            }
        } else {
            Vec::new()
        };
        let claim = match self.claim_session(session, rules.policy).await {
            Ok(claim) => claim,
            Err(e) => {
                self.unadmit(session, &kicked).await;
                return Err(e);
            }
        };
        let replaced = match claim {
            Claim::Claimed { replaced } => replaced,
            Claim::Refused { holder } => {
                self.unadmit(session, &kicked).await;
                return Ok(Connected::KeyHeld { holder });
            }
        };
        for gone in &kicked {
            // Nothing by key or user reaches it from now on, before it is closed.
            if let Err(e) = self
                .remove_session(session.mid, &gone.key, &gone.conn)
                .await
            {
                tracing::warn!(error = %e, "cannot remove a kicked connection's session");
            }
        }
        Ok(Connected::Admitted { replaced, kicked })
    }

    async fn disconnect(&self, session: &Session) -> Result<Option<UserConn>, StoreError> {
        let removed = self
            .remove_session(session.mid, &session.key, &session.conn)
            .await?;
        let entry = if session.mid > 0 {
            self.remove_conn(session.mid, &session.key, &session.conn)
                .await?
        } else {
            None
        };
        Ok(entry.or_else(|| {
            removed.then(|| UserConn {
                key: session.key.clone(),
                conn: session.conn.clone(),
                platform: String::new(),
                rooms: Vec::new(),
                connected_ms: 0,
            })
        }))
    }

    async fn refresh(&self, session: &Session) -> Result<(), StoreError> {
        self.refresh_session(session).await?;
        if session.mid > 0 {
            self.refresh_conn(session.mid, &session.key, &session.conn)
                .await?;
        }
        Ok(())
    }

    async fn set_rooms(
        &self,
        session: &Session,
        rooms: &[String],
    ) -> Result<Option<UserConn>, StoreError> {
        if session.mid <= 0 {
            return Ok(None);
        }
        let mut c = self.conn.clone();
        let mut inv = self.sessions.set_rooms.prepare_invoke();
        inv.key(self.user_conns_key(session.mid))
            .arg(&session.key)
            .arg(session.conn.encode_to_vec())
            .arg(hex_rooms(rooms));
        let value: Option<Vec<u8>> = self
            .run("HSET (user connection rooms)", inv.invoke_async(&mut c))
            .await?;
        Ok(value.and_then(|v| decode_conn(session.key.clone(), &v)))
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

    async fn user_conns(&self, mids: &[i64]) -> Result<Vec<Vec<UserConn>>, StoreError> {
        let reads = mids.iter().map(|mid| {
            let mut c = self.conn.clone();
            let mut inv = self.sessions.live_conns.prepare_invoke();
            inv.key(self.user_conns_key(*mid));
            async move { inv.invoke_async::<Vec<Vec<u8>>>(&mut c).await }
        });
        let all = join_all(reads);
        let results = self
            .run("HGETALL (user connections)", async { Ok(all.await) })
            .await?;
        let mut out = Vec::with_capacity(mids.len());
        for values in results {
            let values = values.map_err(|e| unavailable("HGETALL (user connections)", e))?;
            out.push(decode_pairs(&values));
        }
        // An entry counts only while its key's session still names it (not replaced by
        // another user's connection taking the key).
        let keys: Vec<String> = out.iter().flatten().map(|c| c.key.clone()).collect();
        let mut entries = self.get_entries(&keys).await?.into_iter();
        for (mid, conns) in mids.iter().zip(out.iter_mut()) {
            let held: Vec<bool> = conns
                .iter()
                .map(|c| {
                    entries
                        .next()
                        .flatten()
                        .as_deref()
                        .and_then(decode_entry)
                        .is_some_and(|(owner, conn)| owner == *mid && conn == c.conn)
                })
                .collect();
            let mut held = held.into_iter();
            conns.retain(|_| held.next().unwrap_or(false));
            conns.sort_by_key(|c| c.connected_ms);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_entry_round_trips_whatever_its_platform_and_rooms_hold() {
        let conn = ConnRef {
            comet: "c|1".into(),
            shard: 2,
            conn_id: 124, // '|' as a byte of the prost encoding
        };
        let rooms = vec!["live://1|2".to_string(), "chat://a,b".to_string()];
        for rooms in [rooms.clone(), rooms[..1].to_vec(), Vec::new()] {
            let value = format!("99|7|{}|{}|", hex("we|b ü"), hex_rooms(&rooms));
            let mut value = value.into_bytes();
            value.extend_from_slice(&conn.encode_to_vec());
            let got = decode_conn("k".into(), &value).unwrap();
            assert_eq!(
                got,
                UserConn {
                    key: "k".into(),
                    conn: conn.clone(),
                    platform: "we|b ü".into(),
                    rooms,
                    connected_ms: 7,
                }
            );
        }
        assert!(decode_conn("k".into(), b"garbage").is_none());
    }
}
