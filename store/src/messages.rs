//! The message seam: users' inboxes (pushes by user, kept until acknowledged) and rooms' recent
//! histories (room pushes that opted in). Both are sequenced, trimmed logs.

use crate::StoreError;

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

/// Inboxes and room histories, each kept as its
/// [`Retention`](imgate_shared::config::Retention) says.
#[async_trait::async_trait]
pub trait MessageStore: Send + Sync {
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
