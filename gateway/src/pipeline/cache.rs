//! Answers to and from the cache: a cached answer served as JSON or as an SSE stream
//! (whichever way it was stored), and answers captured for storing (a JSON body, or a stream
//! reassembled chunk by chunk).

use http::HeaderMap;
use serde_json::{json, Value};

use super::context::RequestContext;
use crate::cache::{Answer, Found, Lookup, Outcome};
use crate::router::Routed;
use crate::state::AppState;
use crate::wire::{ChatRequest, Usage};

/// A cached answer for this request.
pub struct Hit {
    /// The answer.
    pub answer: std::sync::Arc<Answer>,
    /// Exact or semantic.
    pub outcome: Outcome,
    /// The cosine similarity of a semantic hit.
    pub similarity: Option<f32>,
}

/// The outcome of the cache step.
pub enum Step {
    /// Answered from the cache.
    Hit(Hit),
    /// To be answered upstream; store the answer under this lookup (none: no cache, or a
    /// bypass).
    Miss(Option<Lookup>),
}

/// The cache step of the chat request path: looks the request up (exact, then semantic),
/// counts the outcome in metrics and the ctx, and returns a hit's answer.
pub async fn lookup(
    gw: &AppState,
    caller: &crate::auth::Caller,
    routed: &Routed,
    raw: &serde_json::Map<String, Value>,
    req: &ChatRequest,
    req_headers: &HeaderMap,
    ctx: &mut RequestContext,
) -> Step {
    let Some(cache) = &gw.cache else {
        return Step::Miss(None);
    };
    let t = &routed.target;
    let mut route = match &t.virtual_model {
        Some(v) => v.clone(),
        None => format!("{}/{}", t.provider.name, t.model),
    };
    // A virtual model routes a key with an allow-list among its allowed models only: its
    // answers must not reach a key without that list, nor the other way round. (A named
    // model is in the route itself, and was checked against the list before this step.)
    if t.virtual_model.is_some() {
        if let crate::auth::Caller::Key(k) = caller {
            // The list is stored sorted, so equal lists give equal scopes.
            // The same scope as replicas of earlier versions write: `\0allowed:a\0b`.
            if let Some(allowed) = &k.allowed_models {
                route.push_str("\u{0}allowed:");
                for (i, m) in allowed.iter().enumerate() {
                    if i > 0 {
                        route.push('\u{0}');
                    }
                    route.push_str(m);
                }
            }
        }
    }
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
        ctx.set_cache(Outcome::Bypass);
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
    ctx.set_cache(outcome);
    let (answer, similarity) = match found {
        Found::Exact(a) => (a, None),
        Found::Semantic(a, sim) => (a, Some(sim)),
        Found::Miss => return Step::Miss(Some(l)),
    };
    ctx.finish(200, None);
    Step::Hit(Hit {
        answer,
        outcome,
        similarity,
    })
}

/// The tail's cache step: a complete answer kept by the handler is stored (only for a
/// request that succeeded).
pub fn store(ctx: &mut RequestContext, status: u16) {
    let (Some((lookup, answer)), Some(cache)) = (ctx.to_cache.take(), &ctx.gw.cache) else {
        return;
    };
    if status == 200 {
        cache.store(lookup, answer);
        ctx.gw.metrics.cache_entries(cache.len());
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
            if !self.push_content(&c["delta"]["content"]) {
                self.broken = true;
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

    /// Appends a delta's text; false if it holds something that is not text (such a stream is
    /// not cached rather than cached without it).
    fn push_content(&mut self, content: &Value) -> bool {
        match content {
            Value::Null => true,
            Value::String(t) => {
                self.content.push_str(t);
                true
            }
            // Some OpenAI-compatible servers send content as parts; text parts are the text.
            Value::Array(parts) => parts.iter().all(|p| match (&p["type"], &p["text"]) {
                (Value::String(kind), Value::String(t)) if kind == "text" => {
                    self.content.push_str(t);
                    true
                }
                _ => false,
            }),
            _ => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(chunks: &[Value]) -> Option<String> {
        let mut c = Capture::default();
        for chunk in chunks {
            c.add(chunk.to_string().as_bytes());
        }
        let a = c.finish("openai", None)?;
        Some(a.message["content"].as_str()?.to_owned())
    }

    fn delta(content: Value) -> Value {
        json!({"model": "m", "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
    }

    #[test]
    fn a_stream_is_reassembled_from_strings_and_text_parts_and_nothing_else() {
        let end = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        let text = [
            delta(json!("ab")),
            delta(Value::Null),
            delta(json!([{"type": "text", "text": "c"}, {"type": "text", "text": "d"}])),
            end.clone(),
        ];
        assert_eq!(captured(&text).as_deref(), Some("abcd"));
        // A part that is not text would be lost from the stored answer: not stored at all.
        let image = [
            delta(json!("ab")),
            delta(json!([{"type": "image_url", "image_url": {"url": "x"}}])),
            end.clone(),
        ];
        assert_eq!(captured(&image), None);
        assert_eq!(captured(&[delta(json!(7)), end]), None);
    }
}
