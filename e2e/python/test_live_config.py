"""Live configuration under load, through the official openai SDK: two configurations
(different candidates on different providers for the same virtual model) are swapped
over and over while ~2,000 requests, half of them streamed, run through the gateway binary.
No request may fail, every stream must complete, and every response must be explained
entirely by one of the two configurations (the one its `x-llm-gateway-config` header names):
its provider and model, never a mix.
"""

import asyncio
import os
import signal
import subprocess

import httpx
import openai
import pytest

from conftest import BIN_DIR, free_port, wait_until

ADMIN = "admin-token-for-the-live-config-test"
REQUESTS = 2000
CONCURRENCY = 48

# Each configuration: the provider and model `swap` resolves to.
CONFIGS = {
    "A": ("openai", "gpt-4o-mini"),
    "B": ("anthropic", "claude-3-5-haiku-latest"),
}


def document(mock: str, name: str, n: int) -> str:
    provider, model = CONFIGS[name]
    return f"""
version: "{name}-{n}"
routing:
  virtual_models:
    - {{name: swap, strategy: quality, candidates: {{models: [{provider}/{model}]}}}}
providers:
  - name: openai
    base_url: {mock}/openai/v1
    api_key: {{env: OPENAI_API_KEY}}
  - name: anthropic
    base_url: {mock}/anthropic
    api_key: {{env: ANTHROPIC_API_KEY}}
"""


@pytest.fixture
def live_gateway(mock, tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(document(mock, "A", 0))
    port = free_port()
    log = tmp_path / "gateway.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LLM_GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "LLM_GATEWAY_ADMIN_TOKEN": ADMIN,
        "OPENAI_API_KEY": "sk-test-openai",
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "RUST_LOG": "warn",
    }
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN_DIR / "llm-gateway"), "--listen", f"127.0.0.1:{port}", "--config", str(path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until(f"{url}/readyz", proc)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, log.read_text()


def test_swapping_configs_under_load_fails_no_request_and_never_mixes_them(live_gateway, mock, fault):
    # Answers take a little while, so requests are in flight across every swap.
    fault(vendor="openai", latency_ms=30, chunk_delay_ms=5)
    fault(vendor="anthropic", latency_ms=30, chunk_delay_ms=5)
    client = openai.AsyncOpenAI(base_url=f"{live_gateway}/v1", api_key="x", max_retries=0, timeout=30)
    results = []
    errors = []

    async def one(i: int, gate: asyncio.Semaphore):
        async with gate:
            try:
                if i % 2:
                    raw = await client.chat.completions.with_raw_response.create(
                        model="swap", stream=True, messages=[{"role": "user", "content": "Say something. [[words=6]]"}]
                    )
                    version = raw.headers["x-llm-gateway-config"]
                    provider = raw.headers["x-llm-gateway-provider"]
                    models, text, finished = set(), "", False
                    async for chunk in raw.parse():
                        models.add(chunk.model)
                        for c in chunk.choices:
                            text += c.delta.content or ""
                            finished = finished or c.finish_reason is not None
                    assert finished and text, f"stream {i} incomplete"
                    results.append((version, provider, models))
                else:
                    raw = await client.chat.completions.with_raw_response.create(
                        model="swap", messages=[{"role": "user", "content": "Say something. [[words=6]]"}]
                    )
                    done = raw.parse()
                    assert done.choices[0].message.content
                    results.append((raw.headers["x-llm-gateway-config"], raw.headers["x-llm-gateway-provider"], {done.model}))
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                errors.append(f"request {i}: {e!r}")

    async def swapper(stop: asyncio.Event) -> int:
        n = 0
        async with httpx.AsyncClient(timeout=10) as http:
            while not stop.is_set() or n < 20:
                n += 1
                name = "B" if n % 2 else "A"
                r = await http.put(
                    f"{live_gateway}/admin/config",
                    headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/yaml"},
                    content=document(mock, name, n),
                )
                assert r.status_code == 200, r.text
                assert r.json()["version"] == f"{name}-{n}"
                await asyncio.sleep(0.05)
        return n

    async def main():
        gate = asyncio.Semaphore(CONCURRENCY)
        stop = asyncio.Event()
        swaps = asyncio.create_task(swapper(stop))
        await asyncio.gather(*(one(i, gate) for i in range(REQUESTS)))
        stop.set()
        return await swaps

    swaps = asyncio.run(main())
    assert not errors, errors[:5]
    assert len(results) == REQUESTS
    assert swaps >= 20
    seen = {"A": 0, "B": 0}
    for version, provider, models in results:
        name = version.split("-")[0]
        want_provider, want_model = CONFIGS[name]
        assert provider == want_provider, (version, provider, models)
        assert models == {want_model}, (version, provider, models)
        seen[name] += 1
    # Both configurations really served traffic.
    assert seen["A"] > 100 and seen["B"] > 100, seen
