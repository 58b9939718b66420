//! CPU time and resident memory of processes, read from /proc.

use std::io;

/// CPU time and memory of one or more processes at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// User + system CPU time of every thread, dead ones included (clock-tick resolution).
    pub cpu_ns: u64,
    /// Resident set size.
    pub rss_bytes: u64,
}

impl std::ops::Add for ProcSample {
    type Output = ProcSample;
    fn add(self, other: ProcSample) -> ProcSample {
        ProcSample {
            cpu_ns: self.cpu_ns + other.cpu_ns,
            rss_bytes: self.rss_bytes + other.rss_bytes,
        }
    }
}

/// Reads `/proc/<pid>/stat` (utime, stime) and `/proc/<pid>/status` (VmRSS).
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse(&stat, &status, clock_ticks_per_sec()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat or status"),
        )
    })
}

/// The sum over `pids`; `None` when `pids` is empty or one cannot be read.
pub fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    let mut total = ProcSample::default();
    for &pid in pids {
        total = total + sample(pid).ok()?;
    }
    Some(total)
}

/// This process's resident set size.
pub fn self_rss() -> u64 {
    sample(std::process::id()).map_or(0, |s| s.rss_bytes)
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// `clock`'s time in nanoseconds (a clock every Linux has: monotonic, thread CPU time).
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Parses the two files. The command name in `stat` is in parentheses and may hold spaces,
/// so fields are counted from the last `)`: utime and stime are fields 14 and 15.
fn parse(stat: &str, status: &str, ticks_per_sec: u64) -> Option<ProcSample> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(ProcSample {
        cpu_ns: (utime + stime) * (1_000_000_000 / ticks_per_sec),
        rss_bytes: rss_kb * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let stat = "4242 (im gate (x)) S 1 4242 4242 0 -1 4194560 1003 0 0 0 250 75 0 0 20 0 6 0 12345 1000000 2000 18446744073709551615";
        let status = "Name:\timgate\nVmPeak:\t  999 kB\nVmRSS:\t   81920 kB\nThreads:\t6\n";
        assert_eq!(
            parse(stat, status, 100),
            Some(ProcSample {
                cpu_ns: 3_250_000_000,
                rss_bytes: 81920 * 1024
            })
        );
        assert_eq!(parse("garbage", status, 100), None);
    }

    #[test]
    fn reads_this_process() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(sample_all(&[]).is_none());
        let spin = std::time::Instant::now();
        while spin.elapsed().as_millis() < 30 {
            std::hint::black_box(0);
        }
        assert!(thread_cpu_ns() > 0);
    }
}
