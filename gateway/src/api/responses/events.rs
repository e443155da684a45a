//! A chat-completions stream as the Responses API's event stream: `response.created`,
//! `response.in_progress`, then per output item `output_item.added`, its deltas and its
//! `.done` events, and last `response.completed` (or `incomplete`, or `error` and
//! `response.failed`), each numbered by `sequence_number`, as the `openai` SDK's stream
//! accumulator expects them.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

use super::reply::{now, Ending, Item, Part, Shell};

/// Keys of tool calls that came without an `index` (not OpenAI's format, but some
/// compatible servers send it so), above any real index.
const UNINDEXED: u64 = 1 << 32;

/// Translates the gateway's own chat SSE frames, as they arrive, into Responses events.
pub struct Translator {
    shell: Shell,
    pending: BytesMut,
    /// How much of `pending` holds no frame end (not searched again).
    scanned: usize,
    seq: u64,
    started: bool,
    ended: bool,
    created_at: i64,
    model: String,
    items: Vec<Item>,
    /// The output index of the message item, once text or a refusal has come.
    message: Option<usize>,
    /// The content index of the message's text part, and of its refusal part.
    text_part: Option<usize>,
    refusal_part: Option<usize>,
    /// Output index of each chat tool call (by its `index`).
    calls: HashMap<u64, usize>,
    /// Keys of unindexed calls by id, and the last call's key.
    call_keys: HashMap<String, u64>,
    last_call: Option<u64>,
    finish: Option<String>,
    usage: Option<Value>,
    /// Items before this index have had their `.done` events: each item is closed before
    /// the next is added, as OpenAI streams them.
    closed: usize,
}

impl Translator {
    /// A translator for the response `shell` describes; `model` until a chunk names one.
    pub fn new(shell: Shell, model: &str) -> Self {
        Translator {
            shell,
            pending: BytesMut::new(),
            scanned: 0,
            seq: 0,
            started: false,
            ended: false,
            created_at: now(),
            model: model.to_owned(),
            items: Vec::new(),
            message: None,
            text_part: None,
            refusal_part: None,
            calls: HashMap::new(),
            call_keys: HashMap::new(),
            last_call: None,
            finish: None,
            usage: None,
            closed: 0,
        }
    }

    /// The events for the next piece of the chat stream (frames may be split anywhere).
    pub fn push(&mut self, bytes: &[u8]) -> Bytes {
        self.pending.extend_from_slice(bytes);
        let mut out = BytesMut::new();
        while let Some(at) = self.pending[self.scanned..]
            .windows(2)
            .position(|w| w == b"\n\n")
        {
            let end = self.scanned + at;
            let frame = self.pending.split_to(end + 2);
            self.scanned = 0;
            self.frame(&frame[..end], &mut out);
        }
        self.scanned = self.pending.len().saturating_sub(1);
        out.freeze()
    }

    /// Whether the stream reached its end event (completed, incomplete or failed).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The events for a chat stream that stopped without its end: the client is told it
    /// failed rather than left with a response that never completes.
    pub fn cut(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if !self.ended {
            self.fail(
                json!({"error": {"message": "the upstream stream ended early", "code": "stream_cut"}}),
                &mut out,
            );
        }
        out.freeze()
    }

    /// One frame of the gateway's chat stream (without its blank line).
    fn frame(&mut self, frame: &[u8], out: &mut BytesMut) {
        if self.ended {
            return;
        }
        if frame.starts_with(b":") {
            // The gateway's cost comment: clients ignore comments, readers of the wire want it.
            out.put_slice(frame);
            out.put_slice(b"\n\n");
            return;
        }
        let Some(data) = frame.strip_prefix(b"data: ") else {
            return;
        };
        if data == b"[DONE]" {
            self.finish_stream(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            self.fail(
                json!({"error": {"message": "the upstream sent a chunk that is not JSON", "code": "bad_gateway"}}),
                out,
            );
            return;
        };
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            self.fail(chunk, out);
            return;
        }
        self.start(&chunk, out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return;
        };
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_owned());
        }
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.part_delta(Part::Text(String::new()), text, out);
        }
        if let Some(r) = delta["refusal"].as_str().filter(|t| !t.is_empty()) {
            self.part_delta(Part::Refusal(String::new()), r, out);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            self.call_delta(call, out);
        }
    }

    /// `response.created` and `response.in_progress`, before the first content.
    fn start(&mut self, chunk: &Value, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        if let Some(c) = chunk["created"].as_i64() {
            self.created_at = c;
        }
        if let Some(m) = chunk["model"].as_str().filter(|m| !m.is_empty()) {
            self.model = m.to_owned();
        }
        let response = self.snapshot(Ending::InProgress, None);
        self.emit(
            "response.created",
            json!({"response": response.clone()}),
            out,
        );
        self.emit("response.in_progress", json!({"response": response}), out);
    }

    /// Text or refusal for the message (`empty` says which): the message item, and its
    /// part of that kind, are added on first use; then the delta.
    fn part_delta(&mut self, empty: Part, delta: &str, out: &mut BytesMut) {
        // Text after a tool call closed the message goes in a message item of its own.
        if self.message.is_some_and(|i| i < self.closed) {
            self.message = None;
            self.text_part = None;
            self.refusal_part = None;
        }
        let index = match self.message {
            Some(i) => i,
            None => {
                self.close_open_items("completed", out);
                let index = self.items.len();
                self.items.push(Item::Message(Vec::new()));
                self.message = Some(index);
                let item = self
                    .shell
                    .item_json(index, &self.items[index], "in_progress");
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                    out,
                );
                index
            }
        };
        let item_id = self.shell.item_id(index, &self.items[index]);
        let is_text = matches!(empty, Part::Text(_));
        let slot = if is_text {
            &mut self.text_part
        } else {
            &mut self.refusal_part
        };
        let content_index = match *slot {
            Some(c) => c,
            None => {
                let Item::Message(parts) = &mut self.items[index] else {
                    unreachable!("the message index holds the message")
                };
                let c = parts.len();
                *slot = Some(c);
                let part = empty.json();
                parts.push(empty);
                self.emit(
                    "response.content_part.added",
                    json!({"item_id": item_id, "output_index": index, "content_index": c,
                           "part": part}),
                    out,
                );
                c
            }
        };
        if let Item::Message(parts) = &mut self.items[index] {
            if let Some(Part::Text(t) | Part::Refusal(t)) = parts.get_mut(content_index) {
                t.push_str(delta);
            }
        }
        if delta.is_empty() {
            return;
        }
        let (kind, extra) = if is_text {
            ("response.output_text.delta", json!([]))
        } else {
            ("response.refusal.delta", Value::Null)
        };
        let mut data = json!({"item_id": item_id, "output_index": index,
                              "content_index": content_index, "delta": delta});
        if !extra.is_null() {
            data["logprobs"] = extra;
        }
        self.emit(kind, data, out);
    }

    /// A tool call's fragment: a new call adds a `function_call` item, later fragments
    /// extend its arguments.
    fn call_delta(&mut self, call: &Value, out: &mut BytesMut) {
        let id = call["id"].as_str().filter(|i| !i.is_empty());
        let key = match (call["index"].as_u64(), id) {
            (Some(i), _) => i,
            // Without an index, a new id starts a call and no id continues the last one.
            (None, Some(id)) => {
                let next = UNINDEXED + self.call_keys.len() as u64;
                *self.call_keys.entry(id.to_owned()).or_insert(next)
            }
            (None, None) => self.last_call.unwrap_or(UNINDEXED),
        };
        self.last_call = Some(key);
        let f = &call["function"];
        let index = match self.calls.get(&key) {
            Some(&i) => {
                if let Item::Call { name, .. } = &mut self.items[i] {
                    name.push_str(f["name"].as_str().unwrap_or_default());
                }
                i
            }
            None => {
                self.close_open_items("completed", out);
                let index = self.items.len();
                // The id is fixed here: the SDK matches the item's `.done` to its `added`
                // by it.
                let call_id = self.shell.call_id(id, self.calls.len());
                self.items.push(Item::Call {
                    call_id,
                    name: f["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: String::new(),
                });
                self.calls.insert(key, index);
                let item = self
                    .shell
                    .item_json(index, &self.items[index], "in_progress");
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                    out,
                );
                index
            }
        };
        if let Some(a) = f["arguments"].as_str().filter(|a| !a.is_empty()) {
            if let Item::Call { arguments, .. } = &mut self.items[index] {
                arguments.push_str(a);
            }
            // A fragment of a call already closed (a provider interleaving calls): no event
            // after its `.done`; the final response carries the whole call.
            if index < self.closed {
                return;
            }
            let item_id = self.shell.item_id(index, &self.items[index]);
            self.emit(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": index, "delta": a}),
                out,
            );
        }
    }

    /// `[DONE]`: every item's `.done` events, then the final response.
    fn finish_stream(&mut self, out: &mut BytesMut) {
        self.start(&Value::Null, out);
        if self.items.is_empty() {
            // An empty answer is still an answer, as in a whole response: one empty text.
            self.part_delta(Part::Text(String::new()), "", out);
        }
        let ending = Ending::of_finish(self.finish.as_deref());
        self.close_open_items(ending.status(), out);
        let kind = match ending {
            Ending::Incomplete(_) => "response.incomplete",
            _ => "response.completed",
        };
        let response = self.snapshot(ending, None);
        self.emit(kind, json!({"response": response}), out);
        self.ended = true;
    }

    /// The `.done` events of every item not closed yet, with `status`.
    fn close_open_items(&mut self, status: &str, out: &mut BytesMut) {
        for index in self.closed..self.items.len() {
            let item = self.shell.item_json(index, &self.items[index], status);
            let item_id = item["id"].clone();
            match &self.items[index] {
                Item::Message(parts) => {
                    for (content_index, part) in parts.clone().into_iter().enumerate() {
                        let (kind, mut data) = match &part {
                            Part::Text(t) => (
                                "response.output_text.done",
                                json!({"text": t, "logprobs": []}),
                            ),
                            Part::Refusal(r) => ("response.refusal.done", json!({"refusal": r})),
                        };
                        data["item_id"] = item_id.clone();
                        data["output_index"] = json!(index);
                        data["content_index"] = json!(content_index);
                        self.emit(kind, data, out);
                        self.emit(
                            "response.content_part.done",
                            json!({"item_id": item_id, "output_index": index,
                                   "content_index": content_index, "part": part.json()}),
                            out,
                        );
                    }
                }
                Item::Call { arguments, .. } => {
                    let arguments = arguments.clone();
                    self.emit(
                        "response.function_call_arguments.done",
                        json!({"item_id": item_id, "output_index": index, "arguments": arguments}),
                        out,
                    );
                }
            }
            self.emit(
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
                out,
            );
        }
        self.closed = self.items.len();
    }

    /// A failure mid-stream: an `error` event, then `response.failed`.
    fn fail(&mut self, chunk: Value, out: &mut BytesMut) {
        self.start(&Value::Null, out);
        let e = &chunk["error"];
        let message = e["message"]
            .as_str()
            .unwrap_or("the response failed")
            .to_owned();
        let code = e["code"].as_str().or(e["type"].as_str()).map(str::to_owned);
        self.emit(
            "error",
            json!({"code": code, "message": message, "param": e["param"]}),
            out,
        );
        // The response's error code is one of OpenAI's fixed list; the event above keeps
        // the gateway's own.
        let listed = if code.as_deref() == Some("rate_limit_exceeded") {
            "rate_limit_exceeded"
        } else {
            "server_error"
        };
        let error = json!({"code": listed, "message": message});
        let response = self.snapshot(Ending::Failed, Some(error));
        self.emit("response.failed", json!({"response": response}), out);
        self.ended = true;
    }

    fn snapshot(&self, ending: Ending, error: Option<Value>) -> Value {
        self.shell.response(
            self.created_at,
            &self.model,
            ending,
            &self.items,
            self.usage.as_ref(),
            error,
        )
    }

    /// One event: `event: <type>` and its data, numbered.
    fn emit(&mut self, kind: &str, mut data: Value, out: &mut BytesMut) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.put_slice(b"event: ");
        out.put_slice(kind.as_bytes());
        out.put_slice(b"\ndata: ");
        out.put_slice(data.to_string().as_bytes());
        out.put_slice(b"\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::responses::request::Echo;

    fn events(frames: &[&str], step: usize) -> Vec<Value> {
        let mut t = Translator::new(Shell::new("r1", Echo::default()), "header-model");
        let wire: String = frames.iter().map(|f| format!("{f}\n\n")).collect();
        let mut out = Vec::new();
        for piece in wire.as_bytes().chunks(step) {
            out.extend_from_slice(&t.push(piece));
        }
        out.extend_from_slice(&t.cut());
        let text = String::from_utf8(out).unwrap();
        text.split("\n\n")
            .filter(|f| !f.is_empty() && !f.starts_with(':'))
            .map(|f| {
                let (event, data) = f.split_once('\n').unwrap();
                let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(event.strip_prefix("event: ").unwrap(), v["type"]);
                v
            })
            .collect()
    }

    fn kinds(evs: &[Value]) -> Vec<&str> {
        evs.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    const TEXT: [&str; 6] = [
        r#"data: {"id":"c","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        r#"data: {"id":"c","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
        r#"data: {"id":"c","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
        r#"data: {"id":"c","created":7,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        ": x-llm-gateway-cost-usd=0.000001",
        "data: [DONE]",
    ];

    #[test]
    fn a_text_stream_becomes_the_documented_event_sequence_however_it_is_split() {
        for step in [1, 7, 4096] {
            let evs = events(&TEXT, step);
            assert_eq!(
                kinds(&evs),
                [
                    "response.created",
                    "response.in_progress",
                    "response.output_item.added",
                    "response.content_part.added",
                    "response.output_text.delta",
                    "response.output_text.delta",
                    "response.output_text.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "response.completed"
                ],
                "step {step}"
            );
            let seqs: Vec<u64> = evs
                .iter()
                .map(|e| e["sequence_number"].as_u64().unwrap())
                .collect();
            assert_eq!(seqs, (0..evs.len() as u64).collect::<Vec<_>>());
            let done = evs.last().unwrap();
            assert_eq!(done["response"]["id"], "resp_r1");
            assert_eq!(done["response"]["status"], "completed");
            assert_eq!(done["response"]["created_at"], 7);
            assert_eq!(done["response"]["output"][0]["content"][0]["text"], "Hello");
            assert_eq!(done["response"]["usage"]["total_tokens"], 5);
            assert_eq!(evs[6]["text"], "Hello");
        }
    }

    #[test]
    fn each_item_is_closed_before_the_next_is_added() {
        let frames = [
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"content":"Let me look."}}]}"#,
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"w","arguments":"{}"}}]}}]}"#,
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"v","arguments":"{}"}}]}}]}"#,
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"content":"And more."},"finish_reason":"tool_calls"}]}"#,
            "data: [DONE]",
        ];
        let evs = events(&frames, 9);
        let steps: Vec<(&str, u64)> = evs
            .iter()
            .filter(|e| {
                let k = e["type"].as_str().unwrap();
                k == "response.output_item.added" || k == "response.output_item.done"
            })
            .map(|e| {
                (
                    e["type"].as_str().unwrap(),
                    e["output_index"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                ("response.output_item.added", 0),
                ("response.output_item.done", 0),
                ("response.output_item.added", 1),
                ("response.output_item.done", 1),
                ("response.output_item.added", 2),
                ("response.output_item.done", 2),
                ("response.output_item.added", 3),
                ("response.output_item.done", 3),
            ]
        );
        let done = evs.last().unwrap();
        let output = done["response"]["output"].as_array().unwrap();
        assert_eq!(output[0]["content"][0]["text"], "Let me look.");
        assert_eq!(output[3]["content"][0]["text"], "And more.");
        // No delta after its item's `.done`.
        let mut closed = std::collections::HashSet::new();
        for e in &evs {
            let index = e["output_index"].as_u64();
            if e["type"] == "response.output_item.done" {
                closed.insert(index);
            } else if index.is_some() {
                assert!(!closed.contains(&index), "{e} after its item was done");
            }
        }
    }

    #[test]
    fn tool_call_fragments_become_a_function_call_item() {
        let frames = [
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_9","type":"function","function":{"name":"w","arguments":""}}]}}]}"#,
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"c\":"}}]}}]}"#,
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},"finish_reason":"tool_calls"}]}"#,
            "data: [DONE]",
        ];
        let evs = events(&frames, 5);
        assert_eq!(
            kinds(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        assert_eq!(evs[5]["arguments"], "{\"c\":1}");
        let item = &evs.last().unwrap()["response"]["output"][0];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["call_id"], "call_9");
        assert_eq!(item["name"], "w");
        assert_eq!(item["id"], evs[2]["item"]["id"]);
    }

    #[test]
    fn an_error_event_or_a_cut_stream_fails_the_response() {
        let frames = [
            TEXT[1],
            r#"data: {"error":{"message":"upstream went away","type":"server_error","param":null,"code":"stream_cut"}}"#,
        ];
        let evs = events(&frames, 3);
        let k = kinds(&evs);
        assert_eq!(k[k.len() - 2..], ["error", "response.failed"]);
        assert_eq!(evs[k.len() - 2]["message"], "upstream went away");
        let failed = &evs.last().unwrap()["response"];
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"]["code"], "server_error");
        assert_eq!(evs[k.len() - 2]["code"], "stream_cut");
        assert_eq!(failed["output"][0]["content"][0]["text"], "Hel");

        let evs = events(&TEXT[..2], 4096);
        assert_eq!(kinds(&evs).last(), Some(&"response.failed"));
    }

    #[test]
    fn a_length_stop_ends_incomplete() {
        let frames = [
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"content":"Par"},"finish_reason":"length"}]}"#,
            "data: [DONE]",
        ];
        let evs = events(&frames, 4096);
        let last = evs.last().unwrap();
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    }

    #[test]
    fn a_refusal_streams_as_its_own_part_and_text_only_when_text_comes() {
        let frames = [
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"refusal":"I can"}}]}"#,
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"refusal":"not."},"finish_reason":"stop"}]}"#,
            "data: [DONE]",
        ];
        let evs = events(&frames, 4096);
        assert_eq!(
            kinds(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.refusal.delta",
                "response.refusal.delta",
                "response.refusal.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        assert_eq!(evs[3]["part"], json!({"type": "refusal", "refusal": ""}));
        assert_eq!(evs[6]["refusal"], "I cannot.");
        assert_eq!(evs[6]["content_index"], 0);
        let content = &evs.last().unwrap()["response"]["output"][0]["content"];
        assert_eq!(
            content,
            &json!([{"type": "refusal", "refusal": "I cannot."}])
        );
    }

    #[test]
    fn calls_without_index_or_id_still_get_distinct_stable_ids() {
        let frames = [
            r#"data: {"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{"}}]}}]}"#,
            r#"data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"}"}}]}}]}"#,
            r#"data: {"choices":[{"delta":{"tool_calls":[{"index":5,"function":{"name":"g","arguments":"[]"}}]}}]}"#,
            r#"data: {"choices":[{"delta":{"tool_calls":[{"index":5,"id":"late","function":{}}]},"finish_reason":"tool_calls"}]}"#,
            "data: [DONE]",
        ];
        let evs = events(&frames, 4096);
        let added: Vec<&Value> = evs
            .iter()
            .filter(|e| e["type"] == "response.output_item.added")
            .map(|e| &e["item"])
            .collect();
        let done = &evs.last().unwrap()["response"];
        assert_eq!(done["model"], "header-model", "no chunk named a model");
        let output = done["output"].as_array().unwrap();
        assert_eq!(output.len(), 2);
        assert_eq!(output[0]["call_id"], "a");
        assert_eq!(output[0]["arguments"], "{}");
        // No id from the upstream when the call began: one is made, and kept.
        assert_eq!(output[1]["call_id"], "call_r1_1");
        assert_eq!(output[1]["name"], "g");
        for (a, o) in added.iter().zip(output) {
            assert_eq!(a["call_id"], o["call_id"]);
            assert_eq!(a["id"], o["id"]);
        }
    }

    #[test]
    fn an_empty_answer_streams_one_empty_message_as_a_whole_one_has() {
        let frames = [
            r#"data: {"created":1,"model":"m","choices":[{"delta":{"role":"assistant","content":null},"finish_reason":"stop"}]}"#,
            "data: [DONE]",
        ];
        let evs = events(&frames, 4096);
        assert_eq!(
            kinds(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let whole = Shell::new("r1", Echo::default()).from_chat(&json!({"created": 1, "model": "m",
            "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": null}}]}));
        assert_eq!(evs.last().unwrap()["response"]["output"], whole["output"]);
    }
}
