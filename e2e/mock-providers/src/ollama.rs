//! Ollama's native API: `/api/tags`, `/api/version`, `/api/chat` (NDJSON streaming by
//! default), `/api/embed`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::common::*;
use crate::Mock;

const CREATED_AT: &str = "2026-11-01T12:00:00.000000000Z";

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({"error": message}))
}

/// `GET /api/tags`.
pub async fn tags(State(m): State<Arc<Mock>>) -> Response {
    let models: Vec<Value> = m
        .ollama_models
        .iter()
        .map(|name| {
            let family = name.split(':').next().unwrap_or(name);
            json!({
                "name": name, "model": name, "modified_at": CREATED_AT, "size": 2019393189u64,
                "digest": format!("{:064x}", name.len() as u128 * 0x9e3779b97f4a7c15u128),
                "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                            "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({"models": models}))
}

/// `GET /api/version`.
pub async fn version() -> Response {
    json_response(StatusCode::OK, &json!({"version": "0.12.6"}))
}

fn known(m: &Mock, model: &str) -> bool {
    m.ollama_models
        .iter()
        .any(|x| x == model || x.strip_suffix(":latest") == Some(model))
}

/// `POST /api/chat`.
pub async fn chat(State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid character in JSON body");
    };
    m.record("ollama", "/api/chat", &headers, &req);
    let (fault, load) = m.take_fault("ollama", req["model"].as_str().unwrap_or_default());
    if let Some(status) = fault.before_response(&load).await {
        return error(
            status,
            &fault.message.clone().unwrap_or_else(|| "mock fault".into()),
        );
    }
    let model = req["model"].as_str().unwrap_or_default();
    if !known(&m, model) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("model \"{model}\" not found, try pulling it first"),
        );
    }
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let prompt_eval = messages
        .iter()
        .map(|m| count_tokens(&content_text(&m["content"])) + 4)
        .sum::<u64>();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let tool = req["tools"]
        .as_array()
        .filter(|t| !t.is_empty() && last["role"] != "tool")
        .map(|t| t[0].clone());
    let text = if last["role"] == "tool" {
        format!("Tool result received: {}", content_text(&last["content"]))
    } else {
        let user = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| content_text(&m["content"]))
            .unwrap_or_default();
        m.reply("ollama", model, &user)
    };
    let eval = count_tokens(&text);
    let stats = json!({"total_duration": 512000000u64, "load_duration": 2100000u64,
        "prompt_eval_count": prompt_eval, "prompt_eval_duration": 61000000u64,
        "eval_count": eval, "eval_duration": 440000000u64});
    let final_message = |content: &str| {
        let mut msg = json!({"role": "assistant", "content": content});
        if let Some(t) = &tool {
            msg["tool_calls"] = json!([{"function": {"name": t["function"]["name"], "arguments": sample(&t["function"]["parameters"])}}]);
        }
        msg
    };
    let mut done =
        json!({"model": model, "created_at": CREATED_AT, "done": true, "done_reason": "stop"});
    for (k, v) in stats.as_object().unwrap() {
        done[k] = v.clone();
    }
    if req["stream"] == json!(false) {
        done["message"] = final_message(if tool.is_some() { "" } else { &text });
        return json_response(StatusCode::OK, &done);
    }
    let mut frames = Vec::new();
    if tool.is_some() {
        frames.push(json!({"model": model, "created_at": CREATED_AT, "message": final_message(""), "done": false}));
    } else {
        for piece in text_pieces(&text) {
            frames.push(json!({"model": model, "created_at": CREATED_AT, "message": {"role": "assistant", "content": piece}, "done": false}));
        }
    }
    done["message"] = json!({"role": "assistant", "content": ""});
    frames.push(done);
    let frames = frames
        .iter()
        .map(|f| Bytes::from(format!("{f}\n")))
        .collect();
    stream_response(
        frames,
        &fault,
        "application/x-ndjson",
        b"{\"model\": \"broken\n",
        load,
    )
}

/// `POST /api/embed`.
pub async fn embed(State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid character in JSON body");
    };
    m.record("ollama", "/api/embed", &headers, &req);
    let model = req["model"].as_str().unwrap_or_default();
    if !known(&m, model) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("model \"{model}\" not found, try pulling it first"),
        );
    }
    let inputs = embedding_inputs(&req["input"]);
    let embeddings: Vec<Vec<f32>> = inputs.iter().map(|s| embedding(s, 16)).collect();
    let tokens: u64 = inputs.iter().map(|s| count_tokens(s)).sum();
    json_response(
        StatusCode::OK,
        &json!({"model": model, "embeddings": embeddings,
        "total_duration": 14143917u64, "load_duration": 1019500u64, "prompt_eval_count": tokens}),
    )
}
