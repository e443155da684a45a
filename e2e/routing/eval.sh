#!/usr/bin/env bash
# Routing quality on RouteLLM's public data (MMLU, GSM8K, MT-Bench; read in place from
# ../shared/data/routellm or $LLM_GATEWAY_SHARED/data/routellm): builds and starts the release
# gateway, replays every prompt through its POST /v1/route, and prints APGR and CPT next to
# random routing and RouteLLM's published figures (see routellm_eval.py).
#   ./e2e/routing/eval.sh                      the table
#   ./e2e/routing/eval.sh --plot curve.png     and the quality-vs-strong-share curves
#   LLM_GATEWAY_STRONG_NEED_MODEL=m.bin ./e2e/routing/eval.sh --split validation
#                                              a model from `train.sh --split validation`
set -euo pipefail
cd "$(dirname "$0")/../.."
. e2e/routing/data.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check $(grep -E "^(numpy|matplotlib)==" e2e/python/requirements.txt)
cargo build --release --locked --bin llm-gateway
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
# Providers only need to exist for auto to have candidates: /v1/route never calls them.
env -i PATH="$PATH" OPENAI_API_KEY=sk-eval ANTHROPIC_API_KEY=sk-eval LLM_GATEWAY_DATA_DIR="$work" \
  LLM_GATEWAY_STRONG_NEED_MODEL="${LLM_GATEWAY_STRONG_NEED_MODEL:-}" \
  OLLAMA_HOST=http://127.0.0.1:9 RUST_LOG=warn target/release/llm-gateway --listen "127.0.0.1:$port" &
gw=$!
trap 'kill $gw 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "the gateway did not become ready on port $port" >&2; exit 1; }
.venv/bin/python e2e/routing/routellm_eval.py --gateway "http://127.0.0.1:$port" --data "$data" "$@"
