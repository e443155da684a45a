//! Model name resolution: virtual names, catalog names and provider-qualified names.

use std::collections::HashMap;
use std::sync::Arc;

use crate::breaker::Breaker;
use crate::config::model::ModelInfo;
use crate::error::{Error, Kind};
use crate::latency::LatencyStats;
use crate::providers::learned::Learned;
use crate::providers::Provider;

/// One enabled model.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Who serves it.
    pub provider: Arc<Provider>,
    /// What is known of it.
    pub info: Arc<ModelInfo>,
    /// Its name, shared with every [`Target`] that reaches it (a request clones its target a
    /// few times; a shared name makes that free).
    pub model: Arc<str>,
    /// Live latency estimates.
    pub latency: Arc<LatencyStats>,
    /// This model's circuit breaker.
    pub breaker: Arc<Breaker>,
    /// How long it usually takes to start answering.
    pub deadlines: Arc<crate::deadline::Deadlines>,
    /// Quality per tier measured by `bench`, where it exists.
    pub measured: Arc<crate::providers::learned::MeasuredQuality>,
}

impl Entry {
    /// `provider/model`.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.provider.name, self.info.name)
    }
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The provider.
    pub provider: Arc<Provider>,
    /// The model name sent upstream.
    pub model: Arc<str>,
    /// Catalog knowledge; `None` for a provider-qualified name the catalog lacks.
    pub info: Option<Arc<ModelInfo>>,
    /// The virtual model the client asked for, if any.
    pub virtual_model: Option<String>,
    /// Where to record this model's latency (catalog models only).
    pub latency: Option<Arc<LatencyStats>>,
    /// This model's circuit breaker (catalog models only; the provider's always applies).
    pub breaker: Option<Arc<Breaker>>,
    /// Its learned deadlines (the provider's shared ones for unlisted models).
    pub deadlines: Arc<crate::deadline::Deadlines>,
}

/// All enabled models and the names that reach them.
#[derive(Debug, Default)]
pub struct Registry {
    providers: Vec<Arc<Provider>>,
    entries: Vec<Entry>,
    qualified: HashMap<String, usize>,
    bare: HashMap<String, usize>,
}

impl Registry {
    /// Builds the registry, each model with what `learned` knows of it; providers earlier in
    /// the list win bare names they share.
    pub fn new(providers: Vec<(Arc<Provider>, Vec<ModelInfo>)>, learned: &Learned) -> Self {
        let mut r = Registry::default();
        for (provider, models) in providers {
            for info in models {
                let idx = r.entries.len();
                let state = learned.model(
                    &provider.name,
                    &info.name,
                    provider.breaker_config,
                    info.latency_ms,
                );
                let entry = Entry {
                    provider: provider.clone(),
                    latency: state.latency,
                    breaker: state.breaker,
                    model: Arc::from(info.name.as_str()),
                    info: Arc::new(info),
                    deadlines: state.deadlines,
                    measured: state.measured,
                };
                for name in aliases(&entry.info.name) {
                    r.qualified
                        .entry(format!("{}/{}", provider.name, name))
                        .or_insert(idx);
                    r.bare.entry(name.to_owned()).or_insert(idx);
                }
                r.entries.push(entry);
            }
            r.providers.push(provider);
        }
        r
    }

    /// Enabled providers.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// Enabled models.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The name under which `/v1/models` lists an entry: bare if the bare name reaches it.
    pub fn public_name(&self, idx: usize) -> String {
        let e = &self.entries[idx];
        if self.bare.get(&e.info.name) == Some(&idx) {
            e.info.name.clone()
        } else {
            e.qualified_name()
        }
    }

    /// Resolves an explicit (non-virtual) model name.
    pub fn resolve(&self, name: &str) -> Result<Target, Error> {
        let split = name.split_once('/');
        if let Some(&i) = split.and_then(|_| self.qualified.get(name)) {
            return Ok(self.target_of(&self.entries[i], None));
        }
        if let Some(&i) = self.bare.get(name) {
            return Ok(self.target_of(&self.entries[i], None));
        }
        if let Some((prefix, rest)) = split.filter(|(_, rest)| !rest.is_empty()) {
            if let Some(p) = self.providers.iter().find(|p| *p.name == *prefix) {
                // New models appear every week: let them through to the named provider, unpriced.
                return Ok(Target {
                    provider: p.clone(),
                    model: Arc::from(rest),
                    info: None,
                    virtual_model: None,
                    latency: None,
                    breaker: None,
                    deadlines: p.unlisted_deadlines.clone(),
                });
            }
        }
        Err(Error::new(
            Kind::NotFound,
            format!(
                "The model `{name}` does not exist or is not enabled on this gateway. \
                 List the available models with GET /v1/models, or name a provider explicitly \
                 as `provider/model` (enabled providers: {}).",
                self.providers
                    .iter()
                    .map(|p| &*p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .with_code("model_not_found"))
    }

    /// The target for an entry, reached through `virtual_model` if any.
    pub fn target_of(&self, e: &Entry, virtual_model: Option<String>) -> Target {
        Target {
            provider: e.provider.clone(),
            model: e.model.clone(),
            info: Some(e.info.clone()),
            virtual_model,
            latency: Some(e.latency.clone()),
            breaker: Some(e.breaker.clone()),
            deadlines: e.deadlines.clone(),
        }
    }
}

/// Names that reach a model: its own, and for Ollama-style `name:latest` the bare `name`.
fn aliases(name: &str) -> impl Iterator<Item = &str> {
    std::iter::once(name).chain(name.strip_suffix(":latest"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn registry() -> Registry {
        let yaml = "providers:\n\
            - {name: openai, api_key: {env: K}}\n\
            - {name: groq, api_key: {env: K}}\n\
            - {name: together, api_key: {env: K}}\n\
            - {name: ollama, discover_models: false, catalog: none, models: [{name: 'llama3.2:latest', input_usd_per_mtok: 0, output_usd_per_mtok: 0}]}\n";
        let cfg = config::parse("t", yaml).unwrap();
        let s = config::validate(&cfg, "t", &|k: &str| {
            (k != "LLM_GATEWAY_ADMIN_TOKEN").then(|| "k".into())
        })
        .unwrap();
        let learned = Learned::default();
        Registry::new(
            s.providers
                .iter()
                .map(|p| {
                    (
                        Arc::new(Provider::new(p, &learned).unwrap()),
                        p.models.clone(),
                    )
                })
                .collect(),
            &learned,
        )
    }

    #[test]
    fn resolution_table() {
        crate::install_crypto();
        let r = registry();
        // (requested, provider, upstream model, priced)
        let cases = [
            ("gpt-4o-mini", "openai", "gpt-4o-mini", true),
            ("openai/gpt-4o-mini", "openai", "gpt-4o-mini", true),
            ("llama-3.1-8b-instant", "groq", "llama-3.1-8b-instant", true),
            // A Groq catalog name that starts with another provider's name.
            ("openai/gpt-oss-120b", "groq", "openai/gpt-oss-120b", true),
            (
                "groq/openai/gpt-oss-120b",
                "groq",
                "openai/gpt-oss-120b",
                true,
            ),
            (
                "meta-llama/Llama-3.3-70B-Instruct-Turbo",
                "together",
                "meta-llama/Llama-3.3-70B-Instruct-Turbo",
                true,
            ),
            (
                "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
                "together",
                "meta-llama/Llama-3.3-70B-Instruct-Turbo",
                true,
            ),
            ("llama3.2", "ollama", "llama3.2:latest", true),
            ("ollama/llama3.2", "ollama", "llama3.2:latest", true),
            ("ollama/llama3.2:latest", "ollama", "llama3.2:latest", true),
            // Unknown to the catalog but qualified: passes through, unpriced.
            ("groq/some-new-model", "groq", "some-new-model", false),
            ("openai/gpt-9", "openai", "gpt-9", false),
        ];
        for (name, provider, model, priced) in cases {
            let t = r.resolve(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&*t.provider.name, provider, "{name}");
            assert_eq!(&*t.model, model, "{name}");
            assert_eq!(t.info.is_some(), priced, "{name}");
            assert_eq!(t.virtual_model, None);
        }
        for name in ["gpt-9", "anthropic/claude-x", "", "openai/", "llama3.2:3b"] {
            let e = r.resolve(name).unwrap_err();
            assert_eq!(e.kind, Kind::NotFound, "{name}");
            assert_eq!(e.code.as_deref(), Some("model_not_found"));
        }
    }

    #[test]
    fn public_names_are_bare_unless_shadowed() {
        crate::install_crypto();
        let r = registry();
        let names: Vec<String> = (0..r.entries().len()).map(|i| r.public_name(i)).collect();
        assert!(names.contains(&"gpt-4o-mini".to_owned()));
        assert!(names.contains(&"openai/gpt-oss-120b".to_owned()));
        assert!(names.contains(&"llama3.2:latest".to_owned()));
    }
}
