#!/usr/bin/env bash
# Installs the real services the tests and the demo run against, inside the checkout:
# pulsar-lite (a Pulsar-protocol broker, from PyPI) in .venv/. The S3 server (s3s-fs) is a Rust
# dev-dependency and needs no install. Prints the broker binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv >&2
fi
if ! .venv/bin/python -c 'import pulsar_lite' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check 'pulsar-lite==0.2.0' >&2
fi
.venv/bin/python -c 'import pulsar_lite,os;print(os.path.join(os.path.dirname(pulsar_lite.__file__),"bin","pulsar-lite"))'
