//! The comets job delivers to, read from the store's registry, each with its [`CometLink`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use imgate_store::RegistryStore;

use crate::comet_link::{CometLink, Guards, LinkFrame, LinkedShards, QueueError, QueueLimits};
use crate::stats::Counters;

/// How long closing waits for a link to write out its queue.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long a known comet may be missing from the registry before its link is dropped. After a
/// store outage the first reads find every comet's report stale until the comets renew them
/// (they retry every 100 ms); dropping their links then would lose the pushes routed meanwhile.
const DEPARTURE_GRACE: Duration = Duration::from_secs(3);

/// One comet's links: one per shard, so each shard reads and fans out its own pushes.
pub(crate) struct CometLinks {
    addr: String,
    shards: Vec<CometLink>,
}

impl CometLinks {
    fn spawn(
        id: &str,
        addr: String,
        shards: u32,
        limits: QueueLimits,
        counters: &Arc<Counters>,
    ) -> Self {
        let shards = shards.max(1);
        let linked = LinkedShards::new(shards as usize);
        CometLinks {
            shards: (0..shards)
                .map(|shard| {
                    CometLink::spawn(
                        id.to_string(),
                        addr.clone(),
                        shard,
                        linked.clone(),
                        limits,
                        counters.clone(),
                    )
                })
                .collect(),
            addr,
        }
    }

    /// The link of shard `shard` (shard 0's for a shard the comet does not have: it passes
    /// what it cannot serve on).
    fn shard(&self, shard: u32) -> &CometLink {
        self.shards.get(shard as usize).unwrap_or(&self.shards[0])
    }

    async fn close(self, grace: Duration) {
        for link in self.shards {
            link.close(grace).await;
        }
    }
}

pub(crate) struct Registry {
    store: Arc<dyn RegistryStore>,
    counters: Arc<Counters>,
    queue_limits: QueueLimits,
    links: HashMap<String, CometLinks>,
    /// Known comets missing from the registry, since when.
    missing: HashMap<String, Instant>,
    /// Shards of every registered comet, as of the last successful read.
    shards: u64,
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
        for comet in comets {
            let info = comet.info;
            if info.link_addr.is_empty() {
                tracing::warn!(comet = %info.id, "comet reports no link address; skipped");
                continue;
            }
            seen.insert(info.id.clone());
            let shards = info.shards.max(1);
            if self
                .links
                .get(&info.id)
                .is_some_and(|l| l.addr == info.link_addr && l.shards.len() == shards as usize)
            {
                continue;
            }
            tracing::info!(comet = %info.id, addr = %info.link_addr, shards, "comet joined (or moved)");
            let link = CometLinks::spawn(
                &info.id,
                info.link_addr,
                shards,
                self.queue_limits,
                &self.counters,
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
    pub(crate) async fn room_sizes(&self) -> Option<(imgate_store::RoomTotals, u64)> {
        let sizes = match self.store.room_counts().await {
            Ok(sizes) => sizes,
            Err(e) => {
                tracing::debug!(error = %e, "room counts unavailable; pacing unchanged");
                return None;
            }
        };
        Some((sizes, self.shards))
    }

    /// The busiest comet shard's busy share (thousandths); a shard silent for longer than
    /// `max_age` counts as fully busy.
    pub(crate) fn busiest_shard(&self, max_age: Duration) -> Option<u32> {
        self.links
            .values()
            .flat_map(|links| &links.shards)
            .filter_map(|link| link.load.busy_permille(max_age))
            .max()
    }

    /// Whether some comet shard lags what job sends it: more than `queued` bytes wait in its
    /// link's queue here, or its fan-out is more than `lag` behind what was written to it.
    pub(crate) fn backlogged(&self, queued: usize, lag: Duration) -> bool {
        self.links
            .values()
            .flat_map(|links| &links.shards)
            .any(|link| link.queued_bytes() > queued || link.load.lag() > lag)
    }

    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    /// Shards of the comets linked now (what a broadcast's speed is divided by).
    pub(crate) fn linked_shards(&self) -> usize {
        self.links.values().map(|l| l.shards.len()).sum()
    }

    pub(crate) fn contains(&self, comet: &str) -> bool {
        self.links.contains_key(comet)
    }

    /// Queues `frame` to one shard of one comet; false (counted and logged) if the comet is
    /// unknown or the link full. The guards go with the frame (or drop at once if it was
    /// refused).
    pub(crate) fn send_to(
        &self,
        comet: &str,
        shard: u32,
        frame: &LinkFrame,
        guards: Guards,
    ) -> bool {
        match self.links.get(comet) {
            Some(links) => self.queue(comet, links.shard(shard), frame, guards),
            None => false,
        }
    }

    /// Queues the same `frame` to every shard of every comet, each holding `guards`, so they
    /// drop after the last shard's link wrote it; returns how many comets took it everywhere.
    pub(crate) fn send_to_all(&self, frame: &LinkFrame, guards: &Guards) -> usize {
        self.links
            .iter()
            .filter(|(id, links)| {
                // Every shard is tried, whether or not an earlier one took it.
                let took = links
                    .shards
                    .iter()
                    .filter(|link| self.queue(id, link, frame, guards.clone()))
                    .count();
                took == links.shards.len()
            })
            .count()
    }

    fn queue(&self, comet: &str, link: &CometLink, frame: &LinkFrame, guards: Guards) -> bool {
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
