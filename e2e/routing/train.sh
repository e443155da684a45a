#!/usr/bin/env bash
# Retrains the router's learned strong-need estimate (gateway/src/router/strong_need.bin) on
# the training half of RouteLLM's public data (read in place from ../shared/data/routellm or
# $LLM_GATEWAY_SHARED/data/routellm; the other half is what ./e2e/routing/eval.sh reports on).
# The same data always gives the same file.
#   ./e2e/routing/train.sh                                   the shipped model (even-CRC half)
#   ./e2e/routing/train.sh --split validation OUT.bin        a model for choosing settings:
#       trained on a quarter, judged by `eval.sh --split validation` with
#       LLM_GATEWAY_STRONG_NEED_MODEL=OUT.bin
set -euo pipefail
cd "$(dirname "$0")/../.."
. e2e/routing/data.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check $(grep -E "^numpy==" e2e/python/requirements.txt)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
split=test
out=gateway/src/router/strong_need.bin
if [ "${1:-}" = "--split" ]; then split="$2"; out="${3:?--split needs an output file}"; fi
.venv/bin/python e2e/routing/routellm_eval.py --data "$data" --export-train "$work/train.jsonl" --split "$split"
cargo run --release --locked -p llm-gateway --example train_strong_need -- "$work/train.jsonl" "$out"
