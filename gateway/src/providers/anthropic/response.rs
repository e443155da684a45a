//! Anthropic Messages response and stream events → OpenAI chat completion and chunks.

use std::collections::HashMap;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::clock::unix_now;
use crate::error::Error;
use crate::providers::StreamItem;
use crate::wire::{PromptTokensDetails, Usage};

/// Anthropic's usage block (cumulative in `message_delta`).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct AnthropicUsage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: Option<u64>,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    /// Input tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Fields present in `newer` replace ours.
    fn update(&mut self, newer: &AnthropicUsage) {
        macro_rules! take {
            ($($f:ident),*) => { $( if newer.$f.is_some() { self.$f = newer.$f; } )* };
        }
        take!(
            input_tokens,
            output_tokens,
            cache_creation_input_tokens,
            cache_read_input_tokens
        );
    }

    /// As OpenAI usage: prompt tokens include cache reads and writes.
    pub fn to_openai(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt =
            self.input_tokens.unwrap_or(0) + cached + self.cache_creation_input_tokens.unwrap_or(0);
        let completion = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: (cached > 0).then_some(PromptTokensDetails {
                cached_tokens: Some(cached),
            }),
        }
    }
}

#[derive(Deserialize)]
struct MessagesResponse {
    id: String,
    model: String,
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: Option<&str>, answered_by_json_tool: bool) -> &'static str {
    match stop {
        Some("tool_use") if answered_by_json_tool => "stop",
        Some("tool_use") => "tool_calls",
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// A complete Messages response → `chat.completion` JSON and its usage.
pub fn to_chat_completion(body: &[u8], json_tool: Option<&str>) -> Result<(Value, Usage), String> {
    let r: MessagesResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut answered_by_json_tool = false;
    for b in r.content {
        match b {
            Block::Text { text: t } => text.push_str(&t),
            Block::ToolUse { name, input, .. } if Some(name.as_str()) == json_tool => {
                answered_by_json_tool = true;
                text.push_str(&input.to_string());
            }
            Block::ToolUse { id, name, input } => tool_calls.push(json!({
                "id": id, "type": "function",
                "function": {"name": name, "arguments": input.to_string()},
            })),
            Block::Other => {}
        }
    }
    let usage = r.usage.to_openai();
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
        "refusal": null,
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let out = json!({
        "id": r.id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": r.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(r.stop_reason.as_deref(), answered_by_json_tool),
        }],
        "usage": usage,
    });
    Ok((out, usage))
}

/// An Anthropic error type → the HTTP status OpenAI clients expect for it.
pub fn status_for_error_type(kind: &str) -> StatusCode {
    match kind {
        "invalid_request_error" => StatusCode::BAD_REQUEST,
        "authentication_error" => StatusCode::UNAUTHORIZED,
        "permission_error" => StatusCode::FORBIDDEN,
        "not_found_error" => StatusCode::NOT_FOUND,
        "request_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "rate_limit_error" => StatusCode::TOO_MANY_REQUESTS,
        "timeout_error" => StatusCode::GATEWAY_TIMEOUT,
        "overloaded_error" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

/// An Anthropic error body → OpenAI error. The status is the upstream's, except the
/// non-standard 529 (overloaded), which becomes 503.
pub fn error_from_body(status: StatusCode, body: &str) -> Error {
    let status = if status.as_u16() == 529 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        status
    };
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) => Error::upstream(status.as_u16(), &e.error.kind, e.error.message)
            .with_code(&e.error.kind),
        Err(_) => super::super::opaque_error(status, body),
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: Value,
    },
    ContentBlockDelta {
        index: u64,
        delta: Value,
    },
    ContentBlockStop {},
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<AnthropicUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: ErrorDetail,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct StartMessage {
    id: String,
    model: String,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

enum BlockKind {
    Text,
    Tool(usize),
    JsonAnswer,
    Ignored,
}

/// Turns Anthropic stream events into OpenAI chunks, one event at a time.
pub struct StreamTranslator {
    id: String,
    model: String,
    created: u64,
    json_tool: Option<String>,
    blocks: HashMap<u64, BlockKind>,
    tools: usize,
    answered_by_json_tool: bool,
    usage: AnthropicUsage,
}

impl StreamTranslator {
    /// A translator; `json_tool` as returned by request translation.
    pub fn new(json_tool: Option<String>) -> Self {
        Self {
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            json_tool,
            blocks: HashMap::new(),
            tools: 0,
            answered_by_json_tool: false,
            usage: AnthropicUsage::default(),
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> StreamItem {
        let content = delta
            .get("content")
            .and_then(Value::as_str)
            .map_or(0, str::len)
            + delta
                .pointer("/tool_calls/0/function/arguments")
                .and_then(Value::as_str)
                .map_or(0, |a| a.len().max(1));
        let v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        StreamItem::Chunk {
            data: Bytes::from(v.to_string()),
            usage: None,
            usage_only: false,
            content,
        }
    }

    /// Translates one event's `data`; returns the items to send, in order.
    pub fn on_event(&mut self, data: &str) -> Vec<StreamItem> {
        let ev: Event = match serde_json::from_str(data) {
            Ok(ev) => ev,
            Err(e) => {
                return vec![StreamItem::Error(
                    Error::bad_gateway(format!("invalid Anthropic stream event: {e}"))
                        .with_failure(crate::error::Failure::Malformed),
                )]
            }
        };
        match ev {
            Event::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                self.usage.update(&message.usage);
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => {
                let kind = content_block["type"].as_str().unwrap_or_default();
                match kind {
                    "text" => {
                        self.blocks.insert(index, BlockKind::Text);
                        match content_block["text"].as_str().filter(|t| !t.is_empty()) {
                            Some(t) => vec![self.chunk(json!({"content": t}), None)],
                            None => vec![],
                        }
                    }
                    "tool_use"
                        if self.json_tool.is_some()
                            && content_block["name"].as_str() == self.json_tool.as_deref() =>
                    {
                        self.answered_by_json_tool = true;
                        self.blocks.insert(index, BlockKind::JsonAnswer);
                        vec![]
                    }
                    "tool_use" => {
                        let n = self.tools;
                        self.tools += 1;
                        self.blocks.insert(index, BlockKind::Tool(n));
                        vec![self.chunk(
                            json!({"tool_calls": [{
                                "index": n, "id": content_block["id"], "type": "function",
                                "function": {"name": content_block["name"], "arguments": ""},
                            }]}),
                            None,
                        )]
                    }
                    _ => {
                        self.blocks.insert(index, BlockKind::Ignored);
                        vec![]
                    }
                }
            }
            Event::ContentBlockDelta { index, delta } => {
                let text = |k: &str| delta[k].as_str().unwrap_or_default().to_owned();
                match (self.blocks.get(&index), delta["type"].as_str()) {
                    (Some(BlockKind::Text), Some("text_delta")) => {
                        vec![self.chunk(json!({"content": text("text")}), None)]
                    }
                    (Some(BlockKind::JsonAnswer), Some("input_json_delta")) => {
                        vec![self.chunk(json!({"content": text("partial_json")}), None)]
                    }
                    (Some(BlockKind::Tool(n)), Some("input_json_delta")) => vec![self.chunk(
                        json!({"tool_calls": [{"index": n, "function": {"arguments": text("partial_json")}}]}),
                        None,
                    )],
                    _ => vec![],
                }
            }
            Event::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.usage.update(&u);
                }
                let finish =
                    finish_reason(delta.stop_reason.as_deref(), self.answered_by_json_tool);
                vec![self.chunk(json!({}), Some(finish))]
            }
            Event::MessageStop {} => {
                let usage = self.usage.to_openai();
                let v = json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": usage,
                });
                vec![
                    StreamItem::Chunk {
                        data: Bytes::from(v.to_string()),
                        usage: Some(usage),
                        usage_only: true,
                        content: 0,
                    },
                    StreamItem::End,
                ]
            }
            Event::Error { error } => {
                let status = status_for_error_type(&error.kind);
                let mut e = Error::upstream(status.as_u16(), &error.kind, error.message)
                    .with_code(&error.kind);
                if status.is_server_error() || status.as_u16() == 429 {
                    e = e.with_failure(crate::error::Failure::Status(status.as_u16()));
                }
                vec![StreamItem::Error(e)]
            }
            Event::ContentBlockStop {} | Event::Ping {} | Event::Unknown => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(item: &StreamItem) -> Value {
        match item {
            StreamItem::Chunk { data, .. } => serde_json::from_slice(data).unwrap(),
            other => panic!("not a chunk: {other:?}"),
        }
    }

    #[test]
    fn response_with_text_and_tool_use() {
        let body = json!({
            "id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022",
            "content":[{"type":"text","text":"Let me check."},{"type":"tool_use","id":"toolu_9","name":"get_weather","input":{"city":"Paris"}}],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":20,"output_tokens":7,"cache_read_input_tokens":5,"cache_creation_input_tokens":0}
        });
        let (v, usage) = to_chat_completion(body.to_string().as_bytes(), None).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "claude-3-5-haiku-20241022");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Let me check.");
        assert_eq!(choice["message"]["tool_calls"][0]["id"], "toolu_9");
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (25, 7, 32)
        );
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        let cases = [
            (Some("end_turn"), false, "stop"),
            (Some("stop_sequence"), false, "stop"),
            (Some("max_tokens"), false, "length"),
            (Some("tool_use"), false, "tool_calls"),
            (Some("tool_use"), true, "stop"),
            (Some("refusal"), false, "content_filter"),
            (None, false, "stop"),
        ];
        for (stop, json_tool, want) in cases {
            assert_eq!(finish_reason(stop, json_tool), want, "{stop:?}");
        }
    }

    #[test]
    fn json_schema_tool_answer_becomes_text() {
        let body = json!({"id":"m","model":"c","content":[{"type":"tool_use","id":"t","name":"answer","input":{"n":4}}],
            "stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":1}});
        let (v, _) = to_chat_completion(body.to_string().as_bytes(), Some("answer")).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], r#"{"n":4}"#);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn errors_keep_type_and_message_and_529_becomes_503() {
        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let e = error_from_body(StatusCode::from_u16(529).unwrap(), body);
        assert_eq!(
            (e.status(), e.kind.openai_type(), e.message.as_str()),
            (503, "overloaded_error", "Overloaded")
        );
        let e = error_from_body(
            StatusCode::BAD_REQUEST,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#,
        );
        assert_eq!(
            (e.status(), e.message.as_str()),
            (400, "max_tokens: Field required")
        );
    }

    /// Streaming events in, chunks out, including tool-argument fragments.
    #[test]
    fn stream_events_become_chunks() {
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-x","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"ci"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ty\": \"Paris\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":30}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut t = StreamTranslator::new(None);
        let items: Vec<StreamItem> = events.iter().flat_map(|e| t.on_event(e)).collect();
        let want_deltas = [
            json!({"role":"assistant","content":""}),
            json!({"content":"Hello"}),
            json!({"tool_calls":[{"index":0,"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":""}}]}),
            json!({"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]}),
            json!({"tool_calls":[{"index":0,"function":{"arguments":"ty\": \"Paris\"}"}}]}),
            json!({}),
        ];
        assert_eq!(items.len(), want_deltas.len() + 2, "{items:?}");
        for (item, want) in items.iter().zip(&want_deltas) {
            let v = data(item);
            assert_eq!(v["object"], "chat.completion.chunk");
            assert_eq!(v["id"], "msg_1");
            assert_eq!(v["choices"][0]["delta"], *want);
        }
        assert_eq!(data(&items[5])["choices"][0]["finish_reason"], "tool_calls");
        let usage_chunk = data(&items[6]);
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 12);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 30);
        assert!(matches!(
            items[6],
            StreamItem::Chunk {
                usage_only: true,
                ..
            }
        ));
        assert!(matches!(items[7], StreamItem::End));
    }

    #[test]
    fn stream_error_event_becomes_an_error_item() {
        let mut t = StreamTranslator::new(None);
        let items = t.on_event(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        match &items[..] {
            [StreamItem::Error(e)] => {
                assert_eq!((e.status(), e.message.as_str()), (503, "Overloaded"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_json_schema_tool_input_becomes_content() {
        let mut t = StreamTranslator::new(Some("answer".into()));
        t.on_event(r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":1}}}"#);
        assert!(t.on_event(r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"answer","input":{}}}"#).is_empty());
        let items = t.on_event(r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"n\":4}"}}"#);
        assert_eq!(
            data(&items[0])["choices"][0]["delta"]["content"],
            "{\"n\":4}"
        );
        let items = t.on_event(r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":3}}"#);
        assert_eq!(data(&items[0])["choices"][0]["finish_reason"], "stop");
    }
}
