//! job's Prometheus metrics, read from its counters at scrape time.

use std::borrow::Cow;
use std::sync::Arc;

use imgate_shared::metrics::{counter_family, gauge_family, snapshot_samples, Collector, Encoder};

use crate::stats::Counters;

#[derive(Debug)]
pub(crate) struct JobCollector(pub Arc<Counters>);

impl Collector for JobCollector {
    fn encode(&self, mut e: Encoder) -> std::fmt::Result {
        let s = self.0.snapshot();
        let none = Vec::<(&str, Cow<str>)>::new;
        counter_family(
            &mut e,
            "imgate_room_batches",
            "Room batches job flushed to the comet links.",
            [(none(), s.room_batches)],
        )?;
        gauge_family(
            &mut e,
            "imgate_room_budget",
            "The share of job.room_writes_per_shard big rooms are paced by (1 = nominal), \
             learned from the busiest comet shard's load.",
            [(none(), s.room_budget_permille as f64 / 1000.0)],
        )?;
        gauge_family(
            &mut e,
            "imgate_busiest_shard_busy",
            "The busiest comet shard's busy share (smoothed), as job sees it.",
            [(none(), s.busiest_shard_permille as f64 / 1000.0)],
        )?;
        gauge_family(
            &mut e,
            "imgate_comet_links",
            "job's links to comets connected right now.",
            [(none(), s.connected)],
        )?;
        snapshot_samples(&mut e, "imgate_job", &[], s.samples())
    }
}
