//! OpenAI wire types: the typed view of a chat request used for validation and translation,
//! and the usage block. Requests forwarded to OpenAI-protocol upstreams are sent from the raw
//! JSON, so fields this view does not know still pass through untouched.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The fields of `POST /v1/chat/completions` the gateway reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Model name: catalog, provider-qualified, or virtual.
    pub model: String,
    /// The prompt's size in tokens, each figure computed at most once per request (routing,
    /// the budget estimate and the deadlines all ask; see `router::tokens`).
    #[serde(skip)]
    pub sizes: PromptSizes,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options (`include_usage`).
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Deprecated name of `max_completion_tokens`, still the one most clients send.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Largest completion to generate.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Number of choices.
    #[serde(default)]
    pub n: Option<u32>,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Tool definitions.
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    /// Which tool to call.
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    /// Whether several tool calls may come in one turn.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Output format (text, JSON object, JSON schema).
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// End-user identifier.
    #[serde(default)]
    pub user: Option<String>,
    /// Log probabilities of the output tokens.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Token biases (only whether they are there is read).
    #[serde(default)]
    pub logit_bias: Option<serde::de::IgnoredAny>,
    /// The deprecated `functions` (only whether they are there is read).
    #[serde(default)]
    pub functions: Option<serde::de::IgnoredAny>,
    /// The deprecated `function_call`.
    #[serde(default)]
    pub function_call: Option<serde::de::IgnoredAny>,
    /// Audio output settings.
    #[serde(default)]
    pub audio: Option<serde::de::IgnoredAny>,
    /// Output modalities (`["text"]`, `["text", "audio"]`).
    #[serde(default)]
    pub modalities: Option<Vec<String>>,
}

/// A request's prompt size, memoised.
#[derive(Debug, Clone, Default)]
pub struct PromptSizes {
    /// A free upper bound (bytes of text plus per-message overhead).
    pub bound: std::sync::OnceLock<usize>,
    /// Counted with the tokenizer.
    pub counted: std::sync::OnceLock<usize>,
}

impl ChatRequest {
    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the client asked for usage in the stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The completion limit the client asked for, under either name.
    pub fn max_output(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// What kinds of non-text parts the messages carry, in one pass over them.
    pub fn media(&self) -> Media {
        let mut media = Media::default();
        for m in &self.messages {
            if let Some(Content::Parts(parts)) = m.content() {
                for p in parts {
                    match p {
                        ContentPart::ImageUrl { .. } => media.images = true,
                        ContentPart::InputAudio { .. } | ContentPart::File { .. } => {
                            media.audio_or_files = true
                        }
                        _ => {}
                    }
                }
            }
        }
        media
    }

    /// What the request asks that only the OpenAI protocol carries (Anthropic's Messages API
    /// has no equivalent), if anything; `media` is [`ChatRequest::media`].
    pub fn openai_only(&self, media: Media) -> Option<&'static str> {
        if self.n.is_some_and(|n| n > 1) {
            return Some("n > 1");
        }
        if self.logprobs == Some(true) {
            return Some("logprobs");
        }
        if self.functions.is_some() || self.function_call.is_some() {
            return Some("the deprecated functions");
        }
        if self.audio.is_some() || self.modalities.iter().flatten().any(|m| m != "text") {
            return Some("audio output");
        }
        let custom_tool = self.tools.iter().flatten().any(|t| t.kind != "function");
        if custom_tool || matches!(self.tool_choice, Some(ToolChoice::Custom { .. })) {
            return Some("custom tools");
        }
        media.audio_or_files.then_some("audio or file parts")
    }

    /// Whether a message names its participant (`messages[].name`).
    pub fn names_participants(&self) -> bool {
        self.messages.iter().any(|m| {
            matches!(
                m,
                Message::System { name: Some(_), .. }
                    | Message::Developer { name: Some(_), .. }
                    | Message::User { name: Some(_), .. }
                    | Message::Assistant { name: Some(_), .. }
            )
        })
    }

    /// Whether the request defines tools.
    pub fn has_tools(&self) -> bool {
        self.tools.as_ref().is_some_and(|t| !t.is_empty())
    }

    /// Whether the request asks for JSON output.
    pub fn wants_json(&self) -> bool {
        matches!(
            self.response_format,
            Some(ResponseFormat::JsonObject) | Some(ResponseFormat::JsonSchema { .. })
        )
    }
}

/// The non-text parts of a request's messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Media {
    /// Some message carries an image.
    pub images: bool,
    /// Some message carries audio or a file.
    pub audio_or_files: bool,
}

/// `stream_options`.
#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with the usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// One message of the conversation, by role.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    /// Instructions.
    System {
        /// Text or text parts.
        content: Content,
        /// The participant's name (only whether it is there is read).
        #[serde(default)]
        name: Option<serde::de::IgnoredAny>,
    },
    /// Instructions (newer name of `system`).
    Developer {
        /// Text or text parts.
        content: Content,
        /// The participant's name (only whether it is there is read).
        #[serde(default)]
        name: Option<serde::de::IgnoredAny>,
    },
    /// The user's turn.
    User {
        /// Text, or text and image parts.
        content: Content,
        /// The participant's name (only whether it is there is read).
        #[serde(default)]
        name: Option<serde::de::IgnoredAny>,
    },
    /// The model's earlier turn.
    Assistant {
        /// Text; may be null when the turn only calls tools.
        #[serde(default)]
        content: Option<Content>,
        /// Tool calls made in this turn.
        #[serde(default)]
        tool_calls: Option<Vec<ToolCall>>,
        /// The participant's name (only whether it is there is read).
        #[serde(default)]
        name: Option<serde::de::IgnoredAny>,
    },
    /// A tool's result.
    Tool {
        /// The result.
        content: Content,
        /// The id of the call this answers.
        tool_call_id: String,
    },
    /// Deprecated function result.
    Function {
        /// The result.
        #[serde(default)]
        content: Option<String>,
        /// The function's name.
        name: String,
    },
}

impl Message {
    /// The message's content, if any.
    pub fn content(&self) -> Option<&Content> {
        match self {
            Message::System { content, .. }
            | Message::Developer { content, .. }
            | Message::User { content, .. }
            | Message::Tool { content, .. } => Some(content),
            Message::Assistant { content, .. } => content.as_ref(),
            Message::Function { .. } => None,
        }
    }
}

/// Message content: a string or a list of parts.
#[derive(Debug, Clone)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<ContentPart>),
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Content::Text(s)),
            v @ Value::Array(_) => serde_json::from_value(v)
                .map(Content::Parts)
                .map_err(|e| serde::de::Error::custom(format!("invalid content part: {e}"))),
            other => Err(serde::de::Error::custom(format!(
                "`content` must be a string or an array of content parts, not {other}"
            ))),
        }
    }
}

impl Content {
    /// All text of the content, borrowed when it is a plain string.
    pub fn text_cow(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Content::Text(s) => std::borrow::Cow::Borrowed(s),
            Content::Parts(_) => std::borrow::Cow::Owned(self.text()),
        }
    }

    /// All text of the content, parts joined by a blank line.
    pub fn text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    ContentPart::Text { text } => Some(text.as_str()),
                    ContentPart::Refusal { refusal } => Some(refusal.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n\n"),
        }
    }
}

/// One typed part of message content.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image by URL or data URL.
    ImageUrl {
        /// The image.
        image_url: ImageUrl,
    },
    /// Audio input (OpenAI only).
    InputAudio {
        /// The audio.
        input_audio: Value,
    },
    /// A file (OpenAI only).
    File {
        /// The file.
        file: Value,
    },
    /// A refusal in an earlier assistant turn.
    Refusal {
        /// The refusal text.
        refusal: String,
    },
}

/// `image_url` of an image part.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageUrl {
    /// `https://…` or `data:image/png;base64,…`.
    pub url: String,
}

/// A tool definition.
#[derive(Debug, Clone, Deserialize)]
pub struct Tool {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    #[serde(default)]
    pub function: Option<FunctionDef>,
}

/// A function tool.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionDef {
    /// Name the model calls it by.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON schema of the arguments.
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// `tool_choice`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(String),
    /// A named function.
    Named {
        /// `function`.
        #[serde(rename = "type")]
        kind: String,
        /// The function to call.
        function: NamedFunction,
    },
    /// `{"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}`: only these tools.
    Allowed {
        /// The mode and the tools.
        allowed_tools: AllowedTools,
    },
    /// `{"type": "custom", "custom": {"name"}}`: a named custom tool.
    Custom {
        /// The tool to call.
        custom: NamedFunction,
    },
}

/// The function named by `tool_choice`.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedFunction {
    /// Its name.
    pub name: String,
}

/// `tool_choice.allowed_tools`.
#[derive(Debug, Clone, Deserialize)]
pub struct AllowedTools {
    /// `auto` or `required`.
    pub mode: String,
    /// The tools the model may call (`{"type": "function", "function": {"name"}}`).
    pub tools: Vec<AllowedTool>,
}

/// One tool of `tool_choice.allowed_tools`.
#[derive(Debug, Clone, Deserialize)]
pub struct AllowedTool {
    /// `function` or `custom`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function, for `function`.
    #[serde(default)]
    pub function: Option<NamedFunction>,
}

/// A tool call in an assistant message.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCall {
    /// Call id, echoed by the tool message that answers it.
    pub id: String,
    /// The function called.
    pub function: FunctionCall,
}

/// The function part of a tool call.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON string.
    #[serde(default)]
    pub arguments: String,
}

/// `stop`: one sequence or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// As a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Plain text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// The schema of a `json_schema` response format.
#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaFormat {
    /// Schema name.
    pub name: String,
    /// What the output is.
    #[serde(default)]
    pub description: Option<String>,
    /// The schema.
    #[serde(default)]
    pub schema: Option<Value>,
}

/// Token usage as OpenAI reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (cached ones included).
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Sum of both.
    #[serde(default)]
    pub total_tokens: u64,
    /// Breakdown of the prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens read from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
}

/// The parts of an upstream response or chunk the gateway reads; everything else is forwarded
/// as the upstream sent it.
#[derive(Debug, Default, Deserialize)]
pub struct ResponseProbe {
    /// Choices (an empty list marks the final usage chunk).
    #[serde(default)]
    pub choices: Option<Vec<ChoiceProbe>>,
    /// Usage, when present.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Groq reports stream usage here.
    #[serde(default)]
    pub x_groq: Option<GroqExtra>,
    /// An error object sent inside a stream.
    #[serde(default)]
    pub error: Option<Value>,
}

/// Groq's `x_groq` extension.
#[derive(Debug, Default, Deserialize)]
pub struct GroqExtra {
    /// Usage of the whole stream.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// What the gateway reads of a choice.
#[derive(Debug, Default, Deserialize)]
pub struct ChoiceProbe {
    /// A stream chunk's delta.
    #[serde(default)]
    pub delta: Option<DeltaProbe>,
}

/// What the gateway reads of a delta.
#[derive(Debug, Default, Deserialize)]
pub struct DeltaProbe {
    /// The text's length, if any: only its size is read, so it is never copied out.
    #[serde(default)]
    pub content: Option<TextLen>,
    /// Tool call fragments, if any.
    #[serde(default)]
    pub tool_calls: Option<Box<serde_json::value::RawValue>>,
}

/// A content's text length in bytes (unescaped), read without copying the text out: a stream
/// has a delta per token, and the gateway needs only how much text came. Content is a string,
/// or (as some OpenAI-compatible servers send it) an array of parts whose `text` fields count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TextLen(pub usize);

/// One part of an array content: only a text part's text counts. Any other part (an image, a
/// `thinking` part, a shape no API documents) counts 0 rather than failing the chunk: the
/// gateway passes content on as it came and needs only an estimate of its size.
#[derive(Deserialize)]
#[serde(untagged)]
enum PartProbe {
    /// `{"text": "…", …}`.
    Text { text: TextLen },
    /// Anything else.
    Other(serde::de::IgnoredAny),
}

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Len;
        impl<'de> serde::de::Visitor<'de> for Len {
            type Value = TextLen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TextLen, E> {
                Ok(TextLen(v.len()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut parts: A,
            ) -> Result<TextLen, A::Error> {
                let mut len = 0;
                while let Some(part) = parts.next_element::<PartProbe>()? {
                    if let PartProbe::Text { text } = part {
                        len += text.0;
                    }
                }
                Ok(TextLen(len))
            }
        }
        d.deserialize_any(Len)
    }
}

impl ResponseProbe {
    /// Bytes of content and tool-call arguments in a stream chunk (0: none).
    pub fn content_len(&self) -> usize {
        self.choices
            .iter()
            .flatten()
            .filter_map(|c| c.delta.as_ref())
            .map(|d| {
                d.content.map_or(0, |t| t.0) + d.tool_calls.as_ref().map_or(0, |t| t.get().len())
            })
            .sum()
    }

    /// Usage from wherever this provider put it.
    pub fn usage(&self) -> Option<&Usage> {
        self.usage
            .as_ref()
            .or_else(|| self.x_groq.as_ref().and_then(|x| x.usage.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunks_content_length_is_its_unescaped_text_in_bytes() {
        let len = |json: &str| serde_json::from_str::<ResponseProbe>(json).map(|p| p.content_len());
        assert_eq!(
            len(r#"{"choices":[{"delta":{"content":"héllo"}}]}"#).unwrap(),
            6
        );
        // Escapes count as the characters they stand for.
        assert_eq!(
            len(r#"{"choices":[{"delta":{"content":"a\"b\u00e9\n"}}]}"#).unwrap(),
            6
        );
        assert_eq!(
            len(r#"{"choices":[{"delta":{"content":null}}]}"#).unwrap(),
            0
        );
        assert_eq!(
            len(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#).unwrap(),
            0
        );
        assert_eq!(
            len(r#"{"choices":[{"delta":{"content":"ab"}},{"delta":{"content":"cde"}}]}"#).unwrap(),
            5
        );
        // An array of parts counts the text of each part that has some.
        assert_eq!(
            len(r#"{"choices":[{"delta":{"content":[{"type":"text","text":"hé"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"\n"}]}}]}"#).unwrap(),
            4
        );
        assert_eq!(len(r#"{"choices":[{"delta":{"content":[]}}]}"#).unwrap(), 0);
        // Parts of shapes not known count nothing, and the chunk still passes.
        assert_eq!(
            len(r#"{"choices":[{"delta":{"content":["a",null,{"type":"thinking","thinking":[{"text":"x"}]},{"text":{"value":"y"}},{"text":"ok"}]}}]}"#).unwrap(),
            2
        );
        // Content itself must be text or parts.
        assert!(len(r#"{"choices":[{"delta":{"content":7}}]}"#).is_err());
        assert!(len(r#"{"choices":[{"delta":{"content":{"text":"a"}}}]}"#).is_err());
    }
}
