//! Sessions in process: a key → session map with expiry times and a user → keys index.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imgate_shared::link::ConnRef;

use super::lock;
use crate::{Claim, KeyPolicy, Session, SessionStore, StoreError};

/// Expired sessions are dropped from the maps at most this often (reads skip them anyway).
const PURGE_EVERY: Duration = Duration::from_secs(5);

/// The embedded [`SessionStore`].
pub struct EmbeddedSessions {
    ttl: Duration,
    inner: Mutex<Inner>,
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

    fn store() -> EmbeddedSessions {
        EmbeddedSessions::new(Duration::from_secs(60))
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
        let s = EmbeddedSessions::new(Duration::from_millis(20));
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
}
