//! LLM Gateway: one OpenAI-compatible endpoint in front of OpenAI, Anthropic, Groq,
//! Together AI and Ollama.

pub mod admin;
pub mod admission;
pub mod alloc;
pub mod api;
pub mod app;
pub mod auth;
pub mod bench;
pub mod breaker;
pub mod budget;
pub mod cache;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod error;
pub mod kv;
pub mod latency;
pub mod ledger;
pub mod live;
pub mod models;
pub mod pipeline;
pub mod providers;
pub mod retention;
pub mod router;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod threads;
pub mod trace_context;
pub mod wire;
pub mod workload;

/// Installs the process-wide TLS crypto provider (ring); call once before building clients.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
