//! The Anthropic Messages API, as Anthropic serves it: validation errors in its format,
//! `tool_use` blocks, and the SSE event sequence `message_start`, `content_block_start`,
//! `ping`, `content_block_delta`…, `content_block_stop`, `message_delta`, `message_stop`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::common::*;
use crate::Mock;

/// An error in Anthropic's format.
pub fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

fn fault_error(status: StatusCode, fault: &Fault) -> Response {
    let (kind, msg) = match status.as_u16() {
        429 => (
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
        529 => ("overloaded_error", "Overloaded"),
        401 => ("authentication_error", "invalid x-api-key"),
        400 => ("invalid_request_error", "Bad request"),
        _ => ("api_error", "Internal server error"),
    };
    let mut r = error(
        status,
        kind,
        &fault.message.clone().unwrap_or_else(|| msg.to_owned()),
    );
    fault.retry_headers(&mut r);
    r
}

/// Anthropic's request checks that a translator is most likely to trip.
fn validate(req: &Value) -> Result<(), String> {
    if req["model"].as_str().is_none() {
        return Err("model: Field required".into());
    }
    if req["max_tokens"].as_u64().is_none() {
        return Err("max_tokens: Field required".into());
    }
    if req["temperature"]
        .as_f64()
        .is_some_and(|t| !(0.0..=1.0).contains(&t))
    {
        return Err("temperature: Input should be less than or equal to 1".into());
    }
    let Some(messages) = req["messages"].as_array() else {
        return Err("messages: Field required".into());
    };
    let mut prev_tool_uses: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        let blocks = match &m["content"] {
            Value::String(_) => vec![],
            Value::Array(b) => b.clone(),
            _ => return Err(format!("messages.{i}.content: Field required")),
        };
        for (j, b) in blocks.iter().enumerate() {
            match b["type"].as_str() {
                Some("text") if b["text"].as_str().is_some_and(str::is_empty) => {
                    return Err(format!("messages.{i}.content.{j}.text: text content blocks must be non-empty"))
                }
                Some("tool_result") => {
                    let id = b["tool_use_id"].as_str().unwrap_or_default();
                    if role != "user" || !prev_tool_uses.iter().any(|t| t == id) {
                        return Err(format!("messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."));
                    }
                }
                Some("text" | "image" | "tool_use" | "document" | "thinking") => {}
                other => return Err(format!("messages.{i}.content.{j}.type: Input tag '{}' found using 'type' does not match any of the expected tags", other.unwrap_or("null"))),
            }
        }
        prev_tool_uses = blocks
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .filter_map(|b| b["id"].as_str().map(str::to_owned))
            .collect();
    }
    if let Some(tc) = req.get("tool_choice") {
        if !matches!(tc["type"].as_str(), Some("auto" | "any" | "tool" | "none")) {
            return Err("tool_choice: Input tag does not match any of the expected tags".into());
        }
    }
    Ok(())
}

/// `POST /v1/messages`.
pub async fn messages(State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "There was an issue with your request body: invalid JSON",
        );
    };
    m.record("anthropic", "/v1/messages", &headers, &req);
    if headers.get("x-api-key").is_none_or(|v| v.is_empty()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        );
    }
    if headers.get("anthropic-version").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let (fault, load) = m.take_fault("anthropic", req["model"].as_str().unwrap_or_default());
    if let Some(r) = fault.redirect() {
        return r;
    }
    if let Some(status) = fault.before_response(&load).await {
        return fault_error(status, &fault);
    }
    if let Err(msg) = validate(&req) {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", &msg);
    }
    let model = req["model"].as_str().unwrap_or_default();
    if model.starts_with("missing-") {
        return error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("model: {model}"),
        );
    }

    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let system = content_text(&req["system"]);
    let input_tokens = count_tokens(&system)
        + messages
            .iter()
            .map(|m| count_tokens(&content_text(&m["content"])) + 4)
            .sum::<u64>();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let answering_tool = last["content"]
        .as_array()
        .is_some_and(|b| b.iter().any(|x| x["type"] == "tool_result"));
    let last_user_text = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default();

    let tool = req["tools"]
        .as_array()
        .filter(|t| !t.is_empty())
        .and_then(|tools| {
            if answering_tool || req["tool_choice"]["type"] == "none" {
                return None;
            }
            let wanted = req["tool_choice"]["name"].as_str();
            tools
                .iter()
                .find(|t| wanted.is_none_or(|w| t["name"] == w))
                .or(tools.first())
                .cloned()
        });
    let text = if answering_tool {
        let results: Vec<String> = last["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "tool_result")
            .map(|b| content_text(&b["content"]))
            .collect();
        format!("Tool result received: {}", results.join(", "))
    } else {
        m.reply("anthropic", model, &last_user_text)
    };
    let msg_id = format!("msg_mock{}", next_id());
    let tool_id = format!("toolu_mock{}", next_id());
    let (content, stop_reason, output_tokens) = match &tool {
        Some(t) => {
            let input = sample(&t["input_schema"]);
            let n = count_tokens(&input.to_string()) + 5;
            (
                json!([{"type": "tool_use", "id": tool_id, "name": t["name"], "input": input}]),
                "tool_use",
                n,
            )
        }
        None => (
            json!([{"type": "text", "text": text}]),
            "end_turn",
            count_tokens(&text),
        ),
    };

    if req["stream"] != json!(true) {
        if fault.malformed {
            return malformed_json();
        }
        return json_response(
            StatusCode::OK,
            &json!({
                "id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "service_tier": "standard"},
            }),
        );
    }

    let ev = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut frames = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
    )];
    match &tool {
        Some(t) => {
            frames.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": tool_id, "name": t["name"], "input": {}}})));
            frames.push(ev("ping", json!({"type": "ping"})));
            let input = content[0]["input"].to_string();
            for f in fragments(&input) {
                frames.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": f}}),
                ));
            }
        }
        None => {
            frames.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ));
            frames.push(ev("ping", json!({"type": "ping"})));
            for piece in text_pieces(&text) {
                frames.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
        }
    }
    frames.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(ev("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
    frames.push(ev("message_stop", json!({"type": "message_stop"})));
    stream_response(
        frames,
        &fault,
        "text/event-stream; charset=utf-8",
        b"event: content_block_start\ndata: {\"type\": \"content_bl\n\n",
        load,
    )
}
