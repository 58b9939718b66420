//! The store seam: sessions (which connection holds which key, for which user), online counts
//! per comet shard, and the comet registry derived from those reports.
//!
//! Every session names the exact connection that owns it ([`ConnRef`]), so a late disconnect of
//! a replaced connection can never delete its successor's session (goim's race: docs/goim-compatibility.md, "Duplicate keys").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::link::{CometInfo, ConnRef};

/// One authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub mid: i64,
    pub key: String,
    pub conn: ConnRef,
}

/// One shard's online report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OnlineReport {
    pub comet: CometInfo,
    pub shard: u32,
    pub conn_count: u32,
    /// Distinct client addresses of the whole comet (the same in each of its shards' reports).
    pub ip_count: u32,
    pub rooms: BTreeMap<String, u32>,
    /// The shard's mean tick lag, in microseconds (`RenewOnline::lag_us`).
    pub lag_us: u32,
}

/// A live comet as the registry sees it: its last info and its shards' sums.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CometStatus {
    pub info: CometInfo,
    pub conn_count: u64,
    pub ip_count: u64,
    /// Unix time of the newest report, in milliseconds.
    pub updated_ms: u64,
    /// The largest tick lag among its shards' live reports, in microseconds.
    pub lag_us: u32,
}

/// A message kept in a user's inbox or a room's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// 1, 2, 3, … per user (or per room).
    pub seq: u64,
    pub op: i32,
    pub body: bytes::Bytes,
}

/// Where a user's inbox stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct InboxState {
    /// Sequence of the newest message ever stored (0: none).
    pub last_seq: u64,
    /// Everything up to here was acknowledged (or written to a client that does not ack).
    pub acked_seq: u64,
    /// Stored messages after `acked_seq` that are still kept (not trimmed or expired).
    pub pending: u64,
}

/// How many messages an inbox or a room history keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_messages: usize,
    pub ttl: Duration,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Who may take a connection key that a live session holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    /// Anyone: the newer connection replaces the holder, whoever its user (goim's model, the
    /// development mode).
    AnyUser,
    /// Only the holder's own user (signed-token deployments); another user is refused.
    SameUser,
}

/// What [`Store::claim_session`] did, decided in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The session now holds the key. `replaced` is the session that held it until now (the
    /// same connection re-claiming its key is not a replacement): that connection must be
    /// closed, as nothing will reach it under this key any more.
    Claimed { replaced: Option<Session> },
    /// A live session of another user (`holder`) holds the key; nothing was changed.
    Refused { holder: i64 },
}

/// Sessions, online counts and the comet registry.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Claims `session.key` for `session` in one atomic step: when a live session of another
    /// user holds the key and `policy` is [`KeyPolicy::SameUser`], refuses and changes
    /// nothing; otherwise records `session` and returns the session it replaced.
    async fn claim_session(
        &self,
        session: &Session,
        policy: KeyPolicy,
    ) -> Result<Claim, StoreError>;
    /// Records `session`, replacing whoever held the key ([`KeyPolicy::AnyUser`]).
    async fn add_session(&self, session: &Session) -> Result<(), StoreError> {
        self.claim_session(session, KeyPolicy::AnyUser)
            .await
            .map(|_| ())
    }
    /// Removes the session for `key` if it still belongs to `conn`; says whether it did.
    async fn remove_session(&self, mid: i64, key: &str, conn: &ConnRef)
        -> Result<bool, StoreError>;
    /// Extends the session's lifetime; re-creates it if it expired, unless another connection
    /// took the key in the meantime.
    async fn refresh_session(&self, session: &Session) -> Result<(), StoreError>;
    /// The live sessions for these keys (unknown keys are left out).
    async fn sessions_by_keys(&self, keys: &[String]) -> Result<Vec<Session>, StoreError>;
    /// The live sessions of these users, every device of each.
    async fn sessions_by_mids(&self, mids: &[i64]) -> Result<Vec<Session>, StoreError>;
    /// Stores a shard's report; it also keeps the comet in the registry.
    async fn report_online(&self, report: OnlineReport) -> Result<(), StoreError>;
    /// Cluster-wide count of every non-empty room.
    async fn room_counts(&self) -> Result<HashMap<String, u64>, StoreError>;
    /// Comets that reported recently.
    async fn comets(&self) -> Result<Vec<CometStatus>, StoreError>;

    /// Stores a message for user `mid` and returns its sequence (one more than the user's
    /// last); the inbox is then trimmed to its retention (count and age). The sequence never
    /// goes back while the inbox's state lives (it lives `inbox ttl` after the last write).
    async fn inbox_append(&self, mid: i64, op: i32, body: bytes::Bytes) -> Result<u64, StoreError>;
    /// Kept messages with `seq > after`, oldest first, at most `limit`. An `after` beyond the
    /// last sequence (the inbox expired and started again) reads from the start.
    async fn inbox_read(
        &self,
        mid: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// Everything up to `seq` was delivered; the acknowledged point never moves back, and
    /// acknowledged messages are dropped.
    async fn inbox_ack(&self, mid: i64, seq: u64) -> Result<(), StoreError>;
    /// The user's inbox state.
    async fn inbox_state(&self, mid: i64) -> Result<InboxState, StoreError>;
    /// Adds a message to a room's recent history and returns its sequence in that room.
    async fn room_history_append(
        &self,
        room: &str,
        op: i32,
        body: bytes::Bytes,
    ) -> Result<u64, StoreError>;
    /// Kept room messages with `seq > after`, oldest first, at most `limit`.
    async fn room_history_read(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;
}

/// Lifetimes the embedded store applies.
#[derive(Debug, Clone, Copy)]
pub struct StoreTtl {
    pub session: Duration,
    /// How long a shard's online report (and so its comet's registration) stays valid.
    pub online: Duration,
}

impl Retention {
    /// The defaults of `store.inbox_*` in the configuration.
    pub const INBOX: Retention = Retention {
        max_messages: 100,
        ttl: Duration::from_secs(72 * 3600),
    };
    /// The defaults of `store.room_history_*` in the configuration.
    pub const ROOM_HISTORY: Retention = Retention {
        max_messages: 100,
        ttl: Duration::from_secs(300),
    };
}

/// The in-process store used by the single-binary mode.
pub struct EmbeddedStore {
    ttl: StoreTtl,
    inbox: Retention,
    room_history: Retention,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<String, (Session, Instant)>,
    mids: HashMap<i64, HashSet<String>>,
    online: HashMap<(String, u32), (OnlineReport, Instant, u64)>,
    inboxes: HashMap<i64, Log>,
    rooms: HashMap<String, Log>,
}

/// A sequenced, trimmed message log: a user's inbox or a room's history.
#[derive(Default)]
struct Log {
    last_seq: u64,
    acked_seq: u64,
    /// Kept messages, oldest first, with the time they were stored.
    messages: std::collections::VecDeque<(StoredMessage, Instant)>,
    /// The log (and its sequence) is forgotten after this.
    expires: Option<Instant>,
}

impl Log {
    fn trim(&mut self, keep: Retention, now: Instant) {
        while self.messages.len() > keep.max_messages {
            self.messages.pop_front();
        }
        while self
            .messages
            .front()
            .is_some_and(|(m, at)| m.seq <= self.acked_seq || now.duration_since(*at) >= keep.ttl)
        {
            self.messages.pop_front();
        }
    }

    fn append(&mut self, op: i32, body: bytes::Bytes, keep: Retention, now: Instant) -> u64 {
        self.last_seq += 1;
        let message = StoredMessage {
            seq: self.last_seq,
            op,
            body,
        };
        self.messages.push_back((message, now));
        self.expires = Some(now + keep.ttl);
        self.trim(keep, now);
        self.last_seq
    }

    fn read(
        &mut self,
        after: u64,
        limit: usize,
        keep: Retention,
        now: Instant,
    ) -> Vec<StoredMessage> {
        self.trim(keep, now);
        let after = if after > self.last_seq { 0 } else { after };
        self.messages
            .iter()
            .filter(|(m, _)| m.seq > after)
            .take(limit)
            .map(|(m, _)| m.clone())
            .collect()
    }
}

/// The live log under `id`, if there is one (a log whose lifetime ran out is removed).
fn existing_log<'a, K: std::hash::Hash + Eq>(
    logs: &'a mut HashMap<K, Log>,
    id: &K,
    now: Instant,
) -> Option<&'a mut Log> {
    if logs.get(id)?.expires.is_some_and(|e| e <= now) {
        logs.remove(id);
        return None;
    }
    logs.get_mut(id)
}

/// The live log under `id`, created if missing; only appends create logs, so reads of unknown
/// users or rooms cost no memory.
fn live_log<K: std::hash::Hash + Eq>(logs: &mut HashMap<K, Log>, id: K, now: Instant) -> &mut Log {
    let log = logs.entry(id).or_default();
    if log.expires.is_some_and(|e| e <= now) {
        *log = Log::default();
    }
    log
}

impl EmbeddedStore {
    pub fn new(ttl: StoreTtl) -> Self {
        EmbeddedStore {
            ttl,
            inbox: Retention::INBOX,
            room_history: Retention::ROOM_HISTORY,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Sets how much inboxes and room histories keep.
    pub fn with_retention(mut self, inbox: Retention, room_history: Retention) -> Self {
        self.inbox = inbox;
        self.room_history = room_history;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave these maps half-updated in a way that
        // matters more than losing the whole store, so recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn live_session(&self, key: &str, now: Instant) -> Option<&Session> {
        self.keys
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(s, _)| s)
    }

    fn unlink_mid(&mut self, mid: i64, key: &str) {
        if let Some(set) = self.mids.get_mut(&mid) {
            set.remove(key);
            if set.is_empty() {
                self.mids.remove(&mid);
            }
        }
    }

    fn insert(&mut self, session: &Session, expires: Instant) {
        if let Some((old, _)) = self.keys.get(&session.key) {
            if old.mid != session.mid {
                let (mid, key) = (old.mid, old.key.clone());
                self.unlink_mid(mid, &key);
            }
        }
        if session.mid > 0 {
            self.mids
                .entry(session.mid)
                .or_default()
                .insert(session.key.clone());
        }
        self.keys
            .insert(session.key.clone(), (session.clone(), expires));
    }

    fn purge_expired(&mut self, now: Instant) {
        let expired: Vec<(i64, String)> = self
            .keys
            .iter()
            .filter(|(_, (_, exp))| *exp <= now)
            .map(|(k, (s, _))| (s.mid, k.clone()))
            .collect();
        for (mid, key) in expired {
            self.keys.remove(&key);
            self.unlink_mid(mid, &key);
        }
        self.online.retain(|_, (_, exp, _)| *exp > now);
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn claim_session(
        &self,
        session: &Session,
        policy: KeyPolicy,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if policy == KeyPolicy::SameUser {
            if let Some(holder) = inner
                .live_session(&session.key, now)
                .filter(|s| s.mid != session.mid)
            {
                return Ok(Claim::Refused { holder: holder.mid });
            }
        }
        // An expired entry not yet purged still names a connection that may be open: it is
        // replaced as well, so it gets closed.
        let replaced = inner
            .keys
            .get(&session.key)
            .map(|(s, _)| s.clone())
            .filter(|s| s.conn != session.conn);
        inner.insert(session, now + self.ttl.session);
        Ok(Claim::Claimed { replaced })
    }

    async fn remove_session(
        &self,
        mid: i64,
        key: &str,
        conn: &ConnRef,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let owned = inner.keys.get(key).is_some_and(|(s, _)| &s.conn == conn);
        if owned {
            inner.keys.remove(key);
            inner.unlink_mid(mid, key);
        }
        Ok(owned)
    }

    async fn refresh_session(&self, session: &Session) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let taken_by_other = inner
            .live_session(&session.key, now)
            .is_some_and(|s| s.conn != session.conn);
        if !taken_by_other {
            inner.insert(session, now + self.ttl.session);
        }
        Ok(())
    }

    async fn sessions_by_keys(&self, keys: &[String]) -> Result<Vec<Session>, StoreError> {
        let now = Instant::now();
        let inner = self.lock();
        Ok(keys
            .iter()
            .filter_map(|k| inner.live_session(k, now).cloned())
            .collect())
    }

    async fn sessions_by_mids(&self, mids: &[i64]) -> Result<Vec<Session>, StoreError> {
        let now = Instant::now();
        let inner = self.lock();
        let mut out = Vec::new();
        for mid in mids {
            for key in inner.mids.get(mid).into_iter().flatten() {
                if let Some(s) = inner.live_session(key, now).filter(|s| s.mid == *mid) {
                    out.push(s.clone());
                }
            }
        }
        Ok(out)
    }

    async fn report_online(&self, report: OnlineReport) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge_expired(now);
        let id = (report.comet.id.clone(), report.shard);
        inner
            .online
            .insert(id, (report, now + self.ttl.online, unix_ms()));
        Ok(())
    }

    async fn room_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        let now = Instant::now();
        let inner = self.lock();
        let mut counts = HashMap::new();
        for (report, _, _) in inner.online.values().filter(|(_, exp, _)| *exp > now) {
            for (room, n) in &report.rooms {
                *counts.entry(room.clone()).or_insert(0) += u64::from(*n);
            }
        }
        Ok(counts)
    }

    async fn comets(&self) -> Result<Vec<CometStatus>, StoreError> {
        let now = Instant::now();
        let inner = self.lock();
        let mut by_id: BTreeMap<&str, CometStatus> = BTreeMap::new();
        for (report, _, updated) in inner.online.values().filter(|(_, exp, _)| *exp > now) {
            let entry = by_id
                .entry(&report.comet.id)
                .or_insert_with(|| CometStatus {
                    info: report.comet.clone(),
                    ..Default::default()
                });
            entry.conn_count += u64::from(report.conn_count);
            // Each shard reports its comet's distinct addresses: one figure per comet.
            entry.ip_count = entry.ip_count.max(u64::from(report.ip_count));
            entry.lag_us = entry.lag_us.max(report.lag_us);
            if *updated >= entry.updated_ms {
                entry.updated_ms = *updated;
                entry.info = report.comet.clone();
            }
        }
        Ok(by_id.into_values().collect())
    }

    async fn inbox_append(&self, mid: i64, op: i32, body: bytes::Bytes) -> Result<u64, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(live_log(&mut inner.inboxes, mid, now).append(op, body, self.inbox, now))
    }

    async fn inbox_read(
        &self,
        mid: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(existing_log(&mut inner.inboxes, &mid, now)
            .map(|log| log.read(after, limit, self.inbox, now))
            .unwrap_or_default())
    }

    async fn inbox_ack(&self, mid: i64, seq: u64) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(log) = existing_log(&mut inner.inboxes, &mid, now) {
            log.acked_seq = log.acked_seq.max(seq.min(log.last_seq));
            log.trim(self.inbox, now);
        }
        Ok(())
    }

    async fn inbox_state(&self, mid: i64) -> Result<InboxState, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(log) = existing_log(&mut inner.inboxes, &mid, now) else {
            return Ok(InboxState::default());
        };
        log.trim(self.inbox, now);
        Ok(InboxState {
            last_seq: log.last_seq,
            acked_seq: log.acked_seq,
            pending: log.messages.len() as u64,
        })
    }

    async fn room_history_append(
        &self,
        room: &str,
        op: i32,
        body: bytes::Bytes,
    ) -> Result<u64, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(live_log(&mut inner.rooms, room.to_string(), now).append(
            op,
            body,
            self.room_history,
            now,
        ))
    }

    async fn room_history_read(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(existing_log(&mut inner.rooms, &room.to_string(), now)
            .map(|log| log.read(after, limit, self.room_history, now))
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64) -> ConnRef {
        ConnRef {
            comet: "c1".into(),
            shard: 0,
            conn_id: id,
        }
    }

    fn store() -> EmbeddedStore {
        EmbeddedStore::new(StoreTtl {
            session: Duration::from_secs(60),
            online: Duration::from_secs(60),
        })
    }

    #[tokio::test]
    async fn late_disconnect_of_replaced_connection_keeps_the_new_session() {
        let s = store();
        let old = Session {
            mid: 1,
            key: "k".into(),
            conn: conn(1),
        };
        let new = Session {
            mid: 1,
            key: "k".into(),
            conn: conn(2),
        };
        s.add_session(&old).await.unwrap();
        s.add_session(&new).await.unwrap();
        assert!(!s.remove_session(1, "k", &conn(1)).await.unwrap());
        assert_eq!(s.sessions_by_mids(&[1]).await.unwrap(), vec![new.clone()]);
        assert!(s.remove_session(1, "k", &conn(2)).await.unwrap());
        assert!(s.sessions_by_keys(&["k".into()]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn key_taken_by_another_user_leaves_the_first_users_index() {
        let s = store();
        s.add_session(&Session {
            mid: 1,
            key: "k".into(),
            conn: conn(1),
        })
        .await
        .unwrap();
        s.add_session(&Session {
            mid: 2,
            key: "k".into(),
            conn: conn(2),
        })
        .await
        .unwrap();
        assert!(s.sessions_by_mids(&[1]).await.unwrap().is_empty());
        assert_eq!(s.sessions_by_mids(&[2]).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_claim_replaces_the_same_user_and_refuses_another_only_when_asked() {
        let s = store();
        let session = |mid, id| Session {
            mid,
            key: "k".into(),
            conn: conn(id),
        };
        assert_eq!(
            s.claim_session(&session(1, 1), KeyPolicy::SameUser)
                .await
                .unwrap(),
            Claim::Claimed { replaced: None }
        );
        assert_eq!(
            s.claim_session(&session(1, 2), KeyPolicy::SameUser)
                .await
                .unwrap(),
            Claim::Claimed {
                replaced: Some(session(1, 1))
            }
        );
        assert_eq!(
            s.claim_session(&session(2, 3), KeyPolicy::SameUser)
                .await
                .unwrap(),
            Claim::Refused { holder: 1 }
        );
        assert_eq!(
            s.sessions_by_keys(&["k".into()]).await.unwrap(),
            vec![session(1, 2)],
            "a refused claim changes nothing"
        );
        // goim's model: another user takes the key over, and is told whom it replaced.
        assert_eq!(
            s.claim_session(&session(2, 3), KeyPolicy::AnyUser)
                .await
                .unwrap(),
            Claim::Claimed {
                replaced: Some(session(1, 2))
            }
        );
        assert!(s.sessions_by_mids(&[1]).await.unwrap().is_empty());
        // Re-claiming with the same connection replaces nobody.
        assert_eq!(
            s.claim_session(&session(2, 3), KeyPolicy::SameUser)
                .await
                .unwrap(),
            Claim::Claimed { replaced: None }
        );
    }

    /// Two users claiming one fresh key at the same instant must not both get it. Many claims
    /// race on a multi-threaded runtime; per key exactly one user wins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claims_of_one_key_by_two_users_admit_exactly_one() {
        let s = std::sync::Arc::new(store());
        for round in 0..200u64 {
            let key = format!("fresh-{round}");
            let claims: Vec<_> = (0..2u64)
                .map(|user| {
                    let s = s.clone();
                    let session = Session {
                        mid: user as i64 + 1,
                        key: key.clone(),
                        conn: conn(round * 2 + user),
                    };
                    tokio::spawn(async move {
                        s.claim_session(&session, KeyPolicy::SameUser)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut won = 0;
            for claim in claims {
                if let Claim::Claimed { replaced } = claim.await.unwrap() {
                    assert_eq!(replaced, None);
                    won += 1;
                }
            }
            assert_eq!(won, 1, "round {round}");
        }
    }

    #[tokio::test]
    async fn sessions_expire_and_refresh_recreates_them() {
        let s = EmbeddedStore::new(StoreTtl {
            session: Duration::from_millis(20),
            online: Duration::from_secs(1),
        });
        let sess = Session {
            mid: 3,
            key: "k3".into(),
            conn: conn(1),
        };
        s.add_session(&sess).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(s.sessions_by_mids(&[3]).await.unwrap().is_empty());
        s.refresh_session(&sess).await.unwrap();
        assert_eq!(s.sessions_by_mids(&[3]).await.unwrap(), vec![sess]);
    }

    #[tokio::test]
    async fn inbox_sequences_reads_acks_and_trims() {
        let keep = Retention {
            max_messages: 3,
            ttl: Duration::from_secs(60),
        };
        let s = store().with_retention(keep, keep);
        for i in 1..=5u64 {
            assert_eq!(
                s.inbox_append(7, 1000, bytes::Bytes::from(i.to_string()))
                    .await
                    .unwrap(),
                i
            );
        }
        // Trimmed to the newest 3.
        let seqs = |v: Vec<StoredMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(s.inbox_read(7, 0, 10).await.unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(s.inbox_read(7, 3, 1).await.unwrap()), vec![4]);
        s.inbox_ack(7, 4).await.unwrap();
        s.inbox_ack(7, 2).await.unwrap();
        assert_eq!(
            s.inbox_state(7).await.unwrap(),
            InboxState {
                last_seq: 5,
                acked_seq: 4,
                pending: 1
            }
        );
        // An `after` past the end (the inbox started again) reads from the start.
        assert_eq!(seqs(s.inbox_read(7, 99, 10).await.unwrap()), vec![5]);
        // Unknown users cost nothing and read as empty.
        assert_eq!(s.inbox_state(8).await.unwrap(), InboxState::default());
        s.inbox_ack(8, 10).await.unwrap();
        assert_eq!(s.inbox_append(8, 1, bytes::Bytes::new()).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn inbox_and_room_history_expire() {
        let keep = Retention {
            max_messages: 10,
            ttl: Duration::from_millis(30),
        };
        let s = store().with_retention(keep, keep);
        s.inbox_append(1, 1, bytes::Bytes::new()).await.unwrap();
        s.room_history_append("live://1", 1, bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(
            s.room_history_read("live://1", 0, 10).await.unwrap().len(),
            1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.inbox_state(1).await.unwrap(), InboxState::default());
        assert!(s
            .room_history_read("live://1", 0, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.room_history_append("live://1", 1, bytes::Bytes::new())
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn room_counts_sum_shards_and_comets() {
        let s = store();
        let info = |id: &str| CometInfo {
            id: id.into(),
            ..Default::default()
        };
        for (comet, shard, n) in [("a", 0, 2), ("a", 1, 3), ("b", 0, 4)] {
            s.report_online(OnlineReport {
                comet: info(comet),
                shard,
                conn_count: n,
                ip_count: 1,
                rooms: BTreeMap::from([("live://1".to_string(), n)]),
                lag_us: n * 100,
            })
            .await
            .unwrap();
        }
        assert_eq!(s.room_counts().await.unwrap()["live://1"], 9);
        let comets = s.comets().await.unwrap();
        assert_eq!(comets.len(), 2);
        assert_eq!(comets[0].conn_count, 5);
        assert_eq!(
            comets[0].ip_count, 1,
            "addresses are the comet's, not summed"
        );
        assert_eq!(
            (comets[0].lag_us, comets[1].lag_us),
            (300, 400),
            "a comet's lag is its busiest shard's"
        );
    }
}
