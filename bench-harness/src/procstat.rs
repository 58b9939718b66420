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

/// CPU time of the threads of `pids` whose names start with `prefix` (comet's shard threads
/// are `comet-shard-N` and `comet-epoll-N`); `None` when no thread of them has such a name.
/// A thread that ended is not counted (a process's own figure keeps them).
pub fn threads_cpu_ns(pids: &[u32], prefix: &str) -> Option<u64> {
    let ticks = clock_ticks_per_sec();
    let mut total = None;
    for &pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((name, cpu_ns)) = parse_stat(&stat, ticks) {
                if name.starts_with(prefix) {
                    *total.get_or_insert(0) += cpu_ns;
                }
            }
        }
    }
    total
}

/// Busy time of `cpus` since boot, from /proc/stat: user, nice, system, irq and softirq of
/// each, whoever ran there (idle, iowait and steal are not busy; guest time is inside user).
/// On loopback the receive side's softirq work runs on the sender's core, so this is what the
/// server's core paid, not only its threads. `None` if a CPU is missing or /proc/stat unread.
pub fn cores_busy_ns(cpus: &[usize]) -> Option<u64> {
    if cpus.is_empty() {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cores_busy(&stat, cpus, clock_ticks_per_sec())
}

fn parse_cores_busy(stat: &str, cpus: &[usize], ticks_per_sec: u64) -> Option<u64> {
    let mut total = 0;
    for cpu in cpus {
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal ...
        let busy = [0, 1, 2, 5, 6]
            .iter()
            .map(|&i| fields.get(i).copied())
            .sum::<Option<u64>>()?;
        total += busy * (1_000_000_000 / ticks_per_sec);
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

/// Parses a process's (or a thread's) `stat`: its name and its utime + stime. The name is in
/// parentheses and may hold spaces and parentheses, so fields are counted from the last `)`:
/// utime and stime are fields 14 and 15.
fn parse_stat(stat: &str, ticks_per_sec: u64) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) * (1_000_000_000 / ticks_per_sec)))
}

/// Parses `stat` and `status` into a sample.
fn parse(stat: &str, status: &str, ticks_per_sec: u64) -> Option<ProcSample> {
    let (_, cpu_ns) = parse_stat(stat, ticks_per_sec)?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(ProcSample {
        cpu_ns,
        rss_bytes: rss_kb * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_s_busy_time_counts_softirq_and_not_idle_or_steal() {
        let stat = "cpu  10 0 10 1000 0 0 5 0 0 0\n\
            cpu0 1 0 2 500 7 0 0 9 0 0\n\
            cpu1 100 3 20 400 8 4 50 9 0 0\n\
            intr 1 2 3\n";
        // cpu1: 100 + 3 + 20 + 4 + 50 ticks.
        assert_eq!(parse_cores_busy(stat, &[1], 100), Some(177 * 10_000_000));
        assert_eq!(parse_cores_busy(stat, &[0, 1], 100), Some(180 * 10_000_000));
        assert_eq!(parse_cores_busy(stat, &[2], 100), None);
        assert!(cores_busy_ns(&[0]).is_some_and(|ns| ns > 0));
        assert_eq!(cores_busy_ns(&[]), None);
    }

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
        assert_eq!(parse_stat(stat, 100), Some(("im gate (x)", 3_250_000_000)));
    }

    #[test]
    fn counts_only_the_threads_named_with_the_prefix() {
        let me = [std::process::id()];
        // Spins until the calling thread has used `ms` of CPU.
        let spin = |ms: u64| {
            let start = thread_cpu_ns();
            while thread_cpu_ns() - start < ms * 1_000_000 {
                std::hint::black_box(0);
            }
        };
        let busy = std::thread::Builder::new()
            .name("bh-test-busy".into())
            .spawn(move || spin(120))
            .unwrap();
        busy.join().ok();
        // A live thread with the name: its CPU counts; an ended one's does not.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let live = std::thread::Builder::new()
            .name("bh-test-live".into())
            .spawn(move || {
                spin(120);
                rx.recv().ok();
            })
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let cpu = loop {
            let cpu = threads_cpu_ns(&me, "bh-test-live").unwrap_or(0);
            if cpu >= 100_000_000 || std::time::Instant::now() > deadline {
                break cpu;
            }
            std::thread::yield_now();
        };
        assert!(cpu >= 100_000_000, "{cpu} ns");
        assert!(cpu < 2_000_000_000, "{cpu} ns");
        assert_eq!(threads_cpu_ns(&me, "bh-test-busy"), None);
        assert_eq!(threads_cpu_ns(&me, "no-such-thread-"), None);
        assert_eq!(threads_cpu_ns(&[], "bh-"), None);
        tx.send(()).unwrap();
        live.join().unwrap();
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
