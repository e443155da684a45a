//! Mock LLM providers speaking the real wire formats, for tests and benchmarks.
//!
//! One server, one path prefix per vendor, as each vendor's SDK would be pointed at it:
//! - OpenAI `…/openai/v1`, Groq `…/groq/openai/v1`, Together `…/together/v1`:
//!   `POST chat/completions`, `POST embeddings`, `GET models`.
//! - Anthropic `…/anthropic`: `POST /v1/messages`.
//! - Ollama `…/ollama`: `GET /api/tags`, `POST /api/chat`, `POST /api/embed`, `GET /api/version`,
//!   and its OpenAI-compatible `/v1/chat/completions`, `/v1/embeddings`.
//!
//! Control endpoints: `POST /_mock/faults` sets a [`Fault`] for a vendor, `DELETE /_mock/faults`
//! clears all; `GET /_mock/requests?vendor=…` returns the requests received (newest last),
//! `DELETE /_mock/requests` forgets them; `GET /_mock/load?vendor=…` says how many of the
//! vendor's requests are in progress and the most seen at once (`DELETE` resets that);
//! `POST /_mock/replies` scripts answers (a list of [`Scripted`]: a model whose last user
//! message contains a text answers a given reply), `DELETE /_mock/replies` forgets them.
//! It is also an OTLP/HTTP trace collector (`POST /v1/traces`; see [`collector`]).
//!
//! Answers are deterministic: the reply echoes the last user message; a request with tools
//! (and `tool_choice` not `none`) whose last message is not a tool result gets a tool call
//! with arguments built from the tool's JSON schema; `[[words=N]]` in the prompt asks for an
//! N-word reply. A model named `missing-…` does not exist.

mod anthropic;
pub mod collector;
mod common;
mod ollama;
mod openai;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use common::Fault;

/// Shared mock state.
#[derive(Default)]
pub struct Mock {
    faults: Mutex<HashMap<String, Fault>>,
    load: Mutex<HashMap<String, Arc<common::Load>>>,
    requests: Mutex<VecDeque<Recorded>>,
    ollama_models: Vec<String>,
    spans: Mutex<Vec<collector::Span>>,
    replies: Mutex<Vec<Scripted>>,
}

/// A scripted answer: requests for `model` (`*`: any) whose last user message contains
/// `contains` get `reply` as the assistant's text (the first matching script wins).
#[derive(Debug, Clone, Deserialize)]
pub struct Scripted {
    /// The model it applies to, or `*`.
    pub model: String,
    /// Text the last user message must contain.
    pub contains: String,
    /// The answer.
    pub reply: String,
    /// OpenAI's protocol only: the answer is a refusal (`message.refusal`, `content: null`,
    /// streamed as `refusal` deltas), as structured outputs give it.
    #[serde(default)]
    pub refusal: bool,
}

/// A request as the mock received it.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    /// Vendor prefix that received it.
    pub vendor: String,
    /// Path.
    pub path: String,
    /// Auth and version headers as received.
    pub headers: HashMap<String, String>,
    /// The JSON body.
    pub body: Value,
}

const KEEP_REQUESTS: usize = 500;

/// Ollama models the mock lists unless told otherwise.
pub const DEFAULT_OLLAMA_MODELS: [&str; 3] = [
    "llama3.2:latest",
    "qwen2.5-coder:7b",
    "nomic-embed-text:latest",
];

impl Mock {
    /// A mock whose Ollama lists `ollama_models`.
    pub fn new(ollama_models: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            ollama_models,
            ..Default::default()
        })
    }

    fn record(&self, vendor: &str, path: &str, headers: &http::HeaderMap, body: &Value) {
        let keep = [
            "authorization",
            "x-api-key",
            "anthropic-version",
            "content-type",
            "traceparent",
        ];
        let headers = keep
            .iter()
            .filter_map(|k| {
                headers
                    .get(*k)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (k.to_string(), v.to_owned()))
            })
            .collect();
        let mut q = self.requests.lock().unwrap();
        if q.len() >= KEEP_REQUESTS {
            q.pop_front();
        }
        q.push_back(Recorded {
            vendor: vendor.to_owned(),
            path: path.to_owned(),
            headers,
            body: body.clone(),
        });
    }

    /// The scripted reply of `model` to `prompt`, else the default deterministic one.
    fn reply(&self, vendor: &str, model: &str, prompt: &str) -> String {
        self.script(model, prompt)
            .map(|s| s.reply)
            .unwrap_or_else(|| common::reply_text(vendor, model, prompt))
    }

    /// The first script for `model` whose text `prompt` contains.
    fn script(&self, model: &str, prompt: &str) -> Option<Scripted> {
        let scripts = self.replies.lock().unwrap();
        scripts
            .iter()
            .find(|s| (s.model == "*" || s.model == model) && prompt.contains(&s.contains))
            .cloned()
    }

    /// The scripted refusal of `model` to `prompt`, if one is scripted.
    fn refusal(&self, model: &str, prompt: &str) -> Option<String> {
        self.script(model, prompt)
            .filter(|s| s.refusal)
            .map(|s| s.reply)
    }

    fn load_of(&self, vendor: &str) -> Arc<common::Load> {
        self.load
            .lock()
            .unwrap()
            .entry(vendor.to_owned())
            .or_default()
            .clone()
    }

    /// The fault to apply to the next request of `vendor` (consuming one of its `times`),
    /// and the request counted as in progress.
    fn take_fault(&self, vendor: &str, model: &str) -> (Fault, common::InFlight) {
        let load = common::InFlight::enter(self.load_of(vendor));
        (self.next_fault(vendor, model), load)
    }

    fn next_fault(&self, vendor: &str, model: &str) -> Fault {
        let mut faults = self.faults.lock().unwrap();
        let Some(f) = faults
            .get_mut(vendor)
            .filter(|f| f.model.as_deref().is_none_or(|m| m == model))
        else {
            return Fault::default();
        };
        let out = f.clone();
        if let Some(t) = f.times.as_mut() {
            *t = t.saturating_sub(1);
            if *t == 0 {
                faults.remove(vendor);
            }
        }
        out
    }
}

/// The mock's routes.
pub fn router(mock: Arc<Mock>) -> Router {
    let mut r = Router::new();
    for (vendor, prefix) in [
        ("openai", "/openai/v1"),
        ("groq", "/groq/openai/v1"),
        ("together", "/together/v1"),
        ("ollama", "/ollama/v1"),
    ] {
        r = r
            .route(
                &format!("{prefix}/chat/completions"),
                post(move |st, h, b| openai::chat(st, vendor, h, b)),
            )
            .route(
                &format!("{prefix}/embeddings"),
                post(move |st, h, b| openai::embeddings(st, vendor, h, b)),
            )
            .route(
                &format!("{prefix}/models"),
                get(move |st| openai::models(st, vendor)),
            );
    }
    r.route("/anthropic/v1/messages", post(anthropic::messages))
        .route("/ollama/api/tags", get(ollama::tags))
        .route("/ollama/api/version", get(ollama::version))
        .route("/ollama/api/chat", post(ollama::chat))
        .route("/ollama/api/embed", post(ollama::embed))
        .route("/_mock/faults", post(set_fault).delete(clear_faults))
        .route("/_mock/requests", get(list_requests).delete(clear_requests))
        .route("/_mock/load", get(get_load).delete(reset_load))
        .route("/_mock/replies", post(add_replies).delete(clear_replies))
        .route("/v1/traces", post(collector::receive))
        .route(
            "/_mock/spans",
            get(collector::list).delete(collector::clear),
        )
        // Real providers take requests of many megabytes (images, long documents).
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(mock)
}

async fn set_fault(State(m): State<Arc<Mock>>, Json(f): Json<Fault>) -> Json<Value> {
    m.faults.lock().unwrap().insert(f.vendor.clone(), f);
    Json(serde_json::json!({"ok": true}))
}

async fn add_replies(State(m): State<Arc<Mock>>, Json(r): Json<Vec<Scripted>>) -> Json<Value> {
    m.replies.lock().unwrap().extend(r);
    Json(serde_json::json!({"ok": true}))
}

async fn clear_replies(State(m): State<Arc<Mock>>) -> Json<Value> {
    m.replies.lock().unwrap().clear();
    Json(serde_json::json!({"ok": true}))
}

async fn clear_faults(State(m): State<Arc<Mock>>) -> Json<Value> {
    m.faults.lock().unwrap().clear();
    Json(serde_json::json!({"ok": true}))
}

#[derive(Deserialize)]
struct RequestsQuery {
    vendor: Option<String>,
}

async fn list_requests(
    State(m): State<Arc<Mock>>,
    Query(q): Query<RequestsQuery>,
) -> Json<Vec<Recorded>> {
    let all = m.requests.lock().unwrap();
    Json(
        all.iter()
            .filter(|r| q.vendor.as_deref().is_none_or(|v| v == r.vendor))
            .cloned()
            .collect(),
    )
}

/// `GET /_mock/load?vendor=…`: requests of the vendor in progress, and the most at once.
async fn get_load(State(m): State<Arc<Mock>>, Query(q): Query<RequestsQuery>) -> Json<Value> {
    let l = m.load_of(q.vendor.as_deref().unwrap_or_default());
    Json(serde_json::json!({"in_flight": l.now(), "max_in_flight": l.max()}))
}

/// `DELETE /_mock/load`: forgets every vendor's maximum.
async fn reset_load(State(m): State<Arc<Mock>>) -> Json<Value> {
    for l in m.load.lock().unwrap().values() {
        l.reset_max();
    }
    Json(serde_json::json!({"ok": true}))
}

async fn clear_requests(State(m): State<Arc<Mock>>) -> Json<Value> {
    m.requests.lock().unwrap().clear();
    Json(serde_json::json!({"ok": true}))
}

/// Serves the mock on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, mock: Arc<Mock>) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // As real providers' front ends do: without it, Nagle's algorithm holds each SSE chunk
    // until the client's delayed ACK (~40 ms), which is the mock's artefact, not the gateway's.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(mock)).await
}
