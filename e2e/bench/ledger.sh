#!/usr/bin/env bash
# The embedded ledger's cost as its table grows: builds the release binaries, installs oha
# (crates.io) if missing, then runs ledger.py, which prints one table. See ledger.py for what
# it measures and its knobs.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --bins
if ! command -v oha >/dev/null 2>&1; then
  cargo install --locked oha
fi
exec python3 e2e/bench/ledger.py
