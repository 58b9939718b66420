//! The comets job delivers to, read from the store's registry, each with its [`CometLink`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use imgate_store::RegistryStore;

use crate::comet_link::{CometLink, Guards, QueueError, QueueLimits};
use crate::stats::Counters;

/// How long closing waits for a link to write out its queue.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long a known comet may be missing from the registry before its link is dropped. After a
/// store outage the first reads find every comet's report stale until the comets renew them
/// (they retry every 100 ms); dropping their links then would lose the pushes routed meanwhile.
const DEPARTURE_GRACE: Duration = Duration::from_secs(3);

pub(crate) struct Registry {
    store: Arc<dyn RegistryStore>,
    counters: Arc<Counters>,
    queue_limits: QueueLimits,
    links: HashMap<String, CometLink>,
    /// Known comets missing from the registry, since when.
    missing: HashMap<String, Instant>,
    /// Shards of every registered comet, as of the last successful read.
    shards: u64,
    /// The busiest comet's tick lag and the newest report's time, as of the last read, and
    /// the report time [`Registry::fresh_lag`] last answered for.
    lag_us: u32,
    newest_report_ms: u64,
    lag_taken_ms: u64,
    last_read: Option<Instant>,
}

impl Registry {
    pub(crate) fn new(
        store: Arc<dyn RegistryStore>,
        counters: Arc<Counters>,
        queue_limits: QueueLimits,
    ) -> Self {
        Registry {
            store,
            counters,
            queue_limits,
            links: HashMap::new(),
            missing: HashMap::new(),
            shards: 0,
            lag_us: 0,
            newest_report_ms: 0,
            lag_taken_ms: 0,
            last_read: None,
        }
    }

    /// Re-reads the registry: links new comets, relinks moved ones, drops the ones missing for
    /// longer than [`DEPARTURE_GRACE`]. A failed read keeps the current set.
    pub(crate) async fn refresh(&mut self) {
        let now = Instant::now();
        self.last_read = Some(now);
        let comets = match self.store.comets().await {
            Ok(comets) => comets,
            Err(e) => {
                self.counters.registry_errors.add(1);
                tracing::warn!(error = %e, "comet registry read failed; keeping the known comets");
                return;
            }
        };
        let mut seen = std::collections::HashSet::new();
        self.shards = comets.iter().map(|c| u64::from(c.info.shards.max(1))).sum();
        self.lag_us = comets.iter().map(|c| c.lag_us).max().unwrap_or(0);
        self.newest_report_ms = comets.iter().map(|c| c.updated_ms).max().unwrap_or(0);
        for comet in comets {
            let info = comet.info;
            if info.link_addr.is_empty() {
                tracing::warn!(comet = %info.id, "comet reports no link address; skipped");
                continue;
            }
            seen.insert(info.id.clone());
            if self
                .links
                .get(&info.id)
                .is_some_and(|l| l.addr == info.link_addr)
            {
                continue;
            }
            tracing::info!(comet = %info.id, addr = %info.link_addr, "comet joined (or moved)");
            let link = CometLink::spawn(
                info.id.clone(),
                info.link_addr,
                self.queue_limits,
                self.counters.clone(),
            );
            // A replaced link writes out what it already holds to the old address, then closes.
            self.links.insert(info.id, link);
        }
        let missing = &mut self.missing;
        missing.retain(|id, _| !seen.contains(id));
        self.links.retain(|id, _| {
            if seen.contains(id) {
                return true;
            }
            let since = *missing.entry(id.clone()).or_insert(now);
            let keep = now.duration_since(since) < DEPARTURE_GRACE;
            if !keep {
                tracing::info!(comet = %id, "comet left");
                missing.remove(id);
            }
            keep
        });
    }

    /// [`Registry::refresh`] unless the registry was read less than `min_age` ago, so a stream
    /// of pushes for a departed comet does not turn into a stream of registry reads.
    pub(crate) async fn refresh_unless_fresh(&mut self, min_age: Duration) {
        if self.last_read.is_none_or(|at| at.elapsed() >= min_age) {
            self.refresh().await;
        }
    }

    /// Members per room across the cluster and the comets' total shard count, from the
    /// online reports (None when the store cannot be read).
    pub(crate) async fn room_sizes(&self) -> Option<(HashMap<String, u64>, u64)> {
        let sizes = match self.store.room_counts().await {
            Ok(sizes) => sizes,
            Err(e) => {
                tracing::debug!(error = %e, "room counts unavailable; pacing unchanged");
                return None;
            }
        };
        Some((sizes, self.shards))
    }

    /// The busiest comet's tick lag, if a report arrived since the last call.
    pub(crate) fn fresh_lag(&mut self) -> Option<u32> {
        if self.newest_report_ms <= self.lag_taken_ms {
            return None;
        }
        self.lag_taken_ms = self.newest_report_ms;
        Some(self.lag_us)
    }

    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    pub(crate) fn contains(&self, comet: &str) -> bool {
        self.links.contains_key(comet)
    }

    /// Queues `frame` to one comet; false (counted and logged) if it is unknown or full. The
    /// guards go with the frame (or drop at once if it was refused).
    pub(crate) fn send_to(&self, comet: &str, frame: Bytes, guards: Guards) -> bool {
        match self.links.get(comet) {
            Some(link) => self.queue(comet, link, frame, guards),
            None => false,
        }
    }

    /// Queues the same `frame` to every comet, each holding `guards`, so they drop after the
    /// last comet wrote it; returns how many took it.
    pub(crate) fn send_to_all(&self, frame: &Bytes, guards: &Guards) -> usize {
        self.links
            .iter()
            .filter(|(id, link)| self.queue(id, link, frame.clone(), guards.clone()))
            .count()
    }

    fn queue(&self, comet: &str, link: &CometLink, frame: Bytes, guards: Guards) -> bool {
        match link.send(frame, guards) {
            Ok(()) => true,
            Err(QueueError::Full) => {
                self.counters.link_queue_full.add(1);
                tracing::warn!(%comet, "comet link queue full; push to this comet failed");
                false
            }
            Err(QueueError::Closed) => {
                self.counters.link_write_failed.add(1);
                tracing::warn!(%comet, "comet link task ended; push to this comet failed");
                false
            }
        }
    }

    /// Closes every link, letting each write out its queue (bounded).
    pub(crate) async fn close(self) {
        let closing: Vec<_> = self
            .links
            .into_values()
            .map(|link| tokio::spawn(link.close(CLOSE_GRACE)))
            .collect();
        for task in closing {
            let _ = task.await;
        }
    }
}
