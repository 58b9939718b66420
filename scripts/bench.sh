#!/usr/bin/env bash
# Runs one benchmark scenario end to end: release build, host tuning, a fresh imgate, the
# bench-harness, then stops everything and leaves the JSON report.
#
# usage: scripts/bench.sh SCENARIO [bench-harness options...]
#   SCENARIO: idle | goim | room | single-push | keys | mids | all | floor
#   e.g.   scripts/bench.sh goim --clients 10000 --duration 30
#          scripts/bench.sh idle --clients 19000 --transport ws
#          scripts/bench.sh single-push
#          scripts/bench.sh goim --clients 10000 --floor      # socket floor in the same run
#
# Environment:
#   OUT=FILE         report path (default target/bench/SCENARIO-YYYYmmdd-HHMMSS.json)
#   PORT_BASE=3100   imgate listens on BASE+1 (TCP), +2 (WS), +11 (HTTP), +9/+19 (links):
#                    goim's ports by default
#   COMETS=1         extra `imgate comet` processes sharing the client ports (SO_REUSEPORT),
#                    for more clients than one process's open-file limit allows
#   IMGATE_CONFIG=F  config file for imgate (must keep development mode or set auth.insecure)
#   NO_BUILD=1       skip the release build; NO_TUNING=1 skip tuning/apply.sh
#   BIN_DIR=DIR      take imgate and bench-harness from DIR (default target/release)
#   NICE=-10         run imgate and the harness at this nice level (on a shared machine,
#                    ahead of builds; negative values need root)
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=${1:?usage: scripts/bench.sh SCENARIO [bench-harness options...]}
shift
base=${PORT_BASE:-3100}
comets=${COMETS:-1}
stamp=$(date +%Y%m%d-%H%M%S)
out=${OUT:-target/bench/$scenario-$stamp.json}
mkdir -p "$(dirname "$out")" target/bench
log=target/bench/imgate-$stamp.log

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p imgate -p bench-harness
fi
if [ -z "${NO_TUNING:-}" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    tuning/apply.sh >/dev/null
  else
    echo "bench.sh: not root, tuning/apply.sh skipped (tuning/check.sh says what is missing)" >&2
  fi
fi

imgate=${BIN_DIR:-target/release}/imgate
harness=${BIN_DIR:-target/release}/bench-harness
nice=()
[ -n "${NICE:-}" ] && nice=(nice -n "$NICE")
config=()
[ -n "${IMGATE_CONFIG:-}" ] && config=(--config "$IMGATE_CONFIG")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

if [ "$scenario" != floor ]; then
  "${nice[@]}" "$imgate" "${config[@]}" \
    --tcp-bind "127.0.0.1:$((base + 1))" --ws-bind "127.0.0.1:$((base + 2))" \
    --http-bind "127.0.0.1:$((base + 11))" \
    --comet-link-bind "127.0.0.1:$((base + 9))" --logic-link-bind "127.0.0.1:$((base + 19))" \
    --comet-id comet-1 >"$log" 2>&1 &
  pids+=($!)
  for i in $(seq 2 "$comets"); do
    "${nice[@]}" "$imgate" comet "${config[@]}" --join "127.0.0.1:$((base + 19))" --comet-id "comet-$i" \
      --tcp-bind "127.0.0.1:$((base + 1))" --ws-bind "127.0.0.1:$((base + 2))" \
      --comet-link-bind "127.0.0.1:$((base + 9 + 100 * i))" >>"$log" 2>&1 &
    pids+=($!)
  done
  # Ready when the HTTP API answers and every comet is registered.
  for _ in $(seq 1 100); do
    n=$(curl -s "http://127.0.0.1:$((base + 11))/goim/nodes/instances" 2>/dev/null |
      grep -o '"comet-[0-9]*"' | sort -u | wc -l || true)
    [ "${n:-0}" -ge "$comets" ] && break
    sleep 0.1
  done
  sleep 1
fi

server_pids=$(IFS=,; echo "${pids[*]:-}")
args=(--preset "$scenario" --json "$out"
  --tcp-addr "127.0.0.1:$((base + 1))" --ws-addr "127.0.0.1:$((base + 2))"
  --http "127.0.0.1:$((base + 11))")
[ -n "$server_pids" ] && args+=(--server-pid "$server_pids")
echo "bench.sh: $harness ${args[*]} $*" >&2
"${nice[@]}" "$harness" "${args[@]}" "$@"
echo "bench.sh: report in $out, imgate log in $log" >&2
