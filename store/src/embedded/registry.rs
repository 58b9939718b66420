//! The registry in process: each shard's last online report, with its expiry and stamp.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;
use crate::registry::{comet_statuses, room_totals};
use crate::{CometStatus, OnlineReport, RegistryStore, StoreError};

/// The embedded [`RegistryStore`].
pub struct EmbeddedRegistry {
    /// How long a shard's online report (and so its comet's registration) stays valid.
    ttl: Duration,
    /// (comet id, shard) → its last report.
    reports: Mutex<HashMap<(String, u32), Kept>>,
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
        Ok(())
    }

    async fn room_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        let now = Instant::now();
        let reports = lock(&self.reports);
        Ok(room_totals(
            reports
                .values()
                .filter(|kept| kept.expires > now)
                .map(|kept| &kept.report),
        ))
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
