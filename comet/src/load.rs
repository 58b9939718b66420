//! How loaded a shard is, as its online reports tell logic (and job, which paces big rooms by
//! it): how late its 100 ms tick ran, and what share of its time its event loop was busy.

use std::cell::Cell;
use std::time::{Duration, Instant};

use imgate_runtime::LoopStats;

/// How busy the shard's event loop was between two online reports.
pub(crate) struct Busy {
    since: Cell<Instant>,
    parked_ns: Cell<u64>,
}

impl Busy {
    pub fn new(stats: &LoopStats) -> Self {
        Busy {
            since: Cell::new(Instant::now()),
            parked_ns: Cell::new(stats.parked_ns()),
        }
    }

    /// Thousandths of the time since the last call that the loop did not spend parked.
    /// Called on the shard's own thread, so the parked time is up to date.
    pub fn take_permille(&self, stats: &LoopStats) -> u32 {
        let now = Instant::now();
        let elapsed = now.duration_since(self.since.replace(now)).as_nanos() as u64;
        let parked_now = stats.parked_ns();
        let parked = parked_now.saturating_sub(self.parked_ns.replace(parked_now));
        if elapsed == 0 {
            return 0;
        }
        (elapsed.saturating_sub(parked) * 1000 / elapsed) as u32
    }
}

/// Sum and count of tick delays, taken (and reset) by each online report.
#[derive(Default)]
pub(crate) struct Lag {
    sum_us: Cell<u64>,
    ticks: Cell<u32>,
}

impl Lag {
    pub fn record(&self, late: Duration) {
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.set(self.sum_us.get().saturating_add(us));
        self.ticks.set(self.ticks.get().saturating_add(1));
    }

    /// The mean delay since the last call, in microseconds (0 without ticks).
    pub fn take_mean_us(&self) -> u32 {
        let (sum, ticks) = (self.sum_us.take(), self.ticks.take());
        u32::try_from(sum / u64::from(ticks.max(1))).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_mean_since_the_last_report() {
        let lag = Lag::default();
        assert_eq!(lag.take_mean_us(), 0, "no ticks yet");
        lag.record(Duration::from_micros(100));
        lag.record(Duration::from_micros(300));
        assert_eq!(lag.take_mean_us(), 200);
        assert_eq!(lag.take_mean_us(), 0, "taking resets it");
        lag.record(Duration::from_secs(10_000));
        assert_eq!(lag.take_mean_us(), u32::MAX, "saturates");
    }
}
