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

    use imgate_shared::link::CometInfo;

    use super::*;

    fn store() -> EmbeddedRegistry {
        EmbeddedRegistry::new(Duration::from_secs(60))
    }

    #[tokio::test]
    async fn room_counts_sum_shards_and_comets() {
        let s = store();
        let info = |id: &str| CometInfo {
            id: id.into(),
            ..Default::default()
        };
        for (comet, shard, n) in [("a", 0, 2), ("a", 1, 3), ("b", 0, 4)] {
            s.report_online(OnlineReport {
                comet: info(comet),
                shard,
                conn_count: n,
                ip_count: 1,
                rooms: BTreeMap::from([("live://1".into(), n)]),
                lag_us: n * 100,
            })
            .await
            .unwrap();
        }
        let counts = s.room_counts().await.unwrap();
        assert_eq!(counts["live://1"], 9);
        let comets = s.comets().await.unwrap();
        assert_eq!(comets.len(), 2);
        assert_eq!(comets[0].conn_count, 5);
        assert_eq!(
            comets[0].ip_count, 1,
            "addresses are the comet's, not summed"
        );
        assert_eq!(
            (comets[0].lag_us, comets[1].lag_us),
            (300, 400),
            "a comet's lag is its busiest shard's"
        );
        // Handed out again while nothing changed, summed again once a report arrives.
        assert!(Arc::ptr_eq(&counts, &s.room_counts().await.unwrap()));
        s.report_online(OnlineReport {
            comet: info("b"),
            shard: 0,
            rooms: BTreeMap::from([("live://1".into(), 1)]),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(s.room_counts().await.unwrap()["live://1"], 6);
    }

    #[tokio::test]
    async fn counts_forget_a_report_once_it_expires() {
        let s = EmbeddedRegistry::new(Duration::from_millis(100));
        s.report_online(OnlineReport {
            rooms: BTreeMap::from([("live://1".into(), 2)]),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(s.room_counts().await.unwrap()["live://1"], 2);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(s.room_counts().await.unwrap().is_empty());
    }
}
