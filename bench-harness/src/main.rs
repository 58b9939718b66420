//! `bench-harness`: see `bench-harness --help` and scripts/bench.sh.

use std::path::Path;

use anyhow::Context;
use bench_harness::cli::Args;
use bench_harness::{coordinator, floor, html, peers, worker};
use clap::Parser;
use serde_json::Value;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.worker {
        return worker::run();
    }
    if args.floor_part {
        return floor::run_part();
    }
    let report = if args.merge_peers.is_empty() {
        coordinator::run(&args)?
    } else {
        let merged = peers::merge(&args.merge_peers)?;
        peers::print(&merged);
        merged
    };
    if let Some(path) = &args.json {
        write(path, &report)?;
    }
    Ok(())
}

/// Writes the JSON report and its HTML beside it.
fn write(path: &Path, report: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("writing the report to {}", path.display()))?;
    let page = html::path_beside(path);
    std::fs::write(&page, html::render(report))
        .with_context(|| format!("writing the HTML report to {}", page.display()))?;
    eprintln!(
        "report written to {} and {}",
        path.display(),
        page.display()
    );
    Ok(())
}
