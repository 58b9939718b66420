//! The store seam: sessions (which connection holds which key, for which user), online counts
//! per comet shard, and the comet registry derived from those reports.
//!
//! Every session names the exact connection that owns it ([`ConnRef`]), so a late disconnect of
//! a replaced connection can never delete its successor's session (goim's race, reference §2.8).

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
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineReport {
    pub comet: CometInfo,
    pub shard: u32,
    pub conn_count: u32,
    pub ip_count: u32,
    pub rooms: BTreeMap<String, u32>,
}

/// A live comet as the registry sees it: its last info and its shards' sums.
#[derive(Debug, Clone, PartialEq)]
pub struct CometStatus {
    pub info: CometInfo,
    pub conn_count: u64,
    pub ip_count: u64,
    /// Unix time of the newest report, in milliseconds.
    pub updated_ms: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Sessions, online counts and the comet registry.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Records `session`; a previous session under the same key is replaced.
    async fn add_session(&self, session: &Session) -> Result<(), StoreError>;
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
}

/// Lifetimes the embedded store applies.
#[derive(Debug, Clone, Copy)]
pub struct StoreTtl {
    pub session: Duration,
    /// How long a shard's online report (and so its comet's registration) stays valid.
    pub online: Duration,
}

/// The in-process store used by the single-binary mode.
pub struct EmbeddedStore {
    ttl: StoreTtl,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<String, (Session, Instant)>,
    mids: HashMap<i64, HashSet<String>>,
    online: HashMap<(String, u32), (OnlineReport, Instant, u64)>,
}

impl EmbeddedStore {
    pub fn new(ttl: StoreTtl) -> Self {
        EmbeddedStore {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
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
    async fn add_session(&self, session: &Session) -> Result<(), StoreError> {
        let now = Instant::now();
        self.lock().insert(session, now + self.ttl.session);
        Ok(())
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
                    conn_count: 0,
                    ip_count: 0,
                    updated_ms: 0,
                });
            entry.conn_count += u64::from(report.conn_count);
            entry.ip_count += u64::from(report.ip_count);
            if *updated >= entry.updated_ms {
                entry.updated_ms = *updated;
                entry.info = report.comet.clone();
            }
        }
        Ok(by_id.into_values().collect())
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
            })
            .await
            .unwrap();
        }
        assert_eq!(s.room_counts().await.unwrap()["live://1"], 9);
        let comets = s.comets().await.unwrap();
        assert_eq!(comets.len(), 2);
        assert_eq!(comets[0].conn_count, 5);
    }
}
