#!/usr/bin/env bash
# Routing quality on RouteLLM's public data (MMLU, GSM8K, MT-Bench; read in place from
# ../shared/data/routellm or $LLM_GATEWAY_SHARED/data/routellm): builds and starts the release
# gateway, replays every prompt through its POST /v1/route, and prints APGR and CPT next to
# random routing and RouteLLM's published figures (see routellm_eval.py).
#   ./e2e/routing/eval.sh                      the table (the held-out odd half)
#   ./e2e/routing/eval.sh --plot curve.png     and the quality-vs-strong-share curves
#   ./e2e/routing/eval.sh --split cross        every prompt, cross-fitted: the odd half scored by
#       the shipped model (trained on the even half), the even half by one this script trains
#       on the odd half the same way (train.sh's settings) and runs in a second gateway
#   LLM_GATEWAY_STRONG_NEED_MODEL=m.bin ./e2e/routing/eval.sh --split validation
#                                              a model from `train.sh --split validation`
set -euo pipefail
cd "$(dirname "$0")/../.."
. e2e/routing/data.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check $(grep -E "^(numpy|matplotlib)==" e2e/python/requirements.txt)
cargo build --release --locked --bin llm-gateway
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT

# Starts a gateway with the strong-need model $1 (empty: the shipped one); sets `url`.
start() {
  local port dir
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  dir=$(mktemp -d -p "$work")
  # Providers only need to exist for auto to have candidates: /v1/route never calls them.
  env -i PATH="$PATH" OPENAI_API_KEY=sk-eval ANTHROPIC_API_KEY=sk-eval LLM_GATEWAY_DATA_DIR="$dir" \
    LLM_GATEWAY_STRONG_NEED_MODEL="$1" \
    OLLAMA_HOST=http://127.0.0.1:9 RUST_LOG=warn target/release/llm-gateway --listen "127.0.0.1:$port" &
  pids+=($!)
  url="http://127.0.0.1:$port"
  for _ in $(seq 100); do curl -sf "$url/readyz" >/dev/null && return; sleep 0.1; done
  echo "the gateway did not become ready on port $port" >&2
  exit 1
}

args=("$@")
start "${LLM_GATEWAY_STRONG_NEED_MODEL:-}"
main=$url
if [[ " $* " == *" --split cross "* ]]; then
  [ -z "${LLM_GATEWAY_STRONG_NEED_MODEL:-}" ] || { echo "--split cross evaluates the shipped model: unset LLM_GATEWAY_STRONG_NEED_MODEL" >&2; exit 1; }
  .venv/bin/python e2e/routing/routellm_eval.py --data "$data" --export-train "$work/odd.jsonl" --split odd
  cargo run --release --locked -p llm-gateway --example train_strong_need -- "$work/odd.jsonl" "$work/odd.bin"
  start "$work/odd.bin"
  args+=(--gateway-other "$url")
fi
.venv/bin/python e2e/routing/routellm_eval.py --gateway "$main" --data "$data" "${args[@]}"
