//! Inboxes and room histories in process: one sequenced, trimmed log per user and per room.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use imgate_shared::config::Retention;

use super::lock;
use crate::{InboxState, MessageStore, StoreError, StoredMessage};

/// The embedded [`MessageStore`].
pub struct EmbeddedMessages {
    inbox: Retention,
    room_history: Retention,
    inner: Mutex<Logs>,
}

#[derive(Default)]
struct Logs {
    inboxes: HashMap<i64, Log>,
    rooms: HashMap<String, Log>,
}

impl EmbeddedMessages {
    /// Inboxes kept as `inbox` says, room histories as `room_history` says.
    pub fn new(inbox: Retention, room_history: Retention) -> Self {
        EmbeddedMessages {
            inbox,
            room_history,
            inner: Mutex::default(),
        }
    }
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

#[async_trait::async_trait]
impl MessageStore for EmbeddedMessages {
    async fn inbox_append(&self, mid: i64, op: i32, body: bytes::Bytes) -> Result<u64, StoreError> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        Ok(live_log(&mut inner.inboxes, mid, now).append(op, body, self.inbox, now))
    }

    async fn inbox_read(
        &self,
        mid: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        Ok(existing_log(&mut inner.inboxes, &mid, now)
            .map(|log| log.read(after, limit, self.inbox, now))
            .unwrap_or_default())
    }

    async fn inbox_ack(&self, mid: i64, seq: u64) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        if let Some(log) = existing_log(&mut inner.inboxes, &mid, now) {
            log.acked_seq = log.acked_seq.max(seq.min(log.last_seq));
            log.trim(self.inbox, now);
        }
        Ok(())
    }

    async fn inbox_state(&self, mid: i64) -> Result<InboxState, StoreError> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
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
        let mut inner = lock(&self.inner);
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
        let mut inner = lock(&self.inner);
        Ok(existing_log(&mut inner.rooms, &room.to_string(), now)
            .map(|log| log.read(after, limit, self.room_history, now))
            .unwrap_or_default())
    }
}
