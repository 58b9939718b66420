//! CPU sets: the `taskset -c` list format (`0`, `0-3`, `0,2-3`), the CPUs this process may run
//! on, and pinning the calling thread to a set.
//!
//! Everything the harness pins stays inside the set it was started with (`taskset -c
//! HARNESS_CPUS bench-harness …`), except what is pinned explicitly elsewhere: the floor's
//! writers go to the server's CPUs (`--floor-writer-cpus`).

use std::fmt;
use std::io;
use std::str::FromStr;

/// CPUs a set may name: the size of the kernel's `cpu_set_t` as libc declares it.
const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// A set of CPUs, sorted, without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuSet(Vec<usize>);

impl CpuSet {
    pub fn new(mut cpus: Vec<usize>) -> CpuSet {
        cpus.sort_unstable();
        cpus.dedup();
        CpuSet(cpus)
    }

    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `i`-th CPU of the set, wrapping around (`None` for an empty set).
    pub fn nth_wrapping(&self, i: usize) -> Option<usize> {
        (!self.0.is_empty()).then(|| self.0[i % self.0.len()])
    }
}

impl FromStr for CpuSet {
    type Err = String;

    /// Parses `taskset -c`'s list format: CPUs and ranges separated by commas.
    fn from_str(s: &str) -> Result<CpuSet, String> {
        let mut cpus = Vec::new();
        for item in s.split(',').map(str::trim) {
            let number = |t: &str| -> Result<usize, String> {
                let n: usize = t
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{t}` in CPU list `{s}` is not a CPU number"))?;
                if n >= MAX_CPUS {
                    return Err(format!("CPU {n} in `{s}` is above {}", MAX_CPUS - 1));
                }
                Ok(n)
            };
            match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (number(lo)?, number(hi)?);
                    if lo > hi {
                        return Err(format!("range `{item}` in `{s}` runs backwards"));
                    }
                    cpus.extend(lo..=hi);
                }
                None => cpus.push(number(item)?),
            }
        }
        Ok(CpuSet::new(cpus))
    }
}

impl fmt::Display for CpuSet {
    /// The same list format, ranges folded: `0-2,5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if start != self.0[0] {
                f.write_str(",")?;
            }
            if end > start {
                write!(f, "{start}-{end}")?;
            } else {
                write!(f, "{start}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

impl serde::Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The CPUs the calling thread may run on (its affinity mask: what `taskset` gave the
/// process). Empty only if the kernel refuses to say.
pub fn allowed() -> CpuSet {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return CpuSet::default();
        }
        CpuSet(
            (0..MAX_CPUS)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect(),
        )
    }
}

/// Pins the calling thread (and the threads it starts afterwards) to `cpus`; an empty set
/// leaves it where it is.
pub fn pin_thread(cpus: &CpuSet) -> io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; every CPU is below CPU_SETSIZE
    // (checked when the set was parsed or read); pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in &cpus.0 {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("pinning to CPUs {cpus}: {e}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> CpuSet {
        s.parse().unwrap()
    }

    #[test]
    fn lists_parse_as_taskset_reads_them_and_print_folded() {
        assert_eq!(set("1").cpus(), [1]);
        assert_eq!(set("0-3").cpus(), [0, 1, 2, 3]);
        assert_eq!(set("5, 0,2-3,2").cpus(), [0, 2, 3, 5]);
        assert_eq!(set("5,0,2-3").to_string(), "0,2-3,5");
        assert_eq!(set("0-1").to_string(), "0-1");
        assert!("".parse::<CpuSet>().is_err());
        assert!("3-1".parse::<CpuSet>().is_err());
        assert!("a".parse::<CpuSet>().is_err());
        assert!("0-99999".parse::<CpuSet>().is_err());
        assert_eq!(set("4,6").nth_wrapping(3), Some(6));
        assert_eq!(CpuSet::default().nth_wrapping(0), None);
    }

    #[test]
    fn a_pinned_thread_runs_only_where_it_was_pinned() {
        let before = allowed();
        assert!(!before.is_empty());
        let one = CpuSet::new(vec![before.cpus()[0]]);
        let seen = std::thread::spawn(move || {
            pin_thread(&one).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            let cpu = unsafe { libc::sched_getcpu() };
            (allowed(), cpu)
        })
        .join()
        .unwrap();
        assert_eq!(seen.0.cpus(), [before.cpus()[0]]);
        assert_eq!(seen.1 as usize, before.cpus()[0]);
        // The spawning thread keeps its own set.
        assert_eq!(allowed(), before);
    }
}
