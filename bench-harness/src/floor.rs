//! The physical floor: what writing frames to loopback sockets costs with nothing else in the
//! way. One writer thread pinned to a core writes `frame_bytes` at a time to K connections in
//! turn (plain non-blocking `send`, as comet's writer does), a reader thread on another core
//! drains them with epoll. CPU per write is the writer thread's CPU time over its writes; comet's
//! CPU per write is quoted as a ratio to it.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::procstat;

/// What to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorConfig {
    /// Loopback connections written to in turn.
    pub connections: usize,
    /// Bytes per write.
    pub frame_bytes: usize,
    pub duration: Duration,
    /// Cores for the writer and the reader (`None`: not pinned).
    pub writer_cpu: Option<usize>,
    pub reader_cpu: Option<usize>,
}

/// What it cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FloorResult {
    pub connections: usize,
    pub frame_bytes: usize,
    pub seconds: f64,
    pub writes: u64,
    /// Writes refused because the socket buffer was full (not counted in `writes`).
    pub would_block: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub writes_per_sec: f64,
    /// Writer thread CPU / writes: the floor comet's writes are compared with.
    pub cpu_ns_per_write: f64,
    /// Reader thread CPU / writes.
    pub reader_cpu_ns_per_write: f64,
}

/// Runs the floor measurement.
pub fn run(config: &FloorConfig) -> io::Result<FloorResult> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut readers = Vec::with_capacity(config.connections);
    let mut writers = Vec::with_capacity(config.connections);
    for _ in 0..config.connections.max(1) {
        let r = TcpStream::connect(addr)?;
        let (w, _) = listener.accept()?;
        r.set_nonblocking(true)?;
        w.set_nonblocking(true)?;
        w.set_nodelay(true)?;
        readers.push(r);
        writers.push(w);
    }
    let frame = vec![0x5au8; config.frame_bytes.max(1)];
    // Bytes the writer wrote, once it is done: the reader drains until it has them all.
    let target = AtomicU64::new(u64::MAX);
    let bytes_read = AtomicU64::new(0);
    let reader_cpu = AtomicU64::new(0);
    let reader_fds: Vec<RawFd> = readers.iter().map(|s| s.as_raw_fd()).collect();

    let (writes, written, would_block, writer_cpu, elapsed) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            pin(config.reader_cpu);
            let start = procstat::thread_cpu_ns();
            let result = drain(&reader_fds, &target, &bytes_read);
            reader_cpu.store(procstat::thread_cpu_ns() - start, Ordering::Relaxed);
            result
        });
        let writer = scope.spawn(|| {
            pin(config.writer_cpu);
            let fds: Vec<RawFd> = writers.iter().map(|s| s.as_raw_fd()).collect();
            let cpu0 = procstat::thread_cpu_ns();
            let t0 = Instant::now();
            let end = t0 + config.duration;
            let (mut writes, mut written, mut would_block) = (0u64, 0u64, 0u64);
            'outer: loop {
                for &fd in &fds {
                    // SAFETY: `frame` is valid for its length and `fd` an open socket.
                    let n = unsafe {
                        libc::send(
                            fd,
                            frame.as_ptr().cast(),
                            frame.len(),
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    };
                    if n > 0 {
                        writes += 1;
                        written += n as u64;
                    } else {
                        would_block += 1;
                    }
                    if (writes + would_block) % 1024 == 0 && Instant::now() >= end {
                        break 'outer;
                    }
                }
            }
            (
                writes,
                written,
                would_block,
                procstat::thread_cpu_ns() - cpu0,
                t0.elapsed(),
            )
        });
        let out = writer.join().expect("writer thread");
        target.store(out.1, Ordering::Relaxed);
        let _ = reader.join().expect("reader thread");
        out
    });
    let writes_f = writes.max(1) as f64;
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Ok(FloorResult {
        connections: config.connections.max(1),
        frame_bytes: frame.len(),
        seconds: elapsed.as_secs_f64(),
        writes,
        would_block,
        bytes_written: written,
        bytes_read: bytes_read.load(Ordering::Relaxed),
        writes_per_sec: round(writes as f64 / elapsed.as_secs_f64()),
        cpu_ns_per_write: round(writer_cpu as f64 / writes_f),
        reader_cpu_ns_per_write: round(reader_cpu.load(Ordering::Relaxed) as f64 / writes_f),
    })
}

/// Reads every ready socket until it has read `target` bytes (set when the writer is done),
/// or 5 s after that.
fn drain(fds: &[RawFd], target: &AtomicU64, bytes_read: &AtomicU64) -> io::Result<()> {
    // SAFETY: plain epoll calls on descriptors this process owns; the event array outlives
    // every epoll_wait that writes into it.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        for (i, &fd) in fds.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev);
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let mut give_up: Option<Instant> = None;
        loop {
            let want = target.load(Ordering::Relaxed);
            if total >= want {
                break;
            }
            if want != u64::MAX {
                let limit = *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(5));
                if Instant::now() >= limit {
                    break;
                }
            }
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50);
            for ev in events.iter().take(n.max(0) as usize) {
                let fd = fds[ev.u64 as usize];
                loop {
                    let got =
                        libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
                    if got <= 0 {
                        break;
                    }
                    total += got as u64;
                    if (got as usize) < buf.len() {
                        break;
                    }
                }
            }
        }
        libc::close(ep);
        bytes_read.store(total, Ordering::Relaxed);
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: Option<usize>) {
    let Some(cpu) = cpu else {
        return;
    };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_writes_and_reads_them_all() {
        let r = run(&FloorConfig {
            connections: 8,
            frame_bytes: 26,
            duration: Duration::from_millis(200),
            writer_cpu: None,
            reader_cpu: None,
        })
        .unwrap();
        assert!(r.writes > 1000, "{r:?}");
        assert_eq!(r.bytes_read, r.bytes_written, "{r:?}");
        assert!(
            r.cpu_ns_per_write > 0.0 && r.cpu_ns_per_write < 1e6,
            "{r:?}"
        );
    }
}
