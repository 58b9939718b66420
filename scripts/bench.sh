#!/usr/bin/env bash
# Runs one benchmark scenario end to end: release build, host tuning, a fresh imgate, the
# bench-harness, then stops everything and leaves the JSON report.
#
# usage: scripts/bench.sh SCENARIO [bench-harness options...]
#   SCENARIO: idle | goim | room | single-push | keys | mids | all | floor | peers
#   e.g.   scripts/bench.sh goim --clients 10000 --duration 30
#          SERVER_CPUS=1 HARNESS_CPUS=0 scripts/bench.sh peers --clients 10000
#          scripts/bench.sh idle --clients 19000 --transport ws
#          scripts/bench.sh single-push
#          scripts/bench.sh goim --clients 10000 --floor      # socket floor in the same run
#          SERVER_CPUS=1 HARNESS_CPUS=0 scripts/bench.sh goim --clients 10000 --floor
#
# What is measured: the harness reads comet's own count of its socket writes and bytes
# (imgate_writes_total, imgate_bytes_sent_total) from logic's /metrics and from each extra
# comet's, at the start and end of each push window; where an endpoint does not answer it
# counts client reads instead (the report's writes_source says which). With --floor, the
# report's floor_ratio_per_write is comet's CPU per write over the floor writer's, at comet's
# mean write size, both from this run.
#
# peers: the goim case (one room, --rate pushes a second, 40 by default) against imgate, then
# Redis pub/sub (redis-server), then NATS core (nats-server), each alone on the same port
# (BASE+1), with the same clients, rate, message size, duration and pinning; the servers'
# Debian packages are installed when missing. Writes one report per system (OUT with
# -imgate, -redis, -nats before .json) and OUT itself with a row per system, each with an
# HTML page beside it. The imgate run also measures the socket floor (PEERS_FLOOR=0: not).
# Each run waits up to 30 s (--drain) for messages still on their way after the last push.
# Each process may hold at most the hard open-file limit (20,000 here): imgate spreads more
# clients over extra comets (COMETS, by default clients / 19,000 rounded up); Redis and NATS
# are one process each, so the run says how many subscribers they could take (Redis:
# maxclients = the limit - 32, the descriptors it keeps for itself).
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
#   SERVER_CPUS=1    run every imgate process on these CPUs (taskset -c list, e.g. 1 or 2-3);
#                    imgate threads pinned outside them are moved back in. The floor's writers
#                    run there too (--floor-writer-cpus).
#   HARNESS_CPUS=0   run the harness (its workers, pusher and the floor's readers) on these
#                    CPUs (--floor-reader-cpus). Unset: no taskset, as before.
#   PEERS="imgate redis nats"  the systems a peers run measures, in order
#   RUNS=3           peers: measure every system 3 times, alternating (imgate, redis, nats,
#                    imgate, …); OUT's rows are the medians, each run's figures kept beside
#   Extra comets (COMETS=n) serve their metrics on 127.0.0.1:BASE+8+100*i when
#   `imgate comet --help` lists --metrics-bind; without it their writes cannot be read, and
#   with COMETS > 1 the harness counts client reads (--no-metrics).
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
# The commit measured, in every report (a changed work tree says so).
BENCH_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || BENCH_COMMIT="$BENCH_COMMIT-dirty"
export BENCH_COMMIT

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
server_pin=()
harness_pin=()
if [ -n "${SERVER_CPUS:-}${HARNESS_CPUS:-}" ]; then
  command -v taskset >/dev/null || { echo "bench.sh: SERVER_CPUS/HARNESS_CPUS need taskset (util-linux)" >&2; exit 1; }
fi
[ -n "${SERVER_CPUS:-}" ] && server_pin=(taskset -c "$SERVER_CPUS")
[ -n "${HARNESS_CPUS:-}" ] && harness_pin=(taskset -c "$HARNESS_CPUS")

# The CPUs of a taskset list (0,2-3), one per line.
cpu_list() {
  local part
  for part in ${1//,/ }; do
    seq "${part%-*}" "${part#*-}"
  done
}

# imgate pins each comet shard to a CPU by number (shard index modulo the CPUs it may use),
# which can be outside the set taskset gave it: move every thread of process $1 that may run
# outside SERVER_CPUS back into it.
keep_in_server_cpus() {
  local pid=$1 task allowed cpu moved=0
  local -A inside=()
  for cpu in $(cpu_list "$SERVER_CPUS"); do inside[$cpu]=1; done
  for task in /proc/"$pid"/task/*; do
    allowed=$(awk '/^Cpus_allowed_list/ {print $2}' "$task/status" 2>/dev/null) || continue
    for cpu in $(cpu_list "$allowed"); do
      if [ -z "${inside[$cpu]:-}" ]; then
        taskset -p -c "$SERVER_CPUS" "${task##*/}" >/dev/null && moved=$((moved + 1))
        break
      fi
    done
  done
  if [ "$moved" -gt 0 ]; then
    echo "bench.sh: moved $moved thread(s) of imgate $pid back into SERVER_CPUS=$SERVER_CPUS" >&2
  fi
}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

comet_metrics=
"$imgate" comet --help 2>/dev/null | grep -q -- '--metrics-bind' && comet_metrics=1

# Starts imgate (and COMETS-1 extra comets) on the server's CPUs and waits until it is ready.
start_imgate() {
  local i
  metrics=("http://127.0.0.1:$((base + 11))/metrics")
  "${nice[@]}" "${server_pin[@]}" "$imgate" "${config[@]}" \
    --tcp-bind "127.0.0.1:$((base + 1))" --ws-bind "127.0.0.1:$((base + 2))" \
    --http-bind "127.0.0.1:$((base + 11))" \
    --comet-link-bind "127.0.0.1:$((base + 9))" --logic-link-bind "127.0.0.1:$((base + 19))" \
    --comet-id comet-1 >"$log" 2>&1 &
  pids+=($!)
  for i in $(seq 2 "$comets"); do
    metrics_bind=()
    if [ -n "$comet_metrics" ]; then
      metrics_bind=(--metrics-bind "127.0.0.1:$((base + 8 + 100 * i))")
      metrics+=("http://127.0.0.1:$((base + 8 + 100 * i))/metrics")
    fi
    "${nice[@]}" "${server_pin[@]}" "$imgate" comet "${config[@]}" --join "127.0.0.1:$((base + 19))" \
      --comet-id "comet-$i" --tcp-bind "127.0.0.1:$((base + 1))" --ws-bind "127.0.0.1:$((base + 2))" \
      --comet-link-bind "127.0.0.1:$((base + 9 + 100 * i))" "${metrics_bind[@]}" >>"$log" 2>&1 &
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
  if [ -n "${SERVER_CPUS:-}" ]; then
    for p in "${pids[@]}"; do keep_in_server_cpus "$p"; done
  fi
}

stop_servers() {
  cleanup
  pids=()
}

# Installs Debian package $2 when command $1 is missing, and stops the system-wide service
# the package starts (the benchmark runs its own server).
need() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] && return 0
  echo "bench.sh: installing $2" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  (systemctl disable --now "$2" >/dev/null 2>&1 || service "$2" stop >/dev/null 2>&1 || true)
}

# Waits until something accepts connections on 127.0.0.1:$1.
wait_for_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench.sh: nothing listens on 127.0.0.1:$1 (see $log)" >&2
  return 1
}

# The open-file limit a server may raise itself to: the hard limit.
max_files() {
  local hard
  hard=$(ulimit -Hn)
  [ "$hard" = unlimited ] && hard=1048576
  echo "$hard"
}

# Redis pub/sub, one process, on the server's CPUs, with no persistence; as many clients as
# its open files allow (it keeps 32 descriptors for itself).
start_redis() {
  need redis-server redis-server
  local files
  files=$(max_files)
  (ulimit -n "$files"; exec "${nice[@]}" "${server_pin[@]}" redis-server --port "$((base + 1))"     --bind 127.0.0.1 --protected-mode no --save "" --appendonly no     --maxclients "$((files - 32))" --logfile "") >>"$log" 2>&1 &
  pids+=($!)
  wait_for_port "$((base + 1))"
  echo "bench.sh: redis-server $(redis-server --version | grep -o 'v=[^ ]*'), maxclients $((files - 32)) (open files: $files)" >&2
}

# NATS core, one process (GOMAXPROCS follows the CPUs taskset gives it).
start_nats() {
  need nats-server nats-server
  local bin files
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  files=$(max_files)
  (ulimit -n "$files"; exec "${nice[@]}" "${server_pin[@]}" "$bin" -a 127.0.0.1 -p "$((base + 1))") \
    >>"$log" 2>&1 &
  pids+=($!)
  wait_for_port "$((base + 1))"
  echo "bench.sh: $("$bin" --version), open files: $files" >&2
}

# Runs the harness against what runs now: $1 is the report, the rest are options.
run_harness() {
  local report=$1 server_pids given
  shift
  server_pids=$(IFS=,; echo "${pids[*]:-}")
  args=(--json "$report"
    --tcp-addr "127.0.0.1:$((base + 1))" --ws-addr "127.0.0.1:$((base + 2))"
    --http "127.0.0.1:$((base + 11))")
  [ -n "$server_pids" ] && args+=(--server-pid "$server_pids")
  given=" $* "
  if [[ "$given" != *" --preset floor "* && "$given" != *" --system redis "* &&
    "$given" != *" --system nats "* && "$given" != *" --metrics"* &&
    "$given" != *" --no-metrics "* ]]; then
    if [ "$comets" -gt 1 ] && [ -z "$comet_metrics" ]; then
      echo "bench.sh: imgate comet has no --metrics-bind: extra comets' writes cannot be read, counting client reads" >&2
      args+=(--no-metrics)
    else
      args+=(--metrics "$(IFS=,; echo "${metrics[*]}")")
    fi
  fi
  if [ -n "${SERVER_CPUS:-}" ]; then
    [[ "$given" != *" --server-cpus"* ]] && args+=(--server-cpus "$SERVER_CPUS")
    [[ "$given" != *" --floor-writer-cpus"* ]] && args+=(--floor-writer-cpus "$SERVER_CPUS")
  fi
  if [ -n "${HARNESS_CPUS:-}" ] && [[ "$given" != *" --floor-reader-cpus"* ]]; then
    args+=(--floor-reader-cpus "$HARNESS_CPUS")
  fi
  echo "bench.sh: ${harness_pin[*]} $harness ${args[*]} $*" >&2
  "${nice[@]}" "${harness_pin[@]}" "$harness" "${args[@]}" "$@"
}

if [ "$scenario" = peers ]; then
  # Clients asked for (the harness's default is 1,000): imgate spreads them over comets.
  clients=1000
  prev=
  for a in "$@"; do
    [ "$prev" = --clients ] && clients=$a
    case $a in --clients=*) clients=${a#--clients=} ;; esac
    prev=$a
  done
  [ -z "${COMETS:-}" ] && comets=$(((clients + 18999) / 19000))
  # A server that falls behind still owes its subscribers what it accepted: wait up to 30 s
  # for it (unless --drain says otherwise), so late counts as late, not lost.
  drain=()
  [[ " $* " != *" --drain"* ]] && drain=(--drain 30)
  systems=(${PEERS:-imgate redis nats})
  runs=${RUNS:-1}
  reports=()
  i=0
  for run in $(seq 1 "$runs"); do
    for system in "${systems[@]}"; do
      i=$((i + 1))
      report="${out%.json}-$system.json"
      [ "$runs" -gt 1 ] && report="${out%.json}-$system-$run.json"
      echo "bench.sh: peers $i of $((runs * ${#systems[@]})): $system, $clients subscribers" >&2
      extra=()
      case $system in
        imgate)
          start_imgate
          [ "${PEERS_FLOOR:-1}" != 0 ] && extra+=(--floor)
          ;;
        redis) start_redis ;;
        nats) start_nats ;;
        *) echo "bench.sh: unknown system $system (imgate, redis, nats)" >&2; exit 1 ;;
      esac
      run_harness "$report" --preset goim --system "$system" "${drain[@]}" "${extra[@]}" "$@"
      stop_servers
      reports+=("$report")
    done
  done
  # The command as one would type it again, with the variables that change the case.
  command=
  for var in NICE SERVER_CPUS HARNESS_CPUS COMETS RUNS PEERS PEERS_FLOOR IMGATE_CONFIG; do
    [ -n "${!var:-}" ] && command+="$var=${!var} "
  done
  BENCH_PEERS_COMMAND="${command}scripts/bench.sh peers $*" "$harness" \
    --merge-peers "$(IFS=,; echo "${reports[*]}")" --json "$out"
  echo "bench.sh: peers report in $out and ${out%.json}.html, server logs in $log" >&2
  exit 0
fi

[ "$scenario" != floor ] && start_imgate
run_harness "$out" --preset "$scenario" "$@"
echo "bench.sh: report in $out and ${out%.json}.html, imgate log in $log" >&2
