#!/usr/bin/env bash
# Installs what the tests and the cluster scripts need, when it is missing:
#   redis-server and redis-cli (Debian packages),
#   PostgreSQL server binaries (Debian package; the durable storage of the broker in the
#   broker-restart fault test; the tests run their own server, never a system-wide one),
#   nisshi, a Kafka-protocol broker with in-memory and PostgreSQL storage (built from crates.io
#   once per machine, ~15 minutes on 2 cores, into ~/.local/imgate-tools; Apache Kafka itself
#   needs a JVM, and librdkafka's mock cluster lacks the admin API the tests use),
#   nats-server, NATS with JetStream (Debian package; the tests run their own servers).
# Idempotent: a second run does nothing.
set -euo pipefail

TOOLS="${IMGATE_TOOLS:-$HOME/.local/imgate-tools}"
NISSHI_VERSION=0.8.1
NISSHI_FEATURES=dynostore,postgres

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "install-deps: installing redis-server and redis-tools" >&2
  apt_install redis-server redis-tools
  # The package starts a system-wide server on 6379; the tests start their own.
  (systemctl disable --now redis-server >/dev/null 2>&1 || service redis-server stop >/dev/null 2>&1 || true)
fi

# testkit looks for initdb and pg_ctl on PATH, then under /usr/lib/postgresql/*/bin.
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  echo "install-deps: installing postgresql" >&2
  # Debian's package creates and starts a cluster on 5432; the tests start their own.
  apt_install postgresql
  (systemctl disable --now postgresql >/dev/null 2>&1 || service postgresql stop >/dev/null 2>&1 || true)
fi

# The NATS tests and `scripts/bench.sh peers` run their own nats-server. Debian puts it in
# /usr/sbin, which is not on every user's PATH.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "install-deps: installing nats-server" >&2
  apt_install nats-server
  # Should a package start a system-wide server, stop it: the tests start their own.
  (systemctl disable --now nats-server >/dev/null 2>&1 || service nats-server stop >/dev/null 2>&1 || true)
fi

# A nisshi built before the PostgreSQL storage was needed lacks it: its help lists the engines.
nisshi_ok() {
  [ -x "$TOOLS/bin/nisshi" ] &&
    "$TOOLS/bin/nisshi" --help 2>/dev/null | grep '^Storage engines:' | grep -qw postgres
}

if ! nisshi_ok; then
  echo "install-deps: building nisshi $NISSHI_VERSION ($NISSHI_FEATURES) into $TOOLS (once per machine, ~15 min on 2 cores)" >&2
  # nisshi needs rustc >= 1.96: use the nightly toolchain when the stable one is older.
  toolchain=""
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then toolchain="+nightly"; fi
  # --force: replace a binary built with fewer storage engines.
  cargo $toolchain install nisshi --version "$NISSHI_VERSION" --locked --force \
    --no-default-features --features "$NISSHI_FEATURES" --root "$TOOLS"
  nisshi_ok || { echo "install-deps: nisshi built without PostgreSQL storage" >&2; exit 1; }
fi
