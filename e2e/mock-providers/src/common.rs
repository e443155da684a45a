//! What every mock vendor shares: faults, deterministic replies, token counts, streaming.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

/// Fault injection for one vendor.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Fault {
    /// Vendor prefix: openai, groq, together, anthropic, ollama.
    pub vendor: String,
    /// Only requests for this model (as the request names it) meet the fault; the others
    /// are served normally (a per-model rate limit).
    #[serde(default)]
    pub model: Option<String>,
    /// OpenAI format: answer `status` (default 429) as OpenAI does when the account's quota
    /// is spent (`type` and `code` `insufficient_quota`), not a rate limit.
    #[serde(default)]
    pub quota_exhausted: bool,
    /// Answer with this error status, in the vendor's error format.
    #[serde(default)]
    pub status: Option<u16>,
    /// The error message (default: the vendor's usual one for the status).
    #[serde(default)]
    pub message: Option<String>,
    /// `Retry-After` header value on errors.
    #[serde(default)]
    pub retry_after: Option<String>,
    /// `retry-after-ms` header value on errors.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// Delay before the response headers.
    #[serde(default)]
    pub latency_ms: u64,
    /// Streams: delay between the role preamble and the first content chunk.
    #[serde(default)]
    pub ttft_ms: u64,
    /// Streams: delay between later chunks.
    #[serde(default)]
    pub chunk_delay_ms: u64,
    /// Never answer (for timeout tests).
    #[serde(default)]
    pub hang: bool,
    /// Send invalid JSON (the body, or a stream's first content chunk).
    #[serde(default)]
    pub malformed: bool,
    /// OpenAI-format streams: send each delta's text as an array of content parts
    /// (`[{"type":"text","text":…}]`), as some OpenAI-compatible servers do.
    #[serde(default)]
    pub content_parts: bool,
    /// Streams: close the connection after this many frames, unfinished.
    #[serde(default)]
    pub cut_after: Option<usize>,
    /// Apply to the next N requests only (default: until cleared).
    #[serde(default)]
    pub times: Option<u32>,
    /// Load-dependent latency: this many ms more before the response for each request of
    /// the vendor already in progress (a provider that slows down as its load grows).
    #[serde(default)]
    pub latency_per_inflight_ms: f64,
    /// Capacity: a request arriving while this many of the vendor's are in progress gets
    /// `status` (default 429) with the retry headers; the others are served normally.
    #[serde(default)]
    pub max_inflight: Option<usize>,
    /// A tail: every Nth request of the vendor waits `tail_ms` more before its response.
    #[serde(default)]
    pub tail_every: Option<u64>,
    /// See `tail_every`.
    #[serde(default)]
    pub tail_ms: u64,
    /// Answer `307 Temporary Redirect` to this URL (a provider behind a misbehaving proxy).
    #[serde(default)]
    pub redirect_to: Option<String>,
    /// With `status`: answer with this raw body (`text/html`) instead of the vendor's error
    /// JSON (a proxy's error page).
    #[serde(default)]
    pub error_body: Option<String>,
}

/// How many requests of one vendor are in progress (streams until they end), and the most
/// seen at once.
#[derive(Debug, Default)]
pub struct Load {
    now: AtomicUsize,
    max: AtomicUsize,
    seq: AtomicU64,
}

impl Load {
    /// Requests in progress.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
    /// The most in progress at once since the last reset.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
    /// Forgets the maximum.
    pub fn reset_max(&self) {
        self.max.store(self.now(), Ordering::SeqCst);
    }
}

/// One request in progress; counted until dropped (moved into a stream's body for streams).
#[derive(Debug)]
pub struct InFlight(Arc<Load>, u64);

impl InFlight {
    /// Counts a new request on `load`.
    pub fn enter(load: Arc<Load>) -> Self {
        let n = load.now.fetch_add(1, Ordering::SeqCst) + 1;
        load.max.fetch_max(n, Ordering::SeqCst);
        let seq = load.seq.fetch_add(1, Ordering::SeqCst) + 1;
        Self(load, seq)
    }

    /// Requests in progress, this one included.
    pub fn count(&self) -> usize {
        self.0.now()
    }

    /// This request's number among the vendor's, from 1.
    pub fn seq(&self) -> u64 {
        self.1
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fault {
    /// Applies capacity, latency and hangs; returns the error status to answer with, if any.
    pub async fn before_response(&self, load: &InFlight) -> Option<StatusCode> {
        let others = load.count().saturating_sub(1);
        if let Some(cap) = self.max_inflight {
            if others >= cap {
                return StatusCode::from_u16(self.status.unwrap_or(429)).ok();
            }
        }
        let tail = match self.tail_every {
            Some(n) if n > 0 && load.seq().is_multiple_of(n) => self.tail_ms,
            _ => 0,
        };
        let ms = (self.latency_ms + tail) as f64 + self.latency_per_inflight_ms * others as f64;
        if ms > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
        }
        if self.hang {
            std::future::pending::<()>().await;
        }
        if self.max_inflight.is_some() {
            return None;
        }
        self.status
            .or(self.quota_exhausted.then_some(429))
            .and_then(|s| StatusCode::from_u16(s).ok())
    }

    /// The raw error page to answer with, if the fault sets one.
    pub fn raw_error(&self, status: StatusCode) -> Option<Response> {
        let body = self.error_body.clone()?;
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        Some(r)
    }

    /// The redirect to answer with, if the fault asks for one.
    pub fn redirect(&self) -> Option<Response> {
        let to = HeaderValue::from_str(self.redirect_to.as_deref()?).ok()?;
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        r.headers_mut().insert(header::LOCATION, to);
        Some(r)
    }

    /// Adds the configured retry headers to an error response.
    pub fn retry_headers(&self, resp: &mut Response) {
        if let Some(v) = self
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Some(ms) = self.retry_after_ms {
            resp.headers_mut()
                .insert("retry-after-ms", HeaderValue::from(ms));
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A 200 whose body is cut-off JSON.
pub fn malformed_json() -> Response {
    let mut r = Response::new(Body::from(r#"{"id":"broken","choices":[{"index":0,"mess"#));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A streamed response of pre-built frames: the first (preamble) at once, the second after
/// `ttft_ms`, the rest `chunk_delay_ms` apart; cut or corrupted as the fault says.
pub fn stream_response(
    mut frames: Vec<Bytes>,
    fault: &Fault,
    content_type: &'static str,
    bad_frame: &'static [u8],
    load: InFlight,
) -> Response {
    if fault.malformed && frames.len() > 1 {
        frames[1] = Bytes::from_static(bad_frame);
    }
    if let Some(n) = fault.cut_after {
        frames.truncate(n);
    }
    let (ttft, gap) = (fault.ttft_ms, fault.chunk_delay_ms);
    let load = Arc::new(load);
    let stream = futures::stream::iter(frames.into_iter().enumerate()).then(move |(i, f)| {
        // The request counts as in progress until the stream is done or dropped.
        let _load = load.clone();
        async move {
            let delay = match i {
                0 => 0,
                1 => ttft,
                _ => gap,
            };
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            Ok::<_, Infallible>(f)
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A rough token count (about four characters a token), at least 1 for non-empty text.
pub fn count_tokens(s: &str) -> u64 {
    let n = s.chars().count() as u64;
    n.div_ceil(4)
}

const WORDS: [&str; 8] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
];

/// The deterministic reply to `prompt`.
pub fn reply_text(vendor: &str, model: &str, prompt: &str) -> String {
    if let Some(n) = directive(prompt, "words") {
        return (0..n)
            .map(|i| WORDS[i % WORDS.len()])
            .collect::<Vec<_>>()
            .join(" ");
    }
    let echo: String = prompt.chars().take(80).collect();
    format!("Mock {vendor} reply from {model}: {echo}")
}

/// `[[name=N]]` in the prompt.
fn directive(prompt: &str, name: &str) -> Option<usize> {
    let start = prompt.find(&format!("[[{name}="))? + name.len() + 3;
    let end = prompt[start..].find("]]")? + start;
    prompt[start..end].parse().ok()
}

/// Splits text into stream pieces: one word each, keeping the spaces.
pub fn text_pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch == ' ' && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits a string into fragments of at most 7 characters (tool-argument deltas).
pub fn fragments(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars.chunks(7).map(|c| c.iter().collect()).collect()
}

/// A value matching a JSON schema, for tool-call arguments and structured answers.
pub fn sample(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    match schema["type"].as_str() {
        Some("object") | None if schema["properties"].is_object() => {
            let props = schema["properties"].as_object().unwrap();
            Value::Object(props.iter().map(|(k, v)| (k.clone(), sample(v))).collect())
        }
        Some("object") => json!({}),
        Some("string") => json!("sample"),
        Some("integer") => json!(1),
        Some("number") => json!(1.5),
        Some("boolean") => json!(true),
        Some("array") => json!([sample(&schema["items"])]),
        _ => Value::Null,
    }
}

/// A deterministic unit-length vector for a text.
pub fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let mut v: Vec<f32> = (0..dims)
        .map(|i| {
            h = h
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407 + i as u64);
            ((h >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Texts of an embeddings `input` (string, list of strings, or token arrays).
pub fn embedding_inputs(input: &Value) -> Vec<String> {
    match input {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_number) => vec![input.to_string()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        other => vec![other.to_string()],
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A process-unique suffix for ids.
pub fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The text of an OpenAI or Anthropic message `content` (string or typed parts).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str().or(p["content"].as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}
