//! A worker process: its share of the clients, on glommio executors (one per core it is given,
//! pinned), all connecting from one source address.
//!
//! The coordinator starts `bench-harness --worker`, writes one [`WorkerConfig`] line on its
//! stdin, then `sample <id>` lines (answered at once with a progress line carrying that id) and
//! finally `finish`. The worker writes JSON lines on stdout: `progress` every 250 ms and on each
//! sample, and one `final` line with its histograms and per-push counts.
//!
//! Per client the worker keeps a task ([`crate::client`]), its glommio stream and a few
//! counters; no read buffer: every read lands in the executor's scratch buffer ([`crate::exec`])
//! and only an unfinished frame is copied out (as comet does). Heartbeats are sent by one
//! ticker per executor that walks its clients in slots, not by a timer per client.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::timer::sleep;
use glommio::{spawn_local, LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use imgate_client::codec;
use imgate_shared::frame::op;

use crate::cli::System;
use crate::client::{client_task, send_now};
use crate::exec::{bump, Exec, ExecSetup, SCRATCH_SIZE};
use crate::messages::{Counters, Report, Shared, WorkerConfig};
use crate::procstat;
use crate::tally::{self, PushCounts};
use crate::{nats, resp};

/// io_uring depth of each executor (see where it is used).
const RING_DEPTH: usize = 4096;
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

async fn executor_main(setup: ExecSetup) -> ExecResult {
    let config = setup.config;
    let exec = Rc::new(Exec {
        heartbeat: match config.system {
            System::Imgate => codec::client_frame(config.transport, op::HEARTBEAT, 0, &[]),
            System::Redis => resp::ping(),
            System::Nats => nats::PING.to_vec(),
        },
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
