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

    fn user_conn(key: &str, id: u64) -> UserConn {
        UserConn {
            key: key.into(),
            conn: conn(id),
            platform: "web".into(),
            room: "live://1".into(),
            connected_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_users_connections_are_limited_and_the_oldest_kicked_when_asked() {
        let s = store();
        for (i, key) in ["a", "b"].into_iter().enumerate() {
            let admitted = s.admit_conn(1, &user_conn(key, i as u64), 2, false).await;
            assert_eq!(admitted.unwrap(), Admit::Admitted { kicked: vec![] });
        }
        assert_eq!(
            s.admit_conn(1, &user_conn("c", 9), 2, false).await.unwrap(),
            Admit::Refused { held: 2 }
        );
        // The same key reconnecting replaces its entry, it is not one more.
        assert!(matches!(
            s.admit_conn(1, &user_conn("a", 5), 2, false).await.unwrap(),
            Admit::Admitted { .. }
        ));
        let Admit::Admitted { kicked } =
            s.admit_conn(1, &user_conn("c", 6), 2, true).await.unwrap()
        else {
            panic!("refused")
        };
        assert_eq!(kicked.len(), 1);
        assert_eq!(kicked[0].key, "b", "the oldest goes");
        let keys: Vec<String> = s.user_conns(&[1]).await.unwrap()[0]
            .iter()
            .map(|c| c.key.clone())
            .collect();
        assert_eq!(keys, ["a", "c"]);
        // Removal compares the connection.
        assert_eq!(s.remove_conn(1, "a", &conn(0)).await.unwrap(), None);
        assert_eq!(
            s.remove_conn(1, "a", &conn(5))
                .await
                .unwrap()
                .map(|c| c.platform),
            Some("web".into())
        );
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
