//! Chat completions through the gateway against each wire protocol of the mock providers.

mod common;

use common::*;
use serde_json::{json, Value};

/// (model as the client names it, provider, upstream model, vendor prefix in the mock reply)
const MODELS: [(&str, &str, &str); 5] = [
    ("gpt-4o-mini", "openai", "gpt-4o-mini"),
    (
        "claude-3-5-haiku-latest",
        "anthropic",
        "claude-3-5-haiku-latest",
    ),
    ("groq/llama-3.1-8b-instant", "groq", "llama-3.1-8b-instant"),
    (
        "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "together",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    ),
    ("ollama/llama3.2", "ollama", "llama3.2:latest"),
];

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"}]})
}

#[tokio::test]
async fn non_streaming_chat_works_for_every_provider_with_headers_and_usage() {
    let h = start().await;
    for (model, provider, upstream) in MODELS {
        let (status, headers, body) = h.chat(&hello(model)).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(headers["x-llm-gateway-provider"], provider);
        assert_eq!(headers["x-llm-gateway-model"], upstream);
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(body["object"], "chat.completion");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            content.contains(&format!("Mock {provider} reply")),
            "{model}: {content}"
        );
        assert!(content.contains("Hello there"));
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        let usage = &body["usage"];
        assert!(
            usage["prompt_tokens"].as_u64().unwrap() > 0,
            "{model}: {usage}"
        );
        assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
        let cost: f64 = headers["x-llm-gateway-cost-usd"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if provider == "ollama" {
            assert_eq!(cost, 0.0, "local models are free");
        } else {
            assert!(cost > 0.0, "{model}: cost {cost}");
        }
    }
}

#[tokio::test]
async fn streaming_chat_works_for_every_provider_with_and_without_usage() {
    let h = start().await;
    for (model, provider, _) in MODELS {
        for include_usage in [false, true] {
            let mut req = hello(model);
            req["stream"] = json!(true);
            if include_usage {
                req["stream_options"] = json!({"include_usage": true});
            }
            let (status, headers, body) = h.chat_stream(&req).await;
            assert_eq!(status, 200, "{model}: {body}");
            assert_eq!(headers["content-type"], "text/event-stream");
            assert_eq!(headers["x-llm-gateway-provider"], provider);
            let chunks = sse_data(&body);
            assert_eq!(chunks.last().unwrap(), "[DONE]", "{model}: {body}");
            let text = streamed_text(&chunks);
            assert!(
                text.contains(&format!("Mock {provider} reply")),
                "{model}: {text}"
            );
            assert!(text.ends_with("Hello there"), "{model}: {text}");
            let finishes: Vec<_> = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
                .collect();
            assert_eq!(finishes, ["stop"], "{model}");
            let usage_chunks: Vec<&Value> =
                chunks.iter().filter(|c| c["usage"].is_object()).collect();
            if include_usage {
                let u = usage_chunks
                    .last()
                    .unwrap_or_else(|| panic!("{model}: no usage in {body}"));
                assert!(u["usage"]["completion_tokens"].as_u64().unwrap() > 0);
            } else {
                assert!(
                    chunks.iter().all(|c| c["choices"] != json!([])),
                    "{model}: a usage-only chunk leaked to a client that did not ask: {body}"
                );
            }
            if provider != "ollama" {
                assert!(
                    body.contains(": x-llm-gateway-cost-usd="),
                    "{model}: cost comment missing: {body}"
                );
            }
        }
    }
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}])
}

#[tokio::test]
async fn tool_calls_and_tool_results_round_trip_on_every_protocol() {
    let h = start().await;
    for model in [
        "gpt-4o-mini",
        "claude-3-5-haiku-latest",
        "groq/llama-3.3-70b-versatile",
        "ollama/llama3.2",
    ] {
        let req = json!({"model": model, "tools": weather_tools(), "tool_choice": "auto",
            "messages": [{"role": "user", "content": "Weather in Paris?"}]});
        let (status, _, body) = h.chat(&req).await;
        assert_eq!(status, 200, "{model}: {body}");
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{model}: {body}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["city"], "sample");
        let id = call["id"].as_str().unwrap().to_owned();

        let follow = json!({"model": model, "tools": weather_tools(), "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "18 degrees and sunny"}]});
        let (status, _, body) = h.chat(&follow).await;
        assert_eq!(status, 200, "{model}: {body}");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            content.contains("18 degrees and sunny"),
            "{model}: {content}"
        );
    }
}

/// An upstream's burst (its events arrive together) leaves the gateway in frames of several
/// events, not one per event, and nothing is lost, reordered or held back before the first
/// content. The HTTP chunks the client receives are the gateway's body frames (one may arrive
/// split in two, never merged with the next). How many events share a frame depends on the
/// scheduling of a loaded machine, so only "several, somewhere" is asserted: without the
/// batching every frame holds one event.
#[tokio::test]
async fn a_burst_of_stream_events_leaves_in_frames_of_several_and_the_first_content_at_once() {
    let h = start().await;
    let req = json!({"model": "gpt-4o-mini", "stream": true, "messages": [
        {"role": "user", "content": "Tell me a story. [[words=120]]"}]});
    let mut r = h.post("/v1/chat/completions", &req).await;
    assert_eq!(r.status(), 200);
    let mut pieces = Vec::new();
    while let Some(b) = r.chunk().await.unwrap() {
        pieces.push(String::from_utf8(b.to_vec()).unwrap());
    }
    let body = pieces.concat();
    let events = sse_data(&body);
    assert_eq!(events.last().unwrap(), "[DONE]", "{body}");
    assert!(events.len() > 120, "{} events", events.len());
    // The mock's own stream, word for word: the batching changed only the writes.
    let words = streamed_text(&events);
    assert_eq!(words.split_whitespace().count(), 120, "{words}");
    let most = pieces.iter().map(|p| p.matches("data: ").count()).max();
    assert!(
        pieces.len() < events.len() && most >= Some(3),
        "{} frames for {} events, at most {most:?} in one",
        pieces.len(),
        events.len()
    );
    // The preamble and the first content are not held for the rest of the burst: the first
    // whole events that hold content are at most those two.
    let mut prefix = String::new();
    let upto_first_content = pieces
        .iter()
        .find_map(|p| {
            prefix.push_str(p);
            let events = prefix.ends_with("\n\n").then(|| sse_data(&prefix))?;
            let content = |e: &Value| {
                e["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            };
            events.iter().any(content).then_some(events)
        })
        .unwrap();
    assert!(
        upto_first_content.len() <= 2,
        "the first content came with later events: {upto_first_content:?}"
    );
}

#[tokio::test]
async fn streamed_tool_call_deltas_reassemble_to_the_arguments() {
    let h = start().await;
    for model in [
        "gpt-4o-mini",
        "claude-3-5-haiku-latest",
        "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
    ] {
        let req = json!({"model": model, "stream": true, "tools": weather_tools(),
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "messages": [{"role": "user", "content": "Weather in Oslo?"}]});
        let (status, _, body) = h.chat_stream(&req).await;
        assert_eq!(status, 200, "{model}: {body}");
        let chunks = sse_data(&body);
        let mut id = None;
        let mut name = String::new();
        let mut args = String::new();
        let mut fragments = 0;
        for c in &chunks {
            for tc in c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert_eq!(tc["index"], 0);
                if let Some(i) = tc["id"].as_str() {
                    id = Some(i.to_owned());
                }
                name += tc["function"]["name"].as_str().unwrap_or_default();
                if let Some(a) = tc["function"]["arguments"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                {
                    args += a;
                    fragments += 1;
                }
            }
        }
        assert!(id.is_some(), "{model}: no tool call id");
        assert_eq!(name, "get_weather");
        assert!(
            fragments > 1,
            "{model}: arguments should arrive in fragments"
        );
        let parsed: Value =
            serde_json::from_str(&args).unwrap_or_else(|e| panic!("{model}: {args}: {e}"));
        assert_eq!(parsed, json!({"city": "sample", "unit": "c"}));
        let finish: Vec<_> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
            .collect();
        assert_eq!(finish, ["tool_calls"], "{model}");
        assert_eq!(chunks.last().unwrap(), "[DONE]");
    }
}

#[tokio::test]
async fn openai_protocol_requests_pass_unknown_fields_through_untouched() {
    let h = start().await;
    let req = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x", "name": "ann"}],
        "seed": 42, "logit_bias": {"50256": -100}, "some_future_field": {"a": [1, 2]},
        "response_format": {"type": "json_object"}, "metadata": {"k": "v"}});
    let (status, _, body) = h.chat(&req).await;
    assert_eq!(status, 200, "{body}");
    let got = &h.received("openai").await[0];
    let sent = &got["body"];
    for key in [
        "seed",
        "logit_bias",
        "some_future_field",
        "response_format",
        "metadata",
    ] {
        assert_eq!(sent[key], req[key], "{key}");
    }
    assert_eq!(
        sent["messages"], req["messages"],
        "message fields are kept too"
    );
    assert_eq!(
        got["headers"]["authorization"],
        "Bearer key-for-OPENAI_API_KEY"
    );
    let answer: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(answer.is_object(), "json mode answer is JSON");

    // Every `tool_choice` form OpenAI takes goes through as sent; a value of no form is a 400
    // in OpenAI's words, naming the field.
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
                       {"type": "custom", "custom": {"name": "c"}}]);
    for choice in [
        json!({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "f"}}]}}),
        json!({"type": "custom", "custom": {"name": "c"}}),
    ] {
        let req = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
            "tools": tools, "tool_choice": choice});
        let (status, _, body) = h.chat(&req).await;
        assert_eq!(status, 200, "{body}");
        let got = h.received("openai").await;
        assert_eq!(got.last().unwrap()["body"]["tool_choice"], choice);
    }
    let req = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
        "tools": tools, "tool_choice": {"type": "function"}});
    let (status, _, body) = h.chat(&req).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tool_choice");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("enum"), "{message}");
}

#[tokio::test]
async fn anthropic_receives_an_exact_messages_request() {
    let h = start().await;
    let req = json!({"model": "anthropic/claude-3-5-haiku-latest", "temperature": 0.5, "stop": ["###"],
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"}, {"role": "user", "content": [{"type": "text", "text": "two"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
    ]});
    let (status, _, body) = h.chat(&req).await;
    assert_eq!(status, 200, "{body}");
    let got = &h.received("anthropic").await[0];
    assert_eq!(got["path"], "/v1/messages");
    assert_eq!(got["headers"]["x-api-key"], "key-for-ANTHROPIC_API_KEY");
    assert_eq!(got["headers"]["anthropic-version"], "2023-06-01");
    assert!(got["headers"].get("authorization").is_none());
    let sent = &got["body"];
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 4096);
    assert_eq!(sent["stop_sequences"], json!(["###"]));
    assert_eq!(
        sent["messages"].as_array().unwrap().len(),
        1,
        "consecutive user turns merge"
    );
    assert_eq!(
        sent["messages"][0]["content"][2]["source"]["media_type"],
        "image/png"
    );
}

#[tokio::test]
async fn anthropic_json_schema_answers_come_back_as_content() {
    let h = start().await;
    let req = json!({"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "Give n"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer",
            "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}}});
    let (status, _, body) = h.chat(&req).await;
    assert_eq!(status, 200, "{body}");
    let msg = &body["choices"][0]["message"];
    assert!(msg.get("tool_calls").is_none(), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(msg["content"].as_str().unwrap()).unwrap(),
        json!({"n": 1})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn unknown_provider_qualified_models_pass_through_unpriced() {
    let h = start().await;
    let (status, headers, body) = h.chat(&hello("groq/brand-new-model-2026")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-llm-gateway-model"], "brand-new-model-2026");
    assert_eq!(headers["x-llm-gateway-price"], "unknown");
    assert!(!headers.contains_key("x-llm-gateway-cost-usd"));
}

#[tokio::test]
async fn virtual_models_are_routed_and_say_how() {
    let h = start().await;
    for v in ["auto", "fast", "cheap", "quality"] {
        let (status, headers, body) = h.chat(&hello(v)).await;
        assert_eq!(status, 200, "{v}: {body}");
        let route = headers["x-llm-gateway-route"].to_str().unwrap();
        assert!(route.starts_with(&format!("virtual={v};")), "{route}");
    }
    let (_, headers, _) = h.chat(&hello("quality")).await;
    assert_eq!(
        headers["x-llm-gateway-model"], "claude-opus-4-5",
        "highest quality prior"
    );
    let (_, headers, _) = h.chat(&hello("cheap")).await;
    assert_eq!(headers["x-llm-gateway-provider"], "ollama", "local is free");
}

/// The Responses API's events of a streamed `/v1/responses` answer, each checked to carry
/// its type on the `event:` line too.
fn response_events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|f| !f.trim().is_empty() && !f.starts_with(':'))
        .map(|f| {
            let event = f.lines().find_map(|l| l.strip_prefix("event: "));
            let data = f.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{data}: {e}"));
            assert_eq!(event, v["type"].as_str(), "{f}");
            v
        })
        .collect()
}

#[tokio::test]
async fn the_responses_api_answers_through_every_provider_whole_and_streamed() {
    let h = start().await;
    for (model, provider, _) in MODELS {
        let req = json!({"model": model, "instructions": "Be brief.", "input": "Hello there",
            "max_output_tokens": 64, "metadata": {"ticket": "T-1"}});
        let r = h.post("/v1/responses", &req).await;
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(r.headers()["x-llm-gateway-provider"], provider);
        let request_id = r.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .replace('-', "");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["object"], "response", "{model}: {body}");
        assert_eq!(body["id"], format!("resp_{request_id}"));
        assert_eq!(body["status"], "completed");
        assert_eq!(body["metadata"], json!({"ticket": "T-1"}));
        assert_eq!(body["instructions"], "Be brief.");
        let text = body["output"][0]["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains(&format!("Mock {provider} reply")) && text.contains("Hello there"),
            "{model}: {text}"
        );
        assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);

        let mut req = req.clone();
        req["stream"] = json!(true);
        let r = h.post("/v1/responses", &req).await;
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let events = response_events(&r.text().await.unwrap());
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ],
            "{model}"
        );
        assert_eq!(kinds.last(), Some(&"response.completed"), "{model}");
        let deltas: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        let done = &events.last().unwrap()["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], deltas.as_str());
        assert!(deltas.ends_with("Hello there"), "{model}: {deltas}");
        assert!(
            done["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{model}"
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i, "{model}");
        }
    }
    // The upstream got a chat request: instructions as a system message, the limit under
    // its current name, nothing OpenAI-only (metadata) passed on.
    let sent = h.received("openai").await;
    let last = &sent.last().unwrap()["body"];
    assert_eq!(
        last["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}])
    );
    assert_eq!(last["max_completion_tokens"], 64);
    assert!(last.get("metadata").is_none());
    let metrics = h.get_text("/metrics").await;
    assert!(
        metrics.contains("endpoint=\"responses\""),
        "the responses endpoint is not in the metrics"
    );
}

#[tokio::test]
async fn responses_function_calls_round_trip_and_stream_as_items() {
    let h = start().await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}]);
    for model in ["gpt-4o-mini", "claude-3-5-haiku-latest"] {
        let req = json!({"model": model, "tools": tools, "input": "Weather in Paris?",
            "tool_choice": {"type": "function", "name": "get_weather"}});
        let r = h.post("/v1/responses", &req).await;
        assert_eq!(r.status(), 200, "{model}");
        let body: Value = r.json().await.unwrap();
        let call = body["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"] == "function_call")
            .unwrap_or_else(|| panic!("{model}: no call in {body}"))
            .clone();
        assert_eq!(call["name"], "get_weather");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["city"], "sample");

        // The next turn sends the call and its output back, as the SDK's users do.
        let follow = json!({"model": model, "tools": tools, "input": [
            {"role": "user", "content": "Weather in Paris?"},
            call,
            {"type": "function_call_output", "call_id": call["call_id"], "output": "18 degrees and sunny"}]});
        let r = h.post("/v1/responses", &follow).await;
        assert_eq!(r.status(), 200, "{model}");
        let body: Value = r.json().await.unwrap();
        let text = body["output"][0]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("18 degrees and sunny"), "{model}: {text}");

        let mut req = req.clone();
        req["stream"] = json!(true);
        let events = response_events(&h.post("/v1/responses", &req).await.text().await.unwrap());
        let added = events
            .iter()
            .find(|e| {
                e["type"] == "response.output_item.added" && e["item"]["type"] == "function_call"
            })
            .unwrap_or_else(|| panic!("{model}: {events:?}"));
        let args: String = events
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"city": "sample", "unit": "c"}),
            "{model}"
        );
        let done = &events.last().unwrap()["response"];
        let item = &done["output"][added["output_index"].as_u64().unwrap() as usize];
        assert_eq!(item["arguments"], args.as_str());
        assert_eq!(item["id"], added["item"]["id"]);
    }
}

#[tokio::test]
async fn responses_requests_the_gateway_cannot_serve_get_errors_naming_the_field() {
    let h = start().await;
    for (req, status, param) in [
        (json!({"model": "gpt-4o-mini"}), 400, Some("input")),
        (
            json!({"model": "gpt-4o-mini", "input": "x", "previous_response_id": "resp_1"}),
            400,
            Some("previous_response_id"),
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "x", "tools": [{"type": "web_search"}]}),
            400,
            Some("tools[0].type"),
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "x", "max_output_tokens": 0}),
            400,
            Some("max_output_tokens"),
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "x", "max_output_tokens": -5}),
            400,
            Some("max_output_tokens"),
        ),
        (json!({"model": "no-such-model", "input": "x"}), 404, None),
    ] {
        let r = h.post("/v1/responses", &req).await;
        assert_eq!(r.status(), status, "{req}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["param"].as_str(), param, "{req}: {body}");
        assert!(body["error"]["message"].as_str().is_some(), "{body}");
    }
    // Nothing is stored, and the 404 for a stored response's paths says so.
    for (method, path) in [
        (reqwest::Method::GET, "/v1/responses/resp_abc"),
        (reqwest::Method::DELETE, "/v1/responses/resp_abc"),
        (reqwest::Method::GET, "/v1/responses/resp_abc/input_items"),
        (reqwest::Method::POST, "/v1/responses/resp_abc/cancel"),
    ] {
        let r = h
            .http
            .request(method, format!("{}{path}", h.gw))
            // (A POST without a JSON content type is refused first: see origin.rs.)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "response_not_stored", "{path}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("'resp_abc'"),
            "{body}"
        );
    }
}
