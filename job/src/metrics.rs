//! job's Prometheus metrics, read from its counters at scrape time.

use std::borrow::Cow;
use std::sync::Arc;

use imgate_shared::metrics::{counter_family, gauge_family, snapshot_samples, Collector, Encoder};

use crate::stats::Counters;

pub(crate) struct JobCollector {
    pub counters: Arc<Counters>,
    pub lag: Option<imgate_bus::LagProbe>,
}

impl std::fmt::Debug for JobCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobCollector")
    }
}

impl Collector for JobCollector {
    fn encode(&self, mut e: Encoder) -> std::fmt::Result {
        let s = self.counters.snapshot();
        let none = Vec::<(&str, Cow<str>)>::new;
        if let Some(lag) = self.lag.as_ref().and_then(|probe| probe()) {
            gauge_family(
                &mut e,
                "imgate_bus_lag_messages",
                "Messages on this job's bus partitions it has not taken yet (Kafka: \
                 librdkafka's consumer lag; NATS: its consumers' pending counts; refreshed \
                 every 2 s).",
                [(none(), lag)],
            )?;
        }

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
            "imgate_room_paced_interval_seconds",
            "How often the biggest paced room flushes (0: no room is paced); at most \
             job.room_max_interval.",
            [(none(), s.paced_interval_ms as f64 / 1000.0)],
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
