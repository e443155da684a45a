//! Shared bench setup: a registry of exactly 20 chat models from the built-in catalog.

use std::sync::Arc;

use llm_gateway::config::{self, Settings};
use llm_gateway::models::registry::Registry;
use llm_gateway::providers::Provider;
use llm_gateway::router::Router;

/// The document, settings, registry and router over 20 catalog chat models (no network).
pub fn twenty_candidates() -> (llm_gateway_crds::GatewayConfig, Settings, Registry, Router) {
    llm_gateway::install_crypto();
    let yaml = "providers:\n- {name: openai, api_key: {env: K}}\n- {name: anthropic, api_key: {env: K}}\n- {name: groq, api_key: {env: K}, models: [{name: extra-a, input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.2, context_window: 8192, capabilities: [tools], quality: 0.5}]}\n";
    let cfg = config::parse("bench", yaml).unwrap();
    let settings = config::validate(&cfg, "bench", &|k: &str| {
        (k != "LLM_GATEWAY_ADMIN_TOKEN").then(|| "k".into())
    })
    .unwrap();
    let learned = llm_gateway::providers::learned::Learned::default();
    let mut left = 20usize;
    let providers = settings
        .providers
        .iter()
        .map(|p| {
            let models: Vec<_> = p
                .models
                .iter()
                .filter(|m| m.kind == llm_gateway_crds::ModelKind::Chat)
                .take(left)
                .cloned()
                .collect();
            left -= models.len();
            (Arc::new(Provider::new(p, &learned).unwrap()), models)
        })
        .collect();
    let registry = Registry::new(providers, &learned);
    let router = Router::new(
        &settings.routing.virtuals,
        &registry,
        settings.routing.latency_decay,
    );
    let pool = router.virtuals().find(|(v, _)| v.name == "auto").unwrap().1;
    assert_eq!(pool, 20, "the benches need exactly 20 candidates");
    (cfg, settings, registry, router)
}
