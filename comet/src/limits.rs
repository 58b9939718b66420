//! Admission limits: connections per comet and per source address, counted from accept to
//! close (authenticated or not), and the per-connection upstream frame rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The comet holds `max_conns` connections.
    Comet,
    /// The source address holds `max_conns_per_ip` connections.
    Ip,
}

/// Connection counts shared by every shard of a comet. The per-address map is kept only when
/// a per-address limit is set; it is touched once at accept and once at close.
pub(crate) struct ConnLimits {
    max: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// One admitted connection; dropping it gives its place back.
pub(crate) struct Slot<'a> {
    limits: &'a ConnLimits,
    ip: Option<IpAddr>,
}

impl ConnLimits {
    /// `0` = no limit, for either.
    pub fn new(max: usize, max_per_ip: usize) -> Self {
        ConnLimits {
            max,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a place for a connection from `ip`, or says which limit refuses it.
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Slot<'_>, Refused> {
        let before = self.total.fetch_add(1, Ordering::Relaxed);
        if self.max > 0 && before >= self.max {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Comet);
        }
        let tracked = ip.filter(|_| self.max_per_ip > 0);
        if let Some(ip) = tracked {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(ip).or_default();
            if *n as usize >= self.max_per_ip {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err(Refused::Ip);
            }
            *n += 1;
        }
        Ok(Slot {
            limits: self,
            ip: tracked,
        })
    }

    /// Connections currently admitted.
    #[cfg(test)]
    pub fn current(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let limits = self.limits;
        limits.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// The distinct source addresses of a comet's authenticated connections, over all its shards
/// (goim's `ip_count`). Touched once when a connection registers and once when it leaves.
#[derive(Default)]
pub(crate) struct OnlineAddresses {
    counts: Mutex<HashMap<IpAddr, u32>>,
}

impl OnlineAddresses {
    /// One more connection from `ip`.
    pub fn enter(&self, ip: IpAddr) {
        *self.lock().entry(ip).or_default() += 1;
    }

    /// One connection from `ip` fewer.
    pub fn leave(&self, ip: IpAddr) {
        let mut counts = self.lock();
        if let Some(n) = counts.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&ip);
            }
        }
    }

    /// How many distinct addresses have a connection.
    pub fn distinct(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds on a process-wide monotonic clock, wrapping every 49 days; what
/// [`RateLimit`] counts in, so a connection's bucket takes 8 bytes.
pub(crate) fn now_ms() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u32
}

/// A token bucket over a connection's frames: `rate` per second on average, `burst` at once.
/// Tokens are kept in thousandths so rates below one per millisecond refill exactly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimit {
    milli_tokens: u32,
    /// [`now_ms`] of the last refill.
    refilled: u32,
}

/// Largest `burst` a bucket holds (its thousandths must fit in a u32).
pub(crate) const MAX_BURST: u32 = 1_000_000;

impl RateLimit {
    /// A full bucket.
    pub fn new(burst: u32, now_ms: u32) -> Self {
        RateLimit {
            milli_tokens: burst.min(MAX_BURST) * 1000,
            refilled: now_ms,
        }
    }

    /// Takes one token; false when the bucket is empty. `rate` 0 = unlimited.
    pub fn allow(&mut self, rate: u32, burst: u32, now_ms: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now_ms.wrapping_sub(self.refilled);
        if elapsed > 0 {
            self.refilled = now_ms;
            let refill = u64::from(elapsed) * u64::from(rate);
            let full = u64::from(burst.min(MAX_BURST)) * 1000;
            self.milli_tokens = (u64::from(self.milli_tokens) + refill).min(full) as u32;
        }
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comet_and_address_limits_admit_and_release() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = limits.admit(Some(a)).unwrap();
        let _a2 = limits.admit(Some(a)).unwrap();
        assert_eq!(limits.admit(Some(a)).err(), Some(Refused::Ip));
        let _b1 = limits.admit(Some(b)).unwrap();
        assert_eq!(limits.admit(Some(b)).err(), Some(Refused::Comet));
        assert_eq!(limits.current(), 3);
        drop(a1);
        assert_eq!(limits.current(), 2);
        let _a3 = limits.admit(Some(a)).unwrap();
        assert_eq!(limits.per_ip.lock().unwrap().get(&a), Some(&2));
    }

    #[test]
    fn no_limits_track_no_addresses() {
        let limits = ConnLimits::new(0, 0);
        let slots: Vec<_> = (0..100)
            .map(|_| limits.admit(Some("10.0.0.1".parse().unwrap())).unwrap())
            .collect();
        assert_eq!(limits.current(), 100);
        assert!(limits.per_ip.lock().unwrap().is_empty());
        drop(slots);
        assert_eq!(limits.current(), 0);
    }

    #[test]
    fn online_addresses_count_each_address_once() {
        let online = OnlineAddresses::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        online.enter(a);
        online.enter(a);
        online.enter(b);
        assert_eq!(online.distinct(), 2);
        online.leave(a);
        assert_eq!(online.distinct(), 2);
        online.leave(a);
        online.leave(a);
        assert_eq!(online.distinct(), 1);
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let start = 1000;
        let mut bucket = RateLimit::new(5, start);
        for _ in 0..5 {
            assert!(bucket.allow(10, 5, start));
        }
        assert!(!bucket.allow(10, 5, start), "burst spent");
        // 10 per second: one token every 100 ms, and 99 ms are not enough.
        assert!(!bucket.allow(10, 5, start + 99));
        assert!(bucket.allow(10, 5, start + 100));
        assert!(!bucket.allow(10, 5, start + 150));
        // Fractions of a token accumulate: 3 per second, 334 ms per token.
        let mut slow = RateLimit::new(1, start);
        assert!(slow.allow(3, 1, start));
        assert!(!slow.allow(3, 1, start + 100));
        assert!(!slow.allow(3, 1, start + 333));
        assert!(slow.allow(3, 1, start + 334));
        // A long pause refills only up to the burst, across the clock's wrap too.
        let later = start.wrapping_sub(10);
        let allowed = (0..20).filter(|_| bucket.allow(10, 5, later)).count();
        assert_eq!(allowed, 5);
        // Rate 0 is unlimited.
        assert!((0..1000).all(|_| bucket.allow(0, 1, later)));
        assert!(now_ms() < u32::MAX);
    }
}
