//! The registry in process: each shard's last online report, with its expiry and stamp.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lock;
use crate::registry::{comet_statuses, room_totals};
use crate::{CometStatus, OnlineReport, RegistryStore, RoomTotals, StoreError};

/// The embedded [`RegistryStore`].
pub struct EmbeddedRegistry {
    /// How long a shard's online report (and so its comet's registration) stays valid.
    ttl: Duration,
    /// (comet id, shard) → its last report.
    reports: Mutex<HashMap<(String, u32), Kept>>,
    /// The room counts as last summed, until a report arrives or one it counted expires:
    /// logic and job read them every second, and summing anew each time made a table of
    /// every room each time.
    totals: Mutex<Option<(RoomTotals, Instant)>>,
}

/// A report as kept: when it expires, and the Unix ms it was stored at.
struct Kept {
    report: OnlineReport,
    expires: Instant,
    stored_ms: u64,
}

impl EmbeddedRegistry {
    /// Reports count for `ttl` after they arrive.
    pub fn new(ttl: Duration) -> Self {
        EmbeddedRegistry {
            ttl,
            reports: Mutex::default(),
            totals: Mutex::default(),
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[async_trait::async_trait]
impl RegistryStore for EmbeddedRegistry {
    async fn report_online(&self, report: OnlineReport) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut reports = lock(&self.reports);
        reports.retain(|_, kept| kept.expires > now);
        let id = (report.comet.id.clone(), report.shard);
        let kept = Kept {
            report,
            expires: now + self.ttl,
            stored_ms: unix_ms(),
        };
        reports.insert(id, kept);
        *lock(&self.totals) = None;
        Ok(())
    }

    async fn room_counts(&self) -> Result<RoomTotals, StoreError> {
        let now = Instant::now();
        let reports = lock(&self.reports);
        let mut totals = lock(&self.totals);
        if let Some((counts, _)) = totals.as_ref().filter(|(_, until)| now < *until) {
            return Ok(counts.clone());
        }
        let live = || reports.values().filter(|kept| kept.expires > now);
        let counts = Arc::new(room_totals(live().map(|kept| &kept.report)));
        // Valid until the first of the reports counted expires (or a report arrives).
        let until = live()
            .map(|kept| kept.expires)
            .min()
            .unwrap_or(now + self.ttl);
        *totals = Some((counts.clone(), until));
        Ok(counts)
    }

    async fn comets(&self) -> Result<Vec<CometStatus>, StoreError> {
        let now = Instant::now();
        let reports = lock(&self.reports);
        Ok(comet_statuses(
            reports
                .values()
                .filter(|kept| kept.expires > now)
                .map(|kept| (kept.stored_ms, &kept.report)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// logic asks for the room totals on every online report it answers: while no report
    /// changed them, the same table is handed out again rather than summed anew.
    #[tokio::test]
    async fn room_totals_are_handed_out_again_until_a_report_changes_them() {
        let s = EmbeddedRegistry::new(Duration::from_secs(60));
        let report = |n| OnlineReport {
            rooms: BTreeMap::from([("live://1".into(), n)]),
            ..Default::default()
        };
        s.report_online(report(2)).await.unwrap();
        let counts = s.room_counts().await.unwrap();
        assert_eq!(counts["live://1"], 2);
        assert!(Arc::ptr_eq(&counts, &s.room_counts().await.unwrap()));
        s.report_online(report(5)).await.unwrap();
        let summed = s.room_counts().await.unwrap();
        assert!(!Arc::ptr_eq(&counts, &summed));
        assert_eq!(summed["live://1"], 5);
    }
}
