//! The stores logic uses, wrapped so that every failed call is counted by operation, and the
//! inbox traffic by message (`imgate_store_errors_total{op}`, `imgate_inbox_stored_total`,
//! `imgate_inbox_resent_total`). The wrappers only count; they change no result.

use std::sync::Arc;

use bytes::Bytes;
use imgate_shared::counters::Counter;
use imgate_store::{
    CometStatus, Connected, InboxState, MessageStore, OnlineReport, RegistryStore, Rules, Session,
    SessionStore, StoreError, StoredMessage, Stores, UserConn,
};

/// The store operations logic calls, in the order of [`StoreCounters::errors`].
pub(crate) const OPS: [&str; 15] = [
    "connect",
    "disconnect",
    "refresh",
    "set_rooms",
    "sessions_by_keys",
    "sessions_by_mids",
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
    async fn connect(
        &self,
        session: &Session,
        platform: &str,
        room: &str,
        rules: Rules,
    ) -> Result<Connected, StoreError> {
        let r = self.inner.connect(session, platform, room, rules).await;
        self.counters.count("connect", r)
    }
    async fn disconnect(&self, session: &Session) -> Result<Option<UserConn>, StoreError> {
        let r = self.inner.disconnect(session).await;
        self.counters.count("disconnect", r)
    }
    async fn refresh(&self, session: &Session) -> Result<(), StoreError> {
        let r = self.inner.refresh(session).await;
        self.counters.count("refresh", r)
    }
    async fn set_rooms(
        &self,
        session: &Session,
        rooms: &[String],
    ) -> Result<Option<UserConn>, StoreError> {
        let r = self.inner.set_rooms(session, rooms).await;
        self.counters.count("set_rooms", r)
    }
    async fn sessions_by_keys(&self, keys: &[String]) -> Result<Vec<Session>, StoreError> {
        let r = self.inner.sessions_by_keys(keys).await;
        self.counters.count("sessions_by_keys", r)
    }
    async fn sessions_by_mids(&self, mids: &[i64]) -> Result<Vec<Session>, StoreError> {
        let r = self.inner.sessions_by_mids(mids).await;
        self.counters.count("sessions_by_mids", r)
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
