//! OpenAI chat request → Anthropic Messages request.

use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::wire::{ChatRequest, Content, ContentPart, Message, ResponseFormat, ToolChoice};

/// Instruction added to the system prompt for `response_format: json_object`, which the
/// Messages API has no switch for.
pub const JSON_OBJECT_INSTRUCTION: &str =
    "Respond with a single valid JSON object and nothing else.";

/// A translated request.
#[derive(Debug)]
pub struct Translated {
    /// The Messages API body.
    pub body: Value,
    /// For `response_format: json_schema`: the tool whose input is the answer, to be turned
    /// back into text content.
    pub json_tool: Option<String>,
}

/// Translates; `default_max_tokens` is used when the client sets no limit.
pub fn translate(
    req: &ChatRequest,
    raw: &Map<String, Value>,
    model: &str,
    default_max_tokens: u32,
) -> Result<Translated, Error> {
    if let Some(n) = req.n.filter(|n| *n != 1) {
        return Err(Error::invalid(
            "n",
            format!("n = {n} is not supported by Anthropic models; only n = 1"),
        ));
    }

    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, blocks: Vec<Value>| {
        if blocks.is_empty() {
            return;
        }
        // Consecutive same-role messages become one turn with all their blocks, in order.
        match turns.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    };
    for (i, m) in req.messages.iter().enumerate() {
        match m {
            Message::System { content, .. } | Message::Developer { content, .. } => {
                system.push(content.text())
            }
            Message::User { content, .. } => push("user", user_blocks(content, i)?),
            Message::Assistant {
                content,
                tool_calls,
                ..
            } => {
                let mut blocks = Vec::new();
                if let Some(text) = content
                    .as_ref()
                    .map(Content::text)
                    .filter(|t| !t.is_empty())
                {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for (j, call) in tool_calls.iter().flatten().enumerate() {
                    let args = call.function.arguments.trim();
                    let input: Value = if args.is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(args).map_err(|e| {
                            Error::invalid(
                                format!("messages[{i}].tool_calls[{j}].function.arguments"),
                                format!("tool call arguments are not valid JSON: {e}"),
                            )
                        })?
                    };
                    blocks.push(json!({
                        "type": "tool_use", "id": call.id, "name": call.function.name, "input": input,
                    }));
                }
                push("assistant", blocks);
            }
            Message::Tool {
                content,
                tool_call_id,
            } => push(
                "user",
                vec![json!({
                    "type": "tool_result", "tool_use_id": tool_call_id, "content": content.text(),
                })],
            ),
            Message::Function { .. } => return Err(Error::invalid(
                format!("messages[{i}].role"),
                "the deprecated `function` role is not supported for Anthropic models; use `tool`",
            )),
        }
    }

    if turns.is_empty() {
        return Err(Error::invalid(
            "messages",
            "Anthropic models need at least one user or assistant message besides the system prompt",
        ));
    }
    // OpenAI parameters with no Messages API counterpart that would change the answer: refused
    // rather than dropped, so the caller does not get something other than it asked for.
    for (key, there, why) in [
        ("functions", req.functions.is_some(), "the deprecated `functions` are not supported for Anthropic models; send them as `tools`"),
        ("function_call", req.function_call.is_some(), "the deprecated `function_call` is not supported for Anthropic models; use `tool_choice`"),
        ("audio", req.audio.is_some(), "audio output is not supported for Anthropic models"),
    ] {
        if there {
            return Err(Error::invalid(key, why));
        }
    }
    if req.modalities.iter().flatten().any(|m| m != "text") {
        return Err(Error::invalid(
            "modalities",
            "Anthropic models answer in text only: `modalities` may only be [\"text\"]",
        ));
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        json!(req.max_output().unwrap_or(default_max_tokens)),
    );
    body.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(t) = req.top_p {
        body.insert("top_p".into(), json!(t));
    }
    if let Some(stop) = &req.stop {
        body.insert("stop_sequences".into(), json!(stop.to_vec()));
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if req.is_stream() {
        body.insert("stream".into(), json!(true));
    }
    // Anthropic-only parameters a client may send on purpose.
    for key in ["top_k", "thinking"] {
        if let Some(v) = raw.get(key) {
            body.insert(key.into(), v.clone());
        }
    }

    let mut tools: Vec<Value> = Vec::new();
    for (k, t) in req.tools.iter().flatten().enumerate() {
        let Some(f) = t.function.as_ref().filter(|_| t.kind == "function") else {
            return Err(Error::invalid(
                format!("tools[{k}].type"),
                format!(
                    "tool type `{}` is not supported for Anthropic models; use `function`",
                    t.kind
                ),
            ));
        };
        let mut tool = json!({
            "name": f.name,
            "input_schema": f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        });
        if let Some(d) = &f.description {
            tool["description"] = json!(d);
        }
        tools.push(tool);
    }
    let (mut tool_choice, allowed) = tool_choice(req)?;
    // `allowed_tools`: the Messages API has no such choice, so the model is shown only those.
    if let Some(names) = allowed {
        tools.retain(|t| names.iter().any(|n| t["name"] == n.as_str()));
        if tools.is_empty() {
            return Err(Error::invalid(
                "tool_choice.allowed_tools.tools",
                "names none of the request's tools",
            ));
        }
    }

    let mut json_tool = None;
    match &req.response_format {
        Some(ResponseFormat::JsonObject) => system.push(JSON_OBJECT_INSTRUCTION.to_owned()),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            // The Messages API's way to force JSON of a schema: a tool whose input is the answer.
            let mut tool = json!({
                "name": json_schema.name,
                "input_schema": json_schema.schema.clone().unwrap_or_else(|| json!({"type": "object"})),
            });
            if let Some(d) = &json_schema.description {
                tool["description"] = json!(d);
            }
            if tools.is_empty() {
                tool_choice = Some(json!({"type": "tool", "name": json_schema.name}));
            }
            tools.push(tool);
            json_tool = Some(json_schema.name.clone());
        }
        Some(ResponseFormat::Text) | None => {}
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        if let Some(tc) = tool_choice {
            body.insert("tool_choice".into(), tc);
        }
    }
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    Ok(Translated {
        body: Value::Object(body),
        json_tool,
    })
}

/// The Messages API's `tool_choice`, and the names of the tools an `allowed_tools` choice
/// leaves the model (the others are not sent).
type Choice = (Option<Value>, Option<Vec<String>>);

fn tool_choice(req: &ChatRequest) -> Result<Choice, Error> {
    let parallel_off = req.parallel_tool_calls == Some(false);
    let mode = |m: &str| match m {
        "auto" => Ok(json!({"type": "auto"})),
        "required" => Ok(json!({"type": "any"})),
        other => Err(Error::invalid(
            "tool_choice",
            format!("`{other}` is not one of none, auto, required"),
        )),
    };
    let mut allowed = None;
    let mut choice = match &req.tool_choice {
        None if parallel_off && req.has_tools() => json!({"type": "auto"}),
        None => return Ok((None, None)),
        Some(ToolChoice::Mode(m)) if m == "none" => {
            return Ok((Some(json!({"type": "none"})), None))
        }
        Some(ToolChoice::Mode(m)) => mode(m)?,
        Some(ToolChoice::Named { function, .. }) => {
            json!({"type": "tool", "name": function.name})
        }
        Some(ToolChoice::Allowed { allowed_tools }) => {
            let mut names = Vec::with_capacity(allowed_tools.tools.len());
            for (k, t) in allowed_tools.tools.iter().enumerate() {
                match (&t.function, t.kind.as_str()) {
                    (Some(f), "function") => names.push(f.name.clone()),
                    _ => {
                        return Err(Error::invalid(
                            format!("tool_choice.allowed_tools.tools[{k}]"),
                            "only `{\"type\": \"function\", \"function\": {\"name\": …}}` tools can be allowed for Anthropic models",
                        ))
                    }
                }
            }
            allowed = Some(names);
            match allowed_tools.mode.as_str() {
                "auto" | "required" => mode(&allowed_tools.mode)?,
                other => {
                    return Err(Error::invalid(
                        "tool_choice.allowed_tools.mode",
                        format!("`{other}` is not one of auto, required"),
                    ))
                }
            }
        }
        Some(ToolChoice::Custom { .. }) => {
            return Err(Error::invalid(
                "tool_choice",
                "custom tools are not supported for Anthropic models; use a function tool",
            ))
        }
    };
    if parallel_off {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    Ok((Some(choice), allowed))
}

fn user_blocks(content: &Content, i: usize) -> Result<Vec<Value>, Error> {
    match content {
        Content::Text(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Content::Parts(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| match p {
                ContentPart::Text { text } => Ok(json!({"type": "text", "text": text})),
                ContentPart::Refusal { refusal } => Ok(json!({"type": "text", "text": refusal})),
                ContentPart::ImageUrl { image_url } => image_block(&image_url.url).map_err(|m| {
                    Error::invalid(format!("messages[{i}].content[{j}].image_url.url"), m)
                }),
                ContentPart::InputAudio { .. } | ContentPart::File { .. } => Err(Error::invalid(
                    format!("messages[{i}].content[{j}].type"),
                    "audio and file parts are not supported for Anthropic models",
                )),
            })
            .collect(),
    }
}

fn image_block(url: &str) -> Result<Value, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or("a data URL needs a `,` before its data")?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or("only base64 data URLs are supported (data:image/png;base64,...)")?;
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err("an image must be an http(s) URL or a base64 data URL".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(req: Value) -> Result<Translated, Error> {
        let raw = req.as_object().unwrap().clone();
        let typed: ChatRequest = serde_json::from_value(req).unwrap();
        translate(&typed, &raw, "claude-x", 4096)
    }

    /// Request in, request out, for each translation rule.
    #[test]
    fn translation_table() {
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "system goes top-level; max_tokens defaults",
                json!({"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}),
                json!({"model":"claude-x","max_tokens":4096,"system":"Be brief.",
                       "messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}),
            ),
            (
                "system and developer messages anywhere are joined; consecutive same-role messages merge",
                json!({"model":"m","max_tokens":50,"messages":[
                    {"role":"system","content":[{"type":"text","text":"A"}]},
                    {"role":"user","content":"one"},{"role":"user","content":"two"},
                    {"role":"developer","content":"B"},
                    {"role":"assistant","content":"x"},{"role":"assistant","content":"y"}]}),
                json!({"model":"claude-x","max_tokens":50,"system":"A\n\nB","messages":[
                    {"role":"user","content":[{"type":"text","text":"one"},{"type":"text","text":"two"}]},
                    {"role":"assistant","content":[{"type":"text","text":"x"},{"type":"text","text":"y"}]}]}),
            ),
            (
                "tools, tool_choice required, tool calls and results with ids carried through",
                json!({"model":"m","max_completion_tokens":10,"tool_choice":"required","parallel_tool_calls":false,
                  "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
                  "messages":[{"role":"user","content":"Weather in Paris?"},
                    {"role":"assistant","content":null,"tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
                    {"role":"tool","tool_call_id":"toolu_1","content":"18C"},
                    {"role":"user","content":"Thanks"}]}),
                json!({"model":"claude-x","max_tokens":10,
                  "tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],
                  "tool_choice":{"type":"any","disable_parallel_tool_use":true},
                  "messages":[{"role":"user","content":[{"type":"text","text":"Weather in Paris?"}]},
                    {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},
                    {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"18C"},{"type":"text","text":"Thanks"}]}]}),
            ),
            (
                "named tool choice, stop, sampling, user, stream, images",
                json!({"model":"m","stream":true,"temperature":0.2,"top_p":0.9,"stop":"END","user":"u1","top_k":5,
                  "tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"f"}},
                  "messages":[{"role":"user","content":[{"type":"text","text":"What is this?"},
                    {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBOR"}},
                    {"type":"image_url","image_url":{"url":"https://x.test/a.jpg","detail":"low"}}]}]}),
                json!({"model":"claude-x","max_tokens":4096,"stream":true,"temperature":0.2,"top_p":0.9,
                  "stop_sequences":["END"],"metadata":{"user_id":"u1"},"top_k":5,
                  "tools":[{"name":"f","input_schema":{"type":"object","properties":{}}}],
                  "tool_choice":{"type":"tool","name":"f"},
                  "messages":[{"role":"user","content":[{"type":"text","text":"What is this?"},
                    {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR"}},
                    {"type":"image","source":{"type":"url","url":"https://x.test/a.jpg"}}]}]}),
            ),
            (
                "json_schema becomes a forced tool; json_object an instruction",
                json!({"model":"m","response_format":{"type":"json_schema","json_schema":{"name":"answer","schema":{"type":"object","properties":{"n":{"type":"integer"}}}}},
                  "messages":[{"role":"user","content":"n?"}]}),
                json!({"model":"claude-x","max_tokens":4096,
                  "tools":[{"name":"answer","input_schema":{"type":"object","properties":{"n":{"type":"integer"}}}}],
                  "tool_choice":{"type":"tool","name":"answer"},
                  "messages":[{"role":"user","content":[{"type":"text","text":"n?"}]}]}),
            ),
            (
                "allowed_tools: the model is shown only those, with the mode's choice",
                json!({"model":"m","tools":[{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"g"}}],
                  "tool_choice":{"type":"allowed_tools","allowed_tools":{"mode":"required","tools":[{"type":"function","function":{"name":"g"}}]}},
                  "messages":[{"role":"user","content":"x"}]}),
                json!({"model":"claude-x","max_tokens":4096,
                  "tools":[{"name":"g","input_schema":{"type":"object","properties":{}}}],
                  "tool_choice":{"type":"any"},
                  "messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}),
            ),
            (
                "json_object",
                json!({"model":"m","response_format":{"type":"json_object"},"messages":[{"role":"user","content":"x"}]}),
                json!({"model":"claude-x","max_tokens":4096,"system":JSON_OBJECT_INSTRUCTION,
                  "messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}),
            ),
        ];
        for (name, input, want) in cases {
            let got = tr(input).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.body, want, "{name}");
        }
    }

    #[test]
    fn json_schema_names_its_tool() {
        let t = tr(json!({"model":"m","response_format":{"type":"json_schema","json_schema":{"name":"answer"}},"messages":[{"role":"user","content":"x"}]})).unwrap();
        assert_eq!(t.json_tool.as_deref(), Some("answer"));
    }

    #[test]
    fn untranslatable_requests_are_400s_naming_the_field() {
        let cases = [
            (
                json!({"model":"m","n":2,"messages":[{"role":"user","content":"x"}]}),
                "n",
            ),
            (
                json!({"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!({"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x"}}]}]}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"model":"m","tool_choice":"sometimes","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"x"}]}),
                "tool_choice",
            ),
            (
                json!({"model":"m","tools":[{"type":"custom"}],"messages":[{"role":"user","content":"x"}]}),
                "tools[0].type",
            ),
            (
                json!({"model":"m","tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"custom","custom":{"name":"f"}},"messages":[{"role":"user","content":"x"}]}),
                "tool_choice",
            ),
            (
                json!({"model":"m","tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"allowed_tools","allowed_tools":{"mode":"none","tools":[]}},"messages":[{"role":"user","content":"x"}]}),
                "tool_choice.allowed_tools.mode",
            ),
            (
                json!({"model":"m","tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"allowed_tools","allowed_tools":{"mode":"auto","tools":[{"type":"function","function":{"name":"g"}}]}},"messages":[{"role":"user","content":"x"}]}),
                "tool_choice.allowed_tools.tools",
            ),
            (
                json!({"model":"m","functions":[{"name":"f","parameters":{"type":"object"}}],"function_call":"auto","messages":[{"role":"user","content":"x"}]}),
                "functions",
            ),
            (
                json!({"model":"m","function_call":"auto","messages":[{"role":"user","content":"x"}]}),
                "function_call",
            ),
            (
                json!({"model":"m","modalities":["text","audio"],"audio":{"voice":"alloy","format":"wav"},"messages":[{"role":"user","content":"x"}]}),
                "audio",
            ),
            (
                json!({"model":"m","modalities":["text","audio"],"messages":[{"role":"user","content":"x"}]}),
                "modalities",
            ),
            (
                json!({"model":"m","messages":[{"role":"system","content":"only a system prompt"}]}),
                "messages",
            ),
        ];
        for (req, param) in cases {
            let e = tr(req).unwrap_err();
            assert_eq!(e.status(), 400);
            assert_eq!(e.param.as_deref(), Some(param), "{e}");
        }
    }
}
