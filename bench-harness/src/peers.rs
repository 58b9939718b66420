//! The peers comparison: the reports of one `scripts/bench.sh peers` run (the same case against
//! imgate, Redis pub/sub and NATS core in turn) merged into one report with a row per system.
//!
//! Each row: `system`, `delivered`, `expected`, `server_cpu_ns_per_delivery` (from the
//! server's cores when every run measured them, `--server-cpus`, else from its processes:
//! `server_cpu_source` says which; both are in the row), `p50_ms`, `p99_ms`,
//! `server_rss_bytes_per_conn`, and what shows a server falling behind: connects refused,
//! subscribers dropped, the publish rate reached (`publish_rate`, `push_seconds`: a server
//! slow to answer slows its publisher), the deliveries still owed when the last publish was
//! answered (`backlog_at_push_end`) and how long the drain took. `settings` are the first run's (the
//! script gives every run the same).
//!
//! Several runs of a system (`RUNS=3 scripts/bench.sh peers`) make one row of medians: each
//! number is the median over the runs (the middle one of an odd count, the lower middle of
//! an even one), `runs` says how many, and `per_run` keeps every run's value of the figures
//! the headline quotes.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};

fn ms(us: &Value) -> Value {
    us.as_f64()
        .map_or(Value::Null, |v| json!((v / 10.0).round() / 100.0))
}

/// One system's row from its run's report.
fn row(report: &Value, file: &str, use_core: bool) -> Value {
    let phase = &report["phases"][0];
    let latency = &report["latency_us"];
    let c = &report["connect"];
    let counters = &report["counters"];
    let process = report["server_cpu_ns_per_msg"].clone();
    let core = report["server_core_cpu_ns_per_msg"].clone();
    let floor = report["floor"]["message"]["cpu_ns_per_write"].as_f64();
    json!({
        "system": report["system"],
        "clients": report["clients"],
        "connected": c["connected"],
        "connect_failed": c["failed"].as_u64().unwrap_or(0) + c["auth_failed"].as_u64().unwrap_or(0),
        "disconnected": counters["disconnected"],
        "expected": report["expected"],
        "delivered": report["delivered"],
        "lost": report["lost"],
        "duplicated": report["duplicated"],
        "pushes_accepted": phase["pushes_accepted"],
        // A server slow to answer publishes slows the publisher: the rate it reached and how
        // long the pushes took, against the rate and duration asked.
        "publish_rate": phase["pushes_per_sec"],
        "push_seconds": phase["seconds"],
        "msgs_per_sec": report["msgs_per_sec"],
        "server_cpu_ns_per_delivery": if use_core { core.clone() } else { process.clone() },
        "server_core_cpu_ns_per_delivery": core,
        "server_process_cpu_ns_per_delivery": process,
        "server_cpu_percent": phase["server_cpu_percent"],
        "server_core_cpu_percent": phase["server_core_cpu_percent"],
        "p50_ms": ms(&latency["p50"]),
        "p90_ms": ms(&latency["p90"]),
        "p99_ms": ms(&latency["p99"]),
        "p999_ms": ms(&latency["p999"]),
        "max_ms": ms(&latency["max"]),
        "publish_p50_ms": ms(&phase["http_us"]["p50"]),
        "publish_p99_ms": ms(&phase["http_us"]["p99"]),
        "backlog_at_push_end": phase["backlog_at_push_end"],
        "drain_seconds": phase["drain_seconds"],
        "samples_msgs_per_sec": phase["samples_msgs_per_sec"],
        "server_rss_bytes_per_conn": report["rss_bytes_per_conn"],
        "floor_cpu_ns_per_write": floor,
        "errors": report["errors"]["total"],
        "first_errors": report["errors"]["messages"].as_array().map(|m| m.iter().take(3).cloned().collect::<Vec<_>>()),
        "date": report["date"],
        "command": report["command"],
        "report": file,
    })
}

/// Reads each run's report and merges them.
pub fn merge(paths: &[PathBuf]) -> anyhow::Result<Value> {
    let reports = paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the report {}", p.display()))?;
            serde_json::from_str::<Value>(&text)
                .with_context(|| format!("{} is not a JSON report", p.display()))
        })
        .collect::<anyhow::Result<Vec<Value>>>()?;
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into())
        })
        .collect();
    Ok(merge_reports(&reports, &names))
}

/// The figures whose every run's value a row of medians keeps.
const PER_RUN: [&str; 8] = [
    "delivered",
    "expected",
    "server_cpu_ns_per_delivery",
    "server_process_cpu_ns_per_delivery",
    "p50_ms",
    "p99_ms",
    "backlog_at_push_end",
    "server_rss_bytes_per_conn",
];

/// The median of the numbers among `values` (the lower middle of an even count).
fn median(values: &[&Value]) -> Value {
    let mut numbers: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
    if numbers.is_empty() {
        return Value::Null;
    }
    numbers.sort_by(f64::total_cmp);
    let m = numbers[(numbers.len() - 1) / 2];
    if m.fract() == 0.0 && m.abs() < 9e15 {
        json!(m as i64)
    } else {
        json!(m)
    }
}

/// One row from the rows of a system's runs: numbers are medians, the rest the first run's.
fn combine(rows: &[Value]) -> Value {
    let Some(first) = rows.first() else {
        return Value::Null;
    };
    if rows.len() == 1 {
        return first.clone();
    }
    let mut out = first.clone();
    if let Some(fields) = out.as_object_mut() {
        for (key, value) in fields.iter_mut() {
            if value.is_number() {
                let all: Vec<&Value> = rows.iter().map(|r| &r[key.as_str()]).collect();
                *value = median(&all);
            }
        }
        fields.insert("runs".into(), json!(rows.len()));
        let per_run: serde_json::Map<String, Value> = PER_RUN
            .iter()
            .map(|k| {
                let all: Vec<Value> = rows.iter().map(|r| r[*k].clone()).collect();
                (k.to_string(), Value::Array(all))
            })
            .collect();
        fields.insert("per_run".into(), Value::Object(per_run));
        let reports: Vec<Value> = rows.iter().map(|r| r["report"].clone()).collect();
        fields.insert("report".into(), Value::Array(reports));
    }
    out
}

/// Merges run reports (one or more per system, in the order the systems first appear) into
/// the peers report.
pub fn merge_reports(reports: &[Value], names: &[String]) -> Value {
    let use_core = !reports.is_empty()
        && reports
            .iter()
            .all(|r| r["server_core_cpu_ns_per_msg"].is_number());
    let mut systems: Vec<(String, Vec<Value>)> = Vec::new();
    for (r, name) in reports.iter().zip(names) {
        let system = r["system"].as_str().unwrap_or("?").to_string();
        let row = row(r, name, use_core);
        match systems.iter_mut().find(|(s, _)| *s == system) {
            Some((_, rows)) => rows.push(row),
            None => systems.push((system, vec![row])),
        }
    }
    let rows: Vec<Value> = systems.iter().map(|(_, rows)| combine(rows)).collect();
    let first = reports.first().cloned().unwrap_or(Value::Null);
    // The floor, from whichever run measured it (the script asks the imgate run).
    let floor = reports
        .iter()
        .find_map(|r| r["floor"]["message"].as_object().cloned());
    let mut out = json!({
        "scenario": "peers",
        "date": first["date"],
        "commit": first["commit"],
        "machine": first["machine"],
        "command": std::env::var("BENCH_PEERS_COMMAND").ok().unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
        "settings": first["settings"],
        "server_cpu_source": if use_core { "core" } else { "process" },
        "server_cpu_note": if use_core {
            "busy time (user, system, irq, softirq) of the server's CPUs in /proc/stat over each push window and drain, whoever ran there"
        } else {
            "utime + stime of the server's processes over each push window and drain"
        },
        "rows": rows,
    });
    if let Some(f) = floor {
        out["floor"] = Value::Object(f);
        // The floor on the rows' basis: its writers' core, or their own CPU time.
        let basis = if use_core {
            "core_cpu_ns_per_write"
        } else {
            "cpu_ns_per_write"
        };
        // Every run that measured it (the imgate runs), the median.
        let floors: Vec<&Value> = reports
            .iter()
            .map(|r| &r["floor"]["message"][basis])
            .collect();
        let floor_ns = median(&floors).as_f64().filter(|f| *f > 0.0);
        out["floor_cpu_ns_per_write"] = json!(floor_ns);
        if let (Some(floor_ns), Some(rows)) = (floor_ns, out["rows"].as_array_mut()) {
            for row in rows {
                let ratio = row["server_cpu_ns_per_delivery"]
                    .as_f64()
                    .map(|c| (c / floor_ns * 100.0).round() / 100.0);
                row["vs_floor"] = json!(ratio);
            }
        }
    }
    out
}

/// Prints the rows as a table.
pub fn print(report: &Value) {
    println!(
        "\n{:<8} {:>15} {:>15} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "system",
        "connected",
        "delivered",
        "CPU ns/d",
        "p50 ms",
        "p99 ms",
        "max ms",
        "behind",
        "RSS B/c"
    );
    for row in report["rows"].as_array().into_iter().flatten() {
        let n = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x}"));
        println!(
            "{:<8} {:>15} {:>15} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9}",
            row["system"].as_str().unwrap_or("?"),
            format!("{}/{}", n(&row["connected"]), n(&row["clients"])),
            format!("{}/{}", n(&row["delivered"]), n(&row["expected"])),
            n(&row["server_cpu_ns_per_delivery"]),
            n(&row["p50_ms"]),
            n(&row["p99_ms"]),
            n(&row["max_ms"]),
            n(&row["backlog_at_push_end"]),
            n(&row["server_rss_bytes_per_conn"])
        );
    }
    println!(
        "server CPU per delivery from: {}",
        report["server_cpu_source"].as_str().unwrap_or("?")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(system: &str, core: Option<f64>) -> Value {
        json!({
            "system": system, "clients": 100, "date": "d", "settings": {"clients": 100},
            "connect": {"connected": 100, "failed": 0, "auth_failed": 2},
            "expected": 4000, "delivered": 4000, "lost": 0, "duplicated": 0,
            "server_cpu_ns_per_msg": 3000.0, "server_core_cpu_ns_per_msg": core,
            "rss_bytes_per_conn": 2048,
            "latency_us": {"p50": 1234, "p99": 9876, "max": 20000},
            "phases": [{"backlog_at_push_end": 7, "samples_msgs_per_sec": [4000]}],
            "errors": {"total": 2},
            "floor": if system == "imgate" {
                json!({"message": {"cpu_ns_per_write": 1500.0, "core_cpu_ns_per_write": 1000.0}})
            } else {
                Value::Null
            },
        })
    }

    #[test]
    fn rows_take_the_core_figure_only_when_every_run_has_it() {
        let names = ["a.json".to_string(), "b.json".into()];
        let r = merge_reports(
            &[run("imgate", Some(2000.0)), run("redis", Some(4500.0))],
            &names,
        );
        assert_eq!(r["server_cpu_source"], "core");
        let rows = r["rows"].as_array().unwrap();
        assert_eq!(rows[0]["server_cpu_ns_per_delivery"], 2000.0);
        assert_eq!(rows[1]["server_process_cpu_ns_per_delivery"], 3000.0);
        assert_eq!(rows[0]["p50_ms"], 1.23);
        assert_eq!(rows[0]["connect_failed"], 2);
        assert_eq!(rows[1]["backlog_at_push_end"], 7);
        assert_eq!(
            r["floor_cpu_ns_per_write"], 1000.0,
            "the core's floor for core rows"
        );
        assert_eq!(rows[1]["vs_floor"], 4.5);
        assert_eq!(rows[1]["report"], "b.json");

        let r = merge_reports(&[run("imgate", Some(2000.0)), run("nats", None)], &names);
        assert_eq!(r["server_cpu_source"], "process");
        assert_eq!(r["rows"][0]["server_cpu_ns_per_delivery"], 3000.0);
        assert_eq!(r["rows"][1]["server_core_cpu_ns_per_delivery"], Value::Null);
    }

    #[test]
    fn several_runs_of_a_system_make_one_row_of_medians_with_every_run_kept() {
        let mut runs = Vec::new();
        for (system, core, p50) in [
            ("imgate", 2000.0, 1000),
            ("redis", 4000.0, 3000),
            ("imgate", 1800.0, 5000),
            ("redis", 4200.0, 2000),
            ("imgate", 2600.0, 3000),
        ] {
            let mut r = run(system, Some(core));
            r["latency_us"]["p50"] = json!(p50);
            runs.push(r);
        }
        let names: Vec<String> = (1..=5).map(|i| format!("{i}.json")).collect();
        let r = merge_reports(&runs, &names);
        let rows = r["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "one row per system");
        assert_eq!(rows[0]["system"], "imgate");
        assert_eq!(rows[0]["runs"], 3);
        assert_eq!(rows[0]["server_cpu_ns_per_delivery"], 2000);
        assert_eq!(rows[0]["p50_ms"], 3.0);
        assert_eq!(
            rows[0]["per_run"]["server_cpu_ns_per_delivery"],
            json!([2000.0, 1800.0, 2600.0])
        );
        assert_eq!(rows[0]["report"], json!(["1.json", "3.json", "5.json"]));
        // Two runs: the lower middle.
        assert_eq!(rows[1]["server_cpu_ns_per_delivery"], 4000);
        assert_eq!(rows[1]["p50_ms"], 2.0);
    }
}
