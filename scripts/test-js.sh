#!/usr/bin/env bash
# The JavaScript SDK's tests (sdk/js): unit tests, integration tests against a real imgate, and
# the demo app and the operator's status page (/status, target/status.png) in headless Chromium. Installs Node.js, npm and Chromium from Debian's packages
# when they are missing, and the SDK's dev dependencies from its lockfile. The tests start the
# debug imgate that `cargo build` leaves in target/debug on free loopback ports themselves.
# Idempotent; scripts/test.sh runs it after the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"
export CHROMIUM_PATH

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x "$CHROMIUM_PATH" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-js: installing ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
  echo "test-js: the SDK's tests need Node.js 18 or newer, found $(node --version)" >&2
  exit 1
fi

# The integration and browser tests run this binary (a no-op when cargo test built it).
cargo build -p imgate --quiet

cd sdk/js
npm ci --no-audit --no-fund --loglevel=error

# The gateway embeds sdk/js/dist for the demo, so the committed build must be the sources'.
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
npx tsc -p tsconfig.json --outDir "$fresh/dist"
if ! diff -r dist "$fresh/dist" >"$fresh/diff"; then
  echo "test-js: sdk/js/dist is stale: it is not what building sdk/js/src gives now." >&2
  echo "test-js: run 'npm run build' in sdk/js and commit dist/ (the gateway embeds it). Differences:" >&2
  head -40 "$fresh/diff" >&2
  exit 1
fi

# One run, one summary: unit tests, then a real imgate from Node, then the demo and the status
# page in Chromium.
# Files run one at a time: each integration file starts its own gateway on 2 cores.
node --test --test-concurrency=1 test/unit/ test/integration/ test/browser/
