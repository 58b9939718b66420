#!/usr/bin/env bash
# Counts imgate's system calls during a room fan-out, from outside, on each engine: how many
# send-family calls (sendto, sendmsg, write, writev) it makes per socket write it counts
# (imgate_writes_total). With comet.io = "io_uring" a fan-out's writes go through the ring,
# so they should be a small fraction; on epoll every write is a call.
#
# usage: scripts/fanout-syscalls.sh [ENGINE...]   (default: io_uring epoll)
# Environment: CLIENTS=1000 (in one room), DURATION=10 (seconds of goim's 40 pushes/s),
#   PORT_BASE=4100, BIN_DIR=target/release, NO_BUILD=1 to skip the release build.
# strace slows every system call it sees, so the push rates under it say nothing; only the
# counts matter. Writes one line per engine and keeps strace's tables in target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."

engines=("$@")
[ ${#engines[@]} -eq 0 ] && engines=(io_uring epoll)
clients=${CLIENTS:-1000}
duration=${DURATION:-10}
base=${PORT_BASE:-4100}
bin=${BIN_DIR:-target/release}
command -v strace >/dev/null || { echo "fanout-syscalls.sh: needs strace (apt-get install strace)" >&2; exit 1; }
[ -n "${NO_BUILD:-}" ] || cargo build --release -p imgate -p bench-harness
mkdir -p target/bench

writes_total() {
  curl -s "http://127.0.0.1:$((base + 11))/metrics" |
    awk '/^imgate_writes_total/ {s += $2} END {printf "%d\n", s}'
}

for engine in "${engines[@]}"; do
  table=target/bench/syscalls-$engine.txt
  IMGATE_COMET_IO=$engine "$bin/imgate" --shards 1 \
    --tcp-bind "127.0.0.1:$((base + 1))" --ws-bind "127.0.0.1:$((base + 2))" \
    --http-bind "127.0.0.1:$((base + 11))" \
    --comet-link-bind "127.0.0.1:$((base + 9))" --logic-link-bind "127.0.0.1:$((base + 19))" \
    >"target/bench/syscalls-$engine.log" 2>&1 &
  imgate=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$((base + 11))/healthz" >/dev/null && break; sleep 0.1; done
  before=$(writes_total)
  timeout $((duration + 120)) strace -c -f -p "$imgate" -o "$table" &
  tracer=$!
  sleep 1
  "$bin/bench-harness" --preset goim --clients "$clients" --duration "$duration" \
    --tcp-addr "127.0.0.1:$((base + 1))" --http "127.0.0.1:$((base + 11))" \
    --json "target/bench/syscalls-$engine.json" >/dev/null 2>&1
  after=$(writes_total)
  kill -INT "$tracer" 2>/dev/null || true
  wait "$tracer" 2>/dev/null || true
  kill "$imgate" 2>/dev/null || true
  wait "$imgate" 2>/dev/null || true
  sends=$(awk '$NF ~ /^(sendto|sendmsg|write|writev)$/ {s += $4} END {printf "%d\n", s}' "$table")
  enters=$(awk '$NF == "io_uring_enter" {s += $4} END {printf "%d\n", s}' "$table")
  writes=$((after - before))
  echo "$engine: $writes writes, $sends send-family calls ($(awk -v s="$sends" -v w="$writes" 'BEGIN {printf "%.2f", w ? 100 * s / w : 0}') % of writes), $enters io_uring_enter"
done
