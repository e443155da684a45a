//! A cached answer as HTTP: JSON, or an SSE stream, whichever the request asks for
//! (whichever way it was stored).

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::{headers, sse};
use crate::cache::{Answer, Outcome};
use crate::wire::ChatRequest;

/// `hit-exact`, `hit-semantic`, `miss` or `bypass`.
pub const CACHE: HeaderName = HeaderName::from_static("x-llm-gateway-cache");
/// The cosine similarity of a semantic hit.
pub const SIMILARITY: HeaderName = HeaderName::from_static("x-llm-gateway-cache-similarity");

/// The response for a cache hit.
pub fn response(req: &ChatRequest, a: &Answer, kind: Outcome, similarity: Option<f32>) -> Response {
    let id = format!("chatcmpl-cache-{}", uuid::Uuid::new_v4().simple());
    let created = crate::clock::unix_now();
    let mut resp = if req.stream == Some(true) {
        let mut frames: Vec<Bytes> = Vec::new();
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": a.model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        frames.push(sse::data(
            chunk(json!({"role": "assistant", "content": ""}), None)
                .to_string()
                .as_bytes(),
        ));
        let mut delta = a.message.clone();
        if let Some(o) = delta.as_object_mut() {
            o.remove("role");
            if let Some(Value::Array(calls)) = o.get_mut("tool_calls") {
                for (i, c) in calls.iter_mut().enumerate() {
                    c["index"] = json!(i);
                }
            }
        }
        frames.push(sse::data(chunk(delta, None).to_string().as_bytes()));
        frames.push(sse::data(
            chunk(json!({}), Some(&a.finish_reason))
                .to_string()
                .as_bytes(),
        ));
        if req.wants_stream_usage() {
            let u = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                           "model": a.model, "choices": [], "usage": a.usage});
            frames.push(sse::data(u.to_string().as_bytes()));
        }
        frames.push(sse::done(Some(0.0)));
        let stream =
            futures::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>));
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        let body = json!({"id": id, "object": "chat.completion", "created": created, "model": a.model,
            "choices": [{"index": 0, "message": a.message, "logprobs": null, "finish_reason": a.finish_reason}],
            "usage": a.usage});
        let mut r = Response::new(Body::from(body.to_string()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = resp.headers_mut();
    put(h, headers::PROVIDER, &a.provider);
    put(h, headers::MODEL, &a.model);
    h.insert(headers::COST, HeaderValue::from_static("0"));
    h.insert(CACHE, HeaderValue::from_static(kind.header()));
    if let Some(s) = similarity {
        put(h, SIMILARITY, &format!("{s:.4}"));
    }
    resp
}

fn put(h: &mut HeaderMap, name: HeaderName, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(name, v);
    }
}
