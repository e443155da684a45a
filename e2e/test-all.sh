#!/usr/bin/env bash
# Runs every test of the project, installing what it needs: formatting and lints, the Rust
# unit and integration tests (against in-process mock providers), then the official `openai`
# Python SDK against the real gateway and mock binaries. Usage: ./e2e/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Rust unit and integration tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

step "binaries for the client tests"
cargo build --bins --locked

step "official openai Python SDK tests"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r e2e/python/requirements.txt
.venv/bin/python -m pytest -q -p no:cacheprovider e2e/python
