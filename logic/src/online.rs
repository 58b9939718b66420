//! The cluster-wide room-count cache behind `/goim/online/*` and `RenewOnline` replies.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use imgate_store::{RegistryStore, RoomTotals};
use tokio::sync::watch;

/// Room key → connections across the cluster, as of the last refresh. The table is the
/// registry's (shared with job's pacing), its names the process's one copy of each
/// ([`imgate_shared::intern`]).
#[derive(Clone, Default)]
pub(crate) struct RoomCounts {
    current: Arc<RwLock<RoomTotals>>,
}

impl RoomCounts {
    /// The latest snapshot; cheap, never blocks a refresh for long.
    pub(crate) fn snapshot(&self) -> RoomTotals {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, counts: RoomTotals) {
        let old = {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            if Arc::ptr_eq(&current, &counts) {
                return;
            }
            std::mem::replace(&mut *current, counts)
        };
        drop(old);
        // Names of rooms that emptied are held by nothing now but the process's table.
        imgate_shared::intern::sweep();
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
