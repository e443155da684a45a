//! LLM Gateway: one OpenAI-compatible endpoint in front of OpenAI, Anthropic, Groq,
//! Together AI and Ollama.

pub mod admission;
pub mod api;
pub mod app;
pub mod auth;
pub mod breaker;
pub mod budget;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod deadline;
pub mod error;
pub mod failover;
pub mod kv;
pub mod ledger;
pub mod models;
pub mod openai;
pub mod providers;
pub mod router;
pub mod store;
pub mod telemetry;

/// Installs the process-wide TLS crypto provider (ring); call once before building clients.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
