//! How much of the comets' capacity big rooms may use: the room write budget, learned from how
//! busy the comets' event loops are.
//!
//! Every comet shard tells job, on job's own link to it, what share of each 100 ms tick its
//! event loop was busy (not parked). That measures what pacing spends, the shard's core, and
//! nothing else: unlike how late a timer fires, it does not mix in other processes' load and
//! does not stay low while a busy loop keeps its timers on time.
//!
//! The controller keeps the busiest shard near `target` (a share of its time): it smooths the
//! reports, gives big rooms 10 % more writes a second at each look while the busiest shard is
//! below the band around the target (25 % while under half the target), 20 % fewer while it
//! is above it, 40 % fewer while a comet has a backlog (its fan-out is behind what job sent
//! it), and holds still inside the band. More writes mean more frequent, smaller batches
//! (lower latency); fewer mean larger batches and fewer writes for the same messages.
//! Multiplicative steps of this size converge
//! into the band from either side within a few seconds and do not oscillate across it (the
//! band is wider than one step moves the load).

use std::time::Duration;

/// The smallest and largest share of `job.room_writes_per_shard` the budget takes.
pub(crate) const MIN_SHARE: f64 = 0.01;
/// Four times the nominal budget: about what one core can write (200,000 writes a second at
/// the default 50,000), so an idle gateway's first burst overshoots by little.
pub(crate) const MAX_SHARE: f64 = 4.0;
/// Half the width of the band around the target in which the budget holds still.
const BAND: f64 = 0.1;
/// The budget's step down (over the band), down on a backlog, and up (under the band).
const CUT: f64 = 0.8;
const BACKLOG_CUT: f64 = 0.6;
const GROW: f64 = 1.1;
/// The step up while the busiest shard is under half the target: a budget cut to its floor
/// (by a connect storm, say) comes back within a couple of seconds.
const FAST_GROW: f64 = 1.25;
/// Weight of the newest report in the smoothed busy share, when big rooms flush at least
/// once a tick; less when they flush less often (see [`Budget::pace_every`]).
const SMOOTHING: f64 = 0.5;
/// How often job looks at the comets' load (they report every 100 ms).
pub(crate) const LOOK: Duration = Duration::from_millis(100);

/// The learned room write budget, as a share of `job.room_writes_per_shard`.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    target: f64,
    share: f64,
    smoothed: Option<f64>,
    /// Weight of the newest report in `smoothed`.
    weight: f64,
    /// Looks to wait after a backlog cut before the next one, and looks waited so far.
    cut_every: u32,
    since_cut: u32,
}

impl Budget {
    /// A budget that keeps the busiest shard near `target` (0–1); 0 turns learning off and
    /// keeps the whole of `room_writes_per_shard`.
    pub(crate) fn new(target: f64) -> Self {
        Budget {
            target: target.clamp(0.0, 1.0),
            share: 1.0,
            smoothed: None,
            weight: SMOOTHING,
            cut_every: 1,
            since_cut: u32::MAX,
        }
    }

    /// Tells the budget how often the biggest paced room flushes. A shard's report covers
    /// one 100 ms tick; when a big room flushes every second, one tick in ten holds its
    /// fan-out and the others are idle, so the reports are averaged over the room's interval
    /// (smoothing weighted by ticks per interval), and a backlog, which takes that long to
    /// drain after a cut, is cut for at most once per interval.
    pub(crate) fn pace_every(&mut self, interval: Option<Duration>) {
        let looks = interval.map_or(1.0, |every| every.as_secs_f64() / LOOK.as_secs_f64());
        let looks = looks.clamp(1.0, 20.0);
        self.weight = SMOOTHING / looks;
        self.cut_every = looks.round() as u32;
    }

    /// Takes one look at the comets: the busiest shard's busy share over its last tick (0–1),
    /// whether a comet link holds a backlog, and whether big rooms spent the budget lately
    /// (a paced room flushed). Cutting the budget only helps when they did: a shard busy with
    /// something else (a connect storm, say) leaves it alone rather than driving it to its
    /// floor for the pushes that come next. Returns the share of `room_writes_per_shard` to
    /// use from now on.
    pub(crate) fn observe(&mut self, busy: f64, backlog: bool, spent: bool) -> f64 {
        let busy = busy.clamp(0.0, 1.0);
        let smoothed = match self.smoothed {
            Some(before) => before + self.weight * (busy - before),
            None => busy,
        };
        self.smoothed = Some(smoothed);
        if self.target > 0.0 {
            let over = backlog || smoothed > self.target + BAND;
            if over && !spent {
                return self.share;
            }
            self.since_cut = self.since_cut.saturating_add(1);
            if backlog {
                // The cut before this one needs an interval to show; meanwhile, hold.
                if self.since_cut >= self.cut_every {
                    self.share = (self.share * BACKLOG_CUT).max(MIN_SHARE);
                    self.since_cut = 0;
                }
            } else if smoothed > self.target + BAND {
                self.share = (self.share * CUT).max(MIN_SHARE);
            } else if smoothed < self.target / 2.0 {
                self.share = (self.share * FAST_GROW).min(MAX_SHARE);
            } else if smoothed < self.target - BAND {
                self.share = (self.share * GROW).min(MAX_SHARE);
            }
        }
        self.share
    }

    /// The share in use.
    #[cfg(test)]
    pub(crate) fn share(&self) -> f64 {
        self.share
    }

    /// The smoothed busy share of the busiest shard, once a report arrived.
    pub(crate) fn busy(&self) -> Option<f64> {
        self.smoothed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A comet shard under room load: busy = base + what the budget lets big rooms spend,
    /// capped at 1, seen by job one look late (the report describes the tick before).
    struct Shard {
        base: f64,
        per_share: f64,
        last: f64,
    }

    impl Shard {
        fn step(&mut self, budget: &mut Budget, backlog: bool) -> f64 {
            let seen = self.last;
            let share = budget.observe(seen, backlog, true);
            self.last = (self.base + self.per_share * share).min(1.0);
            share
        }
    }

    #[test]
    fn the_budget_rises_while_the_shards_are_idle_and_stops_at_its_ceiling() {
        let mut budget = Budget::new(0.75);
        let mut share = 1.0;
        for _ in 0..100 {
            let next = budget.observe(0.05, false, true);
            assert!(next >= share, "it only rises while idle");
            share = next;
        }
        assert_eq!(share, MAX_SHARE);
    }

    #[test]
    fn the_budget_falls_while_saturated_or_backlogged_and_stops_at_its_floor() {
        let mut budget = Budget::new(0.75);
        assert!((budget.observe(1.0, false, true) - 0.8).abs() < 1e-9);
        assert!((budget.observe(1.0, false, true) - 0.64).abs() < 1e-9);
        // A backlog cuts it, harder, even when the reports look calm.
        let calm_but_behind = Budget::new(0.75).observe(0.1, true, true);
        assert!((calm_but_behind - 0.6).abs() < 1e-9);
        for _ in 0..100 {
            budget.observe(1.0, false, true);
        }
        assert_eq!(budget.share(), MIN_SHARE);
    }

    #[test]
    fn the_budget_converges_into_the_band_and_holds_there() {
        // Idle 5 %, and each unit of share costs 30 % of the core: 0.75 needs a share of 2.33.
        for start in [MIN_SHARE, 1.0, MAX_SHARE] {
            let mut budget = Budget::new(0.75);
            budget.share = start;
            let mut shard = Shard {
                base: 0.05,
                per_share: 0.3,
                last: 0.05,
            };
            for _ in 0..200 {
                shard.step(&mut budget, false);
            }
            // Settled: the next ten looks stay in the band and move the budget little.
            let settled = budget.share();
            for _ in 0..10 {
                let share = shard.step(&mut budget, false);
                let busy = budget.busy().unwrap();
                assert!((0.6..=0.9).contains(&busy), "from {start}: busy {busy}");
                assert!(
                    (share / settled - 1.0).abs() <= 0.25,
                    "from {start}: {settled} then {share}"
                );
            }
        }
    }

    #[test]
    fn a_shard_busy_with_other_work_does_not_cut_a_budget_nobody_spends() {
        let mut budget = Budget::new(0.75);
        // Saturated by connects while no big room flushes: held.
        for _ in 0..20 {
            assert_eq!(budget.observe(1.0, false, false), 1.0);
        }
        // Idle: it still grows, spent or not.
        assert!(budget.observe(0.0, false, false) > 1.0);
        // Big rooms flushing into a saturated shard: cut.
        let before = budget.observe(1.0, false, false);
        assert!(budget.observe(1.0, false, true) < before);
    }

    /// A room flushing once a second: the busy share is averaged over the interval (a
    /// saturated tick between idle ones moves it a little), and a lasting backlog is cut once
    /// per interval, not at every look.
    #[test]
    fn a_slow_flushing_room_is_paced_over_its_interval() {
        let mut budget = Budget::new(0.75);
        budget.pace_every(Some(Duration::from_secs(1)));
        budget.observe(0.5, false, true);
        budget.observe(1.0, false, true);
        assert!(budget.busy().unwrap() < 0.6, "{:?}", budget.busy());
        let mut cuts = 0;
        let mut share = budget.share();
        for _ in 0..20 {
            let next = budget.observe(0.5, true, true);
            if next < share {
                cuts += 1;
            }
            share = next;
        }
        assert_eq!(cuts, 2, "one backlog cut per second over two seconds");
        // Flushing every tick again: back to the quick response.
        budget.pace_every(None);
        let before = budget.share();
        budget.observe(0.5, true, true);
        assert!(budget.share() < before);
    }

    #[test]
    fn a_zero_target_keeps_the_whole_budget() {
        let mut budget = Budget::new(0.0);
        assert_eq!(budget.observe(1.0, true, true), 1.0);
        assert_eq!(budget.observe(0.0, false, true), 1.0);
    }
}
