//! The cluster-wide room-count cache behind `/goim/online/*` and `RenewOnline` replies.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use imgate_store::RegistryStore;
use tokio::sync::watch;

/// Room key → connections across the cluster, as of the last refresh.
#[derive(Clone, Default)]
pub(crate) struct RoomCounts {
    current: Arc<RwLock<Arc<HashMap<String, u64>>>>,
}

impl RoomCounts {
    /// The latest snapshot; cheap, never blocks a refresh for long.
    pub(crate) fn snapshot(&self) -> Arc<HashMap<String, u64>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, counts: HashMap<String, u64>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(counts);
    }

    /// Reads the store once.
    pub(crate) async fn refresh(&self, store: &dyn RegistryStore) {
        match store.room_counts().await {
            Ok(counts) => self.replace(counts),
            Err(e) => {
                tracing::warn!(error = %e, "room counts refresh failed; keeping the old ones")
            }
        }
    }

    /// Refreshes every `every` until shutdown.
    pub(crate) async fn run(
        self,
        store: Arc<dyn RegistryStore>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.refresh(store.as_ref()).await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
