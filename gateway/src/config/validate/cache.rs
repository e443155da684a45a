//! The `cache` section and the per-virtual-model cache settings.

use llm_gateway_crds::GatewayConfig;

use super::{positive_secs, FieldError};

fn threshold(v: Option<f64>, default: f32, at: String) -> Result<f32, FieldError> {
    match v {
        None => Ok(default),
        Some(t) if t.is_finite() && t > 0.0 && t <= 1.0 => Ok(t as f32),
        Some(t) => Err((at, format!("must be in (0, 1], got {t}"))),
    }
}

pub(super) fn cache(cfg: &GatewayConfig) -> Result<super::super::CacheSettings, FieldError> {
    let c = &cfg.cache;
    let threshold_default = threshold(
        c.similarity_threshold,
        super::super::DEFAULT_SIMILARITY_THRESHOLD,
        "cache.similarity_threshold".into(),
    )?;
    let ttl = positive_secs(c.ttl_secs, 3600.0).map_err(|m| ("cache.ttl_secs".into(), m))?;
    let max_entries = match c.max_entries {
        Some(0) => return Err(("cache.max_entries".into(), "must be > 0".into())),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => 10_000,
    };
    let bytes = |field: &str, v: Option<u64>, default: usize| match v {
        Some(0) => Err((format!("cache.{field}"), "must be > 0".to_owned())),
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        None => Ok(default),
    };
    let max_bytes = bytes("max_bytes", c.max_bytes, 256 << 20)?;
    let max_entry_bytes = bytes("max_entry_bytes", c.max_entry_bytes, 1 << 20)?;
    let redis_max_bytes = bytes("redis_max_bytes", c.redis_max_bytes, 256 << 20)?;
    let max_temperature = match c.max_temperature {
        None => 1.0,
        Some(t) if (0.0..=2.0).contains(&t) => t,
        Some(t) => {
            return Err((
                "cache.max_temperature".into(),
                format!("must be between 0 and 2, got {t}"),
            ))
        }
    };
    let mut routes = std::collections::HashMap::new();
    for (i, v) in cfg.routing.virtual_models.iter().enumerate() {
        let Some(rc) = &v.cache else { continue };
        let at = |f: &str| format!("routing.virtual_models[{i}].cache.{f}");
        routes.insert(
            v.name.clone(),
            super::super::RouteCache {
                enabled: rc.enabled.unwrap_or(c.enabled),
                threshold: threshold(
                    rc.similarity_threshold,
                    threshold_default,
                    at("similarity_threshold"),
                )?,
                ttl: match rc.ttl_secs {
                    None => ttl,
                    Some(_) => positive_secs(rc.ttl_secs, 0.0).map_err(|m| (at("ttl_secs"), m))?,
                },
            },
        );
    }
    Ok(super::super::CacheSettings {
        enabled: c.enabled || routes.values().any(|r| r.enabled),
        semantic: c.semantic.unwrap_or(true),
        threshold: threshold_default,
        ttl,
        max_entries,
        max_bytes,
        max_entry_bytes,
        redis_max_bytes,
        max_temperature,
        cache_tool_calls: c.cache_tool_calls,
        embedding_model: c.embedding_model.as_ref().map(std::path::PathBuf::from),
        embedding_provider: c.embedding_provider.clone(),
        verifier_weights: c.verifier_weights.as_ref().map(std::path::PathBuf::from),
        routes,
    })
}
