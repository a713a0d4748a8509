#!/usr/bin/env bash
# The benchmark harness (docs/benchmarks.md): builds the release binaries, installs pulsar-lite
# if needed, and runs tdmq-backup-bench, which starts its own broker (+ relay), in-process S3
# server and the real daemons, and prints one table. Arguments go to the bench, e.g.
#   scripts/bench.sh --quick                      # 10x smaller smoke run
#   scripts/bench.sh --scenarios baseline,e2e --json bench.json
# Not a test: the numbers depend on the machine and on whatever else runs on it.
set -euo pipefail
cd "$(dirname "$0")/.."
PULSAR_LITE_BIN="$(scripts/setup-test-services.sh)"
export PULSAR_LITE_BIN
cargo build --release --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/release/tdmq-backup-bench" "$@"
