//! Rate-limited warnings: a warning that can repeat thousands of times a second (`accept
//! failed: Too many open files`) is logged at most once per interval, with the count of the
//! ones suppressed since the last one logged.
//!
//! ```
//! use imgate_shared::log_limit::RateLimit;
//! static ACCEPT: RateLimit = RateLimit::per_secs(10);
//! for _ in 0..3 {
//!     imgate_shared::warn_limited!(ACCEPT, "accept failed: {}", "Too many open files");
//! }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// One call site's limit: lock-free, so it can sit in a `static` shared by every shard.
#[derive(Debug)]
pub struct RateLimit {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] when the next warning may be logged (0: now).
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // +1 so that the first call is never at 0, the "log now" mark.
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl RateLimit {
    /// At most one warning per `secs` seconds.
    pub const fn per_secs(secs: u64) -> RateLimit {
        RateLimit {
            interval_ms: secs * 1000,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last one)` when this occurrence should be logged; `None`
    /// (and counted) when it should not.
    pub fn check(&self) -> Option<u64> {
        let now = now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// `tracing::warn!` through a [`RateLimit`]: logs with a `suppressed` field (how many were
/// dropped since the last one logged), or counts the warning as suppressed.
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.check() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn logs_once_per_interval_and_counts_the_rest() {
        let limit = RateLimit::per_secs(3600);
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        // Open the window again as if the interval had passed.
        limit.next_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(limit.check(), Some(2));
    }
}
