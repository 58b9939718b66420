//! The store: where sessions, the comet registry and stored messages live, as three seams with
//! an embedded and a Redis implementation of each.
//!
//! | seam | what it holds | embedded | Redis |
//! | --- | --- | --- | --- |
//! | [`SessionStore`] | which connection holds which key, for which user | `embedded/sessions.rs` | `redis/sessions.rs` |
//! | [`RegistryStore`] | each comet shard's online report, and the comet registry and room counts derived from them | `embedded/registry.rs` | `redis/registry.rs` |
//! | [`MessageStore`] | users' inboxes and rooms' recent histories | `embedded/messages.rs` | `redis/messages.rs` |
//!
//! A new backend (NATS JetStream's key-value and stream stores, say) is one file per seam, and
//! the seams need not share a backend: [`Stores`] holds one of each. The contract of every seam
//! is written once, in `store/tests/conformance.rs`, and run against each backend. Every session names the
//! exact connection that owns it ([`ConnRef`](imgate_shared::link::ConnRef)), so a late
//! disconnect of a replaced connection can never delete its successor's session (goim's race:
//! docs/goim-compatibility.md, "Duplicate keys").

pub mod embedded;
mod messages;
pub mod redis;
mod registry;
mod sessions;

use std::sync::Arc;

pub use messages::{InboxState, MessageStore, StoredMessage};
pub use registry::{CometStatus, OnlineReport, RegistryStore, RoomTotals};
pub use sessions::{Connected, KeyPolicy, Rules, Session, SessionStore, UserConn};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// One store for each seam, as the services use them.
#[derive(Clone)]
pub struct Stores {
    pub sessions: Arc<dyn SessionStore>,
    pub registry: Arc<dyn RegistryStore>,
    pub messages: Arc<dyn MessageStore>,
}

impl Stores {
    /// Every seam served by one store that implements all three (the Redis store).
    pub fn all_in<S>(store: Arc<S>) -> Stores
    where
        S: SessionStore + RegistryStore + MessageStore + 'static,
    {
        Stores {
            sessions: store.clone(),
            registry: store.clone(),
            messages: store,
        }
    }
}
