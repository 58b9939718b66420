//! What a run measured: each push phase, the idle hold, and every worker's final figures
//! merged. The coordinator gathers them; the report reads them.

use hdrhistogram::Histogram;

use crate::pusher::{PushKind, PushOutcome, PushPlan};
use crate::tally::{self, DeliveryCheck, Percentiles, PushCounts};
use crate::worker::Counters;

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
