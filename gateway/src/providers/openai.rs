//! The OpenAI protocol (OpenAI, Groq, Together AI, and Ollama's `/v1`): requests are forwarded
//! as the client sent them, with only `model` replaced (and usage requested on streams), so
//! fields the gateway does not know still reach the upstream.

use bytes::Bytes;
use futures::StreamExt;
use http::StatusCode;
use llm_gateway_crds::Protocol;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{opaque_error, stream_channel, ChatCall, ChatResponse, Provider, StreamItem};
use crate::error::{Error, Failure};
use crate::wire::{ResponseProbe, Usage};

/// The OpenAI-compatible root (`…/v1`) of a provider's base URL.
pub(super) fn root(protocol: Protocol, base_url: &str) -> String {
    match protocol {
        Protocol::Ollama => format!("{base_url}/v1"),
        _ => base_url.to_owned(),
    }
}

impl Provider {
    /// The OpenAI-compatible root (`…/v1`).
    fn openai_root(&self) -> String {
        root(self.protocol, &self.base_url)
    }
}

/// The client's body as sent upstream: every field as the client wrote it, with the model
/// name the provider knows and, for streams, usage asked for (needed to price the request
/// even when the client did not ask; the usage-only chunk is then held back from it).
/// Serialised straight from the parsed request, never copied: a body may be 10 MB and is
/// sent once per attempt.
struct Outgoing<'a> {
    raw: &'a Map<String, Value>,
    model: &'a str,
    stream: bool,
}

impl serde::Serialize for Outgoing<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.raw {
            match k.as_str() {
                "model" => {}
                "stream_options" if self.stream => {}
                _ => m.serialize_entry(k, v)?,
            }
        }
        m.serialize_entry("model", self.model)?;
        if self.stream {
            m.serialize_entry("stream_options", &UsageOn(self.raw.get("stream_options")))?;
        }
        m.end()
    }
}

/// The client's `stream_options` (if an object), with `include_usage: true`.
struct UsageOn<'a>(Option<&'a Value>);

impl serde::Serialize for UsageOn<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        if let Some(Value::Object(o)) = self.0 {
            for (k, v) in o.iter().filter(|(k, _)| *k != "include_usage") {
                m.serialize_entry(k, v)?;
            }
        }
        m.serialize_entry("include_usage", &true)?;
        m.end()
    }
}

/// `POST {root}/chat/completions`.
pub async fn chat(p: &Provider, call: ChatCall<'_>) -> Result<ChatResponse, Error> {
    let stream = call.req.is_stream();
    let body = Outgoing {
        raw: call.raw,
        model: call.model,
        stream,
    };
    let resp = p.send(p.post_chat(&body)?, stream).await?;
    if !stream {
        let body = p.read_body(resp).await?;
        let probe: ResponseProbe = serde_json::from_slice(&body).map_err(|e| {
            Error::bad_gateway(format!("provider {} returned invalid JSON: {e}", p.name))
                .with_failure(Failure::Malformed)
        })?;
        if probe.choices.is_none() {
            return Err(Error::bad_gateway(format!(
                "provider {} returned a response without `choices`",
                p.name
            ))
            .with_failure(Failure::Malformed));
        }
        let usage = probe.usage().cloned();
        return Ok(ChatResponse::Json { body, usage });
    }

    let (tx, rx) = stream_channel();
    let provider = p.name.clone();
    let idle = p.client_idle_timeout;
    let mut events = super::event_stream::data_events(super::capped(resp, p.max_response_bytes));
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            let item = match ev {
                Err(e) => StreamItem::Error(super::stream_read_error(&provider, e)),
                Ok(data) if data == "[DONE]" => StreamItem::End,
                Ok(data) => match serde_json::from_str::<ResponseProbe>(&data) {
                    Err(e) => StreamItem::Error(
                        Error::bad_gateway(format!(
                            "provider {provider} sent an invalid stream chunk: {e}"
                        ))
                        .with_failure(Failure::Malformed),
                    ),
                    Ok(probe) if probe.error.is_some() => {
                        let body = json!({"error": probe.error});
                        StreamItem::Error(
                            error_from_body(StatusCode::BAD_GATEWAY, &body.to_string())
                                .with_failure(Failure::Status(502)),
                        )
                    }
                    Ok(probe) => StreamItem::Chunk {
                        content: probe.content_len(),
                        usage_only: probe.choices.as_ref().is_some_and(Vec::is_empty)
                            && probe.usage().is_some(),
                        usage: probe.usage().cloned(),
                        data: Bytes::from(data),
                    },
                },
            };
            let last = !matches!(item, StreamItem::Chunk { .. });
            if !tx.forward(item, idle).await || last {
                return;
            }
        }
        // The byte stream ended without `[DONE]`: the caller turns the closed channel into an
        // error event, so a cut stream never looks complete.
    });
    Ok(ChatResponse::Stream(rx))
}

/// `POST {root}/embeddings`.
pub async fn embeddings(
    p: &Provider,
    mut body: Map<String, Value>,
    model: &str,
) -> Result<(Bytes, Option<Usage>), Error> {
    body.insert("model".into(), Value::String(model.to_owned()));
    let url = format!("{}/embeddings", p.openai_root());
    let url = url.parse().map_err(|e| {
        Error::bad_gateway(format!("provider {}: embeddings URL {url}: {e}", p.name))
    })?;
    let resp = p.send(p.post(url, &body)?, false).await?;
    let body = p.read_body(resp).await?;
    #[derive(Deserialize)]
    struct Probe {
        data: Vec<serde::de::IgnoredAny>,
        #[serde(default)]
        usage: Option<Usage>,
    }
    let probe: Probe = serde_json::from_slice(&body).map_err(|e| {
        Error::bad_gateway(format!(
            "provider {} returned an invalid embeddings response: {e}",
            p.name
        ))
        .with_failure(Failure::Malformed)
    })?;
    let _ = probe.data;
    Ok((body, probe.usage))
}

/// An OpenAI-format error body (`{"error": {...}}`, or Ollama's `{"error": "text"}`) to
/// [`Error`] with the upstream's status.
pub fn error_from_body(status: StatusCode, body: &str) -> Error {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return opaque_error(status, body);
    };
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    match v.get("error") {
        Some(Value::String(msg)) => {
            Error::upstream(status.as_u16(), default_kind(status), msg.clone())
        }
        Some(e @ Value::Object(_)) => {
            let mut err = Error::upstream(
                status.as_u16(),
                &str_of(e, "type").unwrap_or_else(|| default_kind(status).to_owned()),
                str_of(e, "message").unwrap_or_else(|| "upstream error".to_owned()),
            );
            match e.get("code") {
                Some(Value::String(c)) => err = err.with_code(c),
                Some(Value::Number(n)) => err = err.with_code(&n.to_string()),
                _ => {}
            }
            if let Some(p) = str_of(e, "param") {
                err = err.with_param(&p);
            }
            err
        }
        _ => opaque_error(status, body),
    }
}

fn default_kind(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "upstream_error"
    } else {
        "invalid_request_error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_error_bodies_keep_status_message_type_and_code() {
        let cases = [
            (
                401,
                r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
                "invalid_request_error",
                "Incorrect API key provided",
                Some("invalid_api_key"),
            ),
            (
                404,
                r#"{"error":"model \"llama9\" not found, try pulling it first"}"#,
                "invalid_request_error",
                "model \"llama9\" not found, try pulling it first",
                None,
            ),
            (
                500,
                "<html>oops</html>",
                "upstream_error",
                "upstream returned HTTP 500 without an error message the gateway understands",
                None,
            ),
        ];
        for (status, body, kind, msg, code) in cases {
            let e = error_from_body(StatusCode::from_u16(status).unwrap(), body);
            assert_eq!(e.status(), status);
            assert_eq!(e.kind.openai_type(), kind);
            assert_eq!(e.message, msg);
            assert_eq!(e.code.as_deref(), code);
        }
    }

    #[test]
    fn the_body_goes_upstream_as_written_with_the_model_and_usage_set() {
        let raw = serde_json::json!({"model": "auto", "temperature": 0.2, "user": "u-1",
            "stream": true, "stream_options": {"include_usage": false, "x": 1},
            "messages": [{"role": "user", "content": "hi"}]});
        let raw = raw.as_object().unwrap();
        let sent: Value = serde_json::to_value(Outgoing {
            raw,
            model: "gpt-4o-mini",
            stream: true,
        })
        .unwrap();
        assert_eq!(sent["model"], "gpt-4o-mini");
        assert_eq!(
            sent["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        for k in ["temperature", "user", "stream", "messages"] {
            assert_eq!(sent[k], raw[k], "{k}");
        }
        let plain: Value = serde_json::to_value(Outgoing {
            raw,
            model: "m",
            stream: false,
        })
        .unwrap();
        assert_eq!(plain["stream_options"], raw["stream_options"], "untouched");
    }
}
