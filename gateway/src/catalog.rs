//! The built-in model catalog (`catalog.yaml`, compiled into the binary): the five vendors'
//! endpoints, key variables and current models with prices, context windows and capabilities.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use llm_gateway_crds::{ModelConfig, Protocol};
use serde::Deserialize;

/// One vendor's catalog entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vendor {
    /// Wire protocol.
    pub protocol: Protocol,
    /// Public endpoint.
    pub base_url: String,
    /// Variable the vendor's SDK reads the key from.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Variable the vendor's SDK reads the base URL from.
    pub base_url_env: String,
    /// Models.
    pub models: Vec<ModelConfig>,
}

static CATALOG: LazyLock<BTreeMap<String, Vendor>> = LazyLock::new(|| {
    yaml_serde::from_str(include_str!("catalog.yaml"))
        .expect("the built-in catalog.yaml is valid (checked by a unit test)")
});

/// The vendors in the order the quick start enables them.
pub const VENDORS: [&str; 5] = ["openai", "anthropic", "groq", "together", "ollama"];

/// A vendor's catalog entry by name.
pub fn vendor(name: &str) -> Option<&'static Vendor> {
    CATALOG.get(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm_gateway_crds::ModelKind;

    #[test]
    fn catalog_parses_and_every_model_is_priced() {
        for name in VENDORS {
            let v = vendor(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(!v.models.is_empty(), "{name} has no models");
            for m in &v.models {
                assert!(m.input_usd_per_mtok.is_some(), "{name}/{} unpriced", m.name);
                assert!(
                    m.output_usd_per_mtok.is_some(),
                    "{name}/{} unpriced",
                    m.name
                );
                assert!(
                    m.context_window.is_some(),
                    "{name}/{} has no context",
                    m.name
                );
                if m.kind != Some(ModelKind::Embedding) {
                    assert!(
                        m.quality.is_some(),
                        "{name}/{} has no quality prior",
                        m.name
                    );
                }
            }
        }
    }

    #[test]
    fn catalog_names_the_models_the_docs_promise() {
        let has = |v: &str, m: &str| vendor(v).unwrap().models.iter().any(|x| x.name == m);
        assert!(has("openai", "gpt-4o-mini"));
        assert!(has("anthropic", "claude-3-5-haiku-latest"));
        assert!(has("groq", "llama-3.1-8b-instant"));
        assert!(has("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"));
        assert!(has("ollama", "llama3.2"));
    }
}
