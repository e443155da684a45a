//! The Responses API's response object, built from a chat completion (whole, or assembled
//! from a stream's chunks).

use serde_json::{json, Map, Value};

use super::request::Echo;

/// The ids and echoed settings every form of one response shares.
#[derive(Debug, Clone)]
pub struct Shell {
    /// `resp_…`.
    pub id: String,
    /// The suffix of the item ids (`msg_…`, `fc_…`).
    stem: String,
    /// What the reply repeats of the request.
    pub echo: Echo,
}

/// One content part of a message, in the order the parts began.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// `output_text`.
    Text(String),
    /// `refusal`.
    Refusal(String),
}

impl Part {
    /// The part as JSON.
    pub fn json(&self) -> Value {
        match self {
            Part::Text(t) => output_text(t),
            Part::Refusal(r) => json!({"type": "refusal", "refusal": r}),
        }
    }
}

/// One output item being built.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// The assistant's text and refusal parts.
    Message(Vec<Part>),
    /// A function call.
    Call {
        /// The call id the function's output answers.
        call_id: String,
        /// The function's name.
        name: String,
        /// Its arguments (JSON text) so far.
        arguments: String,
    },
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Still streaming.
    InProgress,
    /// Finished.
    Completed,
    /// Cut short: the output-token limit (`max_output_tokens`) or a content filter.
    Incomplete(&'static str),
    /// Failed.
    Failed,
}

impl Ending {
    /// From a chat choice's `finish_reason`.
    pub fn of_finish(reason: Option<&str>) -> Self {
        match reason {
            Some("length") => Ending::Incomplete("max_output_tokens"),
            Some("content_filter") => Ending::Incomplete("content_filter"),
            _ => Ending::Completed,
        }
    }

    /// The response's and its items' `status`.
    pub fn status(self) -> &'static str {
        match self {
            Ending::InProgress => "in_progress",
            Ending::Completed => "completed",
            Ending::Incomplete(_) => "incomplete",
            Ending::Failed => "failed",
        }
    }
}

impl Shell {
    /// Ids from the gateway's request id (so a response can be found in the ledger and the
    /// logs by its id), or a new one when the request id has characters an id should not.
    pub fn new(request_id: &str, echo: Echo) -> Self {
        let clean = !request_id.is_empty()
            && request_id.len() <= 64
            && request_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let stem = if clean {
            request_id.replace('-', "")
        } else {
            uuid::Uuid::new_v4().simple().to_string()
        };
        Shell {
            id: format!("resp_{stem}"),
            stem,
            echo,
        }
    }

    /// A call's id: the upstream's, or one made up when it sent none (the SDK tells items
    /// apart by it, and the client sends it back with the function's output).
    pub fn call_id(&self, upstream: Option<&str>, n: usize) -> String {
        match upstream.filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => format!("call_{}_{n}", self.stem),
        }
    }

    /// The id of output item `index`.
    pub fn item_id(&self, index: usize, item: &Item) -> String {
        match item {
            Item::Message(_) => format!("msg_{}_{index}", self.stem),
            Item::Call { .. } => format!("fc_{}_{index}", self.stem),
        }
    }

    /// Output item `index` as JSON (`status` is the item's).
    pub fn item_json(&self, index: usize, item: &Item, status: &str) -> Value {
        let id = self.item_id(index, item);
        match item {
            Item::Message(parts) => {
                let content: Vec<Value> = parts.iter().map(Part::json).collect();
                json!({"id": id, "type": "message", "status": status, "role": "assistant",
                       "content": content})
            }
            Item::Call {
                call_id,
                name,
                arguments,
            } => json!({"id": id, "type": "function_call", "status": status,
                        "call_id": call_id, "name": name, "arguments": arguments}),
        }
    }

    /// The whole response object.
    pub fn response(
        &self,
        created_at: i64,
        model: &str,
        ending: Ending,
        items: &[Item],
        usage: Option<&Value>,
        error: Option<Value>,
    ) -> Value {
        let item_status = match ending {
            Ending::Failed => "incomplete",
            e => e.status(),
        };
        let output: Vec<Value> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.item_json(i, item, item_status))
            .collect();
        let e = &self.echo;
        json!({
            "id": self.id,
            "object": "response",
            "created_at": created_at,
            "status": ending.status(),
            "error": error,
            "incomplete_details": match ending {
                Ending::Incomplete(reason) => json!({"reason": reason}),
                _ => Value::Null,
            },
            "instructions": e.instructions,
            "max_output_tokens": e.max_output_tokens,
            "metadata": e.metadata,
            "model": model,
            "output": output,
            "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": e.reasoning,
            "store": false,
            "temperature": e.temperature,
            "text": e.text,
            "tool_choice": e.tool_choice,
            "tools": e.tools,
            "top_p": e.top_p,
            "truncation": "disabled",
            "usage": usage.map(responses_usage),
            "user": e.user,
        })
    }

    /// The response for a complete chat completion.
    pub fn from_chat(&self, chat: &Value) -> Value {
        let choice = &chat["choices"][0];
        let msg = &choice["message"];
        let mut items = Vec::new();
        let text = msg["content"].as_str().unwrap_or_default();
        let refusal = msg["refusal"].as_str().unwrap_or_default();
        let calls = msg["tool_calls"].as_array();
        let mut parts = Vec::new();
        if !text.is_empty() {
            parts.push(Part::Text(text.to_owned()));
        }
        if !refusal.is_empty() {
            parts.push(Part::Refusal(refusal.to_owned()));
        }
        if parts.is_empty() && calls.is_none_or(Vec::is_empty) {
            // An empty answer is still an answer: one empty text part, as OpenAI sends it.
            parts.push(Part::Text(String::new()));
        }
        if !parts.is_empty() {
            items.push(Item::Message(parts));
        }
        for (n, c) in calls.into_iter().flatten().enumerate() {
            items.push(Item::Call {
                call_id: self.call_id(c["id"].as_str(), n),
                name: c["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                arguments: c["function"]["arguments"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        self.response(
            chat["created"].as_i64().unwrap_or_else(now),
            chat["model"].as_str().unwrap_or_default(),
            Ending::of_finish(choice["finish_reason"].as_str()),
            &items,
            chat.get("usage").filter(|u| u.is_object()),
            None,
        )
    }
}

/// An `output_text` content part.
pub fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// Seconds since the epoch (a response's `created_at` when the completion had none).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Chat usage (`prompt_tokens`, …) in the Responses API's names.
fn responses_usage(u: &Value) -> Value {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let input = n(&u["prompt_tokens"]);
    let output = n(&u["completion_tokens"]);
    let mut usage = Map::new();
    usage.insert("input_tokens".into(), json!(input));
    usage.insert(
        "input_tokens_details".into(),
        json!({"cached_tokens": n(&u["prompt_tokens_details"]["cached_tokens"]),
               "cache_write_tokens": 0}),
    );
    usage.insert("output_tokens".into(), json!(output));
    usage.insert(
        "output_tokens_details".into(),
        json!({"reasoning_tokens": n(&u["completion_tokens_details"]["reasoning_tokens"])}),
    );
    let total = u["total_tokens"].as_u64().unwrap_or(input + output);
    usage.insert("total_tokens".into(), json!(total));
    Value::Object(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell() -> Shell {
        Shell::new(
            "0a1b-2c",
            Echo {
                metadata: json!({}),
                tools: json!([]),
                ..Echo::default()
            },
        )
    }

    #[test]
    fn a_completion_with_text_and_calls_becomes_a_message_and_function_calls() {
        let chat = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
            "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                      "prompt_tokens_details": {"cached_tokens": 4},
                      "completion_tokens_details": {"reasoning_tokens": 2}}});
        let r = shell().from_chat(&chat);
        assert_eq!(r["id"], "resp_0a1b2c");
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["created_at"], 1700000000);
        assert_eq!(r["model"], "gpt-4o-mini");
        assert_eq!(
            r["output"],
            json!([
                {"id": "msg_0a1b2c_0", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Let me check.", "annotations": [], "logprobs": []}]},
                {"id": "fc_0a1b2c_1", "type": "function_call", "status": "completed",
                 "call_id": "call_1", "name": "w", "arguments": "{\"c\":1}"}])
        );
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                   "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15})
        );
    }

    #[test]
    fn a_length_stop_is_incomplete_and_calls_alone_have_no_message() {
        let chat = json!({"created": 1, "model": "m", "choices": [{"finish_reason": "length",
            "message": {"role": "assistant", "content": "Part"}}]});
        let r = shell().from_chat(&chat);
        assert_eq!(r["status"], "incomplete");
        assert_eq!(
            r["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(r["output"][0]["status"], "incomplete");
        let chat = json!({"created": 1, "model": "m", "choices": [{"finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "function": {"name": "f", "arguments": "{}"}}]}}]});
        let r = shell().from_chat(&chat);
        assert_eq!(r["output"].as_array().unwrap().len(), 1);
        assert_eq!(r["output"][0]["type"], "function_call");
    }

    #[test]
    fn a_refusal_is_its_own_part_without_an_empty_text_beside_it() {
        let chat = json!({"created": 1, "model": "m", "choices": [{"finish_reason": "stop",
            "message": {"role": "assistant", "content": null, "refusal": "No.",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}]});
        let r = shell().from_chat(&chat);
        assert_eq!(
            r["output"][0]["content"],
            json!([{"type": "refusal", "refusal": "No."}])
        );
        assert_eq!(r["output"][1]["call_id"], "call_0a1b2c_0");
        let empty = json!({"created": 1, "model": "m", "choices": [{"finish_reason": "stop",
            "message": {"role": "assistant", "content": ""}}]});
        assert_eq!(
            shell().from_chat(&empty)["output"][0]["content"][0]["text"],
            ""
        );
    }

    #[test]
    fn an_unusable_request_id_gives_a_fresh_response_id() {
        let s = Shell::new("has space/and slash", Echo::default());
        assert!(s.id.starts_with("resp_") && s.id.len() == 37, "{}", s.id);
    }
}
