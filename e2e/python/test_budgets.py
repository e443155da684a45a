"""Budgets as an app using the official openai SDK sees them: a key created and budgeted with
the CLI (the same embedded database the running gateway uses), the remaining-budget header,
and a RateLimitError carrying the budget's figures once it is spent."""

import subprocess
import time

import httpx
import openai
import pytest

from conftest import BIN_DIR


def cli(env, *args):
    out = subprocess.run(
        [str(BIN_DIR / "llm-gateway"), *args], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_spent_budget_is_a_rate_limit_error_naming_it(gateway, gateway_env):
    key = cli(gateway_env, "keys", "create", "--tenant", "sdk-budget").strip()
    key_id = next(
        line.split()[0] for line in cli(gateway_env, "keys", "list").splitlines() if "sdk-budget" in line
    )
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)
    ask = dict(model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": "hi [[words=5]]"}])
    one = float(client.chat.completions.with_raw_response.create(**ask).headers["x-llm-gateway-cost-usd"])
    cli(gateway_env, "budgets", "set", "--key", key_id, f"--usd={one * 5}")

    # Running gateways reload budgets every 5 s; the key sees its own at GET /v1/budget.
    deadline = time.monotonic() + 10
    while not httpx.get(f"{gateway}/v1/budget", headers={"authorization": f"Bearer {key}"}).json()["budgets"]:
        assert time.monotonic() < deadline, "the budget never applied"
        time.sleep(0.2)
    raw = client.chat.completions.with_raw_response.create(**ask)
    left = float(raw.headers["x-llm-gateway-budget-remaining-usd"])
    assert abs(left - 3 * one) < 1e-9, (left, one)
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(5):
            client.chat.completions.create(**ask)
    err = e.value.body
    assert err["code"] == "budget_exceeded"
    assert err["type"] == "insufficient_quota"
    assert err["budget"]["scope"] == "key" and err["budget"]["subject"] == key_id
    assert err["budget"]["used"] <= err["budget"]["limit"]
    assert int(e.value.response.headers["retry-after"]) > 0

    # A free local model is still served under the spent USD budget, streamed too.
    stream = client.chat.completions.create(
        model="ollama/llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
