//! OpenAI Chat Completions and Embeddings, as OpenAI serves them; Groq, Together and Ollama's
//! `/v1` with their own small differences (where usage goes in a stream, error wording).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::common::*;
use crate::Mock;

/// An error in OpenAI's format.
pub fn error(status: StatusCode, kind: &str, message: &str, code: Option<&str>) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

fn fault_error(vendor: &str, status: StatusCode, fault: &Fault) -> Response {
    if let Some(r) = fault.raw_error(status) {
        return r;
    }
    let (kind, msg, code) = match status.as_u16() {
        _ if fault.quota_exhausted => (
            "insufficient_quota",
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            Some("insufficient_quota"),
        ),
        429 => (
            "requests",
            "Rate limit reached for requests",
            Some("rate_limit_exceeded"),
        ),
        401 => (
            "invalid_request_error",
            "Incorrect API key provided",
            Some("invalid_api_key"),
        ),
        400 => ("invalid_request_error", "Bad request", None),
        503 => (
            "server_error",
            "The engine is currently overloaded, please try again later.",
            None,
        ),
        _ => (
            "server_error",
            "The server had an error while processing your request. Sorry about that!",
            None,
        ),
    };
    let msg = fault
        .message
        .clone()
        .unwrap_or_else(|| format!("{msg} ({vendor} mock)"));
    let mut r = error(status, kind, &msg, code);
    fault.retry_headers(&mut r);
    r
}

fn authorized(vendor: &str, headers: &HeaderMap) -> bool {
    vendor == "ollama"
        || headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7)
}

fn model_exists(m: &Mock, vendor: &str, model: &str) -> bool {
    if vendor == "ollama" {
        let base = |n: &str| n.strip_suffix(":latest").unwrap_or(n).to_owned();
        return m
            .ollama_models
            .iter()
            .any(|x| x == model || base(x) == model);
    }
    !model.starts_with("missing-")
}

fn not_found(vendor: &str, model: &str) -> Response {
    if vendor == "ollama" {
        return error(
            StatusCode::NOT_FOUND,
            "api_error",
            &format!("model \"{model}\" not found, try pulling it first"),
            None,
        );
    }
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        &format!("The model `{model}` does not exist or you do not have access to it."),
        Some("model_not_found"),
    )
}

/// `POST …/chat/completions`.
pub async fn chat(
    State(m): State<Arc<Mock>>,
    vendor: &'static str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error",
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)", None);
    };
    m.record(vendor, "/chat/completions", &headers, &req);
    if !authorized(vendor, &headers) {
        return error(StatusCode::UNAUTHORIZED, "invalid_request_error",
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth.", None);
    }
    let (fault, load) = m.take_fault(vendor, req["model"].as_str().unwrap_or_default());
    if let Some(r) = fault.redirect() {
        return r;
    }
    if let Some(status) = fault.before_response(&load).await {
        return fault_error(vendor, status, &fault);
    }
    let Some(model) = req["model"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "you must provide a model parameter",
            None,
        );
    };
    let Some(messages) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "[] is too short - 'messages'",
            Some("empty_array"),
        );
    };
    if let Some(msg) = tool_message_error(messages) {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", &msg, None);
    }
    if vendor == "groq" {
        if let Some(msg) = groq_unsupported(&req, messages) {
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", &msg, None);
        }
    }
    if !model_exists(&m, vendor, model) {
        return not_found(vendor, model);
    }

    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| count_tokens(&content_text(&m["content"])) + 4)
        .sum();
    let last = messages.last().unwrap();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default();
    let tool_call = choose_tool(&req, last);
    let refusal = m.refusal(model, &last_user).filter(|_| tool_call.is_none());
    let text = if last["role"] == "tool" {
        format!("Tool result received: {}", content_text(&last["content"]))
    } else if matches!(req["response_format"]["type"].as_str(), Some("json_object")) {
        json!({"answer": m.reply(vendor, model, &last_user)}).to_string()
    } else if req["response_format"]["type"] == "json_schema" {
        sample(&req["response_format"]["json_schema"]["schema"]).to_string()
    } else {
        m.reply(vendor, model, &last_user)
    };
    let completion_tokens = match &tool_call {
        Some((_, args)) => count_tokens(args) + 5,
        None => count_tokens(&text),
    };
    let usage = json!({
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    });
    let id = format!("chatcmpl-mock{}", next_id());
    let call_id = format!("call_mock{}", next_id());
    let created = now();

    if req["stream"] != json!(true) {
        if fault.malformed {
            return malformed_json();
        }
        let (message, finish) = match &tool_call {
            Some((name, args)) => (
                json!({"role": "assistant", "content": null, "refusal": null, "annotations": [],
                       "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]}),
                "tool_calls",
            ),
            None => match &refusal {
                Some(r) => (
                    json!({"role": "assistant", "content": null, "refusal": r, "annotations": []}),
                    "stop",
                ),
                None => (
                    json!({"role": "assistant", "content": text, "refusal": null, "annotations": []}),
                    "stop",
                ),
            },
        };
        let mut body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage, "service_tier": "default",
        });
        if vendor == "groq" {
            body["x_groq"] = json!({"id": format!("req_mock{}", next_id())});
        }
        return json_response(StatusCode::OK, &body);
    }

    let include_usage = req["stream_options"]["include_usage"] == json!(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut chunks = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    let finish = match &tool_call {
        Some((name, args)) => {
            chunks.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            for f in fragments(args) {
                chunks.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}),
                    Value::Null,
                ));
            }
            "tool_calls"
        }
        None if refusal.is_some() => {
            for piece in text_pieces(refusal.as_deref().unwrap_or_default()) {
                chunks.push(chunk(json!({"refusal": piece}), Value::Null));
            }
            "stop"
        }
        None => {
            for piece in text_pieces(&text) {
                let content = if fault.content_parts {
                    json!([{"type": "text", "text": piece}])
                } else {
                    json!(piece)
                };
                chunks.push(chunk(json!({"content": content}), Value::Null));
            }
            "stop"
        }
    };
    let mut last_chunk = chunk(json!({}), json!(finish));
    match vendor {
        // Groq reports stream usage in `x_groq` on the last chunk.
        "groq" => {
            last_chunk["x_groq"] = json!({"id": format!("req_mock{}", next_id()), "usage": usage})
        }
        // Together puts usage on the finishing chunk.
        "together" => last_chunk["usage"] = usage.clone(),
        _ => {}
    }
    chunks.push(last_chunk);
    if include_usage && vendor != "together" {
        chunks.push(
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock", "choices": [], "usage": usage}),
        );
    }
    let mut frames: Vec<Bytes> = chunks
        .iter()
        .map(|c| Bytes::from(format!("data: {c}\n\n")))
        .collect();
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    stream_response(
        frames,
        &fault,
        "text/event-stream; charset=utf-8",
        b"data: {\"id\": \"broken\n\n",
        load,
    )
}

/// OpenAI's check that each tool message answers a tool call of the preceding assistant turn.
fn tool_message_error(messages: &[Value]) -> Option<String> {
    let mut open: Vec<String> = Vec::new();
    for m in messages {
        match m["role"].as_str() {
            Some("assistant") => {
                open = m["tool_calls"]
                    .as_array()
                    .map(|calls| {
                        calls
                            .iter()
                            .filter_map(|c| c["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap_or_default();
                if !open.iter().any(|o| o == id) {
                    return Some("Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.".into());
                }
            }
            _ => open.clear(),
        }
    }
    None
}

/// The tool to call, and its arguments, if the request calls for one.
fn choose_tool(req: &Value, last: &Value) -> Option<(String, String)> {
    let tools = req["tools"].as_array().filter(|t| !t.is_empty())?;
    if req["tool_choice"] == "none" || last["role"] == "tool" {
        return None;
    }
    let wanted = req["tool_choice"]["function"]["name"].as_str();
    let tool = tools
        .iter()
        .find(|t| wanted.is_none_or(|w| t["function"]["name"] == w))
        .unwrap_or(&tools[0]);
    let name = tool["function"]["name"]
        .as_str()
        .unwrap_or("tool")
        .to_owned();
    Some((name, sample(&tool["function"]["parameters"]).to_string()))
}

/// What Groq's OpenAI-compatible API refuses with a 400 though OpenAI's takes it (its
/// compatibility page: `logprobs`, `logit_bias`, `top_logprobs`, `messages[].name`, and `n`
/// other than 1).
fn groq_unsupported(req: &Value, messages: &[Value]) -> Option<String> {
    if req.get("n").is_some_and(|n| !n.is_null() && n != 1) {
        return Some("'n' : number must be at most 1".into());
    }
    for field in ["logprobs", "logit_bias", "top_logprobs"] {
        if req.get(field).is_some_and(|v| !v.is_null() && v != false) {
            return Some(format!("property '{field}' is unsupported"));
        }
    }
    messages
        .iter()
        .position(|m| m.get("name").is_some_and(|n| !n.is_null()))
        .map(|i| format!("'messages.{i}' : property 'name' is unsupported"))
}

/// `POST …/embeddings`.
pub async fn embeddings(
    State(m): State<Arc<Mock>>,
    vendor: &'static str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "We could not parse the JSON body of your request.",
            None,
        );
    };
    m.record(vendor, "/embeddings", &headers, &req);
    if vendor == "groq" {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "Unknown request URL: POST /openai/v1/embeddings. Please check the URL for typos.",
            Some("unknown_url"),
        );
    }
    if !authorized(vendor, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "You didn't provide an API key.",
            None,
        );
    }
    let (fault, load) = m.take_fault(vendor, req["model"].as_str().unwrap_or_default());
    if let Some(status) = fault.before_response(&load).await {
        return fault_error(vendor, status, &fault);
    }
    let model = req["model"].as_str().unwrap_or_default();
    if !model_exists(&m, vendor, model) {
        return not_found(vendor, model);
    }
    if req["input"].is_null() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "'input' is a required property",
            None,
        );
    }
    let dims = req["dimensions"].as_u64().unwrap_or(16) as usize;
    let base64 = req["encoding_format"] == "base64";
    let inputs = embedding_inputs(&req["input"]);
    let tokens: u64 = inputs.iter().map(|s| count_tokens(s)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = embedding(s, dims);
            let emb = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    )
}

/// `GET …/models`.
pub async fn models(State(m): State<Arc<Mock>>, vendor: &'static str) -> Response {
    let ids: Vec<String> = match vendor {
        "ollama" => m.ollama_models.clone(),
        _ => vec!["mock-model".into()],
    };
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1700000000, "owned_by": vendor}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}
