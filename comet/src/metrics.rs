//! comet's Prometheus metrics: every shard's counters and latency histogram, read and summed
//! at scrape time (the shards never wait for a scrape).

use std::borrow::Cow;
use std::sync::Arc;

use imgate_shared::metrics::{counter_family, gauge_family, Collector, Encoder, HistogramSnapshot};

use crate::stats::{ShardStats, Stats};

/// Reads a comet's shards at each scrape.
#[derive(Debug)]
pub(crate) struct CometCollector {
    pub id: String,
    /// What every shard's loop parks in.
    pub engine: imgate_runtime::Engine,
    pub shards: Vec<Arc<ShardStats>>,
}

impl CometCollector {
    /// The counters, the push latency and the fan-out latency, summed over the shards.
    pub fn sum(&self) -> (Stats, HistogramSnapshot, HistogramSnapshot) {
        let mut total = Stats::default();
        let mut latency = HistogramSnapshot::default();
        let mut fanout = HistogramSnapshot::default();
        for s in &self.shards {
            s.add_to(&mut total);
            s.push_latency.add_to(&mut latency);
            s.fanout_latency.add_to(&mut fanout);
        }
        (total, latency, fanout)
    }

    /// Panics of the shards' tasks (connections' and others'), summed.
    pub fn task_panics(&self) -> u64 {
        self.shards.iter().map(|s| s.task_panics()).sum()
    }
}

impl Collector for CometCollector {
    fn encode(&self, mut e: Encoder) -> std::fmt::Result {
        let (s, latency, fanout) = self.sum();
        let comet = || vec![("comet", Cow::Borrowed(self.id.as_str()))];
        let with = |k: &'static str, v: &'static str| {
            let mut l = comet();
            l.push((k, Cow::Borrowed(v)));
            l
        };
        gauge_family(
            &mut e,
            "imgate_connections",
            "Authenticated client connections open now.",
            [
                (with("transport", "tcp"), s.connections - s.connections_ws),
                (with("transport", "ws"), s.connections_ws),
            ],
        )?;
        counter_family(
            &mut e,
            "imgate_accepts",
            "Client connections accepted, authenticated or not.",
            [(comet(), s.accepted)],
        )?;
        counter_family(
            &mut e,
            "imgate_connects",
            "Client connections that authenticated.",
            [(comet(), s.connects)],
        )?;
        counter_family(
            &mut e,
            "imgate_auth_failures",
            "Connections closed because their auth failed: refused (by logic or the connect \
             hook), logic unavailable, or the connect hook timed out, unreachable, answered \
             badly or busy.",
            [
                (
                    with("reason", "refused"),
                    s.auth_failed
                        .saturating_sub(s.auth_unavailable)
                        .saturating_sub(s.auth_hook_timeout)
                        .saturating_sub(s.auth_hook_unreachable)
                        .saturating_sub(s.auth_hook_bad_answer)
                        .saturating_sub(s.auth_hook_busy),
                ),
                (with("reason", "unavailable"), s.auth_unavailable),
                (with("reason", "hook_timeout"), s.auth_hook_timeout),
                (with("reason", "hook_unreachable"), s.auth_hook_unreachable),
                (with("reason", "hook_bad_answer"), s.auth_hook_bad_answer),
                (with("reason", "hook_busy"), s.auth_hook_busy),
            ],
        )?;
        counter_family(
            &mut e,
            "imgate_closes",
            "Connections comet closed (or refused at accept), by reason.",
            [
                (with("reason", "slow"), s.closed_slow),
                (with("reason", "malformed"), s.closed_malformed),
                (with("reason", "rate_limited"), s.closed_rate_limited),
                (with("reason", "handshake_timeout"), s.handshake_timeouts),
                (with("reason", "heartbeat_expired"), s.heartbeat_expired),
                (with("reason", "auth_failed"), s.auth_failed),
                (with("reason", "replaced"), s.kicked_duplicate),
                (with("reason", "kicked"), s.closed_kicked),
                (with("reason", "token_expired"), s.closed_token_expired),
                (with("reason", "refresh_refused"), s.closed_refresh_refused),
                (with("reason", "tls_failed"), s.tls_failed),
                (with("reason", "conn_limit"), s.refused_conn_limit),
                (with("reason", "ip_limit"), s.refused_ip_limit),
                (with("reason", "panic"), s.closed_panic),
            ],
        )?;
        counter_family(
            &mut e,
            "imgate_task_panics",
            "Panics of comet's tasks, each caught at its task: a connection's closed that \
             connection (closes reason panic), another task's dropped that task.",
            [(comet(), self.task_panics())],
        )?;
        let shards = self.shards.len() as u64;
        let on = |engine: imgate_runtime::Engine| {
            if engine == self.engine {
                shards
            } else {
                0
            }
        };
        gauge_family(
            &mut e,
            "imgate_comet_io_engine",
            "Comet shards by the engine their event loop parks in (comet.io).",
            [
                (
                    with("engine", "io_uring"),
                    on(imgate_runtime::Engine::IoUring),
                ),
                (with("engine", "epoll"), on(imgate_runtime::Engine::Epoll)),
            ],
        )?;
        counter_family(
            &mut e,
            "imgate_messages_sent",
            "Pushes handed to client connections (written at once or queued), one per connection.",
            [(comet(), s.frames_queued)],
        )?;
        counter_family(
            &mut e,
            "imgate_writes",
            "Socket writes to clients that sent bytes.",
            [(comet(), s.writes)],
        )?;
        counter_family(
            &mut e,
            "imgate_bytes_sent",
            "Bytes written to client sockets.",
            [(comet(), s.bytes_sent)],
        )?;
        counter_family(
            &mut e,
            "imgate_heartbeats",
            "Client heartbeats answered.",
            [(comet(), s.heartbeats)],
        )?;
        latency.encode(
            &mut e,
            "imgate_push_latency_seconds",
            "From logic accepting a push (the oldest of a room batch) to a comet shard having \
             written it (or queued it, for a member whose socket was full) to its last member.",
            &comet(),
        )?;
        fanout.encode(
            &mut e,
            "imgate_push_fanout_seconds",
            "From a comet shard reading a push off job's link to having written (or queued) it \
             to its last member.",
            &comet(),
        )?;
        imgate_shared::metrics::snapshot_samples(&mut e, "imgate_comet", &comet(), s.samples())
    }
}
