//! The coordinator: starts the worker processes, waits for their clients to connect, runs the
//! push phases while sampling counts once per second, checks every push's delivery count, and
//! builds the report.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::cli::{Args, Preset};
use crate::cpus::{self, CpuSet};
use crate::floor::{self, FloorConfig, FloorResult};
use crate::messages::{Counters, Report, WorkerConfig, MAX_PHASES};
use crate::metrics;
use crate::payload;
use crate::procstat::{self, ProcSample};
use crate::progress::Progress;
use crate::pusher::{self, PushKind, PushPlan};
use crate::report;
use crate::results::{Final, HoldData, Merged, PhaseData, PhaseWrites, WriteCost};

/// Runs the scenario `args` names and returns its report.
pub fn run(args: &Args) -> anyhow::Result<Value> {
    if args.preset == Preset::Floor {
        let connections = args.floor_connections.unwrap_or(1000);
        let floor = run_floor(args, connections, args.floor_bytes.unwrap_or(76))?;
        eprintln!(
            "floor: {:.0} writes/s, {:.0} ns CPU per write (reader {:.0})",
            floor.writes_per_sec, floor.cpu_ns_per_write, floor.reader_cpu_ns_per_write
        );
        let mut out = report::header(args);
        out["floor"] = json!({ "given": floor });
        return Ok(out);
    }
    let clients = args.clients();
    if clients == 0 {
        bail!("--clients must be at least 1");
    }
    if let Some(problem) = args.peer_problem() {
        bail!("{problem}");
    }
    // The CPUs this process may use (`taskset`): workers are pinned within them.
    let allowed = cpus::allowed();
    let cpus = allowed.cpus().len().max(1);
    let workers_n = args
        .workers
        .unwrap_or_else(|| clients.div_ceil(args.per_worker.max(1)) as usize)
        .clamp(1, clients as usize);
    let per_worker = clients.div_ceil(workers_n as u64);
    if per_worker > args.per_worker {
        bail!(
            "{workers_n} workers would run {per_worker} clients each, above --per-worker {}",
            args.per_worker
        );
    }
    let executors = args
        .executors
        .unwrap_or((cpus / workers_n).max(1))
        .clamp(1, per_worker.max(1) as usize);
    let run_id = (payload::now_ns() ^ (u64::from(std::process::id()) << 20)) as u32 | 1;
    let configs: Vec<WorkerConfig> = (0..workers_n)
        .map(|i| {
            let first = clients * i as u64 / workers_n as u64;
            let last = clients * (i as u64 + 1) / workers_n as u64;
            WorkerConfig {
                worker: i,
                run_id,
                first_client: first,
                clients: last - first,
                cpus: if args.no_pin {
                    Vec::new()
                } else {
                    (0..executors)
                        .filter_map(|e| allowed.nth_wrapping(i * executors + e))
                        .collect()
                },
                executors,
                source_ip: args.source_ip(i),
                targets: args.targets(),
                transport: args.transport,
                system: args.system,
                channel: args.channel(),
                connect_rate: if args.staggered {
                    args.connect_rate
                } else {
                    args.connect_rate * (last - first) as f64 / clients as f64
                },
                connect_delay_ms: if args.staggered && args.connect_rate > 0.0 {
                    (first as f64 / args.connect_rate * 1000.0) as u64
                } else {
                    0
                },
                connect_timeout_ms: (args.connect_timeout * 1000.0) as u64,
                max_in_flight: args.max_in_flight,
                heartbeat_ms: (args.heartbeat * 1000.0) as u64,
                reconnect: args.reconnect,
                mid_base: args.mid_base,
                key_prefix: args.key_prefix.clone(),
                room: format!("{}://{}", args.room_type, args.room_id),
                accepts: vec![args.op],
                push_op: args.op,
                ordered: args.ordered(),
            }
        })
        .collect();
    eprintln!(
        "bench-harness {} on {}: {clients} {:?} clients in {workers_n} worker(s) x {executors} executor(s), run {run_id}",
        args.preset.name(),
        args.system.name(),
        args.transport
    );

    let pids = &args.server_pid;
    let server_before = procstat::sample_all(pids);
    let connect_started = Instant::now();
    let mut timeline = Timeline {
        start: connect_started,
        points: vec![(0.0, 0)],
    };
    // A peer's publisher connects before its subscribers, so it has its place at a server
    // that fills up.
    let ready = match args.push_kind() {
        Some(kind) => {
            pusher::Ready::connect(&base_plan(args, kind, run_id)).with_context(|| {
                format!(
                    "connecting the publisher to {} at {}",
                    args.system.name(),
                    args.targets()[0]
                )
            })?
        }
        None => pusher::Ready::default(),
    };
    let mut workers = Workers::spawn(&configs)?;
    let connect = wait_for_connects(&workers, args, clients, &mut timeline);
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(args.settle));
    let after_connect = workers.sample();
    let server_after_connect = procstat::sample_all(pids);
    let harness_rss_after_connect = workers.rss();
    eprintln!(
        "connected {} of {clients} in {connect_seconds:.2} s ({} failed)",
        after_connect.connected,
        connect.connect_failed + connect.auth_failed
    );

    let mut phases = Vec::new();
    let mut hold = None;
    match args.push_kind() {
        None => hold = Some(hold_idle(&mut workers, args, pids, &mut timeline)),
        Some(kind) => {
            let connected = after_connect.connected;
            let mut next_seq = 0u32;
            let mut plan = base_plan(args, kind, run_id);
            plan.ready = ready.clone();
            let plans: Vec<(&str, Option<f64>)> = match args.fixed_rate() {
                Some(rate) => vec![("push", Some(rate))],
                None if args.preset == Preset::SinglePush => {
                    vec![("peak", None), ("latency", None)]
                }
                None => vec![("push", None)],
            };
            for (phase, (name, rate)) in plans.into_iter().enumerate().take(MAX_PHASES) {
                plan.phase = phase as u32;
                plan.first_seq = next_seq;
                plan.rate = match (name, rate) {
                    (_, Some(r)) => r,
                    ("latency", None) => {
                        let peak: &PhaseData = phases.last().expect("peak phase ran first");
                        let r = peak.outcome.accepted() as f64 / peak.outcome.elapsed.as_secs_f64()
                            * args.latency_fraction;
                        r.max(1.0)
                    }
                    _ => 0.0,
                };
                eprintln!(
                    "phase {name}: {kind:?} pushes at {} for {} s over {} connection(s)",
                    if plan.rate > 0.0 {
                        format!("{:.0}/s", plan.rate)
                    } else {
                        "full speed".into()
                    },
                    args.duration,
                    plan.connections
                );
                let data = run_phase(&mut workers, args, name, &plan, connected, &mut timeline)?;
                next_seq = plan.first_seq
                    + data
                        .outcome
                        .results
                        .last()
                        .map_or(0, |r| r.seq + 1 - plan.first_seq);
                phases.push(data);
            }
        }
    }

    let finals = workers.finish(Duration::from_secs(60))?;
    let merged = Merged::of(&finals);
    // The floor, in this run, to as many sockets as comet had: writes the size of one
    // message (what comet would cost if it wrote each message alone) and of comet's mean
    // write (what its coalesced writes were: from its own counters, else the clients' mean
    // read).
    let mut floor = Vec::new();
    if args.floor {
        let connections = args
            .floor_connections
            .unwrap_or(after_connect.connected as usize);
        let d = phases.first().map(|p| p.delta_push()).unwrap_or_default();
        let writes: Vec<PhaseWrites> = phases.iter().map(PhaseData::writes).collect();
        let write_bytes = WriteCost::of(&writes).and_then(|c| c.mean_bytes());
        let sizes = match args.floor_bytes {
            Some(b) => vec![("given", b as u64)],
            None => vec![
                ("message", d.bytes.checked_div(d.messages).unwrap_or(76)),
                ("write", write_bytes.unwrap_or(76)),
            ],
        };
        for (label, bytes) in sizes {
            floor.push((
                label.to_string(),
                run_floor(args, connections, bytes as usize)?,
            ));
        }
    }

    Ok(report::build(report::Inputs {
        args,
        clients,
        workers: workers_n,
        executors,
        run_id,
        connect_seconds,
        connect_totals: connect,
        after_connect,
        server_before,
        server_after_connect,
        harness_rss_after_connect,
        phases: &phases,
        hold,
        merged: &merged,
        metrics: args.metrics_endpoints(),
        floor,
        timeline: &timeline.points,
    }))
}

/// Connected clients over the run: (seconds since the first connect, connected).
struct Timeline {
    start: Instant,
    points: Vec<(f64, u64)>,
}

impl Timeline {
    fn add(&mut self, connected: u64) {
        self.points
            .push((self.start.elapsed().as_secs_f64(), connected));
    }
}

/// Everything the pushes and phases need, except rate, phase and first sequence.
fn base_plan(args: &Args, kind: PushKind, run_id: u32) -> PushPlan {
    PushPlan {
        kind,
        system: args.system,
        http: args.http,
        peer: args.targets()[0],
        channel: args.channel(),
        ready: pusher::Ready::default(),
        op: args.op,
        room_type: args.room_type.clone(),
        room_id: args.room_id.clone(),
        rate: 0.0,
        connections: args.concurrency(),
        duration: Duration::from_secs_f64(args.duration),
        clients: args.clients(),
        mid_base: args.mid_base,
        key_prefix: args.key_prefix.clone(),
        run: run_id,
        phase: 0,
        first_seq: 0,
        body_bytes: args.body_bytes,
        speed: 0,
    }
}

fn run_floor(args: &Args, connections: usize, bytes: usize) -> anyhow::Result<FloorResult> {
    let (writer_cpus, reader_cpus) = args.floor_cpus();
    let config = FloorConfig {
        connections: connections.max(1),
        frame_bytes: bytes.max(1),
        duration: Duration::from_secs_f64(args.floor_seconds),
        writer_cpus,
        reader_cpus,
        per_process: floor::sockets_per_process(args.floor_per_process),
    };
    let where_ = |set: &CpuSet| {
        if set.is_empty() {
            "any CPU".to_string()
        } else {
            format!("CPUs {set}")
        }
    };
    eprintln!(
        "floor: {} loopback connections over {} writer and reader process pair(s), {} bytes per write, {} s; writers on {}, readers on {}",
        config.connections,
        floor::split(config.connections, config.per_process).len(),
        config.frame_bytes,
        args.floor_seconds,
        where_(&config.writer_cpus),
        where_(&config.reader_cpus)
    );
    floor::run(&config).context("measuring the socket floor")
}

/// Waits until every client connected or gave up (or the connect phase's deadline passed);
/// returns the counters then.
fn wait_for_connects(
    workers: &Workers,
    args: &Args,
    clients: u64,
    timeline: &mut Timeline,
) -> Counters {
    let started = timeline.start;
    let budget = if args.connect_rate > 0.0 {
        clients as f64 / args.connect_rate
    } else {
        clients as f64 / 5000.0
    };
    let deadline = started + Duration::from_secs_f64(budget + args.connect_timeout + 30.0);
    let mut last_point = Instant::now();
    let mut progress = Progress::on_stderr();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let c = workers.totals();
        let tried = c.connects + c.connect_failed + c.auth_failed;
        if (tried >= clients && c.connecting == 0) || workers.all_exited() {
            timeline.add(c.connected);
            return c;
        }
        if Instant::now() > deadline {
            progress.done();
            eprintln!("connect phase deadline passed with {tried} of {clients} tried");
            timeline.add(c.connected);
            return c;
        }
        if last_point.elapsed() >= Duration::from_secs(1) {
            last_point = Instant::now();
            timeline.add(c.connected);
        }
        let secs = started.elapsed().as_secs_f64();
        progress.show(&format!(
            "connecting: {} of {clients} connected, {:.0}/s, {} in progress, {} failed, {secs:.0} s",
            c.connected,
            c.connects as f64 / secs.max(0.001),
            c.connecting,
            c.connect_failed + c.auth_failed
        ));
    }
}

/// Idle: hold the connections for the duration, sampling once per second.
fn hold_idle(
    workers: &mut Workers,
    args: &Args,
    pids: &[u32],
    timeline: &mut Timeline,
) -> HoldData {
    let start = workers.sample();
    let cpu0 = procstat::sample_all(pids);
    let worker_pids = workers.pids();
    let workers0 = procstat::sample_all(&worker_pids);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(args.duration);
    let mut min_connected = start.connected;
    let mut progress = Progress::on_stderr();
    timeline.add(start.connected);
    while Instant::now() < end {
        std::thread::sleep((end - Instant::now()).min(Duration::from_secs(1)));
        let c = workers.sample();
        timeline.add(c.connected);
        min_connected = min_connected.min(c.connected);
        progress.show(&format!(
            "holding: {} connected, {} heartbeats sent, {} answered, {:.0} of {:.0} s",
            c.connected,
            c.heartbeats - start.heartbeats,
            c.heartbeat_replies - start.heartbeat_replies,
            t0.elapsed().as_secs_f64(),
            args.duration
        ));
    }
    progress.done();
    let endc = workers.sample();
    HoldData {
        seconds: t0.elapsed().as_secs_f64(),
        start,
        end: endc,
        min_connected,
        cpu: diff(cpu0, procstat::sample_all(pids)),
        workers_cpu: diff(workers0, procstat::sample_all(&worker_pids)),
        rss_end: procstat::sample_all(pids).map(|s| s.rss_bytes),
    }
}

fn diff(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<u64> {
    Some(b?.cpu_ns.saturating_sub(a?.cpu_ns))
}

/// CPU of the server threads `--server-threads` names (comet's), if it names any.
fn comet_cpu(args: &Args) -> Option<u64> {
    if args.server_threads.is_empty() {
        return None;
    }
    procstat::threads_cpu_ns(&args.server_pid, &args.server_threads)
}

/// Busy time of the server's cores (`--server-cpus`), if given.
fn core_busy(args: &Args) -> Option<u64> {
    procstat::cores_busy_ns(args.server_cpus.as_ref()?.cpus())
}

fn run_phase(
    workers: &mut Workers,
    args: &Args,
    name: &str,
    plan: &PushPlan,
    connected: u64,
    timeline: &mut Timeline,
) -> anyhow::Result<PhaseData> {
    let pids = &args.server_pid;
    let endpoints = args.metrics_endpoints();
    let before = workers.sample();
    let written0 = metrics::scrape(&endpoints);
    let cpu0 = procstat::sample_all(pids);
    let comet0 = comet_cpu(args);
    let core0 = core_busy(args);
    let worker_pids = workers.pids();
    let me = [std::process::id()];
    let (workers0, pusher0) = (
        procstat::sample_all(&worker_pids),
        procstat::sample_all(&me),
    );
    let t0 = Instant::now();
    let stop = AtomicBool::new(false);
    let mut samples = Vec::new();
    let mut progress = Progress::on_stderr();
    let outcome = std::thread::scope(|scope| {
        let pushing = scope.spawn(|| pusher::run(plan, &stop));
        let mut last = before;
        let mut tick = t0 + Duration::from_secs(1);
        while !pushing.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
            if Instant::now() >= tick {
                tick += Duration::from_secs(1);
                let c = workers.sample();
                let got = c.messages - last.messages;
                samples.push(got);
                timeline.add(c.connected);
                progress.show(&format!(
                    "phase {name}: {got} messages/s, {} frames/s, {} connected, {:.0} of {:.0} s",
                    c.frames - last.frames,
                    c.connected,
                    t0.elapsed().as_secs_f64(),
                    plan.duration.as_secs_f64()
                ));
                last = c;
            }
        }
        pushing.join().expect("pusher thread")
    });
    progress.done();
    let at_push_end = workers.sample();
    for e in &outcome.errors {
        eprintln!("  push error: {e}");
    }

    // Wait for what is still on its way: until every expected delivery arrived, nothing arrived
    // for 2 s, or the drain limit.
    let probe = PhaseData {
        name: name.into(),
        plan: plan.clone(),
        outcome,
        connected,
        before,
        at_push_end,
        after: at_push_end,
        samples: Vec::new(),
        drain_seconds: 0.0,
        server_cpu_ns: None,
        server_core_cpu_ns: None,
        backlog_at_push_end: 0,
        comet_cpu_ns: None,
        comet_writes: metrics::Window::default(),
        server_seconds: 0.0,
        workers_cpu_ns: None,
        pusher_cpu_ns: None,
    };
    let expected: u64 = probe
        .seqs()
        .map(|s| u64::from(probe.expected(s, true).unwrap_or(0)))
        .sum();
    // Messages the pushes answered so far owe the clients and they have not read yet: the
    // server's (or the clients') lag when the last push was answered.
    let backlog_at_push_end =
        expected.saturating_sub(at_push_end.stamped.saturating_sub(before.stamped));
    let drain_start = Instant::now();
    let drain_end = drain_start + Duration::from_secs_f64(args.drain);
    let mut after = at_push_end;
    let mut last_change = Instant::now();
    while after.stamped - before.stamped < expected && Instant::now() < drain_end {
        std::thread::sleep(Duration::from_millis(50));
        let c = workers.sample();
        if c.stamped != after.stamped {
            last_change = Instant::now();
        }
        after = c;
        if last_change.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let cpu1 = procstat::sample_all(pids);
    let comet1 = comet_cpu(args);
    let core1 = core_busy(args);
    timeline.add(after.connected);
    let written1 = metrics::scrape(&endpoints);
    let (workers1, pusher1) = (
        procstat::sample_all(&worker_pids),
        procstat::sample_all(&me),
    );
    Ok(PhaseData {
        workers_cpu_ns: diff(workers0, workers1),
        pusher_cpu_ns: diff(pusher0, pusher1),
        samples,
        after,
        drain_seconds: drain_start.elapsed().as_secs_f64(),
        server_cpu_ns: diff(cpu0, cpu1),
        server_core_cpu_ns: core0.zip(core1).map(|(a, b)| b.saturating_sub(a)),
        backlog_at_push_end,
        comet_cpu_ns: comet0.zip(comet1).map(|(a, b)| b.saturating_sub(a)),
        comet_writes: metrics::Window::between(&endpoints, &written0, &written1),
        server_seconds: t0.elapsed().as_secs_f64(),
        ..probe
    })
}

/// What the workers last said.
#[derive(Default)]
struct Board {
    progress: Vec<Option<(Counters, u64)>>,
    samples: HashMap<u64, Vec<Option<Counters>>>,
    finals: Vec<Option<Final>>,
    exited: Vec<bool>,
}

/// The worker processes.
struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    board: Arc<(Mutex<Board>, Condvar)>,
    next_sample: u64,
}

impl Workers {
    fn spawn(configs: &[WorkerConfig]) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let n = configs.len();
        let board = Arc::new((
            Mutex::new(Board {
                progress: vec![None; n],
                samples: HashMap::new(),
                finals: vec![None; n],
                exited: vec![false; n],
            }),
            Condvar::new(),
        ));
        let mut workers = Workers {
            children: Vec::new(),
            stdins: Vec::new(),
            board: board.clone(),
            next_sample: 0,
        };
        for config in configs {
            let mut child = Command::new(&exe)
                .arg("--worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting a worker process")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            writeln!(stdin, "{}", serde_json::to_string(config)?)?;
            stdin.flush()?;
            let (board, index) = (board.clone(), config.worker);
            std::thread::spawn(move || read_worker(index, stdout, &board));
            workers.children.push(child);
            workers.stdins.push(stdin);
        }
        Ok(workers)
    }

    /// Process ids of the workers.
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest progress of every worker, summed.
    fn totals(&self) -> Counters {
        let board = self.lock();
        let mut total = Counters::default();
        for (c, _) in board.progress.iter().flatten() {
            total.add(c);
        }
        total
    }

    /// The workers' resident memory, summed.
    fn rss(&self) -> u64 {
        self.lock().progress.iter().flatten().map(|p| p.1).sum()
    }

    fn all_exited(&self) -> bool {
        self.lock().exited.iter().all(|e| *e)
    }

    /// Asks every worker for its counters now and sums the answers (a worker that does not
    /// answer within 2 s contributes its latest progress).
    fn sample(&mut self) -> Counters {
        let id = self.next_sample;
        self.next_sample += 1;
        for stdin in &mut self.stdins {
            let _ = writeln!(stdin, "sample {id}");
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let (lock, cv) = &*self.board;
        let mut board = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let answered = board
                .samples
                .get(&id)
                .map_or(0, |v| v.iter().flatten().count());
            let alive = board.exited.iter().filter(|e| !**e).count();
            if answered >= alive || Instant::now() >= deadline {
                break;
            }
            board = cv
                .wait_timeout(board, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let answers = board.samples.remove(&id).unwrap_or_default();
        let mut total = Counters::default();
        for (i, progress) in board.progress.iter().enumerate() {
            match answers.get(i).and_then(|a| a.as_ref()) {
                Some(c) => total.add(c),
                None => {
                    if let Some((c, _)) = progress {
                        total.add(c);
                    }
                }
            }
        }
        total
    }

    /// Tells every worker to finish and collects their final lines.
    fn finish(&mut self, timeout: Duration) -> anyhow::Result<Vec<Final>> {
        for stdin in &mut self.stdins {
            let _ = writeln!(stdin, "finish");
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.board;
        let mut board = lock.lock().unwrap_or_else(|e| e.into_inner());
        while board.finals.iter().any(|f| f.is_none()) {
            if Instant::now() >= deadline {
                bail!("workers did not report their final figures within {timeout:?}");
            }
            if board
                .finals
                .iter()
                .zip(&board.exited)
                .any(|(f, exited)| f.is_none() && *exited)
            {
                bail!("a worker exited without its final figures (see its errors above)");
            }
            board = cv
                .wait_timeout(board, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(board.finals.iter().flatten().cloned().collect())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            // A worker exits by itself after its final line; give it a moment, then end it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_worker(index: usize, stdout: std::process::ChildStdout, board: &(Mutex<Board>, Condvar)) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let report: Report = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("worker {index}: unreadable line ({e}): {line}");
                continue;
            }
        };
        let mut b = board.0.lock().unwrap_or_else(|e| e.into_inner());
        match report {
            Report::Progress {
                sample,
                counters,
                rss_bytes,
                ..
            } => {
                b.progress[index] = Some((counters, rss_bytes));
                if let Some(id) = sample {
                    let n = b.progress.len();
                    b.samples.entry(id).or_insert_with(|| vec![None; n])[index] = Some(counters);
                }
            }
            Report::Final {
                counters,
                rss_bytes,
                rss_start_bytes,
                latency_us,
                connect_us,
                push_counts,
                errors,
                ..
            } => {
                b.progress[index] = Some((counters, rss_bytes));
                b.finals[index] = Some(Final {
                    counters,
                    rss_bytes,
                    rss_start_bytes,
                    latency_us,
                    connect_us,
                    push_counts,
                    errors,
                });
            }
        }
        board.1.notify_all();
    }
    let mut b = board.0.lock().unwrap_or_else(|e| e.into_inner());
    b.exited[index] = true;
    board.1.notify_all();
}
