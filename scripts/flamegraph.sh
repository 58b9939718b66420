#!/usr/bin/env bash
# Runs a benchmark scenario with imgate under `perf record` and writes SVG flamegraphs: the
# whole imgate process, and its comet shard threads alone.
#
# usage: scripts/flamegraph.sh SCENARIO [bench-harness options...]
#   e.g. scripts/flamegraph.sh goim --clients 10000 --duration 20
#
# Needs perf (apt-get install linux-perf) and inferno (installed with `cargo install inferno`
# when missing). Environment: OUT_DIR (default target/flamegraph), FREQ (samples per second,
# default 199); PORT_BASE, BIN_DIR, NO_BUILD, NICE and IMGATE_CONFIG as in bench.sh.
# SERVER_CPUS pins imgate (taskset) and then records those whole CPUs instead of the process,
# so the loopback softirq and kernel work a core does for imgate's sends is in the picture
# ("measure the core, not the thread"); HARNESS_CPUS pins bench-harness.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=${1:?usage: scripts/flamegraph.sh SCENARIO [bench-harness options...]}
shift
out_dir=${OUT_DIR:-target/flamegraph}
freq=${FREQ:-199}
base=${PORT_BASE:-3100}
stamp=$(date +%Y%m%d-%H%M%S)
mkdir -p "$out_dir"

command -v perf >/dev/null || { echo "flamegraph.sh: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
  cargo install inferno
fi
[ -z "${NO_BUILD:-}" ] && cargo build --release -p imgate -p bench-harness
bin=${BIN_DIR:-target/release}
nice=()
[ -n "${NICE:-}" ] && nice=(nice -n "$NICE")
config=()
[ -n "${IMGATE_CONFIG:-}" ] && config=(--config "$IMGATE_CONFIG")
server_pin=()
[ -n "${SERVER_CPUS:-}" ] && server_pin=(taskset -c "$SERVER_CPUS")
harness_pin=()
[ -n "${HARNESS_CPUS:-}" ] && harness_pin=(taskset -c "$HARNESS_CPUS")

log=$out_dir/imgate-$stamp.log
data=$out_dir/perf-$stamp.data
"${server_pin[@]}" "${nice[@]}" "$bin/imgate" "${config[@]}" \
  --tcp-bind "127.0.0.1:$((base + 1))" --ws-bind "127.0.0.1:$((base + 2))" \
  --http-bind "127.0.0.1:$((base + 11))" \
  --comet-link-bind "127.0.0.1:$((base + 9))" --logic-link-bind "127.0.0.1:$((base + 19))" \
  >"$log" 2>&1 &
imgate=$!
perf_pid=
cleanup() {
  [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null && wait "$perf_pid" 2>/dev/null || true
  kill "$imgate" 2>/dev/null || true
  wait "$imgate" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -s "http://127.0.0.1:$((base + 11))/goim/nodes/instances" | grep -q hostname && break
  sleep 0.1
done
sleep 1

# DWARF unwinding: the release profile keeps line tables but no frame pointers.
target=(-p "$imgate")
[ -n "${SERVER_CPUS:-}" ] && target=(-a -C "$SERVER_CPUS")
perf record -F "$freq" --call-graph dwarf,8192 "${target[@]}" -o "$data" 2>"$out_dir/perf-$stamp.log" &
perf_pid=$!
sleep 0.5
"${harness_pin[@]}" "${nice[@]}" "$bin/bench-harness" --preset "$scenario" --server-pid "$imgate" \
  --tcp-addr "127.0.0.1:$((base + 1))" --ws-addr "127.0.0.1:$((base + 2))" \
  --http "127.0.0.1:$((base + 11))" --json "$out_dir/$scenario-$stamp.json" "$@"
kill -INT "$perf_pid"
wait "$perf_pid" 2>/dev/null || true
perf_pid=

all=$out_dir/$scenario-$stamp-imgate.svg
comet=$out_dir/$scenario-$stamp-comet.svg
perf script -i "$data" 2>/dev/null | inferno-collapse-perf >"$out_dir/$scenario-$stamp.folded"
inferno-flamegraph --title "imgate, $scenario $*" <"$out_dir/$scenario-$stamp.folded" >"$all"
# Shard threads are named comet-shard-N; collapse-perf starts each stack with the thread name.
grep '^comet-shard' "$out_dir/$scenario-$stamp.folded" |
  inferno-flamegraph --title "comet shards, $scenario $*" >"$comet"
rm -f "$data"
echo "flamegraph.sh: $all and $comet (folded stacks in $out_dir/$scenario-$stamp.folded)" >&2
