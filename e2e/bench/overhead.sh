#!/usr/bin/env bash
# Gateway overhead benchmark: builds release binaries, installs oha (crates.io) if missing,
# then runs overhead.py. See overhead.py for what it measures and its knobs.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --bins
if ! command -v oha >/dev/null 2>&1; then
  cargo install --locked oha
fi
exec python3 e2e/bench/overhead.py
