//! Counting what arrived against what was pushed: per-push delivery counts (merged over every
//! client, executor and worker), per-client order tracking, and latency histograms that travel
//! between processes as (value, count) pairs.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest push sequence counted; a larger one in a body is treated as foreign (it would make
/// the count vector grow without bound).
pub const MAX_SEQ: u32 = 50_000_000;

/// How many times each push (by sequence number) reached a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushCounts(Vec<u32>);

impl PushCounts {
    /// Counts one delivery of push `seq`.
    pub fn record(&mut self, seq: u32) {
        let i = seq as usize;
        if i >= self.0.len() {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += 1;
    }

    /// Deliveries of push `seq`.
    pub fn get(&self, seq: u32) -> u32 {
        self.0.get(seq as usize).copied().unwrap_or(0)
    }

    /// One past the highest sequence delivered.
    pub fn len(&self) -> u32 {
        self.0.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds another tally (another client, executor or worker).
    pub fn merge(&mut self, other: &PushCounts) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    /// Run-length form `[first seq, run length, count]`: every push usually has the same count,
    /// so a run of any length is one triple.
    pub fn to_runs(&self) -> Vec<[u64; 3]> {
        let mut runs: Vec<[u64; 3]> = Vec::new();
        for (seq, &count) in self.0.iter().enumerate() {
            match runs.last_mut() {
                Some(run) if run[2] == u64::from(count) => run[1] += 1,
                _ => runs.push([seq as u64, 1, u64::from(count)]),
            }
        }
        runs
    }

    /// The inverse of [`PushCounts::to_runs`]; runs that would exceed [`MAX_SEQ`] are cut.
    pub fn from_runs(runs: &[[u64; 3]]) -> PushCounts {
        let mut counts = PushCounts::default();
        for &[first, len, count] in runs {
            let end = (first + len).min(u64::from(MAX_SEQ) + 1);
            if first >= end {
                continue;
            }
            if counts.0.len() < end as usize {
                counts.0.resize(end as usize, 0);
            }
            for c in &mut counts.0[first as usize..end as usize] {
                *c += count as u32;
            }
        }
        counts
    }
}

/// What a client's next message says about the order of pushes it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The next push in sequence.
    InOrder,
    /// `n` pushes before this one never arrived (yet).
    Gap(u32),
    /// A push at or below one already seen: a duplicate, or one that overtook another.
    Behind,
}

/// A client's position in a stream of pushes that should all reach it, in order (a room, a
/// broadcast, or one user pushed to over one HTTP connection). Four bytes per client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTrack {
    next: u32,
}

impl SeqTrack {
    /// Starts expecting `first`.
    pub fn starting_at(first: u32) -> SeqTrack {
        SeqTrack { next: first }
    }

    /// Notes push `seq` and says whether it came in order.
    pub fn observe(&mut self, seq: u32) -> Order {
        if seq == self.next {
            self.next += 1;
            Order::InOrder
        } else if seq > self.next {
            let missed = seq - self.next;
            self.next = seq + 1;
            Order::Gap(missed)
        } else {
            Order::Behind
        }
    }

    /// The sequence expected next.
    pub fn next(&self) -> u32 {
        self.next
    }
}

/// One push whose delivery count is not what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub seq: u32,
    pub expected: u32,
    pub delivered: u32,
}

/// Deliveries checked against expectations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCheck {
    /// Messages that should have arrived (sum over pushes of their expected count).
    pub expected: u64,
    /// Messages of this run that arrived (each delivery of each push).
    pub delivered: u64,
    /// Deliveries missing: sum over pushes of expected − delivered where short.
    pub lost: u64,
    /// Deliveries beyond the expected count: sum over pushes of delivered − expected where over.
    pub duplicated: u64,
    /// Pushes whose count differs from the expected one.
    pub pushes_mismatched: u64,
    /// The first few of them.
    pub first_mismatches: Vec<Mismatch>,
}

impl DeliveryCheck {
    /// Whether every push arrived exactly as often as expected.
    pub fn exact(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }
}

/// Compares `counts` with `expected(seq)` for every sequence in `seqs`. With `whole_run`, any
/// delivery of a sequence outside `seqs` counts as duplicated (nothing was expected there);
/// without, sequences outside `seqs` are another phase's business and are ignored.
pub fn check(
    counts: &PushCounts,
    seqs: std::ops::Range<u32>,
    whole_run: bool,
    expected: impl Fn(u32) -> u32,
) -> DeliveryCheck {
    const SHOWN: usize = 20;
    let mut out = DeliveryCheck::default();
    let note = |out: &mut DeliveryCheck, seq, exp, got| {
        out.pushes_mismatched += 1;
        if out.first_mismatches.len() < SHOWN {
            out.first_mismatches.push(Mismatch {
                seq,
                expected: exp,
                delivered: got,
            });
        }
    };
    for seq in seqs.clone() {
        let (exp, got) = (expected(seq), counts.get(seq));
        out.expected += u64::from(exp);
        out.delivered += u64::from(got);
        if got < exp {
            out.lost += u64::from(exp - got);
            note(&mut out, seq, exp, got);
        } else if got > exp {
            out.duplicated += u64::from(got - exp);
            note(&mut out, seq, exp, got);
        }
    }
    let outside = if whole_run { 0..counts.len() } else { 0..0 };
    for seq in outside.filter(|s| !seqs.contains(s)) {
        let got = counts.get(seq);
        if got > 0 {
            out.delivered += u64::from(got);
            out.duplicated += u64::from(got);
            note(&mut out, seq, 0, got);
        }
    }
    out
}

/// A histogram of microseconds from 1 µs to one hour at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records `value`, clamped into the histogram's range.
pub fn record(hist: &mut Histogram<u64>, value: u64) {
    let _ = hist.record(value.clamp(1, 3_600_000_000));
}

/// A histogram as (value, count) pairs, one per non-empty bucket.
pub fn to_pairs(hist: &Histogram<u64>) -> Vec<[u64; 2]> {
    hist.iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

/// Adds (value, count) pairs into `hist`.
pub fn add_pairs(hist: &mut Histogram<u64>, pairs: &[[u64; 2]]) {
    for &[value, count] in pairs {
        let _ = hist.record_n(value.clamp(1, 3_600_000_000), count);
    }
}

/// The summary every report uses: `p50`, `p90`, `p99`, `p999`, `max`, plus `min`, `mean`
/// and `count`, in the histogram's unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(hist: &Histogram<u64>) -> Percentiles {
        if hist.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: hist.len(),
            min: hist.min(),
            mean: (hist.mean() * 10.0).round() / 10.0,
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_merge_adds() {
        let mut a = PushCounts::default();
        for seq in [0, 1, 2, 3, 5, 5, 6] {
            a.record(seq);
        }
        assert_eq!(a.to_runs(), [[0, 4, 1], [4, 1, 0], [5, 1, 2], [6, 1, 1]]);
        assert_eq!(PushCounts::from_runs(&a.to_runs()), a);
        let mut b = PushCounts::default();
        b.record(4);
        b.record(9);
        b.merge(&a);
        assert_eq!(
            (0..10).map(|s| b.get(s)).collect::<Vec<_>>(),
            [1, 1, 1, 1, 1, 2, 1, 0, 0, 1]
        );
    }

    #[test]
    fn order_tracking_sees_gaps_and_duplicates() {
        let mut t = SeqTrack::default();
        assert_eq!(t.observe(0), Order::InOrder);
        assert_eq!(t.observe(1), Order::InOrder);
        assert_eq!(t.observe(4), Order::Gap(2));
        assert_eq!(t.observe(4), Order::Behind);
        assert_eq!(t.observe(2), Order::Behind);
        assert_eq!(t.observe(5), Order::InOrder);
        assert_eq!(t.next(), 6);
        assert_eq!(SeqTrack::starting_at(7).observe(7), Order::InOrder);
    }

    #[test]
    fn check_finds_lost_duplicated_and_unexpected() {
        // 3 pushes to 10 clients each: push 1 reached 9, push 2 reached 11, and push 7 was
        // never sent but arrived once.
        let mut counts = PushCounts::default();
        for (seq, n) in [(0, 10), (1, 9), (2, 11), (7, 1)] {
            for _ in 0..n {
                counts.record(seq);
            }
        }
        let c = check(&counts, 0..3, true, |_| 10);
        // Within one phase, push 7 is none of its business.
        assert_eq!(check(&counts, 0..3, false, |_| 10).duplicated, 1);
        assert_eq!(c.expected, 30);
        assert_eq!(c.delivered, 31);
        assert_eq!(c.lost, 1);
        assert_eq!(c.duplicated, 2);
        assert_eq!(c.pushes_mismatched, 3);
        assert_eq!(
            c.first_mismatches[0],
            Mismatch {
                seq: 1,
                expected: 10,
                delivered: 9
            }
        );
        assert!(!c.exact());
        let mut perfect = PushCounts::default();
        (0..3).for_each(|s| perfect.record(s));
        assert!(check(&perfect, 0..3, true, |_| 1).exact());
        // A push nobody received is all lost.
        assert_eq!(check(&perfect, 0..4, true, |_| 1).lost, 1);
    }

    #[test]
    fn histograms_survive_the_trip_as_pairs() {
        let mut a = new_histogram();
        for v in [3, 3, 100, 2500, 1_000_000] {
            record(&mut a, v);
        }
        record(&mut a, 0); // clamped to 1
        let mut b = new_histogram();
        add_pairs(&mut b, &to_pairs(&a));
        add_pairs(&mut b, &to_pairs(&a));
        assert_eq!(b.len(), 12);
        let p = Percentiles::of(&b);
        assert_eq!(p.min, 1);
        assert_eq!(p.p50, 3);
        assert!(p.max >= 1_000_000 && p.max < 1_001_000);
        assert_eq!(Percentiles::of(&new_histogram()).count, 0);
    }
}
