//! The LLM Gateway operator: watches `ProviderPool`, `LLMRoute` and `BudgetPolicy`
//! resources and the Secrets they name, compiles them into one gateway configuration
//! ([`compile`]), keeps it in a ConfigMap and pushes it to every gateway pod, and reports in
//! each resource's status whether it is live.

pub mod compile;
pub mod gateways;
pub mod metrics;
pub mod runtime;
pub mod webhook;

/// Installs the process-wide TLS crypto provider (ring); call once before any TLS.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
