#!/usr/bin/env bash
# Installs the real services the tests and the demo run against, inside the checkout's .venv/:
# pulsar-lite (a Pulsar-protocol broker, from PyPI) and moto's S3 server (a second, independent
# S3 implementation the uploader's store tests also run against; `crc32c` makes it store real
# CRC32C checksums). The in-process S3 server (s3s-fs) is a Rust dev-dependency and needs no
# install. `zstandard` (python-zstandard) is the independent reader the tests check zstd
# objects with. Prints the broker binary's path; moto's is .venv/bin/moto_server (MOTO_SERVER_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv >&2
fi
if ! .venv/bin/python -c 'import pulsar_lite' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check 'pulsar-lite==0.2.0' >&2
fi
if [ ! -x .venv/bin/moto_server ] || ! .venv/bin/python -c 'import crc32c' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5' 'crc32c==2.9.post0' >&2
fi
# DuckDB runs the user guide's query recipes in the tests (tests/recipes/duckdb_recipes.py);
# kubernetes-validate checks deploy/kubernetes against the API schemas, offline.
if ! .venv/bin/python -c 'import duckdb' 2>/dev/null || [ ! -x .venv/bin/kubernetes-validate ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check 'duckdb==2.0.1' 'kubernetes-validate==1.37.0' >&2
fi
if ! .venv/bin/python -c 'import zstandard' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check 'zstandard==0.25.0' >&2
fi
.venv/bin/python -c 'import pulsar_lite,os;print(os.path.join(os.path.dirname(pulsar_lite.__file__),"bin","pulsar-lite"))'
