//! Sessions in process: a key → session map with expiry times and a user → keys index.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imgate_shared::link::ConnRef;

use super::lock;
use crate::{Admit, Claim, KeyPolicy, Session, SessionStore, StoreError, UserConn};

/// Expired sessions are dropped from the maps at most this often (reads skip them anyway).
const PURGE_EVERY: Duration = Duration::from_secs(5);

/// The embedded [`SessionStore`].
pub struct EmbeddedSessions {
    ttl: Duration,
    inner: Mutex<Inner>,
    /// Each user's connections (presence and the per-user limit): key → entry, expiry.
    conns: Mutex<HashMap<i64, UserConns>>,
    /// When the users' expired connection entries are next dropped (a user who never comes
    /// back, on a comet that died without reporting disconnects, leaves nothing behind).
    next_conns_purge: Mutex<Instant>,
}

/// One user's connection entries: key → entry and when it expires.
type UserConns = HashMap<String, (UserConn, Instant)>;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Inner {
    keys: HashMap<String, (Session, Instant)>,
    mids: HashMap<i64, HashSet<String>>,
    next_purge: Instant,
}

impl EmbeddedSessions {
    /// Sessions live `ttl` after their last claim or refresh.
    pub fn new(ttl: Duration) -> Self {
        EmbeddedSessions {
            ttl,
            inner: Mutex::new(Inner {
                keys: HashMap::new(),
                mids: HashMap::new(),
                next_purge: Instant::now() + PURGE_EVERY,
            }),
            conns: Mutex::new(HashMap::new()),
            next_conns_purge: Mutex::new(Instant::now() + PURGE_EVERY),
        }
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

    /// Drops expired sessions, at most every [`PURGE_EVERY`].
    fn purge_expired(&mut self, now: Instant) {
        if now < self.next_purge {
            return;
        }
        self.next_purge = now + PURGE_EVERY;
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
    }
}

#[async_trait::async_trait]
impl SessionStore for EmbeddedSessions {
    async fn claim_session(
        &self,
        session: &Session,
        policy: KeyPolicy,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
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
        inner.insert(session, now + self.ttl);
        inner.purge_expired(now);
        Ok(Claim::Claimed { replaced })
    }

    async fn remove_session(
        &self,
        mid: i64,
        key: &str,
        conn: &ConnRef,
    ) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        let owned = inner.keys.get(key).is_some_and(|(s, _)| &s.conn == conn);
        if owned {
            inner.keys.remove(key);
            inner.unlink_mid(mid, key);
        }
        Ok(owned)
    }

    async fn refresh_session(&self, session: &Session) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let taken_by_other = inner
            .live_session(&session.key, now)
            .is_some_and(|s| s.conn != session.conn);
        if !taken_by_other {
            inner.insert(session, now + self.ttl);
        }
        inner.purge_expired(now);
        Ok(())
    }

    async fn sessions_by_keys(&self, keys: &[String]) -> Result<Vec<Session>, StoreError> {
        let now = Instant::now();
        let inner = lock(&self.inner);
        Ok(keys
            .iter()
            .filter_map(|k| inner.live_session(k, now).cloned())
            .collect())
    }

    async fn sessions_by_mids(&self, mids: &[i64]) -> Result<Vec<Session>, StoreError> {
        let now = Instant::now();
        let inner = lock(&self.inner);
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

    async fn admit_conn(
        &self,
        mid: i64,
        conn: &UserConn,
        limit: usize,
        kick_oldest: bool,
    ) -> Result<Admit, StoreError> {
        let now = Instant::now();
        let mut conns = lock(&self.conns);
        {
            let mut next = lock(&self.next_conns_purge);
            if now >= *next {
                *next = now + PURGE_EVERY;
                conns.retain(|_, user| {
                    user.retain(|_, (_, exp)| *exp > now);
                    !user.is_empty()
                });
            }
        }
        let user = conns.entry(mid).or_default();
        user.retain(|_, (_, exp)| *exp > now);
        let mut others: Vec<&UserConn> = user
            .iter()
            .filter(|(k, _)| **k != conn.key)
            .map(|(_, (c, _))| c)
            .collect();
        let mut kicked = Vec::new();
        if limit > 0 && others.len() >= limit {
            if !kick_oldest {
                return Ok(Admit::Refused { held: others.len() });
            }
            others.sort_by_key(|c| c.connected_ms);
            kicked = others[..others.len() + 1 - limit]
                .iter()
                .map(|c| (*c).clone())
                .collect();
            for gone in &kicked {
                user.remove(&gone.key);
            }
        }
        let mut entry = conn.clone();
        // Strictly increasing per user, so "oldest" is well defined within a millisecond.
        let newest = user
            .values()
            .map(|(c, _)| c.connected_ms)
            .max()
            .unwrap_or(0);
        entry.connected_ms = unix_ms().max(newest + 1);
        user.insert(conn.key.clone(), (entry, now + self.ttl));
        Ok(Admit::Admitted { kicked })
    }

    async fn refresh_conn(&self, mid: i64, key: &str, conn: &ConnRef) -> Result<(), StoreError> {
        let expires = Instant::now() + self.ttl;
        let mut conns = lock(&self.conns);
        let user = conns.entry(mid).or_default();
        match user.get_mut(key) {
            Some((c, exp)) if &c.conn == conn => *exp = expires,
            Some(_) => {}
            None => {
                let newest = user
                    .values()
                    .map(|(c, _)| c.connected_ms)
                    .max()
                    .unwrap_or(0);
                let entry = UserConn {
                    key: key.to_string(),
                    conn: conn.clone(),
                    platform: String::new(),
                    room: String::new(),
                    connected_ms: unix_ms().max(newest + 1),
                };
                user.insert(key.to_string(), (entry, expires));
            }
        }
        Ok(())
    }

    async fn remove_conn(
        &self,
        mid: i64,
        key: &str,
        conn: &ConnRef,
    ) -> Result<Option<UserConn>, StoreError> {
        let mut conns = lock(&self.conns);
        let Some(user) = conns.get_mut(&mid) else {
            return Ok(None);
        };
        if !user.get(key).is_some_and(|(c, _)| &c.conn == conn) {
            return Ok(None);
        }
        let removed = user.remove(key).map(|(c, _)| c);
        if user.is_empty() {
            conns.remove(&mid);
        }
        Ok(removed)
    }

    async fn user_conns(&self, mids: &[i64]) -> Result<Vec<Vec<UserConn>>, StoreError> {
        let now = Instant::now();
        let conns = lock(&self.conns);
        Ok(mids
            .iter()
            .map(|mid| {
                let mut live: Vec<UserConn> = conns
                    .get(mid)
                    .into_iter()
                    .flatten()
                    .filter(|(_, (_, exp))| *exp > now)
                    .map(|(_, (c, _))| c.clone())
                    .collect();
                live.sort_by_key(|c| c.connected_ms);
                live
            })
            .collect())
    }
}
