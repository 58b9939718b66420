//! The run's report: one JSON object (written with `--json`) and a human table.
//!
//! Top-level keys every push run has: `expected` and `delivered` (messages), `msgs_per_sec`,
//! `frames_per_sec`, `latency_us` (`p50`, `p90`, `p99`, `p999`, `max`), `server_cpu_ns_per_msg`,
//! `rss_bytes_per_conn`, `errors`, and comet's socket writes: `writes` (count, bytes, where
//! they were counted: `writes_source`), `server_cpu_ns_per_write` (whose CPU:
//! `server_cpu_source`). With `--floor`, `floor_ratio_per_write` is that CPU per write over
//! the floor writer's at comet's mean write size, both from this run. With `--server-cpus`,
//! `server_core_ns_per_write` is the busy time of those CPUs (softirq included) per comet
//! write, and with `--floor` too, `core_ratio_per_write` is that over the floor writers' core
//! time per write on the same CPUs (the honest comparison on loopback, where the receivers'
//! kernel work may land on the server's core). With several phases
//! (single-push: `peak`, then `latency`) `msgs_per_sec` is the fastest phase's and
//! `latency_us` the last phase's; `phases` has each.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::cli::Args;
use crate::floor::FloorResult;
use crate::messages::Counters;
use crate::metrics::Endpoint;
use crate::procstat::ProcSample;
use crate::pusher::PushKind;
use crate::results::{HoldData, Merged, PhaseData, PhaseWrites, WriteCost};
use crate::tally::Percentiles;

/// Everything a report is made of.
pub struct Inputs<'a> {
    pub args: &'a Args,
    pub clients: u64,
    pub workers: usize,
    pub executors: usize,
    pub run_id: u32,
    pub connect_seconds: f64,
    pub connect_totals: Counters,
    pub after_connect: Counters,
    pub server_before: Option<ProcSample>,
    pub server_after_connect: Option<ProcSample>,
    pub harness_rss_after_connect: u64,
    pub phases: &'a [PhaseData],
    pub hold: Option<HoldData>,
    pub merged: &'a Merged,
    /// The metrics endpoints comet's write counters were read from.
    pub metrics: Vec<Endpoint>,
    /// Floor measurements by label (`message`, `write` or `given` size).
    pub floor: Vec<(String, FloorResult)>,
    /// Connected clients over the run: (seconds since the first connect, connected).
    pub timeline: &'a [(f64, u64)],
}

/// What every report starts with: the scenario, the system, the command, the machine, the
/// date, and the commit measured (`BENCH_COMMIT`, which scripts/bench.sh sets).
pub fn header(args: &Args) -> Value {
    json!({
        "scenario": args.preset.name(),
        "system": args.system.name(),
        "date": utc_now(),
        "commit": std::env::var("BENCH_COMMIT").ok(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
    })
}

/// The settings a run was made with, as a peers comparison lists them.
fn settings(args: &Args) -> Value {
    json!({
        "clients": args.clients(),
        "push": args.push_kind(),
        "rate": args.fixed_rate(),
        "duration_s": args.duration,
        "body_bytes": args.body_bytes,
        "heartbeat_s": args.heartbeat,
        "transport": args.transport,
        "room": format!("{}://{}", args.room_type, args.room_id),
        "channel": args.channel(),
        "server_cpus": args.server_cpus.as_ref().map(|c| c.to_string()),
        "harness_cpus": crate::cpus::allowed().to_string(),
    })
}

fn per(n: f64, d: f64) -> Option<f64> {
    (d > 0.0).then(|| round1(n / d))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Builds the report (and prints the table).
pub fn build(i: Inputs<'_>) -> Value {
    let args = i.args;
    let m = i.merged;
    let connected = i.after_connect.connected;
    let exact_targets = i.connect_totals.connect_failed + i.connect_totals.auth_failed == 0;
    let check = m.check(i.phases, exact_targets);

    let mut out = header(args);
    let connect_time = Percentiles::of(&m.connect);
    out["settings"] = settings(args);
    out["run_id"] = json!(i.run_id);
    out["clients"] = json!(i.clients);
    out["transport"] = json!(args.transport);
    out["workers"] = json!(i.workers);
    out["executors_per_worker"] = json!(i.executors);
    out["connect"] = json!({
        "attempted": i.clients,
        "connected": connected,
        "failed": i.connect_totals.connect_failed,
        "auth_failed": i.connect_totals.auth_failed,
        "seconds": round2(i.connect_seconds),
        "per_sec": per(i.connect_totals.connects as f64, i.connect_seconds),
        "time_us": connect_time,
    });

    let rss_per_conn = match (i.server_before, i.server_after_connect) {
        (Some(a), Some(b)) if connected > 0 => {
            Some((b.rss_bytes as i64 - a.rss_bytes as i64) / connected as i64)
        }
        _ => None,
    };
    let harness_rss_per_conn = (connected > 0)
        .then(|| (i.harness_rss_after_connect as i64 - m.rss_start as i64) / connected as i64);
    out["rss_bytes_per_conn"] = json!(rss_per_conn);
    out["server"] = json!({
        "pids": args.server_pid,
        "cpus": args.server_cpus.as_ref().map(|c| c.to_string()),
        "rss_bytes_before": i.server_before.map(|s| s.rss_bytes),
        "rss_bytes_after_connect": i.server_after_connect.map(|s| s.rss_bytes),
    });
    out["harness"] = json!({
        "rss_bytes_per_conn": harness_rss_per_conn,
        "rss_bytes_after_connect": i.harness_rss_after_connect,
    });

    // Push phases.
    let phases: Vec<Value> = i
        .phases
        .iter()
        .enumerate()
        .map(|(n, p)| phase_json(n, p, m, exact_targets))
        .collect();
    let fastest = i.phases.iter().max_by(|a, b| {
        let r = |p: &PhaseData| p.delta_push().messages as f64 / p.outcome.elapsed.as_secs_f64();
        r(a).total_cmp(&r(b))
    });
    let (cpu_ns, stamped, reads) = i.phases.iter().fold((None, 0u64, 0u64), |acc, p| {
        let d = p.delta_all();
        let cpu = match (acc.0, p.server_cpu_ns) {
            (Some(a), Some(b)) => Some(a + b),
            (None, b) => b,
            (a, None) => a,
        };
        (cpu, acc.1 + d.stamped, acc.2 + d.reads)
    });
    let core_ns: Option<u64> = i.phases.iter().map(|p| p.server_core_cpu_ns).sum();
    out["expected"] = json!(check.expected);
    out["delivered"] = json!(check.delivered);
    out["lost"] = json!(check.lost);
    out["duplicated"] = json!(check.duplicated);
    match fastest {
        Some(p) => {
            let d = p.delta_push();
            let secs = p.outcome.elapsed.as_secs_f64();
            out["msgs_per_sec"] = json!(per(d.messages as f64, secs));
            out["frames_per_sec"] = json!(per(d.frames as f64, secs));
            out["reads_per_sec"] = json!(per(d.reads as f64, secs));
            out["pushes_per_sec"] = json!(per(p.outcome.accepted() as f64, secs));
        }
        None => {
            out["msgs_per_sec"] = json!(0.0);
            out["frames_per_sec"] = json!(0.0);
        }
    }
    out["latency_us"] = json!(i
        .phases
        .len()
        .checked_sub(1)
        .map(|last| m.latency(last))
        .unwrap_or_default());
    out["server_cpu_ns_per_msg"] = json!(cpu_ns
        .filter(|_| stamped > 0)
        .map(|c| round1(c as f64 / stamped as f64)));
    out["server_core_cpu_ns_per_msg"] = json!(core_ns
        .filter(|_| stamped > 0)
        .map(|c| round1(c as f64 / stamped as f64)));
    out["connections_over_time"] = json!(i
        .timeline
        .iter()
        .map(|&(t, n)| json!([round2(t), n]))
        .collect::<Vec<_>>());
    out["server_cpu_ns_per_client_read"] = json!(cpu_ns
        .filter(|_| reads > 0)
        .map(|c| round1(c as f64 / reads as f64)));
    out["phases"] = json!(phases);

    // comet's socket writes and their CPU, from the best source every phase had.
    let phase_writes: Vec<PhaseWrites> = i.phases.iter().map(PhaseData::writes).collect();
    let cost = WriteCost::of(&phase_writes);
    let client_reads = phase_writes.iter().fold((0, 0), |(r, b), p| {
        (r + p.client_reads.writes, b + p.client_reads.bytes)
    });
    let mut notes: Vec<&String> = i
        .phases
        .iter()
        .flat_map(|p| &p.comet_writes.notes)
        .collect();
    notes.sort();
    notes.dedup();
    if let Some(c) = &cost {
        out["writes_source"] = json!(c.writes_source);
        out["server_cpu_source"] = json!(c.server_cpu_source);
        out["server_cpu_ns_per_write"] = json!(c.cpu_ns_per_write().map(round1));
    }
    // The whole server core per write (`--server-cpus`: /proc/stat's user, nice, system, irq
    // and softirq of those CPUs over the same windows): what the kernel's receive work and
    // any thread on them cost too, which a thread's own CPU time leaves out.
    let core_ns_per_write = match (&cost, core_ns) {
        (Some(c), Some(ns)) if c.writes > 0 => Some(ns as f64 / c.writes as f64),
        _ => None,
    };
    out["server_core_ns_per_write"] = json!(core_ns_per_write.map(round1));
    out["writes"] = json!({
        "source": cost.map(|c| c.writes_source),
        "writes": cost.map(|c| c.writes),
        "bytes": cost.map(|c| c.bytes),
        "mean_bytes": cost.and_then(|c| c.mean_bytes()),
        "client_reads": client_reads.0,
        "client_read_bytes": client_reads.1,
        "metrics": i.metrics,
        "metrics_notes": notes,
        "server_cpu_ns": cost.and_then(|c| c.server_cpu_ns),
    });

    if let Some(h) = &i.hold {
        let d = h.end.since(&h.start);
        out["idle"] = json!({
            "seconds": round1(h.seconds),
            "min_connected": h.min_connected,
            "heartbeats_per_sec": per(d.heartbeats as f64, h.seconds),
            "heartbeat_replies": d.heartbeat_replies,
            "heartbeats_sent": d.heartbeats,
            "server_cpu_percent": h.cpu.map(|c| round1(c as f64 / 1e7 / h.seconds)),
            "harness_cpu_percent": h.workers_cpu.map(|c| round1(c as f64 / 1e7 / h.seconds)),
            "server_rss_bytes_end": h.rss_end,
        });
    }

    let c = &m.counters;
    let http_failed: u64 = i
        .phases
        .iter()
        .map(|p| p.outcome.sent() - p.outcome.accepted())
        .sum();
    let routed_mismatch: u64 = i
        .phases
        .iter()
        .filter(|p| matches!(p.plan.kind, PushKind::Keys | PushKind::Mids))
        .flat_map(|p| &p.outcome.results)
        .filter(|r| r.accepted && r.routed != Some(1))
        .count() as u64;
    let mut messages: Vec<String> = m.errors.clone();
    for p in i.phases {
        messages.extend(p.outcome.errors.iter().cloned());
    }
    messages.truncate(20);
    let total = c.connect_failed
        + c.auth_failed
        + c.disconnected
        + c.protocol_errors
        + c.heartbeat_failed
        + http_failed
        + check.lost
        + check.duplicated
        + c.seq_gaps
        + c.seq_behind
        + routed_mismatch;
    out["errors"] = json!({
        "total": total,
        "connect_failed": c.connect_failed,
        "auth_failed": c.auth_failed,
        "disconnected": c.disconnected,
        "protocol": c.protocol_errors,
        "heartbeat_failed": c.heartbeat_failed,
        "pushes_failed": http_failed,
        "lost": check.lost,
        "duplicated": check.duplicated,
        "pushes_mismatched": check.pushes_mismatched,
        "first_mismatches": check.first_mismatches,
        "seq_gaps": c.seq_gaps,
        "seq_behind": c.seq_behind,
        "routed_not_one": routed_mismatch,
        "messages": messages,
    });
    out["counters"] = serde_json::to_value(c).unwrap_or(Value::Null);

    if !i.floor.is_empty() {
        let mut floor = serde_json::Map::new();
        for (label, f) in &i.floor {
            floor.insert(
                label.clone(),
                serde_json::to_value(f).unwrap_or(Value::Null),
            );
        }
        let ratio = |server: Option<f64>, label: &str| {
            let f = i.floor.iter().find(|(l, _)| l == label)?;
            Some(round2(server? / f.1.cpu_ns_per_write.max(1e-9)))
        };
        out["server_cpu_per_msg_vs_floor"] =
            json!(ratio(out["server_cpu_ns_per_msg"].as_f64(), "message"));
        // Against the floor at comet's mean write size (or the size given).
        let at_write_size = i
            .floor
            .iter()
            .find(|(l, _)| l == "write" || l == "given")
            .map(|(_, f)| f);
        // The same on the core: the server's core per write over the floor writers' core
        // per write, both from /proc/stat of the same CPUs.
        out["core_ratio_per_write"] = json!(at_write_size.and_then(|f| {
            let floor = f.core_cpu_ns_per_write.filter(|ns| *ns > 0.0)?;
            Some(round2(core_ns_per_write? / floor))
        }));
        if let (Some(c), Some(f)) = (&cost, at_write_size) {
            let ratio = c.floor_ratio(f).map(round2);
            out["floor_ratio_per_write"] = json!(ratio);
            out["floor_ratio"] = json!({
                "ratio": ratio,
                "server_cpu_ns_per_write": c.cpu_ns_per_write().map(round1),
                "floor_cpu_ns_per_write": f.cpu_ns_per_write,
                "write_bytes": c.mean_bytes(),
                "floor_bytes": f.frame_bytes,
                "writes_source": c.writes_source,
                "server_cpu_source": c.server_cpu_source,
            });
        }
        out["floor"] = Value::Object(floor);
    }
    print_table(&out);
    out
}

fn phase_json(n: usize, p: &PhaseData, m: &Merged, exact_targets: bool) -> Value {
    let d = p.delta_push();
    let all = p.delta_all();
    let secs = p.outcome.elapsed.as_secs_f64();
    let check = crate::tally::check(&m.pushes, p.seqs(), false, |s| {
        p.expected(s, exact_targets).unwrap_or(0)
    });
    let mut sorted = p.samples.clone();
    sorted.sort_unstable();
    json!({
        "name": p.name,
        "kind": p.plan.kind,
        "rate_target": (p.plan.rate > 0.0).then_some(round1(p.plan.rate)),
        "http_connections": p.plan.connections,
        "seconds": round2(secs),
        "pushes_sent": p.outcome.sent(),
        "pushes_accepted": p.outcome.accepted(),
        "pushes_per_sec": per(p.outcome.accepted() as f64, secs),
        "http_us": Percentiles::of(&p.outcome.http_us),
        "connected": p.connected,
        "expected": check.expected,
        "delivered": check.delivered,
        "lost": check.lost,
        "duplicated": check.duplicated,
        "msgs_per_sec": per(d.messages as f64, secs),
        "frames_per_sec": per(d.frames as f64, secs),
        "reads_per_sec": per(d.reads as f64, secs),
        "bytes_per_read": (d.reads > 0).then(|| d.bytes / d.reads),
        "latency_us": m.latency(n),
        "samples_msgs_per_sec": p.samples,
        "samples_median": sorted.get(sorted.len() / 2),
        "drain_seconds": round2(p.drain_seconds),
        "backlog_at_push_end": p.backlog_at_push_end,
        "server_core_cpu_percent": p.server_core_cpu_ns.map(|c| round1(c as f64 / 1e7 / p.server_seconds)),
        "server_core_cpu_ns_per_msg": p.server_core_cpu_ns.filter(|_| all.stamped > 0)
            .map(|c| round1(c as f64 / all.stamped as f64)),
        "server_cpu_percent": p.server_cpu_ns.map(|c| round1(c as f64 / 1e7 / p.server_seconds)),
        "harness_cpu_percent": p.workers_cpu_ns.map(|c| round1(c as f64 / 1e7 / p.server_seconds)),
        "pusher_cpu_percent": p.pusher_cpu_ns.map(|c| round1(c as f64 / 1e7 / p.server_seconds)),
        "server_cpu_ns_per_msg": p.server_cpu_ns.filter(|_| all.stamped > 0)
            .map(|c| round1(c as f64 / all.stamped as f64)),
        "server_cpu_ns_per_client_read": p.server_cpu_ns.filter(|_| all.reads > 0)
            .map(|c| round1(c as f64 / all.reads as f64)),
        "comet_cpu_percent": p.comet_cpu_ns.map(|c| round1(c as f64 / 1e7 / p.server_seconds)),
        "comet_writes": p.comet_writes.writes,
        "comet_writes_per_sec": p.comet_writes.writes.and_then(|w| per(w.writes as f64, p.server_seconds)),
    })
}

/// Prints the human table.
fn print_table(r: &Value) {
    let num = |v: &Value| match v.as_f64() {
        Some(x) => group(x),
        None => "-".into(),
    };
    let ms = |v: &Value| match v.as_f64() {
        Some(us) => format!("{:.2}", us / 1000.0),
        None => "-".into(),
    };
    println!();
    println!(
        "{} on {} | {} {} clients, {} worker(s) x {} executor(s) | {}",
        r["scenario"].as_str().unwrap_or_default(),
        r["system"].as_str().unwrap_or_default(),
        num(&r["clients"]),
        r["transport"].as_str().unwrap_or_default(),
        r["workers"],
        r["executors_per_worker"],
        r["date"].as_str().unwrap_or_default()
    );
    let c = &r["connect"];
    println!(
        "{:<12} {} of {} in {} s ({}/s), connect+auth ms p50 {} p99 {} max {}",
        "connect",
        num(&c["connected"]),
        num(&c["attempted"]),
        c["seconds"],
        num(&c["per_sec"]),
        ms(&c["time_us"]["p50"]),
        ms(&c["time_us"]["p99"]),
        ms(&c["time_us"]["max"])
    );
    for p in r["phases"].as_array().into_iter().flatten() {
        println!(
            "{:<12} {} {} sent, {} accepted ({}/s), HTTP ms p50 {} p99 {}",
            format!("push {}", p["name"].as_str().unwrap_or_default()),
            p["kind"].as_str().unwrap_or_default(),
            num(&p["pushes_sent"]),
            num(&p["pushes_accepted"]),
            num(&p["pushes_per_sec"]),
            ms(&p["http_us"]["p50"]),
            ms(&p["http_us"]["p99"])
        );
        println!(
            "{:<12} {} msgs/s, {} frames/s, {} reads/s; expected {} delivered {}",
            "",
            num(&p["msgs_per_sec"]),
            num(&p["frames_per_sec"]),
            num(&p["reads_per_sec"]),
            num(&p["expected"]),
            num(&p["delivered"])
        );
        println!(
            "{:<12} latency ms p50 {} p90 {} p99 {} p99.9 {} max {}; CPU server {}% clients {}% pusher {}%",
            "",
            ms(&p["latency_us"]["p50"]),
            ms(&p["latency_us"]["p90"]),
            ms(&p["latency_us"]["p99"]),
            ms(&p["latency_us"]["p999"]),
            ms(&p["latency_us"]["max"]),
            num(&p["server_cpu_percent"]),
            num(&p["harness_cpu_percent"]),
            num(&p["pusher_cpu_percent"])
        );
    }
    if let Some(idle) = r.get("idle") {
        println!(
            "{:<12} {} s held, min {} connected, {} heartbeats/s, server CPU {}%",
            "idle",
            idle["seconds"],
            num(&idle["min_connected"]),
            num(&idle["heartbeats_per_sec"]),
            num(&idle["server_cpu_percent"])
        );
    }
    println!(
        "{:<12} expected {} delivered {} lost {} duplicated {}",
        "messages",
        num(&r["expected"]),
        num(&r["delivered"]),
        num(&r["lost"]),
        num(&r["duplicated"])
    );
    println!(
        "{:<12} server {} B/conn, harness {} B/conn; server {} ns/msg (its core {})",
        "memory/cpu",
        num(&r["rss_bytes_per_conn"]),
        num(&r["harness"]["rss_bytes_per_conn"]),
        num(&r["server_cpu_ns_per_msg"]),
        num(&r["server_core_cpu_ns_per_msg"])
    );
    let w = &r["writes"];
    if w["writes"].is_u64() {
        println!(
            "{:<12} {} writes of {} B mean, counted from {}; {} ns of {} CPU per write",
            "writes",
            num(&w["writes"]),
            num(&w["mean_bytes"]),
            w["source"].as_str().unwrap_or_default(),
            num(&r["server_cpu_ns_per_write"]),
            r["server_cpu_source"].as_str().unwrap_or_default()
        );
    }
    for (label, f) in r["floor"].as_object().into_iter().flatten() {
        println!(
            "{:<12} {} conns x {} B over {} process pair(s): {} writes/s, {} ns CPU/write (reader {})",
            format!("floor {label}"),
            f["connections"],
            f["frame_bytes"],
            f["processes"],
            num(&f["writes_per_sec"]),
            num(&f["cpu_ns_per_write"]),
            num(&f["reader_cpu_ns_per_write"])
        );
    }
    if r.get("floor").is_some() {
        println!(
            "{:<12} server CPU per message / floor {}; per write / floor at the write size {}",
            "vs floor", r["server_cpu_per_msg_vs_floor"], r["floor_ratio_per_write"]
        );
    }
    let e = &r["errors"];
    if e["total"].as_u64() == Some(0) {
        println!("{:<12} none", "errors");
    } else {
        let mut parts = Vec::new();
        for (k, v) in e.as_object().into_iter().flatten() {
            if v.as_u64().is_some_and(|n| n > 0) && k != "total" {
                parts.push(format!("{k} {v}"));
            }
        }
        println!("{:<12} {}", "errors", parts.join(", "));
        for msg in e["messages"].as_array().into_iter().flatten().take(5) {
            println!("{:<12} {}", "", msg.as_str().unwrap_or_default());
        }
    }
}

/// 1234567.8 → "1,234,568"; small fractions keep one decimal.
fn group(x: f64) -> String {
    if x.abs() < 100.0 && x.fract() != 0.0 {
        return format!("{x:.1}");
    }
    let n = x.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let mem_kb: Option<u64> = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    json!({
        // The host's, not this process's share of it (the harness may run under taskset).
        // SAFETY: sysconf has no preconditions.
        "cpus": unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1),
        "cpu_model": model,
        "memory_bytes": mem_kb.map(|k| k * 1024),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_numbers_print_as_people_read_them() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(group(1_234_567.8), "1,234,568");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(2.5), "2.5");
        assert_eq!(group(-4200.0), "-4,200");
    }
}
