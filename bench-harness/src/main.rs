//! `bench-harness`: see `bench-harness --help` and scripts/bench.sh.

use anyhow::Context;
use bench_harness::cli::Args;
use bench_harness::{coordinator, floor, worker};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.worker {
        return worker::run();
    }
    if args.floor_part {
        return floor::run_part();
    }
    let report = coordinator::run(&args)?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}
