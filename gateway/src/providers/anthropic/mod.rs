//! The Anthropic Messages API: exact translation both ways.

pub mod request;
pub mod response;

use bytes::Bytes;
use futures::StreamExt;

use super::{stream_channel, ChatCall, ChatResponse, Provider, StreamItem};
use crate::error::{Error, Failure};

pub use response::error_from_body;

/// `POST {base}/v1/messages`, translated from and back to OpenAI's format.
pub async fn chat(p: &Provider, call: ChatCall<'_>) -> Result<ChatResponse, Error> {
    let stream = call.req.is_stream();
    let default_max = call
        .info
        .and_then(|i| i.max_output_tokens)
        .map_or(p.default_max_tokens, |m| m.min(p.default_max_tokens));
    let t = request::translate(call.req, call.raw, call.model, default_max)?;
    let mut req = p.post_chat(&t.body)?;
    req.headers_mut()
        .insert("anthropic-version", p.anthropic_version.clone());
    let resp = p.send(req, stream).await?;

    if !stream {
        let body = p.read_body(resp).await?;
        let (v, usage) =
            response::to_chat_completion(&body, t.json_tool.as_deref()).map_err(|e| {
                Error::bad_gateway(format!(
                    "provider {} returned an invalid message: {e}",
                    p.name
                ))
                .with_failure(Failure::Malformed)
            })?;
        return Ok(ChatResponse::Json {
            body: Bytes::from(v.to_string()),
            usage: Some(usage),
        });
    }

    let (tx, rx) = stream_channel();
    let provider = p.name.clone();
    let idle = p.client_idle_timeout;
    let mut events = super::event_stream::data_events(super::capped(resp, p.max_response_bytes));
    let mut translator = response::StreamTranslator::new(t.json_tool);
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            let items = match ev {
                Ok(data) => translator.on_event(&data),
                Err(e) => vec![StreamItem::Error(super::stream_read_error(&provider, e))],
            };
            for item in items {
                let last = !matches!(item, StreamItem::Chunk { .. });
                if !tx.forward(item, idle).await || last {
                    return;
                }
            }
        }
    });
    Ok(ChatResponse::Stream(rx))
}
