"""A hung provider, as a new user meets it: the quick-start gateway at its default settings,
the official SDK with a 30 s timeout, the top-ranked provider of a virtual model accepting
requests and never answering. Every request, streaming or not, must still succeed."""

import concurrent.futures
import time

import httpx
import openai
import pytest

from conftest import run_gateway


@pytest.fixture(scope="module")
def fresh_gateway(gateway_env, tmp_path_factory):
    """A gateway of its own: its breakers and learned deadlines start cold."""
    env = dict(gateway_env)
    env["LLM_GATEWAY_DATA_DIR"] = str(tmp_path_factory.mktemp("resilience-data"))
    yield from run_gateway(env, tmp_path_factory, "resilience")


def test_a_hung_top_provider_costs_no_client_an_error(fresh_gateway, mock, fault):
    prompt = [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}]
    decision = httpx.post(f"{fresh_gateway}/v1/route", json={"model": "auto", "messages": prompt}).json()
    top = decision["decision"]["ranking"][0]["model"].split("/")[0]
    fault(vendor=top, hang=True)
    client = openai.OpenAI(base_url=f"{fresh_gateway}/v1", api_key="x", timeout=30.0, max_retries=0)

    def ask(stream: bool):
        started = time.monotonic()
        if stream:
            with client.chat.completions.with_streaming_response.create(
                model="auto", messages=prompt, stream=True
            ) as raw:
                text = "".join(
                    c.choices[0].delta.content or "" for c in raw.parse() if c.choices
                )
                provider, attempts = raw.headers["x-llm-gateway-provider"], raw.headers["x-llm-gateway-attempts"]
        else:
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=prompt)
            text = raw.parse().choices[0].message.content
            provider, attempts = raw.headers["x-llm-gateway-provider"], raw.headers["x-llm-gateway-attempts"]
        return text, provider, attempts, time.monotonic() - started

    # More requests than the breaker's threshold, at once: each of the first five meets the
    # hung provider; later ones find its breaker open.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, [i % 2 == 0 for i in range(8)]))
    for text, provider, attempts, took in results:
        assert text, "an answer"
        assert provider != top, "answered by the next candidate"
        assert attempts == "2"
        assert took < 30
    # Breaker open now: the next request skips the hung provider without waiting.
    text, provider, attempts, took = ask(False)
    assert provider != top and attempts == "1", (provider, attempts)
