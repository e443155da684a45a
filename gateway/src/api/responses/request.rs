//! A Responses API request as the chat-completions body the pipeline serves. Each error
//! names the Responses field at fault (`input[2].content[0].type`), so a client never sees
//! the chat fields it did not send.

use serde_json::{json, Map, Value};

use crate::error::Error;

/// What the reply echoes of the request (OpenAI's response object repeats its settings).
#[derive(Debug, Clone, Default)]
pub struct Echo {
    /// `instructions`.
    pub instructions: Value,
    /// `max_output_tokens`.
    pub max_output_tokens: Value,
    /// `metadata` (`{}` when absent).
    pub metadata: Value,
    /// `parallel_tool_calls` (true when absent).
    pub parallel_tool_calls: Value,
    /// `reasoning` (`{"effort": null, "summary": null}` when absent).
    pub reasoning: Value,
    /// `temperature`.
    pub temperature: Value,
    /// `text` (`{"format": {"type": "text"}}` when absent).
    pub text: Value,
    /// `tool_choice` (`"auto"` when absent).
    pub tool_choice: Value,
    /// `tools` as the client sent them (`[]` when absent).
    pub tools: Value,
    /// `top_p`.
    pub top_p: Value,
    /// `user`.
    pub user: Value,
    /// Whether the client asked for a stream.
    pub stream: bool,
}

/// Fields accepted and not forwarded: they tune OpenAI's own server-side features (storage,
/// service tiers, its prompt cache, context compaction, log probabilities, truncation),
/// which a chat call to any provider cannot carry.
const IGNORED: [&str; 15] = [
    "access_programs",
    "background_options",
    "context_management",
    "image",
    "store",
    "include",
    "truncation",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "top_logprobs",
    "max_tool_calls",
    "stream_options",
    "safety_identifier",
];

/// Fields that need state this gateway does not keep: refused, saying what to do instead.
const STATEFUL: [(&str, &str); 4] = [
    (
        "previous_response_id",
        "This gateway does not store responses, so `previous_response_id` cannot be followed: send the whole conversation in `input` (earlier outputs included).",
    ),
    (
        "conversation",
        "This gateway does not store conversations: send the whole conversation in `input`.",
    ),
    (
        "moderation",
        "Moderation policies run on OpenAI's servers; this gateway cannot apply them, and does not drop a safety setting silently.",
    ),
    (
        "prompt",
        "Stored prompt templates live on OpenAI's servers; this gateway cannot expand them. Send the prompt's text in `instructions` and `input`.",
    ),
];

/// The chat-completions body for a Responses request, and what its reply echoes.
pub fn to_chat(body: &[u8]) -> Result<(Vec<u8>, Echo), Error> {
    let req = crate::api::body::object(body)?;
    for (k, v) in &req {
        if let Some((_, why)) = STATEFUL.iter().find(|(f, _)| f == k) {
            if !v.is_null() {
                return Err(unsupported(k, why));
            }
        }
    }
    if req.get("background") == Some(&Value::Bool(true)) {
        return Err(unsupported(
            "background",
            "Background responses are stored and polled on OpenAI's servers; this gateway answers in the request (set `stream: true` for long answers).",
        ));
    }

    let mut chat = Map::new();
    let mut echo = Echo {
        metadata: json!({}),
        parallel_tool_calls: json!(true),
        reasoning: json!({"effort": null, "summary": null}),
        text: json!({"format": {"type": "text"}}),
        tool_choice: json!("auto"),
        tools: json!([]),
        ..Echo::default()
    };
    let mut messages = Vec::new();
    let mut input = None;
    for (k, v) in &req {
        match k.as_str() {
            "model" => {
                if !v.is_string() {
                    return Err(Error::invalid("model", "`model` must be a string."));
                }
                chat.insert("model".into(), v.clone());
            }
            "input" => input = Some(v),
            "instructions" => {
                echo.instructions = v.clone();
                match v {
                    Value::Null => {}
                    Value::String(s) => messages.push(json!({"role": "system", "content": s})),
                    _ => {
                        return Err(Error::invalid(
                            "instructions",
                            "`instructions` must be a string.",
                        ))
                    }
                }
            }
            "max_output_tokens" => {
                echo.max_output_tokens = v.clone();
                if !v.is_null() {
                    chat.insert("max_completion_tokens".into(), v.clone());
                }
            }
            "temperature" | "top_p" | "parallel_tool_calls" => {
                match k.as_str() {
                    "temperature" => echo.temperature = v.clone(),
                    "top_p" => echo.top_p = v.clone(),
                    _ if v.is_boolean() => echo.parallel_tool_calls = v.clone(),
                    _ => {}
                }
                if !v.is_null() {
                    chat.insert(k.clone(), v.clone());
                }
            }
            "user" => {
                echo.user = v.clone();
                if !v.is_null() {
                    chat.insert("user".into(), v.clone());
                }
            }
            "metadata" => {
                if !v.is_null() && !v.is_object() {
                    return Err(Error::invalid("metadata", "`metadata` must be an object."));
                }
                if v.is_object() {
                    echo.metadata = v.clone();
                }
            }
            "stream" => {
                echo.stream = match v {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    _ => return Err(Error::invalid("stream", "`stream` must be a boolean.")),
                };
                if echo.stream {
                    chat.insert("stream".into(), json!(true));
                    // The completed event carries the usage, so it is always asked for.
                    chat.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            "tools" => {
                if !v.is_null() {
                    echo.tools = v.clone();
                    chat.insert("tools".into(), tools(v)?);
                }
            }
            "tool_choice" => {
                if !v.is_null() {
                    echo.tool_choice = v.clone();
                    chat.insert("tool_choice".into(), tool_choice(v)?);
                }
            }
            "text" => {
                if !v.is_null() {
                    echo.text = v.clone();
                    if let Some(format) = text_format(v)? {
                        chat.insert("response_format".into(), format);
                    }
                }
            }
            "reasoning" => {
                if !v.is_null() {
                    echo.reasoning = v.clone();
                    if let Some(effort) = reasoning_effort(v)? {
                        chat.insert("reasoning_effort".into(), effort);
                    }
                }
            }
            "background" => {}
            k if IGNORED.contains(&k) || STATEFUL.iter().any(|(f, _)| *f == k) => {}
            other => {
                return Err(Error::invalid(
                    other,
                    format!("Unknown parameter: `{other}`. This gateway's /v1/responses accepts the fields listed in its README."),
                )
                .with_code("unknown_parameter"))
            }
        }
    }
    // Chat APIs refuse an empty tool list, and tool settings without tools, that the
    // Responses API takes.
    if chat
        .get("tools")
        .is_some_and(|t| t.as_array().is_some_and(Vec::is_empty))
    {
        chat.remove("tools");
    }
    if !chat.contains_key("tools") {
        chat.remove("tool_choice");
        chat.remove("parallel_tool_calls");
    }
    if !chat.contains_key("model") {
        return Err(Error::invalid("model", "`model` is required."));
    }
    match input {
        None | Some(Value::Null) => {
            return Err(Error::invalid("input", "`input` is required."));
        }
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                add_item(&mut messages, item, &format!("input[{i}]"))?;
            }
        }
        Some(_) => {
            return Err(Error::invalid(
                "input",
                "`input` must be a string or an array of input items.",
            ))
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    let bytes = serde_json::to_vec(&chat).map_err(|e| Error::invalid("", e.to_string()))?;
    Ok((bytes, echo))
}

fn unsupported(param: &str, why: &str) -> Error {
    Error::invalid(param, why).with_code("unsupported_parameter")
}

/// The string at `item[key]`, or an error naming `path.key`.
fn string<'a>(item: &'a Value, key: &str, path: &str) -> Result<&'a str, Error> {
    item.get(key).and_then(Value::as_str).ok_or_else(|| {
        Error::invalid(
            format!("{path}.{key}"),
            format!("`{path}.{key}` must be a string."),
        )
    })
}

/// Appends the chat message(s) for one input item.
fn add_item(messages: &mut Vec<Value>, item: &Value, path: &str) -> Result<(), Error> {
    if !item.is_object() {
        return Err(Error::invalid(
            path,
            format!("`{path}` must be an object (a message or a function call or output)."),
        ));
    }
    let kind = match item.get("type") {
        None | Some(Value::Null) => "message",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(Error::invalid(
                format!("{path}.type"),
                format!("`{path}.type` must be a string."),
            ))
        }
    };
    match kind {
        "message" => messages.push(message(item, path)?),
        "function_call" => {
            let call = json!({
                "id": string(item, "call_id", path)?,
                "type": "function",
                "function": {
                    "name": string(item, "name", path)?,
                    "arguments": string(item, "arguments", path)?,
                },
            });
            // Calls that follow an assistant turn (or each other) belong to that turn.
            match messages.last_mut() {
                Some(m) if m["role"] == "assistant" => {
                    let calls = m
                        .as_object_mut()
                        .expect("messages are objects")
                        .entry("tool_calls")
                        .or_insert_with(|| json!([]));
                    calls.as_array_mut().expect("tool_calls is a list").push(call);
                }
                _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = Vec::new();
                    for (j, p) in parts.iter().enumerate() {
                        let pp = format!("{path}.output[{j}]");
                        match p.get("type").and_then(Value::as_str) {
                            Some("input_text") | Some("output_text") => {
                                text.push(string(p, "text", &pp)?.to_owned())
                            }
                            _ => {
                                return Err(Error::invalid(
                                    format!("{pp}.type"),
                                    format!("`{pp}.type`: only text parts (`input_text`) can be a function's output here."),
                                ))
                            }
                        }
                    }
                    text.join("\n\n")
                }
                _ => {
                    return Err(Error::invalid(
                        format!("{path}.output"),
                        format!("`{path}.output` must be a string or a list of text parts."),
                    ))
                }
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": string(item, "call_id", path)?,
                "content": output,
            }));
        }
        // A model's reasoning from an earlier turn: no chat API takes it back, and the
        // answer it led to is in the conversation anyway.
        "reasoning" => {}
        "item_reference" => {
            return Err(unsupported(
                &format!("{path}.type"),
                "This gateway does not store items, so an `item_reference` cannot be resolved: send the item itself.",
            ))
        }
        other => {
            return Err(Error::invalid(
                format!("{path}.type"),
                format!("`{path}.type` is `{other}`: this gateway takes messages, `function_call` and `function_call_output` items (built-in tools such as web search run on OpenAI's servers)."),
            ))
        }
    }
    Ok(())
}

/// One message item as a chat message.
fn message(item: &Value, path: &str) -> Result<Value, Error> {
    let role = match string(item, "role", path)? {
        // Chat's `developer` role is OpenAI's alone; every provider knows `system`.
        "system" | "developer" => "system",
        r @ ("user" | "assistant") => r,
        other => {
            return Err(Error::invalid(
                format!("{path}.role"),
                format!("`{path}.role` is `{other}`: use user, assistant, system or developer."),
            ))
        }
    };
    let content = match item.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                out.push(part(p, role, &format!("{path}.content[{j}]"))?);
            }
            // Instructions and earlier answers as plain text: every provider takes that.
            if role != "user" {
                Value::String(
                    out.iter()
                        .filter_map(|p| p["text"].as_str().or(p["refusal"].as_str()))
                        .collect::<Vec<_>>()
                        .join("\n\n"),
                )
            } else {
                Value::Array(out)
            }
        }
        _ => {
            return Err(Error::invalid(
                format!("{path}.content"),
                format!("`{path}.content` must be a string or a list of content parts."),
            ))
        }
    };
    Ok(json!({"role": role, "content": content}))
}

/// One content part as a chat content part.
fn part(p: &Value, role: &str, path: &str) -> Result<Value, Error> {
    let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
    let only_text = |what: &str| {
        Error::invalid(
            format!("{path}.type"),
            format!("`{path}.type` is `{what}`: {role} messages take text parts only."),
        )
    };
    match kind {
        "input_text" | "output_text" | "text" => {
            Ok(json!({"type": "text", "text": string(p, "text", path)?}))
        }
        "refusal" => Ok(json!({"type": "refusal", "refusal": string(p, "refusal", path)?})),
        "input_image" if role == "user" => {
            let Some(url) = p.get("image_url").and_then(Value::as_str) else {
                return Err(unsupported(
                    &format!("{path}.image_url"),
                    "Images must be given by `image_url` (an https:// or data: URL); files uploaded to OpenAI (`file_id`) cannot be read here.",
                ));
            };
            let mut image = json!({"url": url});
            if let Some(d) = p.get("detail").filter(|d| d.is_string()) {
                image["detail"] = d.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        "input_file" if role == "user" => {
            if p.get("file_url").is_some_and(|u| !u.is_null()) {
                return Err(unsupported(
                    &format!("{path}.file_url"),
                    "Files by URL are fetched by OpenAI's servers; send the file's contents in `file_data`.",
                ));
            }
            let mut file = Map::new();
            for k in ["file_data", "file_id", "filename"] {
                if let Some(v) = p.get(k).filter(|v| v.is_string()) {
                    file.insert(k.into(), v.clone());
                }
            }
            Ok(json!({"type": "file", "file": file}))
        }
        "input_audio" if role == "user" => Ok(json!({
            "type": "input_audio",
            "input_audio": p.get("input_audio").cloned().unwrap_or(Value::Null),
        })),
        "input_image" | "input_file" | "input_audio" => Err(only_text(kind)),
        "" => Err(Error::invalid(
            format!("{path}.type"),
            format!("`{path}.type` is required."),
        )),
        other => Err(Error::invalid(
            format!("{path}.type"),
            format!("`{path}.type` is `{other}`: use input_text, input_image, input_file or input_audio."),
        )),
    }
}

/// Responses tools (`{"type": "function", "name", …}`) as chat tools.
fn tools(v: &Value) -> Result<Value, Error> {
    let Value::Array(list) = v else {
        return Err(Error::invalid("tools", "`tools` must be a list."));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools[{i}]");
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {
                let mut f = Map::new();
                f.insert("name".into(), json!(string(t, "name", &path)?));
                for k in ["description", "parameters", "strict"] {
                    if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                        f.insert(k.into(), v.clone());
                    }
                }
                out.push(json!({"type": "function", "function": f}));
            }
            other => {
                return Err(unsupported(
                    &format!("{path}.type"),
                    &format!(
                        "`{path}.type` is {}: only `function` tools can be routed to any provider (built-in tools such as web_search and file_search run on OpenAI's servers).",
                        other.map_or("missing".to_owned(), |o| format!("`{o}`"))
                    ),
                ))
            }
        }
    }
    Ok(Value::Array(out))
}

/// `tool_choice`: a mode, or `{"type": "function", "name"}`.
fn tool_choice(v: &Value) -> Result<Value, Error> {
    match v {
        Value::String(s) if ["none", "auto", "required"].contains(&s.as_str()) => Ok(v.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = string(v, "name", "tool_choice")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        // `{"type": "allowed_tools", "mode", "tools": [{"type": "function", "name"}]}`: chat's
        // shape nests the mode and the tools, and each function's name.
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("allowed_tools") => {
            let mode = string(v, "mode", "tool_choice")?;
            let Some(tools) = o.get("tools").and_then(Value::as_array) else {
                return Err(Error::invalid(
                    "tool_choice.tools",
                    "`tool_choice.tools` must be an array of {\"type\": \"function\", \"name\": …}.",
                ));
            };
            let mut allowed = Vec::with_capacity(tools.len());
            for (k, t) in tools.iter().enumerate() {
                let param = format!("tool_choice.tools[{k}]");
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(unsupported(
                        &param,
                        "only function tools can be allowed here (built-in tools run on OpenAI's servers).",
                    ));
                }
                let name = string(t, "name", &param)?;
                allowed.push(json!({"type": "function", "function": {"name": name}}));
            }
            Ok(json!({"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}))
        }
        Value::Object(o) => Err(unsupported(
            "tool_choice",
            &format!(
                "`tool_choice` of type {}: this gateway takes none, auto, required, {{\"type\": \"function\", \"name\": …}} or {{\"type\": \"allowed_tools\", …}} of functions (built-in tools run on OpenAI's servers).",
                o.get("type").map_or("(none)".to_owned(), Value::to_string)
            ),
        )),
        _ => Err(Error::invalid(
            "tool_choice",
            "`tool_choice` must be none, auto, required or {\"type\": \"function\", \"name\": …}.",
        )),
    }
}

/// `text.format` as chat's `response_format` (none for plain text).
fn text_format(v: &Value) -> Result<Option<Value>, Error> {
    if !v.is_object() {
        return Err(Error::invalid("text", "`text` must be an object."));
    }
    let Some(f) = v.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            schema.insert("name".into(), json!(string(f, "name", "text.format")?));
            let Some(s) = f.get("schema").filter(|s| s.is_object()) else {
                return Err(Error::invalid(
                    "text.format.schema",
                    "`text.format.schema` must be a JSON schema object.",
                ));
            };
            schema.insert("schema".into(), s.clone());
            for k in ["description", "strict"] {
                if let Some(v) = f.get(k).filter(|v| !v.is_null()) {
                    schema.insert(k.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(Error::invalid(
            "text.format.type",
            "`text.format.type` must be text, json_object or json_schema.",
        )),
    }
}

/// `reasoning.effort` as chat's `reasoning_effort`.
fn reasoning_effort(v: &Value) -> Result<Option<Value>, Error> {
    if !v.is_object() {
        return Err(Error::invalid(
            "reasoning",
            "`reasoning` must be an object.",
        ));
    }
    match v.get("effort") {
        None | Some(Value::Null) => Ok(None),
        Some(e @ Value::String(_)) => Ok(Some(e.clone())),
        Some(_) => Err(Error::invalid(
            "reasoning.effort",
            "`reasoning.effort` must be a string.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(req: Value) -> Value {
        serde_json::from_slice(&to_chat(req.to_string().as_bytes()).unwrap().0).unwrap()
    }

    fn err(req: Value) -> Error {
        to_chat(req.to_string().as_bytes()).unwrap_err()
    }

    #[test]
    fn a_string_input_with_instructions_is_a_system_and_a_user_message() {
        let c = chat(
            json!({"model": "auto", "input": "Hi", "instructions": "Be brief.",
            "max_output_tokens": 50, "temperature": 0.2}),
        );
        assert_eq!(
            c,
            json!({"model": "auto", "max_completion_tokens": 50, "temperature": 0.2,
                "messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Hi"}]})
        );
    }

    #[test]
    fn a_conversation_with_calls_and_outputs_becomes_chat_turns() {
        let c = chat(json!({"model": "m", "input": [
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [
                {"type": "input_text", "text": "Weather?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"a\":1}"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2",
             "output": [{"type": "input_text", "text": "rain"}]}]}));
        assert_eq!(
            c["messages"],
            json!([
                {"role": "system", "content": "Use tools."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}}]},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "w", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": "rain"}])
        );
    }

    #[test]
    fn tools_formats_and_reasoning_become_their_chat_fields() {
        let c = chat(json!({"model": "m", "input": "x", "stream": true,
            "tools": [{"type": "function", "name": "w", "description": "d",
                       "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "w"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}},
            "reasoning": {"effort": "low"}, "store": false, "metadata": {"k": "v"}}));
        assert_eq!(
            c["tools"],
            json!([{"type": "function", "function": {"name": "w", "description": "d",
                "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(
            c["tool_choice"],
            json!({"type": "function", "function": {"name": "w"}})
        );
        assert_eq!(
            c["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": true}})
        );
        assert_eq!(c["reasoning_effort"], "low");
        assert_eq!(c["stream_options"], json!({"include_usage": true}));
        assert!(c.get("metadata").is_none() && c.get("store").is_none());
        let c = chat(json!({"model": "m", "input": "x",
            "tools": [{"type": "function", "name": "w"}, {"type": "function", "name": "v"}],
            "tool_choice": {"type": "allowed_tools", "mode": "required",
                            "tools": [{"type": "function", "name": "v"}]}}));
        assert_eq!(
            c["tool_choice"],
            json!({"type": "allowed_tools", "allowed_tools": {"mode": "required",
                "tools": [{"type": "function", "function": {"name": "v"}}]}})
        );
    }

    #[test]
    fn an_empty_tool_list_and_tool_settings_without_tools_are_left_out() {
        let c = chat(
            json!({"model": "m", "input": "x", "tools": [], "tool_choice": "auto",
            "parallel_tool_calls": false, "context_management": [{"type": "compaction"}]}),
        );
        assert_eq!(
            c,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})
        );
    }

    #[test]
    fn errors_name_the_responses_field() {
        let cases = [
            (json!({"input": "x"}), "model", ""),
            (json!({"model": "m"}), "input", ""),
            (json!({"model": "m", "input": 3}), "input", ""),
            (
                json!({"model": "m", "input": [{"role": "wizard", "content": "x"}]}),
                "input[0].role",
                "",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_video"}]}]}),
                "input[0].content[0].type",
                "",
            ),
            (
                json!({"model": "m", "input": [{"type": "web_search_call", "id": "x"}]}),
                "input[0].type",
                "",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}),
                "input[0].call_id",
                "",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
                "unsupported_parameter",
            ),
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id",
                "unsupported_parameter",
            ),
            (
                json!({"model": "m", "input": "x", "moderation": {"mode": "block"}}),
                "moderation",
                "unsupported_parameter",
            ),
            (
                json!({"model": "m", "input": "x", "tool_choice": {"type": "web_search_preview"}}),
                "tool_choice",
                "unsupported_parameter",
            ),
            (
                json!({"model": "m", "input": "x", "background": true}),
                "background",
                "unsupported_parameter",
            ),
            (
                json!({"model": "m", "input": "x", "frobnicate": 1}),
                "frobnicate",
                "unknown_parameter",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}),
                "text.format.type",
                "",
            ),
        ];
        for (req, param, code) in cases {
            let e = err(req.clone());
            assert_eq!(e.status(), 400, "{req}");
            assert_eq!(e.param.as_deref(), Some(param), "{req}: {e}");
            if !code.is_empty() {
                assert_eq!(e.code.as_deref(), Some(code), "{req}");
            }
        }
        assert!(to_chat(b"").is_err() && to_chat(b"[1]").is_err() && to_chat(b"{").is_err());
    }
}
