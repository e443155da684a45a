"""OpenTelemetry traces: the gateway exports OTLP/HTTP to the mock's collector (decoded with
the OpenTelemetry protocol crate). One streamed request that fails over arrives as a server
span (child of the client's `traceparent`) with one client span per upstream attempt (GenAI
attributes, the failed one marked) and the settle step; the trace context reaches the
provider; the trace id is the request id; no prompt or key is in any span; and a dead
collector costs requests nothing but dropped spans, counted in a metric."""

import os
import secrets
import subprocess
import time

import httpx
import openai

from conftest import BIN_DIR, free_port, wait_until

PROMPT = "SECRET-PROMPT-" + secrets.token_hex(4)


def start(tmp_path, name, mock, collector, extra_env=None):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(f"""
routing:
  virtual_models:
    - name: mixed
      strategy: quality
      candidates: {{providers: [groq, together]}}
providers:
  - {{name: groq, api_key: {{env: GROQ_API_KEY}}, base_url: "{mock}/groq/openai/v1"}}
  - {{name: together, api_key: {{env: TOGETHER_API_KEY}}, base_url: "{mock}/together/v1"}}
""")
    port, metrics = free_port(), free_port()
    log = open(tmp_path / f"{name}.log", "w")
    env = {"PATH": os.environ.get("PATH", ""), "LLM_GATEWAY_DATA_DIR": str(tmp_path / name),
           "GROQ_API_KEY": "gsk-SECRET-key", "TOGETHER_API_KEY": "tg-SECRET-key",
           "OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_SERVICE_NAME": "gateway-e2e",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "RUST_LOG": "info", **(extra_env or {})}
    p = subprocess.Popen([str(BIN_DIR / "llm-gateway"), "--listen", f"127.0.0.1:{port}",
                          "--metrics-listen", f"127.0.0.1:{metrics}", "--config", str(cfg)],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until(f"{url}/healthz", p)
    return p, url, f"http://127.0.0.1:{metrics}"


def test_a_failed_over_stream_is_one_trace_with_genai_attributes(mock, fault, tmp_path):
    httpx.delete(f"{mock}/_mock/spans")
    httpx.delete(f"{mock}/_mock/requests")
    p, url, _ = start(tmp_path, "gw", mock, mock)
    try:
        # The route's first choice fails once: the stream fails over to the second.
        first = httpx.post(f"{url}/v1/route", json={"model": "mixed", "messages": [
            {"role": "user", "content": "x"}]}).json()
        first_provider = first["chosen"].split("/")[0]
        second_provider = "together" if first_provider == "groq" else "groq"
        fault(vendor=first_provider, status=500, times=1)
        trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0,
                               default_headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        raw = client.chat.completions.with_raw_response.create(
            model="mixed", stream=True, temperature=0.5,
            messages=[{"role": "user", "content": f"{PROMPT} tell me a story"}])
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert text
        assert raw.headers["x-llm-gateway-attempts"] == "2"

        def mine():
            return [s for s in httpx.get(f"{mock}/_mock/spans").json() if s["trace_id"] == trace_id]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(mine()) < 7:
            time.sleep(0.1)
        spans = mine()
        by_name = {}
        for s in spans:
            by_name.setdefault(s["name"], []).append(s)
        server = by_name["POST /v1/chat/completions"][0]
        assert server["parent_span_id"] == parent and server["kind"] == 2, server
        assert server["service"] == "gateway-e2e"
        attempts = sorted((s for s in spans if s["attributes"].get("gen_ai.operation.name") == "chat"),
                          key=lambda s: s["attributes"]["llm_gateway.attempt"])
        assert [a["attributes"]["llm_gateway.attempt"] for a in attempts] == [1, 2], spans
        for a in attempts:
            assert a["parent_span_id"] == server["span_id"] and a["kind"] == 3, a
            assert a["attributes"]["gen_ai.request.model"] and a["name"].startswith("chat ")
        failed, answered = attempts
        assert failed["attributes"]["gen_ai.provider.name"] == first_provider
        assert failed["attributes"]["error.type"] == "status_5xx", failed
        won = answered["attributes"]
        assert won["gen_ai.provider.name"] == second_provider
        assert won["gen_ai.response.model"] == won["gen_ai.request.model"]
        assert won["gen_ai.usage.input_tokens"] > 0 and won["gen_ai.usage.output_tokens"] > 0, won
        assert "stop" in won["gen_ai.response.finish_reasons"], won
        assert won["llm_gateway.virtual_model"] == "mixed"
        assert server["attributes"]["llm_gateway.attempts"] == 2
        assert server["attributes"]["http.response.status_code"] == 200
        # One span per pipeline step, each a child of the server span.
        for step in ("route", "cache.lookup", "budget.reserve", "settle"):
            assert by_name[step][0]["parent_span_id"] == server["span_id"], (step, by_name.get(step))
        # The provider got the answering attempt's context.
        upstream = [r for r in httpx.get(f"{mock}/_mock/requests", params={"vendor": second_provider}).json()
                    if PROMPT in str(r["body"])]
        assert upstream[-1]["headers"]["traceparent"] == f"00-{trace_id}-{answered['span_id']}-01"
        # The log line names the trace (the client's trace spans many requests, so the
        # request id stays its own).
        log = (tmp_path / "gw.log").read_text()
        assert f"trace_id=\"{trace_id}\"" in log, log[-2000:]
        assert f"request_id={trace_id}" not in log
        # A trace that starts at the gateway: its id is the request id.
        r = httpx.post(f"{url}/v1/chat/completions", json={
            "model": "groq/llama-3.1-8b-instant", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        rid = r.headers.get("x-request-id")
        time.sleep(0.3)
        log = (tmp_path / "gw.log").read_text()
        own = [l for l in log.splitlines() if "request finished" in l][-1]
        tid = own.split('trace_id="')[1].split('"')[0]
        assert f"request_id={tid}" in own, own
        if rid:
            assert rid == tid
        # Never the prompt, never a key.
        dump = str(spans)
        assert PROMPT not in dump and "SECRET-key" not in dump
    finally:
        p.terminate()
        p.wait(10)


def test_a_dead_collector_costs_requests_nothing_but_dropped_spans(mock, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    p, url, metrics = start(tmp_path, "dead", mock, dead)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        for i in range(20):
            r = client.chat.completions.create(model="groq/llama-3.1-8b-instant",
                                               messages=[{"role": "user", "content": f"hi {i}"}])
            assert r.choices[0].message.content
        deadline = time.monotonic() + 20
        dropped = 0.0
        while time.monotonic() < deadline and dropped == 0:
            for line in httpx.get(f"{metrics}/metrics").text.splitlines():
                if line.startswith("llm_gateway_trace_spans_dropped_total"):
                    dropped = float(line.split()[-1])
            time.sleep(0.2)
        assert dropped > 0, "dropped spans are counted"
    finally:
        p.terminate()
        p.wait(10)
