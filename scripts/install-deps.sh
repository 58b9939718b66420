#!/usr/bin/env bash
# Installs what the tests and the cluster scripts need, when it is missing:
#   redis-server and redis-cli (Debian packages),
#   nisshi, a Kafka-protocol broker (built from crates.io once per machine, ~12 minutes,
#   into ~/.local/imgate-tools; see ../shared/reference/kafka-brokers.md).
# Idempotent: a second run does nothing.
set -euo pipefail

TOOLS="${IMGATE_TOOLS:-$HOME/.local/imgate-tools}"
NISSHI_VERSION=0.8.1

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "install-deps: installing redis-server and redis-tools" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server redis-tools >/dev/null
  # The package starts a system-wide server on 6379; the tests start their own.
  (systemctl disable --now redis-server >/dev/null 2>&1 || service redis-server stop >/dev/null 2>&1 || true)
fi

if [ ! -x "$TOOLS/bin/nisshi" ]; then
  echo "install-deps: building nisshi $NISSHI_VERSION into $TOOLS (once per machine, ~12 min)" >&2
  # nisshi needs rustc >= 1.96: use the nightly toolchain when the stable one is older.
  toolchain=""
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then toolchain="+nightly"; fi
  cargo $toolchain install nisshi --version "$NISSHI_VERSION" --locked \
    --no-default-features --features dynostore --root "$TOOLS"
fi
