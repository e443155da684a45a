//! Answers to and from the cache: a cached answer served as JSON or as an SSE stream
//! (whichever way it was stored), and answers captured for storing (a JSON body, or a stream
//! reassembled chunk by chunk).

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::record::Record;
use super::{headers, sse, AppState};
use crate::cache::{Answer, Found, Lookup, Outcome};
use crate::openai::{ChatRequest, Usage};
use crate::router::Routed;

/// `hit-exact`, `hit-semantic`, `miss` or `bypass`.
pub const CACHE: HeaderName = HeaderName::from_static("x-llm-gateway-cache");
/// The cosine similarity of a semantic hit.
pub const SIMILARITY: HeaderName = HeaderName::from_static("x-llm-gateway-cache-similarity");

/// The outcome of the cache step.
pub enum Step {
    /// Answered from the cache.
    Hit(Response),
    /// To be answered upstream; store the answer under this lookup (none: no cache, or a
    /// bypass).
    Miss(Option<Lookup>),
}

/// The cache step of the chat request path: looks the request up (exact, then semantic),
/// counts the outcome in metrics and the record, and answers hits.
pub async fn lookup(
    gw: &AppState,
    caller: &crate::auth::Caller,
    routed: &Routed,
    raw: &serde_json::Map<String, Value>,
    req: &ChatRequest,
    req_headers: &HeaderMap,
    record: &mut Record,
) -> Step {
    let Some(cache) = &gw.cache else {
        return Step::Miss(None);
    };
    let t = &routed.target;
    let route = match &t.virtual_model {
        Some(v) => v.clone(),
        None => format!("{}/{}", t.provider.name, t.model),
    };
    let started = std::time::Instant::now();
    let Ok(mut l) = cache.prepare(
        caller.tenant(),
        &route,
        t.virtual_model.as_deref(),
        raw,
        req,
        req_headers,
    ) else {
        gw.metrics.cache_lookup(Outcome::Bypass, None, None);
        record.set_cache(Outcome::Bypass);
        return Step::Miss(None);
    };
    let (found, embed) = cache.find(&mut l).await;
    let outcome = match &found {
        Found::Exact(_) => Outcome::HitExact,
        Found::Semantic(..) => Outcome::HitSemantic,
        Found::Miss => Outcome::Miss,
    };
    gw.metrics.cache_lookup(
        outcome,
        Some(started.elapsed().as_secs_f64()),
        embed.map(|d| d.as_secs_f64()),
    );
    record.set_cache(outcome);
    let (answer, similarity) = match found {
        Found::Exact(a) => (a, None),
        Found::Semantic(a, sim) => (a, Some(sim)),
        Found::Miss => return Step::Miss(Some(l)),
    };
    record.finish(200, None);
    Step::Hit(respond(req, &answer, outcome, similarity))
}

/// The response for a cache hit.
pub fn respond(req: &ChatRequest, a: &Answer, kind: Outcome, similarity: Option<f32>) -> Response {
    let id = format!("chatcmpl-cache-{}", uuid::Uuid::new_v4().simple());
    let created = crate::openai::unix_now();
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

/// The answer in a JSON completion (one choice).
pub fn from_json(body: &[u8], provider: &str, usage: Option<&Usage>) -> Option<Answer> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let choices = v["choices"].as_array()?;
    let [choice] = choices.as_slice() else {
        return None;
    };
    Some(Answer {
        message: choice["message"].clone(),
        finish_reason: choice["finish_reason"].as_str()?.to_owned(),
        model: v["model"].as_str().unwrap_or_default().to_owned(),
        provider: provider.to_owned(),
        usage: usage.cloned(),
    })
}

/// A stream's answer, reassembled from its chunks.
#[derive(Debug, Default)]
pub struct Capture {
    content: String,
    tool_calls: bool,
    finish: Option<String>,
    model: String,
    broken: bool,
}

impl Capture {
    /// Takes in one chunk's JSON.
    pub fn add(&mut self, data: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            self.broken = true;
            return;
        };
        if let Some(m) = v["model"].as_str() {
            m.clone_into(&mut self.model);
        }
        for c in v["choices"].as_array().into_iter().flatten() {
            if c["index"].as_u64().unwrap_or(0) != 0 {
                self.broken = true;
            }
            if let Some(t) = c["delta"]["content"].as_str() {
                self.content.push_str(t);
            }
            if !c["delta"]["tool_calls"].is_null() {
                // Tool-call streams are not reassembled: such answers are not cached.
                self.tool_calls = true;
            }
            if let Some(f) = c["finish_reason"].as_str() {
                self.finish = Some(f.to_owned());
            }
        }
    }

    /// The answer of a complete stream.
    pub fn finish(self, provider: &str, usage: Option<&Usage>) -> Option<Answer> {
        if self.broken || self.tool_calls {
            return None;
        }
        Some(Answer {
            message: json!({"role": "assistant", "content": self.content}),
            finish_reason: self.finish?,
            model: self.model,
            provider: provider.to_owned(),
            usage: usage.cloned(),
        })
    }
}
