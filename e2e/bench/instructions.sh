#!/usr/bin/env bash
# The gateway's instructions per request under callgrind: a count, not a time, so it is
# repeatable on a busy machine (see instructions.py). Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --bins --example bare_proxy
exec python3 e2e/bench/instructions.py
