"""The response cache as an app using the official openai SDK sees it: a repeated question and
a rephrased one answered from the cache (headers say which, cost zero), streamed or not,
and a question that only looks alike answered afresh."""

import openai


def ask(client, text, **kw):
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        temperature=0,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}],
        **kw,
    )


def test_repeated_and_rephrased_questions_come_from_the_cache(cached_gateway):
    client = openai.OpenAI(base_url=f"{cached_gateway}/v1", api_key="x", max_retries=0)
    first = ask(client, "How do I reverse a list in Python?")
    assert first.headers["x-llm-gateway-cache"] == "miss"
    answer = first.parse().choices[0].message.content

    again = ask(client, "How do I reverse a list in Python?")
    assert again.headers["x-llm-gateway-cache"] == "hit-exact"
    assert again.headers["x-llm-gateway-cost-usd"] == "0"
    assert again.parse().choices[0].message.content == answer

    para = ask(client, "How can I reverse a list in Python?")
    assert para.headers["x-llm-gateway-cache"] == "hit-semantic"
    assert float(para.headers["x-llm-gateway-cache-similarity"]) >= 0.85
    assert para.parse().choices[0].message.content == answer

    # Streamed from the cache, usage included when asked.
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        temperature=0,
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "How can I reverse a list in Python?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage is not None

    # Alike in words, not in meaning.
    other = ask(client, "How do I reverse a list in Ruby?")
    assert other.headers["x-llm-gateway-cache"] == "miss"
    assert other.parse().choices[0].message.content != answer
