//! What the coordinator and a worker process tell each other: the worker's
//! [`WorkerConfig`] (one JSON line on its stdin) and its [`Report`]s (JSON lines on its
//! stdout) with their [`Counters`].

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use imgate_client::Transport;

use crate::cli::System;
use serde::{Deserialize, Serialize};

/// Most push phases one run has (a histogram each).
pub const MAX_PHASES: usize = 8;

/// What one worker process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub worker: usize,
    pub run_id: u32,
    /// Global index of this worker's first client and how many it runs.
    pub first_client: u64,
    pub clients: u64,
    /// CPU of each executor; empty: one unpinned executor per `executors`.
    pub cpus: Vec<usize>,
    pub executors: usize,
    /// Every client of this worker connects from this address.
    pub source_ip: IpAddr,
    /// Client `g` connects to `targets[g % len]`.
    pub targets: Vec<SocketAddr>,
    pub transport: Transport,
    /// The server and protocol the clients speak.
    #[serde(default)]
    pub system: System,
    /// Redis channel or NATS subject the peers' clients subscribe to.
    #[serde(default)]
    pub channel: String,
    /// This worker's connects per second; 0: as fast as the in-flight limit allows.
    pub connect_rate: f64,
    /// Milliseconds to wait before the first connect (`--staggered`: the workers before this
    /// one connect first).
    #[serde(default)]
    pub connect_delay_ms: u64,
    pub connect_timeout_ms: u64,
    /// Connects in progress at once, per executor.
    pub max_in_flight: usize,
    /// 0: no heartbeats.
    pub heartbeat_ms: u64,
    pub reconnect: bool,
    /// Client `g` authenticates as mid `mid_base + g` with key `key_prefix + g`.
    pub mid_base: i64,
    pub key_prefix: String,
    pub room: String,
    pub accepts: Vec<i32>,
    /// The business op pushes carry.
    pub push_op: i32,
    /// Every push reaches every client in order (one room or broadcasts from one HTTP
    /// connection): track each client's sequence.
    pub ordered: bool,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// A worker's (or the whole run's) counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counters { $($(#[$doc])* pub $name: u64,)* }

        impl Counters {
            /// Adds `other` field by field.
            pub fn add(&mut self, other: &Counters) { $(self.$name += other.$name;)* }

            /// What was gained since `earlier`; the two gauges (`connecting`, `connected`)
            /// keep their current value.
            pub fn since(&self, earlier: &Counters) -> Counters {
                let mut out = Counters { $($name: self.$name.saturating_sub(earlier.$name),)* };
                out.connecting = self.connecting;
                out.connected = self.connected;
                out
            }
        }

        /// One executor's counters: written only by that executor, read by the worker's main
        /// thread.
        #[derive(Debug, Default)]
        pub(crate) struct Shared { $(pub(crate) $name: AtomicU64,)* }

        impl Shared {
            pub(crate) fn snapshot(&self) -> Counters {
                Counters { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Connects started and not finished (gauge).
    connecting,
    /// Authenticated connections open now (gauge).
    connected,
    /// Connections that reached op 8.
    connects,
    /// Connects that failed before auth (refused, timed out, reset).
    connect_failed,
    /// Connections closed by the server before the auth reply.
    auth_failed,
    /// Authenticated connections that ended before the run did.
    disconnected,
    reconnects,
    /// Frames whose op is neither 3 nor 8, as goim's benchmark client counts them.
    messages,
    /// Messages carrying this run's stamp.
    stamped,
    /// Messages that are not this run's pushes (earlier runs' stored messages, other ops).
    foreign,
    /// Units carrying messages as the server wrote them: WebSocket messages, or top-level
    /// goim frames on TCP.
    frames,
    /// `recv` calls that returned data.
    reads,
    bytes,
    heartbeats,
    heartbeat_replies,
    heartbeat_failed,
    /// Pushes a client never saw before a later one arrived (ordered runs).
    seq_gaps,
    /// Pushes that arrived at or below one already seen: duplicates or overtaken (ordered runs).
    seq_behind,
    protocol_errors,
}

/// A progress or final line from a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Report {
    Progress {
        worker: usize,
        sample: Option<u64>,
        counters: Counters,
        rss_bytes: u64,
    },
    Final {
        worker: usize,
        counters: Counters,
        rss_bytes: u64,
        /// Resident memory before the first client.
        rss_start_bytes: u64,
        /// Per phase: end-to-end latency in µs as (value, count) pairs.
        latency_us: Vec<Vec<[u64; 2]>>,
        connect_us: Vec<[u64; 2]>,
        /// Per-push delivery counts as runs (see [`PushCounts::to_runs`]).
        push_counts: Vec<[u64; 3]>,
        /// A few reasons connections ended, for the log.
        errors: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_field_by_field() {
        let mut a = Counters {
            messages: 3,
            connected: 1,
            ..Counters::default()
        };
        a.add(&Counters {
            messages: 4,
            seq_gaps: 2,
            ..Counters::default()
        });
        assert_eq!((a.messages, a.connected, a.seq_gaps), (7, 1, 2));
    }

    #[test]
    fn reports_are_json_lines() {
        let line = serde_json::to_string(&Report::Progress {
            worker: 2,
            sample: Some(9),
            counters: Counters::default(),
            rss_bytes: 1,
        })
        .unwrap();
        assert!(line.starts_with("{\"kind\":\"progress\""));
        assert!(!line.contains('\n'));
        let back: Report = serde_json::from_str(&line).unwrap();
        assert!(matches!(
            back,
            Report::Progress {
                worker: 2,
                sample: Some(9),
                ..
            }
        ));
    }
}
