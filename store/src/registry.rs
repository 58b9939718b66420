//! The registry seam: each comet shard's online report, and what is derived from the live ones
//! (the comet registry, cluster-wide room counts). There is no discovery service: a comet is
//! registered while its shards report.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use imgate_shared::link::CometInfo;

use crate::StoreError;

/// Room → connections across the cluster.
pub type RoomTotals = Arc<HashMap<Arc<str>, u64>>;

/// One shard's online report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OnlineReport {
    pub comet: CometInfo,
    pub shard: u32,
    pub conn_count: u32,
    /// Distinct client addresses of the whole comet (the same in each of its shards' reports).
    pub ip_count: u32,
    /// Room → the shard's members in it. Names are shared, not copied: logic keeps the
    /// process's one copy of each ([`imgate_shared::intern`]).
    pub rooms: BTreeMap<Arc<str>, u32>,
    /// The shard's mean tick lag, in microseconds (`RenewOnline::lag_us`).
    pub lag_us: u32,
}

/// A live comet as the registry sees it: its last info and its shards' sums.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CometStatus {
    pub info: CometInfo,
    pub conn_count: u64,
    pub ip_count: u64,
    /// Unix time of the newest report, in milliseconds.
    pub updated_ms: u64,
    /// The largest tick lag among its shards' live reports, in microseconds.
    pub lag_us: u32,
}

/// Online reports and the registry derived from them.
#[async_trait::async_trait]
pub trait RegistryStore: Send + Sync {
    /// Stores a shard's report, replacing its previous one; it also keeps the comet in the
    /// registry until the report is older than the store's online TTL.
    async fn report_online(&self, report: OnlineReport) -> Result<(), StoreError>;
    /// Cluster-wide count of every non-empty room. Shared: readers that look often (logic's
    /// count cache, job's pacing) hold one table between them, and a store may hand out the
    /// same one until a report changes it.
    async fn room_counts(&self) -> Result<RoomTotals, StoreError>;
    /// Comets that reported recently.
    async fn comets(&self) -> Result<Vec<CometStatus>, StoreError>;
}

/// Folds live reports (with their Unix ms stamps) into one status per comet: connections
/// summed over its shards, addresses and lag taken once per comet, the newest info kept.
pub(crate) fn comet_statuses<'a>(
    reports: impl IntoIterator<Item = (u64, &'a OnlineReport)>,
) -> Vec<CometStatus> {
    let mut by_id: BTreeMap<&str, CometStatus> = BTreeMap::new();
    for (updated, report) in reports {
        let entry = by_id
            .entry(&report.comet.id)
            .or_insert_with(|| CometStatus {
                info: report.comet.clone(),
                ..Default::default()
            });
        entry.conn_count += u64::from(report.conn_count);
        // Each shard reports its comet's distinct addresses: one figure per comet.
        entry.ip_count = entry.ip_count.max(u64::from(report.ip_count));
        entry.lag_us = entry.lag_us.max(report.lag_us);
        if updated >= entry.updated_ms {
            entry.updated_ms = updated;
            entry.info = report.comet.clone();
        }
    }
    by_id.into_values().collect()
}

/// Sums live reports' rooms into cluster-wide counts (the names shared with the reports).
pub(crate) fn room_totals<'a>(
    reports: impl IntoIterator<Item = &'a OnlineReport>,
) -> HashMap<Arc<str>, u64> {
    let mut counts = HashMap::new();
    for report in reports {
        for (room, n) in &report.rooms {
            *counts.entry(room.clone()).or_insert(0) += u64::from(*n);
        }
    }
    counts
}
