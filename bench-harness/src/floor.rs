//! The physical floor: what writing frames to loopback sockets costs with nothing else in the
//! way. A writer `send`s `frame_bytes` at a time to its connections in turn (plain
//! non-blocking `send`, as comet's writer does), a reader drains them with epoll. CPU per write
//! is the writers' CPU time over their writes; comet's CPU per write is quoted as a ratio to it.
//!
//! Writers and readers are processes of their own (`bench-harness --floor-part`), so the two
//! ends of a connection cost a descriptor each in different processes, and none holds more
//! than `per_process` sockets (a process here may hold 20,000 descriptors): K connections take
//! ceil(K / per_process) writers and as many readers, writer i accepting exactly reader i's
//! connections. Every writer is pinned to the writer CPUs (the server's, where comet would
//! run), every reader to the reader CPUs (the harness's); the writers' CPU time and writes are
//! summed, one writer measured as a whole.
//!
//! The coordinator starts a part with one JSON [`Part`] line on its stdin; the part answers
//! with JSON [`Said`] lines on stdout and is driven by `go`, `target <bytes>` and `end` lines.

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::client::bind_address_no_port;
use crate::cpus::{self, CpuSet};
use crate::procstat;

/// Descriptors a part keeps for itself besides its sockets (stdio, listener, epoll, the
/// executable): subtracted from the open-file limit.
const FD_MARGIN: u64 = 32;

/// What to measure.
#[derive(Debug, Clone)]
pub struct FloorConfig {
    /// Loopback connections written to in turn.
    pub connections: usize,
    /// Bytes per write.
    pub frame_bytes: usize,
    pub duration: Duration,
    /// Where the writers run (empty: not pinned): the server's CPUs.
    pub writer_cpus: CpuSet,
    /// Where the readers run (empty: not pinned): the harness's CPUs.
    pub reader_cpus: CpuSet,
    /// Most sockets one process holds (see [`sockets_per_process`]).
    pub per_process: usize,
}

/// What it cost.
#[derive(Debug, Clone, Default, Serialize)]
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
    /// Writers' CPU / writes: the floor comet's writes are compared with.
    pub cpu_ns_per_write: f64,
    /// Readers' CPU / writes.
    pub reader_cpu_ns_per_write: f64,
    /// Busy time of the writers' CPUs (/proc/stat, softirq included) over the writes / writes:
    /// the floor on the basis a server's core is measured on. `None` when the writers are not
    /// pinned.
    pub core_cpu_ns_per_write: Option<f64>,
    /// Writer processes, and as many readers, the connections were split over.
    pub processes: usize,
    pub writer_cpus: CpuSet,
    pub reader_cpus: CpuSet,
}

/// `requested`, or less if this process's open-file limit (which the parts inherit) cannot
/// hold that many sockets and the few descriptors a part needs besides.
pub fn sockets_per_process(requested: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_max
    } else {
        u64::MAX
    };
    let fits = hard.saturating_sub(FD_MARGIN).max(1);
    requested.clamp(1, usize::try_from(fits).unwrap_or(usize::MAX))
}

/// How `connections` split over processes of at most `per_process` sockets: one entry per
/// writer (and its reader), as even as can be.
pub fn split(connections: usize, per_process: usize) -> Vec<usize> {
    let connections = connections.max(1);
    let parts = connections.div_ceil(per_process.max(1));
    (0..parts)
        .map(|i| connections * (i + 1) / parts - connections * i / parts)
        .collect()
}

/// Runs the floor measurement: starts the parts (this executable with `--floor-part`), waits
/// until every connection is made, lets the writers write for the duration, waits until the
/// readers have read it all, and sums what each part measured.
pub fn run(config: &FloorConfig) -> anyhow::Result<FloorResult> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let sizes = split(config.connections, config.per_process);
    let frame_bytes = config.frame_bytes.max(1);
    let mut writers = Vec::with_capacity(sizes.len());
    for (index, &connections) in sizes.iter().enumerate() {
        let part = Part::Writer {
            index,
            connections,
            frame_bytes,
            duration_ms: config.duration.as_millis() as u64,
            cpus: config.writer_cpus.cpus().to_vec(),
        };
        writers.push(PartProcess::spawn(&exe, &part, format!("writer {index}"))?);
    }
    let mut readers = Vec::with_capacity(sizes.len());
    for (index, &connections) in sizes.iter().enumerate() {
        let port = match writers[index].expect(Duration::from_secs(10))? {
            Said::Listening { port } => port,
            other => bail!("floor writer {index} said {other:?} instead of its port"),
        };
        let part = Part::Reader {
            index,
            connect: SocketAddr::from(([127, 0, 0, 1], port)),
            source_ip: reader_source(index),
            connections,
            cpus: config.reader_cpus.cpus().to_vec(),
        };
        readers.push(PartProcess::spawn(&exe, &part, format!("reader {index}"))?);
    }
    // Connects run at several thousand a second on loopback; leave room on a busy host.
    let connect_time = Duration::from_secs(30 + config.connections as u64 / 500);
    for part in writers.iter().chain(&readers) {
        match part.expect(connect_time)? {
            Said::Ready { .. } => {}
            other => bail!("floor {} said {other:?} instead of ready", part.name),
        }
    }
    let core0 = procstat::cores_busy_ns(config.writer_cpus.cpus());
    for part in readers.iter_mut().chain(writers.iter_mut()) {
        part.send("go")?;
    }
    let mut total = FloorResult {
        connections: sizes.iter().sum(),
        frame_bytes,
        processes: sizes.len(),
        writer_cpus: config.writer_cpus.clone(),
        reader_cpus: config.reader_cpus.clone(),
        ..FloorResult::default()
    };
    let mut writer_cpu_ns = 0u64;
    let mut written = Vec::with_capacity(writers.len());
    for part in &writers {
        match part.expect(config.duration + Duration::from_secs(30))? {
            Said::Wrote {
                writes,
                would_block,
                bytes,
                cpu_ns,
                seconds,
            } => {
                total.writes += writes;
                total.would_block += would_block;
                total.bytes_written += bytes;
                total.seconds = total.seconds.max(seconds);
                writer_cpu_ns += cpu_ns;
                written.push(bytes);
            }
            other => bail!("floor {} said {other:?} instead of its writes", part.name),
        }
    }
    let core_ns = core0
        .zip(procstat::cores_busy_ns(config.writer_cpus.cpus()))
        .map(|(a, b)| b.saturating_sub(a));
    let mut reader_cpu_ns = 0u64;
    for (part, bytes) in readers.iter_mut().zip(&written) {
        part.send(&format!("target {bytes}"))?;
    }
    for part in &readers {
        // A reader gives up 5 s after it learns its target.
        match part.expect(Duration::from_secs(30))? {
            Said::Read { bytes, cpu_ns } => {
                total.bytes_read += bytes;
                reader_cpu_ns += cpu_ns;
            }
            other => bail!("floor {} said {other:?} instead of its reads", part.name),
        }
    }
    for part in &mut writers {
        let _ = part.send("end");
    }
    let writes = total.writes.max(1) as f64;
    let round = |x: f64| (x * 10.0).round() / 10.0;
    total.writes_per_sec = round(total.writes as f64 / total.seconds.max(1e-9));
    total.cpu_ns_per_write = round(writer_cpu_ns as f64 / writes);
    total.reader_cpu_ns_per_write = round(reader_cpu_ns as f64 / writes);
    total.core_cpu_ns_per_write = core_ns.map(|ns| round(ns as f64 / writes));
    Ok(total)
}

/// Reader `i` connects from its own address (127.3.x.y), so its ports never meet another's.
fn reader_source(index: usize) -> IpAddr {
    IpAddr::from([127, 3, (index / 250) as u8, (index % 250) as u8 + 1])
}

/// What a part is asked to do (its first stdin line).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum Part {
    /// Listen, accept `connections`, then write for `duration_ms` when told `go`.
    Writer {
        index: usize,
        connections: usize,
        frame_bytes: usize,
        duration_ms: u64,
        cpus: Vec<usize>,
    },
    /// Make `connections` to `connect` from `source_ip`, then drain them from `go` until told
    /// how many bytes to expect and they have all arrived.
    Reader {
        index: usize,
        connect: SocketAddr,
        source_ip: IpAddr,
        connections: usize,
        cpus: Vec<usize>,
    },
}

/// What a part says (its stdout lines).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Said {
    Listening {
        port: u16,
    },
    Ready {
        sockets: usize,
    },
    Wrote {
        writes: u64,
        would_block: u64,
        bytes: u64,
        cpu_ns: u64,
        seconds: f64,
    },
    Read {
        bytes: u64,
        cpu_ns: u64,
    },
}

/// A running part, seen from the coordinator.
struct PartProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl PartProcess {
    fn spawn(exe: &std::path::Path, part: &Part, name: String) -> anyhow::Result<PartProcess> {
        let mut child = Command::new(exe)
            .arg("--floor-part")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting floor {name}"))?;
        let mut stdin = child.stdin.take().context("floor part stdin")?;
        let stdout = child.stdout.take().context("floor part stdout")?;
        writeln!(stdin, "{}", serde_json::to_string(part)?)?;
        stdin.flush()?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(PartProcess {
            name,
            child,
            stdin: Some(stdin),
            lines,
        })
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("telling floor {} `{line}`", self.name))
    }

    /// The part's next line, within `timeout`.
    fn expect(&self, timeout: Duration) -> anyhow::Result<Said> {
        let line = match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                bail!("floor {} did not answer within {timeout:?}", self.name)
            }
            Err(RecvTimeoutError::Disconnected) => {
                bail!("floor {} ended early (its error is above)", self.name)
            }
        };
        serde_json::from_str(&line).with_context(|| format!("floor {} said `{line}`", self.name))
    }
}

impl Drop for PartProcess {
    fn drop(&mut self) {
        // End of stdin tells a part to exit; give it a moment, then end it.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a part on this process's stdin and stdout (`bench-harness --floor-part`).
pub fn run_part() -> anyhow::Result<()> {
    let stdin = io::stdin();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let part: Part = serde_json::from_str(line.trim()).context("reading the part's config")?;
    raise_open_file_limit();
    match part {
        Part::Writer {
            index,
            connections,
            frame_bytes,
            duration_ms,
            cpus,
        } => {
            cpus::pin_thread(&CpuSet::new(cpus))?;
            let listener = listen()?;
            say(&Said::Listening {
                port: listener.local_addr()?.port(),
            });
            let deadline = Instant::now() + Duration::from_secs(60 + connections as u64 / 200);
            let sockets = accept_all(&listener, connections, deadline)
                .with_context(|| format!("floor writer {index}: accepting"))?;
            drop(listener);
            say(&Said::Ready {
                sockets: sockets.len(),
            });
            wait_for_line("go")?;
            let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
            let frame = vec![0x5au8; frame_bytes.max(1)];
            let w = write_turns(&fds, &frame, Duration::from_millis(duration_ms));
            say(&Said::Wrote {
                writes: w.writes,
                would_block: w.would_block,
                bytes: w.bytes,
                cpu_ns: w.cpu_ns,
                seconds: w.elapsed.as_secs_f64(),
            });
            // Keep the sockets open until the readers have drained them.
            let _ = wait_for_line("end");
        }
        Part::Reader {
            index,
            connect,
            source_ip,
            connections,
            cpus,
        } => {
            cpus::pin_thread(&CpuSet::new(cpus))?;
            let deadline = Instant::now() + Duration::from_secs(60 + connections as u64 / 200);
            let sockets = connect_all(connect, source_ip, connections, deadline)
                .with_context(|| format!("floor reader {index}: connecting to {connect}"))?;
            say(&Said::Ready {
                sockets: sockets.len(),
            });
            wait_for_line("go")?;
            let target = Arc::new(AtomicU64::new(u64::MAX));
            let told = target.clone();
            std::thread::spawn(move || {
                // `target N` once the writer is done; the end of stdin means the coordinator
                // is gone: stop at once.
                for line in io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line.strip_prefix("target ").and_then(|n| n.parse().ok()) {
                        told.store(n, Ordering::Relaxed);
                        return;
                    }
                }
                told.store(0, Ordering::Relaxed);
            });
            let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
            let cpu0 = procstat::thread_cpu_ns();
            let bytes = drain(&fds, &target)?;
            say(&Said::Read {
                bytes,
                cpu_ns: procstat::thread_cpu_ns() - cpu0,
            });
        }
    }
    // Closing thousands of sockets one by one is the kernel's job at exit.
    std::process::exit(0);
}

fn say(said: &Said) {
    let line = serde_json::to_string(said).expect("floor lines serialize");
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reads stdin until the line `word` (an error at the end of stdin).
fn wait_for_line(word: &str) -> anyhow::Result<()> {
    for line in io::stdin().lock().lines() {
        if line?.trim() == word {
            return Ok(());
        }
    }
    bail!("stdin ended before `{word}`")
}

/// Lifts the soft open-file limit to the hard one.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A loopback listener with a backlog deep enough for thousands of connects in a burst.
fn listen() -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.listen(65_535)?;
    Ok(socket.into())
}

/// Accepts `n` connections by `deadline`; each non-blocking, with Nagle off.
fn accept_all(listener: &TcpListener, n: usize, deadline: Instant) -> io::Result<Vec<TcpStream>> {
    listener.set_nonblocking(true)?;
    let mut sockets = Vec::with_capacity(n);
    while sockets.len() < n {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                sockets.push(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{} of {n} connections by the deadline", sockets.len()),
                    ));
                }
                let mut pfd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(sockets)
}

/// Makes `n` connections to `addr` from `source` by `deadline`; each non-blocking.
fn connect_all(
    addr: SocketAddr,
    source: IpAddr,
    n: usize,
    deadline: Instant,
) -> io::Result<Vec<TcpStream>> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} of {n} connections by the deadline", sockets.len()),
            ));
        }
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        bind_address_no_port(&socket);
        socket.bind(&SocketAddr::new(source, 0).into())?;
        socket.connect_timeout(&addr.into(), left.min(Duration::from_secs(10)))?;
        socket.set_nonblocking(true)?;
        // SAFETY: we own the descriptor and hand it over whole.
        sockets.push(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) });
    }
    Ok(sockets)
}

/// What a writer did.
#[derive(Debug, Clone, Copy)]
struct Written {
    writes: u64,
    bytes: u64,
    would_block: u64,
    cpu_ns: u64,
    elapsed: Duration,
}

/// Writes `frame` to each socket in turn until `duration` has passed; CPU is the calling
/// thread's.
fn write_turns(fds: &[RawFd], frame: &[u8], duration: Duration) -> Written {
    let cpu0 = procstat::thread_cpu_ns();
    let t0 = Instant::now();
    let end = t0 + duration;
    let (mut writes, mut bytes, mut would_block) = (0u64, 0u64, 0u64);
    'outer: loop {
        for &fd in fds {
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
                bytes += n as u64;
            } else {
                would_block += 1;
            }
            if (writes + would_block) % 1024 == 0 && Instant::now() >= end {
                break 'outer;
            }
        }
        if fds.is_empty() {
            break;
        }
    }
    Written {
        writes,
        bytes,
        would_block,
        cpu_ns: procstat::thread_cpu_ns() - cpu0,
        elapsed: t0.elapsed(),
    }
}

/// Reads every ready socket until it has read `target` bytes (set when the writer is done),
/// or 5 s after that; returns the bytes read.
fn drain(fds: &[RawFd], target: &AtomicU64) -> io::Result<u64> {
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
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_split_evenly_over_processes_under_the_cap() {
        assert_eq!(split(250, 100), [83, 83, 84]);
        assert_eq!(split(200, 100), [100, 100]);
        assert_eq!(split(10_000, 19_000), [10_000]);
        assert_eq!(split(0, 100), [1]);
        let big = split(1_000_000, 19_000);
        assert_eq!(big.len(), 53);
        assert_eq!(big.iter().sum::<usize>(), 1_000_000);
        assert!(big.iter().all(|&n| n <= 19_000), "{big:?}");
        assert_eq!(sockets_per_process(100), 100);
        assert!(sockets_per_process(usize::MAX) < usize::MAX);
        assert_eq!(sockets_per_process(0), 1);
    }

    /// A writer's and a reader's pieces, as the parts run them, in two threads.
    #[test]
    fn a_writer_and_a_reader_measure_every_byte() {
        let listener = listen().unwrap();
        let addr = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let accepting = std::thread::spawn(move || accept_all(&listener, 8, deadline));
        let readers = connect_all(addr, reader_source(0), 8, deadline).unwrap();
        let writers = accepting.join().unwrap().unwrap();
        let target = AtomicU64::new(u64::MAX);
        let reader_fds: Vec<RawFd> = readers.iter().map(|s| s.as_raw_fd()).collect();
        let writer_fds: Vec<RawFd> = writers.iter().map(|s| s.as_raw_fd()).collect();
        let (written, read) = std::thread::scope(|scope| {
            let reading = scope.spawn(|| drain(&reader_fds, &target));
            let written = write_turns(&writer_fds, &[7u8; 26], Duration::from_millis(200));
            target.store(written.bytes, Ordering::Relaxed);
            (written, reading.join().unwrap().unwrap())
        });
        assert!(written.writes > 1000, "{written:?}");
        assert_eq!(written.bytes, written.writes * 26);
        assert_eq!(read, written.bytes);
        assert!(written.cpu_ns > 0 && written.cpu_ns / written.writes < 1_000_000);
    }

    #[test]
    fn a_full_accept_is_bounded_by_its_deadline() {
        let listener = listen().unwrap();
        let soon = Instant::now() + Duration::from_millis(150);
        let e = accept_all(&listener, 1, soon).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
