#!/usr/bin/env bash
# Gateway overhead and throughput next to its peers: builds the release binaries (and the
# bare proxy example, the floor a proxy on the same stack sets), installs
# oha (crates.io) and the peers named in BENCH_PEERS (default "portkey,litellm": Portkey's
# gateway from npm, LiteLLM's proxy from PyPI, at the versions below) into
# ~/.cache/llm-gateway/bench, then runs overhead.py, which prints one table. See overhead.py
# for what it measures and its knobs.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/llm-gateway/bench"
peers="${BENCH_PEERS-portkey,litellm}"
portkey_version=1.15.2
litellm_version=1.108.7
mkdir -p "$cache"
cargo build --release --locked --bins --example bare_proxy
if ! command -v oha >/dev/null 2>&1; then
  cargo install --locked oha
fi
if [[ ",$peers," == *",portkey,"* && ! -f "$cache/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ]]; then
  command -v npm >/dev/null 2>&1 || { echo "portkey needs node and npm (apt-get install nodejs npm), or BENCH_PEERS without it" >&2; exit 1; }
  npm install --prefix "$cache/portkey" --no-audit --no-fund "@portkey-ai/gateway@$portkey_version"
fi
if [[ ",$peers," == *",litellm,"* && ! -x "$cache/litellm-venv/bin/litellm" ]]; then
  python3 -m venv "$cache/litellm-venv" || { echo "litellm needs python3-venv (apt-get install python3-venv), or BENCH_PEERS without it" >&2; exit 1; }
  "$cache/litellm-venv/bin/pip" install -q "litellm[proxy]==$litellm_version"
fi
exec python3 e2e/bench/overhead.py
