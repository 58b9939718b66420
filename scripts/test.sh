#!/usr/bin/env bash
# The test command: builds imgate and runs every test (unit, property and end-to-end).
# It installs what the tests need when it is missing, so it passes on a fresh Debian machine
# that has only the Rust toolchain. The end-to-end tests start imgate on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need cc; then
  echo "test.sh: installing a C toolchain (needed by mimalloc)" >&2
  apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
fi

# Redis, PostgreSQL, a Kafka-protocol broker and nats-server for the cluster and fault tests
# (installed once per machine).
scripts/install-deps.sh

# Debug builds keep the edit-test loop short; dependencies are optimised (see Cargo.toml).
cargo test --workspace --all-targets "$@"
# The runtime's compile-fail examples: a socket and a timer stay on their thread.
cargo test -p imgate-runtime --doc

# comet's two engines: the run above used `comet.io = "auto"` (io_uring where the kernel and
# any seccomp profile allow it); every suite that starts a comet runs again on epoll. (The
# runtime's own tests run on both engines in each run; tests/engines.rs pins what it checks.)
IMGATE_COMET_IO=epoll cargo test -p imgate -p imgate-comet -p bench-harness --all-targets "$@"

# The JavaScript SDK and the demo app (Node.js, npm and Chromium installed when missing).
scripts/test-js.sh
