#!/usr/bin/env bash
# The benchmark harness (docs/benchmarks.md): builds the release binaries, installs pulsar-lite
# and the official Pulsar client (pulsar-client, the C++ client's Python wheel, a baseline) if
# needed, and runs tdmq-backup-bench, which starts its own broker (+ relay), in-process S3
# server and the real daemons, and prints one table. Arguments go to the bench, e.g.
#   scripts/bench.sh --quick                      # 10x smaller smoke run
#   scripts/bench.sh --scenarios baseline,e2e --json bench.json
#   scripts/bench.sh --scenarios steady           # 5 end-to-end runs: median, worst, spread
# Not a test: the numbers depend on the machine and on whatever else runs on it.
set -euo pipefail
cd "$(dirname "$0")/.."
PULSAR_LITE_BIN="$(scripts/setup-test-services.sh)"
export PULSAR_LITE_BIN
if ! .venv/bin/python -c 'import pulsar' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check 'pulsar-client==3.13.0' >&2
fi
cargo build --release --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/release/tdmq-backup-bench" "$@"
