#!/usr/bin/env bash
# The test suite: unit tests and the end-to-end tests, which start their own pulsar-lite broker
# (behind our relay), in-process s3s-fs server (and moto's S3 server for the uploader's store
# tests) and the real daemon binaries. Extra arguments go
# to `cargo test` (e.g. `scripts/test.sh -p tdmq-backup-proto`).
set -euo pipefail
cd "$(dirname "$0")/.."
PULSAR_LITE_BIN="$(scripts/setup-test-services.sh)"
export PULSAR_LITE_BIN
# moto's S3 server, installed by the same script: the uploader's store tests run against it too.
MOTO_SERVER_BIN="$PWD/.venv/bin/moto_server"
export MOTO_SERVER_BIN
# The end-to-end tests drive the real binaries of the other packages: build them first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
