//! The stores logic uses, wrapped so that every failed call is counted by operation, and the
//! inbox traffic by message (`imgate_store_errors_total{op}`, `imgate_inbox_stored_total`,
//! `imgate_inbox_resent_total`). The wrappers only count; they change no result.

use std::sync::Arc;

use bytes::Bytes;
use imgate_shared::counters::Counter;
use imgate_shared::link::ConnRef;
use imgate_store::{
    Admit, Claim, CometStatus, InboxState, KeyPolicy, MessageStore, OnlineReport, RegistryStore,
    Session, SessionStore, StoreError, StoredMessage, Stores, UserConn,
};

/// The store operations logic calls, in the order of [`StoreCounters::errors`].
pub(crate) const OPS: [&str; 18] = [
    "claim_session",
    "add_session",
    "remove_session",
    "refresh_session",
    "sessions_by_keys",
    "sessions_by_mids",
    "admit_conn",
    "refresh_conn",
    "remove_conn",
    "user_conns",
    "report_online",
    "room_counts",
    "comets",
    "inbox_append",
    "inbox_read",
    "inbox_ack",
    "inbox_state",
    "room_history",
];

/// What the wrappers count.
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    /// Failed calls, by operation (indexes of [`OPS`]).
    pub errors: [Counter; OPS.len()],
    /// Messages appended to inboxes.
    pub inbox_stored: Counter,
    /// Stored messages read back from inboxes and room histories to (re)send to clients.
    pub inbox_resent: Counter,
}

impl StoreCounters {
    fn count<T>(&self, op: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            if let Some(i) = OPS.iter().position(|&o| o == op) {
                self.errors[i].inc();
            }
        }
        result
    }
}

struct Counted<S: ?Sized> {
    inner: Arc<S>,
    counters: Arc<StoreCounters>,
}

/// `stores` with every call counted in `counters`.
pub(crate) fn wrap(stores: Stores, counters: &Arc<StoreCounters>) -> Stores {
    Stores {
        sessions: Arc::new(Counted {
            inner: stores.sessions,
            counters: counters.clone(),
        }),
        registry: Arc::new(Counted {
            inner: stores.registry,
            counters: counters.clone(),
        }),
        messages: Arc::new(Counted {
            inner: stores.messages,
            counters: counters.clone(),
        }),
    }
}

#[async_trait::async_trait]
impl SessionStore for Counted<dyn SessionStore> {
    async fn claim_session(
        &self,
        session: &Session,
        policy: KeyPolicy,
    ) -> Result<Claim, StoreError> {
        let r = self.inner.claim_session(session, policy).await;
        self.counters.count("claim_session", r)
    }
    async fn add_session(&self, session: &Session) -> Result<(), StoreError> {
        let r = self.inner.add_session(session).await;
        self.counters.count("add_session", r)
    }
    async fn remove_session(
        &self,
        mid: i64,
        key: &str,
        conn: &ConnRef,
    ) -> Result<bool, StoreError> {
        let r = self.inner.remove_session(mid, key, conn).await;
        self.counters.count("remove_session", r)
    }
    async fn refresh_session(&self, session: &Session) -> Result<(), StoreError> {
        let r = self.inner.refresh_session(session).await;
        self.counters.count("refresh_session", r)
    }
    async fn sessions_by_keys(&self, keys: &[String]) -> Result<Vec<Session>, StoreError> {
        let r = self.inner.sessions_by_keys(keys).await;
        self.counters.count("sessions_by_keys", r)
    }
    async fn sessions_by_mids(&self, mids: &[i64]) -> Result<Vec<Session>, StoreError> {
        let r = self.inner.sessions_by_mids(mids).await;
        self.counters.count("sessions_by_mids", r)
    }
    async fn admit_conn(
        &self,
        mid: i64,
        conn: &UserConn,
        limit: usize,
        kick_oldest: bool,
    ) -> Result<Admit, StoreError> {
        let r = self.inner.admit_conn(mid, conn, limit, kick_oldest).await;
        self.counters.count("admit_conn", r)
    }
    async fn refresh_conn(&self, mid: i64, key: &str, conn: &ConnRef) -> Result<(), StoreError> {
        let r = self.inner.refresh_conn(mid, key, conn).await;
        self.counters.count("refresh_conn", r)
    }
    async fn remove_conn(
        &self,
        mid: i64,
        key: &str,
        conn: &ConnRef,
    ) -> Result<Option<UserConn>, StoreError> {
        let r = self.inner.remove_conn(mid, key, conn).await;
        self.counters.count("remove_conn", r)
    }
    async fn user_conns(&self, mids: &[i64]) -> Result<Vec<Vec<UserConn>>, StoreError> {
        let r = self.inner.user_conns(mids).await;
        self.counters.count("user_conns", r)
    }
}

#[async_trait::async_trait]
impl RegistryStore for Counted<dyn RegistryStore> {
    async fn report_online(&self, report: OnlineReport) -> Result<(), StoreError> {
        let r = self.inner.report_online(report).await;
        self.counters.count("report_online", r)
    }
    async fn room_counts(&self) -> Result<imgate_store::RoomTotals, StoreError> {
        let r = self.inner.room_counts().await;
        self.counters.count("room_counts", r)
    }
    async fn comets(&self) -> Result<Vec<CometStatus>, StoreError> {
        let r = self.inner.comets().await;
        self.counters.count("comets", r)
    }
}

#[async_trait::async_trait]
impl MessageStore for Counted<dyn MessageStore> {
    async fn inbox_append(&self, mid: i64, op: i32, body: Bytes) -> Result<u64, StoreError> {
        let r = self.inner.inbox_append(mid, op, body).await;
        if r.is_ok() {
            self.counters.inbox_stored.inc();
        }
        self.counters.count("inbox_append", r)
    }
    async fn inbox_read(
        &self,
        mid: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let r = self.inner.inbox_read(mid, after, limit).await;
        if let Ok(messages) = &r {
            self.counters.inbox_resent.add(messages.len() as u64);
        }
        self.counters.count("inbox_read", r)
    }
    async fn inbox_ack(&self, mid: i64, seq: u64) -> Result<(), StoreError> {
        let r = self.inner.inbox_ack(mid, seq).await;
        self.counters.count("inbox_ack", r)
    }
    async fn inbox_state(&self, mid: i64) -> Result<InboxState, StoreError> {
        let r = self.inner.inbox_state(mid).await;
        self.counters.count("inbox_state", r)
    }
    async fn room_history_append(
        &self,
        room: &str,
        op: i32,
        body: Bytes,
    ) -> Result<u64, StoreError> {
        let r = self.inner.room_history_append(room, op, body).await;
        self.counters.count("room_history", r)
    }
    async fn room_history_read(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let r = self.inner.room_history_read(room, after, limit).await;
        if let Ok(messages) = &r {
            self.counters.inbox_resent.add(messages.len() as u64);
        }
        self.counters.count("room_history", r)
    }
}
