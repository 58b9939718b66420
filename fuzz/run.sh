#!/usr/bin/env bash
# Fuzzes each named target (all of them by default) for SECONDS seconds (default 60), starting
# from the committed corpus. What the fuzzer discovers goes to fuzz/scratch/<target>/ (not
# committed), crashes to fuzz/artifacts/<target>/. Needs nightly and cargo-fuzz.
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame_decode ws_handshake ws_frame reassembly http_query)
fi
# Safe Rust: no sanitizer is needed to see a panic, and debug assertions catch overflows.
flags=(--sanitizer none --debug-assertions)
cargo +nightly fuzz build "${flags[@]}"
for target in "${targets[@]}"; do
    mkdir -p "scratch/$target"
    cargo +nightly fuzz run "${flags[@]}" "$target" "scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
