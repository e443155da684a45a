//! The quick start: providers from the environment variables each vendor's own SDK reads.

use llm_gateway_crds::{GatewayConfig, ProviderConfig, SecretSource};

use crate::catalog;

/// Builds a config from the environment: one provider per vendor whose API key variable is set
/// (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `GROQ_API_KEY`, `TOGETHER_API_KEY`), each at its
/// `*_BASE_URL` when set, plus Ollama at `OLLAMA_HOST`, kept only if it answers at start.
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> GatewayConfig {
    let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    let mut providers = Vec::new();
    for name in catalog::VENDORS {
        let vendor = catalog::vendor(name).expect("every listed vendor is in the catalog");
        let base_url = get(&vendor.base_url_env);
        match &vendor.api_key_env {
            Some(key_env) => {
                if get(key_env).is_none() {
                    continue;
                }
                providers.push(ProviderConfig {
                    api_key: Some(SecretSource::Env(key_env.clone())),
                    base_url,
                    ..bare(name)
                });
            }
            None => providers.push(ProviderConfig {
                base_url: base_url.map(|h| normalize_ollama_host(&h)),
                discover_models: Some(true),
                ..bare(name)
            }),
        }
    }
    // The quick start turns the cache on with LLM_GATEWAY_CACHE=on.
    let cache = llm_gateway_crds::CacheConfig {
        enabled: get("LLM_GATEWAY_CACHE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "on" | "true" | "yes"
            )
        }),
        ..Default::default()
    };
    GatewayConfig {
        providers,
        cache,
        ..Default::default()
    }
}

fn bare(name: &str) -> ProviderConfig {
    ProviderConfig {
        name: name.to_owned(),
        ..Default::default()
    }
}

/// `OLLAMA_HOST` may be `host`, `host:port` or a URL, as the Ollama CLI accepts.
pub fn normalize_ollama_host(v: &str) -> String {
    let v = v.trim().trim_end_matches('/');
    if v.contains("://") {
        return v.to_owned();
    }
    let has_port = v
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty());
    if has_port {
        format!("http://{v}")
    } else {
        format!("http://{v}:11434")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn only_vendors_with_a_key_are_enabled_and_ollama_is_probed() {
        let cfg = from_env(env(&[
            ("ANTHROPIC_API_KEY", "sk-ant"),
            ("GROQ_API_KEY", "  "),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/anthropic"),
        ]));
        let names: Vec<_> = cfg.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["anthropic", "ollama"]);
        assert_eq!(
            cfg.providers[0].api_key,
            Some(SecretSource::Env("ANTHROPIC_API_KEY".into()))
        );
        assert_eq!(
            cfg.providers[0].base_url.as_deref(),
            Some("http://127.0.0.1:9/anthropic")
        );
        assert_eq!(cfg.providers[1].discover_models, Some(true));
    }

    #[test]
    fn ollama_host_forms() {
        assert_eq!(normalize_ollama_host("0.0.0.0"), "http://0.0.0.0:11434");
        assert_eq!(normalize_ollama_host("box:1234"), "http://box:1234");
        assert_eq!(
            normalize_ollama_host("https://o.example/"),
            "https://o.example"
        );
    }
}
