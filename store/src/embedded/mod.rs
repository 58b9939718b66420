//! The in-process stores of the single-binary mode: plain maps behind a lock, one per seam,
//! with the same lifetimes and retention as the Redis store. Nothing survives the process.

mod messages;
mod registry;
mod sessions;

use std::sync::Arc;

use imgate_shared::config::StoreConfig;

pub use messages::EmbeddedMessages;
pub use registry::EmbeddedRegistry;
pub use sessions::EmbeddedSessions;

use crate::Stores;

/// The three embedded stores, with the lifetimes and retention `config` names.
pub fn stores(config: &StoreConfig) -> Stores {
    Stores {
        sessions: Arc::new(EmbeddedSessions::new(config.session_ttl)),
        registry: Arc::new(EmbeddedRegistry::new(config.online_ttl)),
        messages: Arc::new(EmbeddedMessages::new(config.inbox(), config.room_history())),
    }
}

/// Recovers a poisoned lock: a panic while holding it cannot leave these maps half-updated in
/// a way that matters more than losing the whole store.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
