//! What a run measured: each push phase, the idle hold, and every worker's final figures
//! merged. The coordinator gathers them; the report reads them.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::floor::FloorResult;
use crate::messages::Counters;
use crate::metrics::{self, Writes};
use crate::pusher::{PushKind, PushOutcome, PushPlan};
use crate::tally::{self, DeliveryCheck, Percentiles, PushCounts};

/// What the idle hold saw.
pub struct HoldData {
    pub seconds: f64,
    pub start: Counters,
    pub end: Counters,
    pub min_connected: u64,
    pub cpu: Option<u64>,
    pub workers_cpu: Option<u64>,
    pub rss_end: Option<u64>,
}

/// What one push phase saw.
pub struct PhaseData {
    pub name: String,
    pub plan: PushPlan,
    pub outcome: PushOutcome,
    /// Clients connected when the phase started (each room push is expected that many times).
    pub connected: u64,
    pub before: Counters,
    /// When the last push was answered.
    pub at_push_end: Counters,
    /// After the drain.
    pub after: Counters,
    pub samples: Vec<u64>,
    pub drain_seconds: f64,
    /// Server CPU over the push window and the drain.
    pub server_cpu_ns: Option<u64>,
    /// Busy time of the server's cores (`--server-cpus`) over the same window.
    pub server_core_cpu_ns: Option<u64>,
    /// Deliveries the answered pushes owed that had not arrived when the last was answered.
    pub backlog_at_push_end: u64,
    /// CPU of the server's threads named `--server-threads` (comet's) over the same window.
    pub comet_cpu_ns: Option<u64>,
    /// comet's own count of its writes over the same window, from its metrics.
    pub comet_writes: metrics::Window,
    pub server_seconds: f64,
    /// CPU of the worker processes, and of this process (the pusher), over the same window.
    pub workers_cpu_ns: Option<u64>,
    pub pusher_cpu_ns: Option<u64>,
}

impl PhaseData {
    /// Counters gained while pushing (not counting the drain).
    pub fn delta_push(&self) -> Counters {
        self.at_push_end.since(&self.before)
    }

    /// Counters gained over the whole phase, drain included.
    pub fn delta_all(&self) -> Counters {
        self.after.since(&self.before)
    }

    /// This phase's writes and server CPU, from every source it had.
    pub fn writes(&self) -> PhaseWrites {
        let d = self.delta_all();
        PhaseWrites {
            comet: self.comet_writes.writes,
            client_reads: Writes {
                writes: d.reads,
                bytes: d.bytes,
            },
            comet_cpu_ns: self.comet_cpu_ns,
            server_cpu_ns: self.server_cpu_ns,
        }
    }

    /// How many times push `seq` should arrive, if it is one of this phase's.
    pub fn expected(&self, seq: u32, exact_targets: bool) -> Option<u32> {
        let i = seq.checked_sub(self.plan.first_seq)? as usize;
        let result = self.outcome.results.get(i).filter(|r| r.seq == seq)?;
        if !result.accepted {
            return Some(0);
        }
        Some(match self.plan.kind {
            PushKind::Room | PushKind::All => self.connected as u32,
            PushKind::Keys | PushKind::Mids if exact_targets => 1,
            PushKind::Keys | PushKind::Mids => result.routed.unwrap_or(1),
        })
    }

    /// Sequences this phase may have sent.
    pub fn seqs(&self) -> std::ops::Range<u32> {
        let n = self.outcome.results.last().map_or(0, |r| r.seq + 1);
        self.plan.first_seq..n.max(self.plan.first_seq)
    }
}

/// A worker's `final` line.
#[derive(Debug, Clone)]
pub struct Final {
    pub counters: Counters,
    pub rss_bytes: u64,
    pub rss_start_bytes: u64,
    pub latency_us: Vec<Vec<[u64; 2]>>,
    pub connect_us: Vec<[u64; 2]>,
    pub push_counts: Vec<[u64; 3]>,
    pub errors: Vec<String>,
}

/// Every worker's final figures merged.
pub struct Merged {
    pub counters: Counters,
    /// The workers' resident memory before their first client, summed.
    pub rss_start: u64,
    pub latency: Vec<Histogram<u64>>,
    pub connect: Histogram<u64>,
    pub pushes: PushCounts,
    pub errors: Vec<String>,
}

impl Merged {
    pub fn of(finals: &[Final]) -> Merged {
        let mut m = Merged {
            counters: Counters::default(),
            rss_start: 0,
            latency: Vec::new(),
            connect: tally::new_histogram(),
            pushes: PushCounts::default(),
            errors: Vec::new(),
        };
        for f in finals {
            m.counters.add(&f.counters);
            m.rss_start += f.rss_start_bytes;
            for (phase, pairs) in f.latency_us.iter().enumerate() {
                while m.latency.len() <= phase {
                    m.latency.push(tally::new_histogram());
                }
                tally::add_pairs(&mut m.latency[phase], pairs);
            }
            tally::add_pairs(&mut m.connect, &f.connect_us);
            m.pushes.merge(&PushCounts::from_runs(&f.push_counts));
            m.errors.extend(f.errors.iter().cloned());
        }
        m
    }

    /// Latency percentiles of one phase.
    pub fn latency(&self, phase: usize) -> Percentiles {
        self.latency
            .get(phase)
            .map(Percentiles::of)
            .unwrap_or_default()
    }

    /// The delivery check of the whole run: every phase's pushes against their expectation,
    /// and any delivery of a sequence no phase sent.
    pub fn check(&self, phases: &[PhaseData], exact_targets: bool) -> DeliveryCheck {
        let end = phases.last().map_or(0, |p| p.seqs().end);
        tally::check(&self.pushes, 0..end, true, |seq| {
            phases
                .iter()
                .find_map(|p| p.expected(seq, exact_targets))
                .unwrap_or(0)
        })
    }
}

/// Where a run's count of comet's socket writes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WritesSource {
    /// comet's own counters (`imgate_writes_total`, `imgate_bytes_sent_total`).
    Comet,
    /// The clients' `recv` calls that returned data: a read may take several writes or part
    /// of one, so this only approximates the writes.
    ClientReads,
}

/// Whose CPU time a run's CPU per write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuSource {
    /// The server threads named `--server-threads` (comet's shards and their epoll threads).
    CometThreads,
    /// The whole `--server-pid` processes: logic's and job's threads too.
    Processes,
}

/// comet's socket writes over every push phase and the server CPU they cost, each from the
/// best source every phase had.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WriteCost {
    pub writes_source: WritesSource,
    pub writes: u64,
    pub bytes: u64,
    /// `None` without `--server-pid`.
    pub server_cpu_source: Option<CpuSource>,
    pub server_cpu_ns: Option<u64>,
}

/// One phase's writes and server CPU, from every source it had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseWrites {
    /// comet's own count, when every metrics endpoint answered.
    pub comet: Option<Writes>,
    /// The clients' reads (`writes`) and the bytes they read.
    pub client_reads: Writes,
    pub comet_cpu_ns: Option<u64>,
    pub server_cpu_ns: Option<u64>,
}

impl WriteCost {
    /// The phases' writes and CPU summed: comet's counts if every phase has them, else the
    /// client reads; comet's threads' CPU if every phase has it, else the processes'. `None`
    /// without phases.
    pub fn of(phases: &[PhaseWrites]) -> Option<WriteCost> {
        if phases.is_empty() {
            return None;
        }
        let comet: Option<Vec<Writes>> = phases.iter().map(|p| p.comet).collect();
        let (writes_source, counted) = match comet {
            Some(all) => (WritesSource::Comet, all),
            None => (
                WritesSource::ClientReads,
                phases.iter().map(|p| p.client_reads).collect(),
            ),
        };
        let comet_cpu: Option<u64> = phases.iter().map(|p| p.comet_cpu_ns).sum();
        let process_cpu: Option<u64> = phases.iter().map(|p| p.server_cpu_ns).sum();
        let (server_cpu_source, server_cpu_ns) = match (comet_cpu, process_cpu) {
            (Some(ns), _) => (Some(CpuSource::CometThreads), Some(ns)),
            (None, Some(ns)) => (Some(CpuSource::Processes), Some(ns)),
            (None, None) => (None, None),
        };
        let mut total = Writes::default();
        counted.iter().for_each(|w| total.add(w));
        Some(WriteCost {
            writes_source,
            writes: total.writes,
            bytes: total.bytes,
            server_cpu_source,
            server_cpu_ns,
        })
    }

    /// Mean bytes per write: the size the floor writes to compare with.
    pub fn mean_bytes(&self) -> Option<u64> {
        self.bytes.checked_div(self.writes)
    }

    pub fn cpu_ns_per_write(&self) -> Option<f64> {
        let cpu_ns = self.server_cpu_ns?;
        (self.writes > 0).then(|| cpu_ns as f64 / self.writes as f64)
    }

    /// comet's CPU per write over the floor writer's CPU per write (1.0: comet costs what the
    /// bare syscalls do).
    pub fn floor_ratio(&self, floor: &FloorResult) -> Option<f64> {
        let floor_ns = floor.cpu_ns_per_write;
        (floor.writes > 0 && floor_ns > 0.0).then_some(self.cpu_ns_per_write()? / floor_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floor(cpu_ns_per_write: f64) -> FloorResult {
        FloorResult {
            writes: 1_000_000,
            cpu_ns_per_write,
            ..FloorResult::default()
        }
    }

    fn w(writes: u64, bytes: u64) -> Writes {
        Writes { writes, bytes }
    }

    #[test]
    fn the_ratio_is_comet_cpu_per_write_over_the_floor_s_from_the_best_sources() {
        // Two phases with comet's counters and its threads' CPU: those, summed.
        let phases = [
            PhaseWrites {
                comet: Some(w(1_000_000, 318_000_000)),
                client_reads: w(990_000, 318_000_000),
                comet_cpu_ns: Some(4_000_000_000),
                server_cpu_ns: Some(5_000_000_000),
            },
            PhaseWrites {
                comet: Some(w(1_000_000, 318_000_000)),
                client_reads: w(1_010_000, 318_000_000),
                comet_cpu_ns: Some(4_120_000_000),
                server_cpu_ns: Some(5_000_000_000),
            },
        ];
        let cost = WriteCost::of(&phases).unwrap();
        assert_eq!(cost.writes_source, WritesSource::Comet);
        assert_eq!(cost.server_cpu_source, Some(CpuSource::CometThreads));
        assert_eq!((cost.writes, cost.mean_bytes()), (2_000_000, Some(318)));
        assert_eq!(cost.cpu_ns_per_write(), Some(4_060.0));
        let ratio = cost.floor_ratio(&floor(3_500.0)).unwrap();
        assert!((ratio - 1.16).abs() < 1e-9, "{ratio}");

        // One phase without comet's counters: client reads for every phase, so that counts
        // and CPU cover the same windows; no comet threads: the processes' CPU.
        let mut mixed = phases;
        mixed[1].comet = None;
        mixed[0].comet_cpu_ns = None;
        let cost = WriteCost::of(&mixed).unwrap();
        assert_eq!(cost.writes_source, WritesSource::ClientReads);
        assert_eq!(cost.server_cpu_source, Some(CpuSource::Processes));
        assert_eq!(cost.writes, 2_000_000);
        assert_eq!(cost.server_cpu_ns, Some(10_000_000_000));
        assert_eq!(cost.floor_ratio(&floor(2_500.0)), Some(2.0));
    }

    #[test]
    fn no_ratio_without_writes_cpu_or_a_floor() {
        assert_eq!(WriteCost::of(&[]), None);
        // Writes without server CPU: counted, no cost.
        let no_cpu = PhaseWrites {
            comet: Some(w(10, 100)),
            ..PhaseWrites::default()
        };
        let cost = WriteCost::of(&[no_cpu]).unwrap();
        assert_eq!((cost.writes, cost.mean_bytes()), (10, Some(10)));
        assert_eq!(
            (cost.server_cpu_source, cost.cpu_ns_per_write()),
            (None, None)
        );
        assert_eq!(cost.floor_ratio(&floor(1.0)), None);
        let no_writes = PhaseWrites {
            comet: Some(w(0, 0)),
            server_cpu_ns: Some(1_000),
            ..PhaseWrites::default()
        };
        let cost = WriteCost::of(&[no_writes]).unwrap();
        assert_eq!((cost.mean_bytes(), cost.cpu_ns_per_write()), (None, None));
        assert_eq!(cost.floor_ratio(&floor(100.0)), None);
        let some = WriteCost::of(&[PhaseWrites {
            comet: Some(w(10, 100)),
            server_cpu_ns: Some(1_000),
            ..PhaseWrites::default()
        }])
        .unwrap();
        assert_eq!(some.floor_ratio(&floor(0.0)), None);
        assert_eq!(some.floor_ratio(&FloorResult::default()), None);
        assert_eq!(some.floor_ratio(&floor(50.0)), Some(2.0));
    }
}
