"""`llm-gateway bench` as a user runs it: against the mock providers (scripted so that one model
answers some tasks right), through the binary, into the embedded database; the report and the
chart are written, bad flags are refused with the flag named, and a gateway on the same
database then routes with the measured quality and says so."""

import sqlite3
import subprocess

import httpx

from conftest import BIN_DIR, run_gateway

SCRIPTS = [
    ("capital city of Australia", "Canberra"),
    ("chemical symbol of gold", "Au"),
    ("On the Origin of Species", "Charles Darwin"),
    ("describing a person named Ada", '{"name": "Ada", "age": 36, "languages": ["English", "French"]}'),
]
TASKS = "capital-australia,symbol-gold,author-origin-of-species,if-json,code-roman"


def bench(env, *args):
    return subprocess.run([str(BIN_DIR / "llm-gateway"), "bench", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_bench_grades_stores_reports_and_feeds_routing(mock, gateway_env, tmp_path, tmp_path_factory):
    httpx.delete(f"{mock}/_mock/replies").raise_for_status()
    httpx.post(f"{mock}/_mock/replies", json=[
        {"model": "gpt-4o-mini", "contains": c, "reply": r} for c, r in SCRIPTS
    ]).raise_for_status()
    env = dict(gateway_env, LLM_GATEWAY_DATA_DIR=str(tmp_path / "data"))
    out = tmp_path / "reports"
    try:
        # Every enabled chat model (the default), so that routes compare measurements only.
        r = bench(env, "--tasks", TASKS, "--concurrency", "8", "--out", str(out))
    finally:
        httpx.delete(f"{mock}/_mock/replies")
    assert r.returncode == 0, r.stderr
    assert "| openai/gpt-4o-mini | **" in r.stdout, r.stdout
    header = next(line for line in r.stdout.splitlines() if line.startswith("| task | category |"))
    models = [c.strip() for c in header.strip("|").split("|")][2:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("| capital-australia |"))
    cells = dict(zip(models, [c.strip() for c in row.strip("|").split("|")][2:]))
    assert cells["openai/gpt-4o-mini"] == "1.00" and cells["anthropic/claude-3-5-haiku-latest"] == "0.00", row
    pairs = 5 * len(models)
    assert f"{pairs}/{pairs}" in r.stderr, "progress reaches every (model, task) pair"
    reports = sorted(p.name for p in out.iterdir())
    assert len(reports) == 2 and reports[0].endswith(".md") and reports[1].endswith(".png"), reports
    png = (out / reports[1]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert (out / reports[0]).read_text() == r.stdout

    db = sqlite3.connect(tmp_path / "data" / "gateway.db")
    rows = db.execute("SELECT provider, model, task, tier, score, ttft_ms, cost_usd, error "
                      "FROM bench_results ORDER BY provider, model, task").fetchall()
    db.close()
    assert len(rows) == pairs
    scores = {(p, m, t): s for p, m, t, _, s, _, _, _ in rows}
    assert scores[("openai", "gpt-4o-mini", "symbol-gold")] == 1.0
    assert scores[("openai", "gpt-4o-mini", "if-json")] == 1.0
    assert scores[("openai", "gpt-4o-mini", "code-roman")] == 0.0
    assert scores[("anthropic", "claude-3-5-haiku-latest", "symbol-gold")] == 0.0
    assert all(ttft is not None and err is None for *_, ttft, _, err in rows)
    assert all(cost > 0 for p, *_, cost, _ in rows if p != "ollama"), "local models are free"

    # A gateway on the same database ranks with what was measured, and says where it came from.
    for url in run_gateway(env, tmp_path_factory, "measured"):
        body = {"model": "quality", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        d = httpx.post(f"{url}/v1/route", json=body).json()["decision"]
        assert d["tier"] == "simple", d
        ranking = {c["model"]: c for c in d["ranking"]}
        assert d["measured_candidates"] == len(d["ranking"]), d
        mini, haiku = ranking["openai/gpt-4o-mini"], ranking["anthropic/claude-3-5-haiku-latest"]
        assert (mini["quality_source"], mini["tier_quality"]) == ("measured", 1.0)
        assert (haiku["quality_source"], haiku["tier_quality"]) == ("measured", 0.0)
        assert d["ranking"][0]["model"] == "openai/gpt-4o-mini"


def test_bench_refuses_unknown_models_and_tasks_naming_the_flag(gateway_env, tmp_path):
    env = dict(gateway_env, LLM_GATEWAY_DATA_DIR=str(tmp_path))
    r = bench(env, "--models", "no-such-model")
    assert r.returncode == 2 and "--models: `no-such-model`" in r.stderr, r.stderr
    r = bench(env, "--tasks", "no-such-task")
    assert r.returncode == 2 and "--tasks: no task `no-such-task`" in r.stderr, r.stderr
    # An --out it cannot write to is refused before a single provider call is paid for.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = bench(env, "--models", "gpt-4o-mini", "--out", str(blocker))
    assert r.returncode == 2 and "--out" in r.stderr, r.stderr
    assert "stored" not in r.stdout.lower(), r.stdout
