//! A worker process: its share of the clients, on glommio executors (one per core it is given,
//! pinned), all connecting from one source address.
//!
//! The coordinator starts `bench-harness --worker`, writes one [`WorkerConfig`] line on its
//! stdin, then `sample <id>` lines (answered at once with a progress line carrying that id) and
//! finally `finish`. The worker writes JSON lines on stdout: `progress` every 250 ms and on each
//! sample, and one `final` line with its histograms and per-push counts.
//!
//! Per client the worker keeps a task, its glommio stream and a few counters; no read buffer:
//! every read lands in the executor's scratch buffer and only an unfinished frame is copied out
//! (as comet does). Heartbeats are sent by one ticker per executor that walks its clients in
//! slots, not by a timer per client.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future::{self, poll_fn};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use glommio::{spawn_local, LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use imgate_shared::frame::op;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::payload;
use crate::procstat;
use crate::tally::{self, Order, PushCounts, SeqTrack};
use imgate_client::codec::{self, Sink, Transport, WireError};
use imgate_client::upgrade;

/// Bytes read per `recv`: one buffer per executor, shared by all its clients.
const SCRATCH_SIZE: usize = 64 * 1024;
/// io_uring depth of each executor (see where it is used).
const RING_DEPTH: usize = 4096;
/// Most push phases one run has (a histogram each).
pub const MAX_PHASES: usize = 8;

/// What one worker process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub worker: usize,
    pub run_id: u32,
    /// Global index of this worker's first client and how many it runs.
    pub first_client: u64,
    pub clients: u64,
    /// CPU of each executor; empty: one unpinned executor per `executors`.
    pub cpus: Vec<usize>,
    pub executors: usize,
    /// Every client of this worker connects from this address.
    pub source_ip: IpAddr,
    /// Client `g` connects to `targets[g % len]`.
    pub targets: Vec<SocketAddr>,
    pub transport: Transport,
    /// This worker's connects per second; 0: as fast as the in-flight limit allows.
    pub connect_rate: f64,
    /// Milliseconds to wait before the first connect (`--staggered`: the workers before this
    /// one connect first).
    #[serde(default)]
    pub connect_delay_ms: u64,
    pub connect_timeout_ms: u64,
    /// Connects in progress at once, per executor.
    pub max_in_flight: usize,
    /// 0: no heartbeats.
    pub heartbeat_ms: u64,
    pub reconnect: bool,
    /// Client `g` authenticates as mid `mid_base + g` with key `key_prefix + g`.
    pub mid_base: i64,
    pub key_prefix: String,
    pub room: String,
    pub accepts: Vec<i32>,
    /// The business op pushes carry.
    pub push_op: i32,
    /// Every push reaches every client in order (one room or broadcasts from one HTTP
    /// connection): track each client's sequence.
    pub ordered: bool,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// A worker's (or the whole run's) counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counters { $($(#[$doc])* pub $name: u64,)* }

        impl Counters {
            /// Adds `other` field by field.
            pub fn add(&mut self, other: &Counters) { $(self.$name += other.$name;)* }

            /// What was gained since `earlier`; the two gauges (`connecting`, `connected`)
            /// keep their current value.
            pub fn since(&self, earlier: &Counters) -> Counters {
                let mut out = Counters { $($name: self.$name.saturating_sub(earlier.$name),)* };
                out.connecting = self.connecting;
                out.connected = self.connected;
                out
            }
        }

        /// One executor's counters: written only by that executor, read by the worker's main
        /// thread.
        #[derive(Debug, Default)]
        struct Shared { $($name: AtomicU64,)* }

        impl Shared {
            fn snapshot(&self) -> Counters {
                Counters { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Connects started and not finished (gauge).
    connecting,
    /// Authenticated connections open now (gauge).
    connected,
    /// Connections that reached op 8.
    connects,
    /// Connects that failed before auth (refused, timed out, reset).
    connect_failed,
    /// Connections closed by the server before the auth reply.
    auth_failed,
    /// Authenticated connections that ended before the run did.
    disconnected,
    reconnects,
    /// Frames whose op is neither 3 nor 8, as goim's benchmark client counts them.
    messages,
    /// Messages carrying this run's stamp.
    stamped,
    /// Messages that are not this run's pushes (earlier runs' stored messages, other ops).
    foreign,
    /// Units carrying messages as the server wrote them: WebSocket messages, or top-level
    /// goim frames on TCP.
    frames,
    /// `recv` calls that returned data.
    reads,
    bytes,
    heartbeats,
    heartbeat_replies,
    heartbeat_failed,
    /// Pushes a client never saw before a later one arrived (ordered runs).
    seq_gaps,
    /// Pushes that arrived at or below one already seen: duplicates or overtaken (ordered runs).
    seq_behind,
    protocol_errors,
}

/// A progress or final line from a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Report {
    Progress {
        worker: usize,
        sample: Option<u64>,
        counters: Counters,
        rss_bytes: u64,
    },
    Final {
        worker: usize,
        counters: Counters,
        rss_bytes: u64,
        /// Resident memory before the first client.
        rss_start_bytes: u64,
        /// Per phase: end-to-end latency in µs as (value, count) pairs.
        latency_us: Vec<Vec<[u64; 2]>>,
        connect_us: Vec<[u64; 2]>,
        /// Per-push delivery counts as runs (see [`PushCounts::to_runs`]).
        push_counts: Vec<[u64; 3]>,
        /// A few reasons connections ended, for the log.
        errors: Vec<String>,
    },
}

/// What an executor hands back when the run ends.
struct ExecResult {
    latency: Vec<Vec<[u64; 2]>>,
    connect: Vec<[u64; 2]>,
    pushes: PushCounts,
    errors: Vec<String>,
}

/// Runs a worker on this process's stdin and stdout; returns when told to finish.
pub fn run() -> anyhow::Result<()> {
    let stdin = io::stdin();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let config: WorkerConfig = serde_json::from_str(line.trim())?;
    let config = Arc::new(config);
    let rss_start_bytes = procstat::self_rss();
    let executors = config.executors.max(1);

    let shared: Vec<Arc<Shared>> = (0..executors).map(|_| Arc::default()).collect();
    let mut finish_tx = Vec::new();
    let mut handles = Vec::new();
    for (e, counters) in shared.iter().enumerate() {
        // Contiguous share of this worker's clients.
        let lo = config.clients * e as u64 / executors as u64;
        let hi = config.clients * (e as u64 + 1) / executors as u64;
        let (tx, rx) = async_channel::bounded::<()>(1);
        finish_tx.push(tx);
        let placement = match config.cpus.get(e) {
            Some(&cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        };
        let setup = ExecSetup {
            config: config.clone(),
            shared: counters.clone(),
            first: config.first_client + lo,
            count: hi - lo,
            rate: config.connect_rate / executors as f64,
            finish: rx,
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("bench-w{}-e{e}", config.worker))
            // The harness does no file I/O: glommio's registered buffers can stay small.
            .io_memory(256 << 10)
            // Every park cancels a poll (glommio's ring link), and the kernel finds it in a
            // hash of all pending polls, one per client, with 2^(log2(cq entries) - 5)
            // buckets (at most 256): 128 entries (glommio's default) give 8 buckets, 4096
            // give 256, 32 times shorter chains.
            .ring_depth(RING_DEPTH)
            .spawn(move || executor_main(setup))
            .map_err(|e| anyhow::anyhow!("starting a glommio executor: {e}"))?;
        handles.push(handle);
    }

    let out = Arc::new(Mutex::new(io::stdout()));
    let done = Arc::new(AtomicBool::new(false));
    let progress = {
        let (out, done, shared, worker) =
            (out.clone(), done.clone(), shared.clone(), config.worker);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                if !done.load(Ordering::Relaxed) {
                    emit(&out, &progress_report(worker, None, &shared));
                }
            }
        })
    };

    for line in stdin.lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("sample"), Some(id)) => {
                let id = id.parse().ok();
                emit(&out, &progress_report(config.worker, id, &shared));
            }
            (Some("finish"), _) => break,
            _ => {}
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = progress.join();

    let mut counters = Counters::default();
    for s in &shared {
        counters.add(&s.snapshot());
    }
    for tx in &finish_tx {
        let _ = tx.send_blocking(());
    }
    let mut latency: Vec<Histogram<u64>> = Vec::new();
    let mut connect = tally::new_histogram();
    let mut pushes = PushCounts::default();
    let mut errors = Vec::new();
    for handle in handles {
        let result = handle
            .join()
            .map_err(|e| anyhow::anyhow!("executor failed: {e}"))?;
        for (phase, pairs) in result.latency.iter().enumerate() {
            if latency.len() <= phase {
                latency.push(tally::new_histogram());
            }
            tally::add_pairs(&mut latency[phase], pairs);
        }
        tally::add_pairs(&mut connect, &result.connect);
        pushes.merge(&result.pushes);
        errors.extend(result.errors);
    }
    errors.truncate(10);
    emit(
        &out,
        &Report::Final {
            worker: config.worker,
            counters,
            rss_bytes: procstat::self_rss(),
            rss_start_bytes,
            latency_us: latency.iter().map(tally::to_pairs).collect(),
            connect_us: tally::to_pairs(&connect),
            push_counts: pushes.to_runs(),
            errors,
        },
    );
    // Closing tens of thousands of sockets one by one is the kernel's job at exit.
    std::process::exit(0);
}

fn progress_report(worker: usize, sample: Option<u64>, shared: &[Arc<Shared>]) -> Report {
    let mut counters = Counters::default();
    for s in shared {
        counters.add(&s.snapshot());
    }
    Report::Progress {
        worker,
        sample,
        counters,
        rss_bytes: procstat::self_rss(),
    }
}

fn emit(out: &Mutex<io::Stdout>, report: &Report) {
    let line = serde_json::to_string(report).expect("reports serialize");
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct ExecSetup {
    config: Arc<WorkerConfig>,
    shared: Arc<Shared>,
    first: u64,
    count: u64,
    rate: f64,
    finish: async_channel::Receiver<()>,
}

/// One executor's state, shared by its tasks.
struct Exec {
    config: Arc<WorkerConfig>,
    shared: Arc<Shared>,
    /// Global index of this executor's first client.
    first: u64,
    scratch: RefCell<Vec<u8>>,
    latency: RefCell<Vec<Histogram<u64>>>,
    connect: RefCell<Histogram<u64>>,
    pushes: RefCell<PushCounts>,
    /// Per client (by slot): the socket of its authenticated connection, or -1. All the
    /// heartbeat ticker needs: 4 bytes a client.
    authed_fds: RefCell<Vec<RawFd>>,
    in_flight: Cell<usize>,
    finishing: Cell<bool>,
    heartbeat: Vec<u8>,
    errors: RefCell<Vec<String>>,
}

/// Adds `n` (wrapping: `u64::MAX` subtracts one) to a counter of this executor. Only the
/// executor writes its counters: a plain load and store, no locked add.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl Exec {
    fn note_error(&self, what: String) {
        let mut errors = self.errors.borrow_mut();
        if errors.len() < 10 {
            errors.push(what);
        }
    }

    fn set_authed_fd(&self, slot: u32, fd: RawFd) {
        if let Some(entry) = self.authed_fds.borrow_mut().get_mut(slot as usize) {
            *entry = fd;
        }
    }
}

/// One simulated client's connection, owned by its task (no `Rc`, nothing else points at it).
struct Conn {
    stream: Option<TcpStream>,
    /// Unfinished frame bytes (usually empty, with no allocation).
    pending: Vec<u8>,
    track: SeqTrack,
    authed: bool,
}

impl Conn {
    fn fd(&self) -> RawFd {
        self.stream.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    fn close(&mut self) {
        self.authed = false;
        self.stream = None;
        self.pending = Vec::new();
    }
}

async fn executor_main(setup: ExecSetup) -> ExecResult {
    let config = setup.config;
    let exec = Rc::new(Exec {
        heartbeat: codec::client_frame(config.transport, op::HEARTBEAT, 0, &[]),
        config: config.clone(),
        shared: setup.shared,
        first: setup.first,
        scratch: RefCell::new(vec![0; SCRATCH_SIZE]),
        latency: RefCell::new(Vec::new()),
        connect: RefCell::new(tally::new_histogram()),
        pushes: RefCell::new(PushCounts::default()),
        authed_fds: RefCell::new(vec![-1; setup.count as usize]),
        in_flight: Cell::new(0),
        finishing: Cell::new(false),
        errors: RefCell::new(Vec::new()),
    });
    spawn_local(heartbeats(exec.clone())).detach();
    spawn_local(connector(exec.clone(), setup.count, setup.rate)).detach();
    let _ = setup.finish.recv().await;
    exec.finishing.set(true);
    let latency = exec.latency.borrow().iter().map(tally::to_pairs).collect();
    let connect = tally::to_pairs(&exec.connect.borrow());
    let pushes = exec.pushes.borrow().clone();
    let errors = exec.errors.borrow().clone();
    ExecResult {
        latency,
        connect,
        pushes,
        errors,
    }
}

/// Starts this executor's clients at its share of the connect rate, after the worker's delay.
async fn connector(exec: Rc<Exec>, count: u64, rate: f64) {
    if exec.config.connect_delay_ms > 0 {
        sleep(Duration::from_millis(exec.config.connect_delay_ms)).await;
    }
    let start = Instant::now();
    let max_in_flight = exec.config.max_in_flight.max(1);
    // Wake no more often than a client is due: with many workers on few cores, every
    // executor's wake-up costs CPU the server needs.
    let pause = if rate > 0.0 {
        Duration::from_secs_f64((1.0 / rate).clamp(0.002, 0.1))
    } else {
        Duration::from_millis(2)
    };
    let mut next = 0;
    while next < count && !exec.finishing.get() {
        let due = if rate > 0.0 {
            ((start.elapsed().as_secs_f64() * rate).ceil() as u64).min(count)
        } else {
            count
        };
        while next < due && exec.in_flight.get() < max_in_flight {
            spawn_local(client_task(exec.clone(), next as u32)).detach();
            next += 1;
        }
        sleep(pause).await;
    }
}

/// Sends every authenticated client a heartbeat once per interval, a slice of them per tick.
async fn heartbeats(exec: Rc<Exec>) {
    let interval = exec.config.heartbeat_ms;
    if interval == 0 {
        return;
    }
    let tick = interval.min(100);
    let slots = (interval / tick).max(1) as usize;
    // Client p of this executor's `count` is in slot p * slots / count: each tick serves one
    // contiguous slice, and the slices spread the clients evenly over the interval.
    let count = exec.authed_fds.borrow().len();
    let mut k = 0usize;
    loop {
        sleep(Duration::from_millis(tick)).await;
        if exec.finishing.get() {
            return;
        }
        let slot = k % slots;
        let lo = (slot * count).div_ceil(slots);
        let hi = ((slot + 1) * count).div_ceil(slots);
        let (mut sent, mut failed) = (0, 0);
        for &fd in exec.authed_fds.borrow()[lo..hi]
            .iter()
            .filter(|fd| **fd >= 0)
        {
            if send_now(fd, &exec.heartbeat) {
                sent += 1;
            } else {
                // A heartbeat that did not fit whole would corrupt the stream: end it, the
                // read loop sees the shutdown and counts the disconnect.
                failed += 1;
                // SAFETY: the descriptor belongs to an open, authenticated connection.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        }
        bump(&exec.shared.heartbeats, sent);
        bump(&exec.shared.heartbeat_failed, failed);
        k += 1;
    }
}

/// A write that either goes out whole at once or not at all (heartbeats, pongs).
fn send_now(fd: RawFd, bytes: &[u8]) -> bool {
    if fd < 0 {
        return false;
    }
    // SAFETY: `bytes` is valid for its length; `fd` is an open socket of this executor.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    n == bytes.len() as isize
}

/// Why a connect attempt failed.
enum ConnectFailure {
    /// No connection (refused, reset, timed out before the server answered).
    Connect(String),
    /// The server closed the connection instead of accepting the auth.
    Auth(String),
}

/// Why an authenticated connection ended.
enum Ended {
    Eof,
    Io(io::Error),
    Protocol(WireError),
}

/// One client from connect to the end of the run. Its task is the client's whole state:
/// the connection, an `Rc` of the executor and the slot.
async fn client_task(exec: Rc<Exec>, slot: u32) {
    let mut conn = Conn {
        stream: None,
        pending: Vec::new(),
        track: SeqTrack::default(),
        authed: false,
    };
    let index = exec.first + u64::from(slot);
    loop {
        exec.in_flight.set(exec.in_flight.get() + 1);
        bump(&exec.shared.connecting, 1);
        let started = Instant::now();
        // Boxed: the connect state lives on the heap only while connecting, so the task of an
        // idle client stays small.
        let result = Box::pin(connect(&exec, index, &mut conn)).await;
        exec.in_flight.set(exec.in_flight.get() - 1);
        bump(&exec.shared.connecting, u64::MAX);
        if exec.finishing.get() {
            return;
        }
        match result {
            Ok(()) => {
                let us = started.elapsed().as_micros() as u64;
                tally::record(&mut exec.connect.borrow_mut(), us);
                bump(&exec.shared.connects, 1);
                bump(&exec.shared.connected, 1);
                exec.set_authed_fd(slot, conn.fd());
                let ended = Reading {
                    exec: &exec,
                    conn: &mut conn,
                }
                .await;
                exec.set_authed_fd(slot, -1);
                conn.close();
                bump(&exec.shared.connected, u64::MAX);
                if exec.finishing.get() {
                    return;
                }
                bump(&exec.shared.disconnected, 1);
                let why = match ended {
                    Ended::Eof => "closed by the server".to_string(),
                    Ended::Io(e) => format!("socket error: {e}"),
                    Ended::Protocol(e) => {
                        bump(&exec.shared.protocol_errors, 1);
                        e.to_string()
                    }
                };
                exec.note_error(format!("client {index}: {why}"));
            }
            Err(failure) => {
                conn.close();
                let why = match failure {
                    ConnectFailure::Connect(why) => {
                        bump(&exec.shared.connect_failed, 1);
                        why
                    }
                    ConnectFailure::Auth(why) => {
                        bump(&exec.shared.auth_failed, 1);
                        why
                    }
                };
                exec.note_error(format!("client {index}: {why}"));
            }
        }
        if !exec.config.reconnect {
            return;
        }
        sleep(Duration::from_secs(1)).await;
        if exec.finishing.get() {
            return;
        }
        bump(&exec.shared.reconnects, 1);
    }
}

/// Opens a socket from the worker's source address, starts a non-blocking connect and hands
/// it to glommio; the first write completes when the connection does.
fn open(source: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let domain = if target.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(
        domain,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    if target.is_ipv4() {
        // Pick the port at connect time, per destination, not at bind time: the 4-tuple
        // must be unique, not the port.
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.set_nodelay(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: we own the descriptor and hand it over whole.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Connects, upgrades (WebSocket) and authenticates within the connect timeout.
async fn connect(exec: &Exec, index: u64, conn: &mut Conn) -> Result<(), ConnectFailure> {
    let timeout = Duration::from_millis(exec.config.connect_timeout_ms.max(1));
    let attempt = async {
        let config = &exec.config;
        let target = config.targets[(index % config.targets.len() as u64) as usize];
        let connect_err = |e: io::Error| ConnectFailure::Connect(format!("connect {target}: {e}"));
        conn.stream = Some(open(config.source_ip, target).map_err(connect_err)?);

        if config.transport == Transport::WebSocket {
            let request = upgrade::upgrade_request(&target.to_string());
            write_all(conn, request.as_bytes())
                .await
                .map_err(connect_err)?;
            loop {
                let got = read_once(exec, conn, |conn, bytes| {
                    conn.pending.extend_from_slice(bytes)
                })
                .await
                .map_err(connect_err)?;
                if got.is_none() {
                    return Err(ConnectFailure::Auth("closed during the upgrade".into()));
                }
                match upgrade::upgrade_response(&conn.pending) {
                    Ok(Some(n)) => {
                        conn.pending.drain(..n);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(ConnectFailure::Auth(e)),
                }
            }
        }

        let g = index as i64;
        let auth = serde_json::json!({
            "mid": config.mid_base + g,
            "key": format!("{}{}", config.key_prefix, g),
            "room_id": config.room,
            "platform": "web",
            "accepts": config.accepts,
        })
        .to_string();
        let frame = codec::client_frame(config.transport, op::AUTH, 1, auth.as_bytes());
        write_all(conn, &frame).await.map_err(connect_err)?;
        while !conn.authed {
            let got = read_once(exec, conn, |conn, bytes| deliver(exec, conn, bytes))
                .await
                .map_err(|e| ConnectFailure::Auth(format!("waiting for op 8: {e}")))?;
            match got {
                None => return Err(ConnectFailure::Auth("closed before op 8".into())),
                Some(Err(e)) => return Err(ConnectFailure::Auth(e.to_string())),
                Some(Ok(())) => {}
            }
        }
        Ok(())
    };
    future::or(attempt, async {
        sleep(timeout).await;
        Err(ConnectFailure::Connect(format!(
            "no auth reply within {timeout:?}"
        )))
    })
    .await
}

/// Reads and delivers until the connection ends. Hand-written rather than an `async fn` so
/// the idle client's task holds just these two references.
struct Reading<'a> {
    exec: &'a Exec,
    conn: &'a mut Conn,
}

impl std::future::Future for Reading<'_> {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Ended> {
        let this = self.get_mut();
        // A few reads per wake-up, then let the other clients run.
        for _ in 0..4 {
            match poll_read_into(this.exec, this.conn, cx, |conn, bytes| {
                deliver(this.exec, conn, bytes)
            }) {
                Poll::Ready(Ok(Some(Ok(())))) => {}
                Poll::Ready(Ok(Some(Err(e)))) => return Poll::Ready(Ended::Protocol(e)),
                Poll::Ready(Ok(None)) => return Poll::Ready(Ended::Eof),
                Poll::Ready(Err(e)) => return Poll::Ready(Ended::Io(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// One `recv` into the executor's scratch buffer; `on_bytes` sees the bytes inside the same
/// poll, so no connection owns a read buffer. `Ok(None)` at end of stream.
fn poll_read_into<R>(
    exec: &Exec,
    conn: &mut Conn,
    cx: &mut std::task::Context<'_>,
    on_bytes: impl FnOnce(&mut Conn, &mut [u8]) -> R,
) -> Poll<io::Result<Option<R>>> {
    let mut scratch = exec.scratch.borrow_mut();
    let polled = match conn.stream.as_mut() {
        Some(stream) => Pin::new(stream).poll_read(cx, &mut scratch[..]),
        None => Poll::Ready(Ok(0)),
    };
    match polled {
        Poll::Ready(Ok(0)) => Poll::Ready(Ok(None)),
        Poll::Ready(Ok(n)) => {
            bump(&exec.shared.reads, 1);
            bump(&exec.shared.bytes, n as u64);
            Poll::Ready(Ok(Some(on_bytes(conn, &mut scratch[..n]))))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

async fn read_once<R>(
    exec: &Exec,
    conn: &mut Conn,
    mut on_bytes: impl FnMut(&mut Conn, &mut [u8]) -> R,
) -> io::Result<Option<R>> {
    poll_fn(|cx| poll_read_into(exec, conn, cx, &mut on_bytes)).await
}

async fn write_all(conn: &mut Conn, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| match conn.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_write(cx, data),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// Decodes one read's bytes and counts what they hold.
fn deliver(exec: &Exec, conn: &mut Conn, bytes: &mut [u8]) -> Result<(), WireError> {
    let mut pending = std::mem::take(&mut conn.pending);
    let mut counting = Counting {
        exec,
        conn,
        now_ns: payload::now_ns(),
        counts: Counters::default(),
        messages_at_last_outer: 0,
    };
    let result = codec::feed(exec.config.transport, &mut pending, bytes, &mut counting);
    let c = counting.counts;
    conn.pending = pending;
    let s = &exec.shared;
    for (field, n) in [
        (&s.messages, c.messages),
        (&s.stamped, c.stamped),
        (&s.foreign, c.foreign),
        (&s.frames, c.frames),
        (&s.heartbeat_replies, c.heartbeat_replies),
        (&s.seq_gaps, c.seq_gaps),
        (&s.seq_behind, c.seq_behind),
    ] {
        if n > 0 {
            bump(field, n);
        }
    }
    result
}

/// The [`Sink`] of one read: counts into plain fields, added to the executor's counters once.
struct Counting<'a> {
    exec: &'a Exec,
    conn: &'a mut Conn,
    now_ns: u64,
    counts: Counters,
    messages_at_last_outer: u64,
}

impl Sink for Counting<'_> {
    fn frame(&mut self, _ver: i16, frame_op: i32, _seq: i32, body: &[u8]) {
        match frame_op {
            op::AUTH_REPLY => self.conn.authed = true,
            op::HEARTBEAT_REPLY => self.counts.heartbeat_replies += 1,
            _ => {
                self.counts.messages += 1;
                let config = &self.exec.config;
                let stamp = (frame_op == config.push_op)
                    .then(|| payload::parse(body))
                    .flatten()
                    .filter(|s| {
                        s.run == config.run_id
                            && s.seq <= tally::MAX_SEQ
                            && (s.phase as usize) < MAX_PHASES
                    });
                let Some(stamp) = stamp else {
                    self.counts.foreign += 1;
                    return;
                };
                self.counts.stamped += 1;
                let us = self.now_ns.saturating_sub(stamp.sent_ns) / 1000;
                let mut latency = self.exec.latency.borrow_mut();
                while latency.len() <= stamp.phase as usize {
                    latency.push(tally::new_histogram());
                }
                tally::record(&mut latency[stamp.phase as usize], us);
                self.exec.pushes.borrow_mut().record(stamp.seq);
                if config.ordered {
                    match self.conn.track.observe(stamp.seq) {
                        Order::InOrder => {}
                        Order::Gap(n) => self.counts.seq_gaps += u64::from(n),
                        Order::Behind => self.counts.seq_behind += 1,
                    }
                }
            }
        }
    }

    fn outer(&mut self) {
        // Units carrying messages only: a heartbeat reply is not a push write.
        if self.counts.messages > self.messages_at_last_outer {
            self.counts.frames += 1;
            self.messages_at_last_outer = self.counts.messages;
        }
    }

    fn ping(&mut self, payload: &[u8]) {
        send_now(self.conn.fd(), &codec::pong(payload));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_field_by_field() {
        let mut a = Counters {
            messages: 3,
            connected: 1,
            ..Counters::default()
        };
        a.add(&Counters {
            messages: 4,
            seq_gaps: 2,
            ..Counters::default()
        });
        assert_eq!((a.messages, a.connected, a.seq_gaps), (7, 1, 2));
    }

    #[test]
    fn reports_are_json_lines() {
        let line = serde_json::to_string(&Report::Progress {
            worker: 2,
            sample: Some(9),
            counters: Counters::default(),
            rss_bytes: 1,
        })
        .unwrap();
        assert!(line.starts_with("{\"kind\":\"progress\""));
        assert!(!line.contains('\n'));
        let back: Report = serde_json::from_str(&line).unwrap();
        assert!(matches!(
            back,
            Report::Progress {
                worker: 2,
                sample: Some(9),
                ..
            }
        ));
    }
}
