"""The official openai Python SDK against the gateway, for every wire protocol."""

import json

import httpx

import openai
import pydantic
import pytest

from conftest import until

# (model as clients name it, provider that must answer)
CHAT_MODELS = [
    ("gpt-4o-mini", "openai"),
    ("claude-3-5-haiku-latest", "anthropic"),
    ("groq/llama-3.1-8b-instant", "groq"),
    ("together/meta-llama/Llama-3.3-70B-Instruct-Turbo", "together"),
    ("ollama/llama3.2", "ollama"),
]
TOOL_MODELS = [m for m in CHAT_MODELS if m[1] != "together"] + [
    ("together/meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "together")
]
WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]


@pytest.mark.parametrize("model,provider", CHAT_MODELS)
def test_chat_multi_turn(client, model, provider):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=CONVERSATION)
    assert raw.headers["x-llm-gateway-provider"] == provider
    assert raw.headers["x-llm-gateway-model"]
    assert "x-llm-gateway-cost-usd" in raw.headers
    resp = raw.parse()
    assert resp.object == "chat.completion"
    content = resp.choices[0].message.content
    assert f"Mock {provider} reply" in content and "Another one?" in content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


@pytest.mark.parametrize("model,provider", CHAT_MODELS)
def test_streaming_with_usage(client, model, provider):
    stream = client.chat.completions.create(
        model=model, messages=CONVERSATION, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert f"Mock {provider} reply" in text
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("model,provider", CHAT_MODELS)
def test_streaming_without_usage_sends_no_usage_chunk(client, model, provider):
    chunks = list(client.chat.completions.create(model=model, messages=CONVERSATION, stream=True))
    assert chunks and all(c.choices for c in chunks), "a usage-only chunk reached a client that did not ask"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Mock")


@pytest.mark.parametrize("model,provider", TOOL_MODELS)
def test_tools_and_tool_results(client, model, provider):
    first = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=WEATHER, tool_choice="auto"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sample"}

    second = client.chat.completions.create(
        model=model,
        tools=WEATHER,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "21C, clear"},
        ],
    )
    assert "21C, clear" in second.choices[0].message.content


@pytest.mark.parametrize("model,provider", [m for m in TOOL_MODELS if m[1] in ("openai", "anthropic", "groq")])
def test_streamed_tool_calls_through_the_sdk_stream_helper(client, model, provider):
    with client.chat.completions.stream(
        model=model,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=WEATHER,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sample"}
    assert final.choices[0].finish_reason == "tool_calls"


class Answer(pydantic.BaseModel):
    n: int
    label: str


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest"])
def test_structured_output_with_parse(client, model):
    resp = client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "Give me a number"}], response_format=Answer
    )
    parsed = resp.choices[0].message.parsed
    assert parsed == Answer(n=1, label="sample")


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest"])
def test_image_parts(client, model):
    resp = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Describe this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}],
    )
    assert "Describe this" in resp.choices[0].message.content


@pytest.mark.parametrize("model,provider", [
    ("text-embedding-3-small", "openai"),
    ("together/BAAI/bge-large-en-v1.5", "together"),
    ("nomic-embed-text", "ollama"),
])
def test_embeddings(client, model, provider):
    raw = client.embeddings.with_raw_response.create(model=model, input=["first text", "second text"])
    assert raw.headers["x-llm-gateway-provider"] == provider
    resp = raw.parse()
    assert [d.index for d in resp.data] == [0, 1]
    assert len(resp.data[0].embedding) == 16
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0


def test_models_list_has_real_and_virtual_models(client):
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "claude-3-5-haiku-latest", "llama-3.1-8b-instant", "llama3.2:latest"} <= ids
    assert {"auto", "fast", "cheap", "quality"} <= ids
    assert client.models.retrieve("gpt-4o-mini").owned_by == "openai"


def test_virtual_model_routes_and_says_so(client):
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=CONVERSATION)
    assert raw.headers["x-llm-gateway-route"].startswith("virtual=auto;")
    assert raw.parse().choices[0].message.content


def test_errors_raise_the_sdk_exceptions(client, fault, gateway):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=CONVERSATION)
    assert "GET /v1/models" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="gpt-4o-mini", input="x")

    # (A 429 with Retry-After opens that provider's breaker for a while: use one that the
    # tests below do not need.)
    fault(vendor="together", status=429, retry_after="2", times=1)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="together/meta-llama/Llama-3.3-70B-Instruct-Turbo", messages=CONVERSATION)
    assert e.value.response.headers["retry-after"] == "2"
    assert e.value.response.headers["x-llm-gateway-attempts"] == "1"

    fault(vendor="groq", status=503, times=1)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="groq/llama-3.1-8b-instant", messages=CONVERSATION)
    # The 429's Retry-After opened the model's breaker: later tests use it, so wait until it
    # reads closed again (a rate limit's breaker closes outright at the reset it announced).
    closed = 'llm_gateway_breaker_state{provider="together",model="meta-llama/Llama-3.3-70B-Instruct-Turbo"} 0'

    def probe_and_check():
        client.chat.completions.create(
            model="together/meta-llama/Llama-3.3-70B-Instruct-Turbo", messages=CONVERSATION)
        return closed in httpx.get(f"{gateway}/metrics").text

    until("together's breaker closes", probe_and_check, timeout=15)


@pytest.mark.parametrize("vendor,model", [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku-latest")])
def test_stream_cut_mid_way_raises_instead_of_looking_complete(client, fault, vendor, model):
    fault(vendor=vendor, cut_after=5, times=1)
    stream = client.chat.completions.create(model=model, messages=CONVERSATION, stream=True)
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            pass
    assert "before it was complete" in str(e.value)


@pytest.mark.parametrize("stream", [False, True])
def test_failover_is_invisible_to_the_client(client, fault, gateway, stream):
    body = {"model": "quality", "messages": [{"role": "user", "content": "Explain quicksort."}]}
    victim = httpx.post(f"{gateway}/v1/route", json=body).json()["chosen"].split("/")[0]
    fault(vendor=victim, status=500, times=1)
    raw = client.chat.completions.with_raw_response.create(**body, stream=stream)
    assert raw.headers["x-llm-gateway-attempts"] == "2"
    assert raw.headers["x-llm-gateway-provider"] != victim
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content
    assert "Explain quicksort." in text


# The Responses API (`client.responses`), served statelessly over each provider's chat API.
RESPONSES_WEATHER = [{
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]


@pytest.mark.parametrize("model,provider", CHAT_MODELS)
def test_responses_create(client, model, provider):
    raw = client.responses.with_raw_response.create(
        model=model, instructions="You are terse.", input="Name a colour.", max_output_tokens=50
    )
    assert raw.headers["x-llm-gateway-provider"] == provider
    resp = raw.parse()
    assert resp.object == "response" and resp.status == "completed"
    assert f"Mock {provider} reply" in resp.output_text and "Name a colour." in resp.output_text
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens


@pytest.mark.parametrize("model,provider", CHAT_MODELS)
def test_responses_stream_through_the_sdk_accumulator(client, model, provider):
    deltas = ""
    with client.responses.stream(model=model, input=CONVERSATION[1:]) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas += event.delta
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == deltas and f"Mock {provider} reply" in deltas
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model,provider", [m for m in TOOL_MODELS if m[1] in ("openai", "anthropic", "groq")])
def test_responses_function_calls_round_trip(client, model, provider):
    history = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.responses.create(model=model, input=history, tools=RESPONSES_WEATHER, tool_choice="required")
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "sample"}
    # The SDK's documented loop: the output items go back as input, with each call's output.
    history += first.output
    history.append({"type": "function_call_output", "call_id": calls[0].call_id, "output": "21C, clear"})
    second = client.responses.create(model=model, input=history, tools=RESPONSES_WEATHER)
    assert "21C, clear" in second.output_text

    with client.responses.stream(
        model=model, input="Weather in Rome?", tools=RESPONSES_WEATHER,
        tool_choice={"type": "function", "name": "get_weather"},
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    call = next(o for o in final.output if o.type == "function_call")
    assert json.loads(call.arguments) == {"city": "sample"}


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest"])
def test_responses_structured_output_with_parse(client, model):
    resp = client.responses.parse(model=model, input="Give me a number", text_format=Answer)
    assert resp.output_parsed == Answer(n=1, label="sample")


def test_responses_errors_and_a_cut_stream(client, fault):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-4o-mini", input="x", previous_response_id="resp_123")
    assert e.value.body["param"] == "previous_response_id"
    assert e.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="x")
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve("resp_123")
    assert e.value.body["code"] == "response_not_stored"

    fault(vendor="openai", cut_after=5, times=1)
    events = list(client.responses.create(model="gpt-4o-mini", input=CONVERSATION, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"], kinds
    assert events[-1].response.status == "failed"
    assert "response.completed" not in kinds


def test_refusals_reach_the_sdk_as_refusals(client, mock):
    """A model's refusal (OpenAI's structured-outputs answer with `refusal` and no content)
    is a refusal to the SDK on both APIs, streamed or not: never a failed parse of empty text."""
    httpx.post(f"{mock}/_mock/replies", json=[
        {"model": "gpt-4o-mini", "contains": "forbidden number", "reply": "I can't help with that.", "refusal": True},
    ]).raise_for_status()
    try:
        chat = client.chat.completions.parse(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "A forbidden number"}], response_format=Answer
        )
        assert chat.choices[0].message.refusal == "I can't help with that."
        assert chat.choices[0].message.parsed is None

        resp = client.responses.parse(model="gpt-4o-mini", input="A forbidden number", text_format=Answer)
        assert [c.type for c in resp.output[0].content] == ["refusal"]
        assert resp.output[0].content[0].refusal == "I can't help with that."
        assert resp.output_parsed is None

        with client.responses.stream(model="gpt-4o-mini", input="A forbidden number", text_format=Answer) as stream:
            kinds = [e.type for e in stream]
            final = stream.get_final_response()
        assert "response.refusal.delta" in kinds and "response.refusal.done" in kinds
        assert final.output[0].content[0].refusal == "I can't help with that."
    finally:
        httpx.delete(f"{mock}/_mock/replies")
