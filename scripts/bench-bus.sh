#!/usr/bin/env bash
# Push throughput through each bus, on the same machine in the same run: for each bus a fresh
# Redis (the store of all three, so only the bus differs), the broker (nisshi for Kafka,
# nats-server -js for NATS; none for the embedded bus), and one imgate running logic, job and
# comet, pinned to SERVER_CPUS. bench-harness's single-push preset drives it: one connected
# client, pushes by key through the HTTP API as fast as answers come (16 connections), then at
# half that rate for latency.
#
# usage: scripts/bench-bus.sh [embedded|kafka|nats ...]      (default: all three, in that order)
#   e.g. SERVER_CPUS=1 OTHER_CPUS=0 DURATION=15 scripts/bench-bus.sh
#
# What each row says:
#   pushes/s      the peak phase's accepted pushes per second (imgate on SERVER_CPUS, one core
#                 by default: the messages per second one logic core carries, with job and comet
#                 beside it)
#   imgate us/push, broker us/push   CPU time per push of the imgate process (over the peak
#                 phase) and of the broker (over the whole run), utime + stime from /proc
#   per core      pushes per second one fully busy imgate core would carry: 1 s / imgate us/push
#   p50/p99 ms    from a push sent to its arrival at the client, in the phase at half the peak
#                 rate (accepted to written, plus the HTTP answer and the client's read)
#
# Environment:
#   SERVER_CPUS=1   CPUs of imgate (taskset -c list)
#   OTHER_CPUS=0    CPUs of Redis, the broker and bench-harness
#   DURATION=10     seconds of each push phase
#   PUSH=keys       push API: keys (no store write) or mids (an inbox append per push)
#   PORT_BASE=4100  imgate on BASE+1 (TCP), +2 (WS), +11 (HTTP), +9/+19 (links); Redis BASE+79,
#                   NATS BASE+22, Kafka BASE+92
#   NO_BUILD=1      skip the release build; BIN_DIR=DIR take imgate and bench-harness from DIR
# Reports: target/bench/bus-BUS-STAMP.json (bench-harness's), and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

buses=("$@")
[ ${#buses[@]} -eq 0 ] && buses=(embedded kafka nats)
for bus in "${buses[@]}"; do
  case $bus in embedded | kafka | nats) ;; *) echo "bench-bus.sh: unknown bus $bus" >&2; exit 2 ;; esac
done
base=${PORT_BASE:-4100}
server_cpus=${SERVER_CPUS:-1}
other_cpus=${OTHER_CPUS:-0}
duration=${DURATION:-10}
push=${PUSH:-keys}
stamp=$(date +%Y%m%d-%H%M%S)
bin=${BIN_DIR:-target/release}
mkdir -p target/bench
work=$(mktemp -d /tmp/imgate-bench-bus-XXXXXX)

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p imgate -p bench-harness
fi
scripts/install-deps.sh

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port, what
  for _ in $(seq 1 300); do port_open "$1" && return 0; sleep 0.1; done
  echo "bench-bus.sh: $2 did not listen on $1" >&2
  return 1
}
cpu_ticks() { # pid: utime + stime, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

for port in $((base + 1)) $((base + 2)) $((base + 11)) $((base + 79)) $((base + 22)) $((base + 92)); do
  if port_open "$port"; then echo "bench-bus.sh: port $port is taken (PORT_BASE=$base)" >&2; exit 1; fi
done

nats_server=$(command -v nats-server || echo /usr/sbin/nats-server)
nisshi=${IMGATE_NISSHI:-$HOME/.local/imgate-tools/bin/nisshi}
summary=()
for bus in "${buses[@]}"; do
  dir="$work/$bus"
  mkdir -p "$dir/nats" "$dir/nisshi"
  taskset -c "$other_cpus" redis-server --port $((base + 79)) --bind 127.0.0.1 --save '' \
    --appendonly no >"$dir/redis.log" 2>&1 &
  pids+=($!)
  wait_port $((base + 79)) Redis
  broker_pid=
  case $bus in
    embedded) bus_toml='[bus]
kind = "embedded"' ;;
    kafka)
      (cd "$dir/nisshi" && exec taskset -c "$other_cpus" "$nisshi" broker \
        --listener-url "tcp://127.0.0.1:$((base + 92))" \
        --advertised-listener-url "tcp://127.0.0.1:$((base + 92))" \
        --storage-engine memory://nisshi/ --group-initial-rebalance-delay 0s) >"$dir/broker.log" 2>&1 &
      broker_pid=$!
      pids+=($!)
      wait_port $((base + 92)) nisshi
      bus_toml="[bus]
kind = \"kafka\"
[bus.kafka]
brokers = \"127.0.0.1:$((base + 92))\"
topic = \"bench-$stamp\"
group = \"bench-$stamp\""
      ;;
    nats)
      taskset -c "$other_cpus" "$nats_server" -js -a 127.0.0.1 -p $((base + 22)) -sd "$dir/nats" \
        >"$dir/broker.log" 2>&1 &
      broker_pid=$!
      pids+=($!)
      wait_port $((base + 22)) nats-server
      bus_toml="[bus]
kind = \"nats\"
[bus.nats]
url = \"nats://127.0.0.1:$((base + 22))\"
stream = \"bench-$stamp\"
subjects = \"bench$stamp.*\"
durable = \"bench-$stamp\""
      ;;
  esac
  cat >"$dir/imgate.toml" <<EOF
$bus_toml

[store]
kind = "redis"
[store.redis]
urls = ["redis://127.0.0.1:$((base + 79))"]

[comet]
shards = 1

[auth]
insecure = true
EOF
  taskset -c "$server_cpus" "$bin/imgate" --config "$dir/imgate.toml" \
    --tcp-bind "127.0.0.1:$((base + 1))" --ws-bind "127.0.0.1:$((base + 2))" \
    --http-bind "127.0.0.1:$((base + 11))" \
    --comet-link-bind "127.0.0.1:$((base + 9))" --logic-link-bind "127.0.0.1:$((base + 19))" \
    >"$dir/imgate.log" 2>&1 &
  imgate_pid=$!
  pids+=($!)
  ready=
  for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$((base + 11))/readyz" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
  done
  if [ -z "$ready" ]; then
    echo "bench-bus.sh: imgate on $bus did not become ready; its log:" >&2
    tail -20 "$dir/imgate.log" >&2
    exit 1
  fi
  out=target/bench/bus-$bus-$stamp.json
  broker_before=0
  [ -n "$broker_pid" ] && broker_before=$(cpu_ticks "$broker_pid")
  # The peak phase is the first; the broker's CPU is read around the whole run and reported
  # per push over both phases.
  taskset -c "$other_cpus" "$bin/bench-harness" --preset single-push --push "$push" \
    --duration "$duration" --server-pid "$imgate_pid" --no-pin \
    --tcp-addr "127.0.0.1:$((base + 1))" --ws-addr "127.0.0.1:$((base + 2))" \
    --http "127.0.0.1:$((base + 11))" --json "$out" >"$dir/harness.log" 2>&1 ||
    { echo "bench-bus.sh: bench-harness failed on $bus:" >&2; tail -20 "$dir/harness.log" >&2; exit 1; }
  broker_ticks=0
  [ -n "$broker_pid" ] && broker_ticks=$(($(cpu_ticks "$broker_pid") - broker_before))
  echo "$bus: report in $out" >&2
  summary+=("$bus $out $broker_ticks")
  stop_all
done

# One row per bus, from the reports (python3 is on Debian by default; without it, the paths).
if command -v python3 >/dev/null; then
  python3 - "$(getconf CLK_TCK)" "${summary[@]}" <<'EOF'
import json, sys
tck = float(sys.argv[1])
print(f"{'bus':10} {'pushes/s':>9} {'imgate us/push':>15} {'per core':>9} {'broker us/push':>15} {'p50 ms':>7} {'p99 ms':>7}")
for row in sys.argv[2:]:
    bus, path, broker_ticks = row.split()
    report = json.load(open(path))
    phases = report.get("phases", [])
    peak = phases[0] if phases else report
    latency = phases[-1] if phases else report
    rate = peak.get("pushes_per_sec") or 0
    cpu_ns = peak.get("server_cpu_ns_per_msg")
    pushes = sum((p.get("pushes_per_sec") or 0) * (p.get("seconds") or 0) for p in phases)
    broker_us = (int(broker_ticks) / tck * 1e6 / pushes) if pushes and int(broker_ticks) else 0
    lat = latency.get("latency_us") or {}
    p50 = lat.get("p50")
    p99 = lat.get("p99")
    fmt = lambda v, d=1: f"{v:.{d}f}" if isinstance(v, (int, float)) else "-"
    per_core = 1e9 / cpu_ns if cpu_ns else None
    print(f"{bus:10} {fmt(rate, 0):>9} {fmt(cpu_ns / 1000 if cpu_ns else None):>15} "
          f"{fmt(per_core, 0):>9} {fmt(broker_us):>15} "
          f"{fmt(p50 / 1000 if p50 else None, 2):>7} {fmt(p99 / 1000 if p99 else None, 2):>7}")
EOF
else
  printf '%s\n' "${summary[@]}"
fi
