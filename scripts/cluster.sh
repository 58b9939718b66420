#!/usr/bin/env bash
# A whole imgate cluster on this machine, on loopback:
#   Redis 6379, the bus: a Kafka-protocol broker (nisshi) on 9092, or with BUS=nats
#   nats-server with JetStream on 4222,
#   comet-1 TCP 3101 / WS 3102 (link 3109), comet-2 TCP 3201 / WS 3202 (link 3209),
#   logic-1 HTTP 3111 (link 3119), logic-2 HTTP 3211 (link 3219), and two jobs.
# Configs: cluster/*.toml (with BUS=nats the same files with bus.kind = "nats", written to
# .cluster/config/). Logs and pids: .cluster/.
#
# usage: [BUS=kafka|nats] scripts/cluster.sh up|down|status
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.cluster
BIN=target/release/imgate
SERVICES="logic-1 logic-2 comet-1 comet-2 job-1 job-2"
BUS=${BUS:-kafka}
case $BUS in
  kafka | nats) ;;
  *) echo "cluster.sh: BUS must be kafka or nats, not $BUS" >&2; exit 2 ;;
esac

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() { # name, command...
  local name=$1; shift
  if alive "$name"; then echo "$name already running"; return; fi
  nohup "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

wait_for() { # description, seconds, command...
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then echo "cluster.sh: timed out waiting for $what" >&2; return 1; fi
    sleep 0.2
  done
}

comets_registered() {
  local body
  body=$(curl -s http://127.0.0.1:3111/goim/nodes/instances) || return 1
  [[ $body == *'"comet-1"'* && $body == *'"comet-2"'* ]]
}

jobs_linked() {
  for j in job-1 job-2; do
    [ "$(grep -c 'comet link connected' "$RUN/$j.log" 2>/dev/null)" -ge 2 ] || return 1
  done
}

# The configs this bus runs with: cluster/*.toml as they are for Kafka; for NATS the same
# files with the bus's kind switched (each carries a [bus.nats] section), in $RUN/config.
configs() {
  if [ "$BUS" = kafka ]; then echo cluster; return; fi
  mkdir -p "$RUN/config"
  for f in cluster/*.toml; do
    sed 's/^kind = "kafka"$/kind = "nats"/' "$f" >"$RUN/config/$(basename "$f")"
  done
  echo "$RUN/config"
}

nats_server() {
  if command -v nats-server >/dev/null 2>&1; then command -v nats-server; else echo /usr/sbin/nats-server; fi
}

up() {
  scripts/install-deps.sh
  cargo build --release --quiet
  mkdir -p "$RUN/nisshi" "$RUN/nats"
  local conf
  conf=$(configs)
  if port_open 6379; then
    echo "Redis: using the server already on 6379"
  else
    start redis redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no
  fi
  if [ "$BUS" = nats ]; then
    if port_open 4222; then
      echo "NATS: using the server already on 4222 (it needs JetStream)"
    else
      start nats "$(nats_server)" -js -a 127.0.0.1 -p 4222 -sd "$RUN/nats"
    fi
  elif port_open 9092; then
    echo "Kafka: using the broker already on 9092"
  else
    local nisshi="${IMGATE_NISSHI:-$HOME/.local/imgate-tools/bin/nisshi}"
    # nisshi reads a .env file from its working directory: give it an empty one of its own.
    start nisshi bash -c "cd $RUN/nisshi && exec $nisshi broker \
      --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine memory://nisshi/ --group-initial-rebalance-delay 0s"
  fi
  wait_for "Redis" 20 port_open 6379
  if [ "$BUS" = nats ]; then
    wait_for "nats-server" 30 port_open 4222
  else
    wait_for "the Kafka broker" 30 port_open 9092
  fi
  echo "$BUS" >"$RUN/bus"
  start logic-1 "$BIN" logic --config "$conf/logic-1.toml"
  start logic-2 "$BIN" logic --config "$conf/logic-2.toml"
  wait_for "logic" 30 port_open 3111
  wait_for "logic" 30 port_open 3211
  start comet-1 "$BIN" comet --config "$conf/comet-1.toml"
  start comet-2 "$BIN" comet --config "$conf/comet-2.toml"
  start job-1 "$BIN" job --config "$conf/job.toml"
  start job-2 "$BIN" job --config "$conf/job.toml"
  wait_for "both comets in the registry" 60 comets_registered
  wait_for "both jobs linked to both comets" 60 jobs_linked
  status
  echo "cluster is up on $BUS: comets on 3101/3102 and 3201/3202, logic HTTP on 3111 and 3211"
}

down() {
  [ -d "$RUN" ] || { echo "cluster is not running"; return; }
  for name in job-1 job-2 comet-1 comet-2 logic-1 logic-2 nisshi nats redis; do
    if alive "$name"; then kill -TERM "$(cat "$RUN/$name.pid")" 2>/dev/null || true; fi
  done
  local deadline=$((SECONDS + 10))
  for name in job-1 job-2 comet-1 comet-2 logic-1 logic-2 nisshi nats redis; do
    while alive "$name" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive "$name"; then kill -KILL "$(cat "$RUN/$name.pid")" 2>/dev/null || true; fi
    rm -f "$RUN/$name.pid"
  done
  echo "cluster is down"
}

status() {
  local all_up=0 broker=nisshi
  # The bus of the cluster that is up (BUS only says which to start).
  if [ "$(cat "$RUN/bus" 2>/dev/null || echo "$BUS")" = nats ]; then broker=nats; fi
  for name in redis $broker $SERVICES; do
    if alive "$name"; then
      echo "$name: running (pid $(cat "$RUN/$name.pid"))"
    elif [ -f "$RUN/$name.log" ] || [ "$name" = redis ] || [ "$name" = "$broker" ]; then
      case $name in
        redis) port_open 6379 && echo "redis: external on 6379" || { echo "redis: down"; all_up=1; } ;;
        nisshi) port_open 9092 && echo "nisshi: external on 9092" || { echo "nisshi: down"; all_up=1; } ;;
        nats) port_open 4222 && echo "nats: external on 4222" || { echo "nats: down"; all_up=1; } ;;
        *) echo "$name: down"; all_up=1 ;;
      esac
    else
      echo "$name: down"; all_up=1
    fi
  done
  return $all_up
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
