//! Turning a `GatewayConfig` into [`Settings`]: defaults filled in, secrets read, catalogs
//! merged, every field checked, each error naming its field path.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use llm_gateway_crds::{
    AllOpen, BreakerConfig, GatewayConfig, ModelConfig, Protocol, ProviderConfig, RoutingConfig,
    SecretSource,
};
use url::Url;

use super::resilience::BreakerConfig as Breaker;
use super::routing::{builtin_virtuals, default_local_preference, Hedge, VirtualSpec};
use super::{
    ConfigError, DocSource, FailoverSettings, ProviderSettings, RoutingSettings, Secret, Settings,
    DEFAULT_ANTHROPIC_MAX_TOKENS, DEFAULT_LATENCY_DECAY_SECS, DEFAULT_MAX_BODY_BYTES,
};
use crate::catalog;
use crate::config::model::ModelInfo;

/// Vendors whose hosted API always needs a key.
const KEYED_VENDORS: [&str; 4] = ["openai", "anthropic", "groq", "together"];

/// Validates a config read from a file; `source` (the file name) names it in errors, and
/// `getenv` reads the variables that `api_key.env` entries name.
pub fn validate(
    cfg: &GatewayConfig,
    source: &str,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    validate_as(cfg, DocSource::File(source), getenv)
}

/// Validates a config from `from`: what it may contain depends on where it comes from.
pub fn validate_as(
    cfg: &GatewayConfig,
    from: DocSource<'_>,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let source = from.name();
    let err = |path: String, msg: String| ConfigError::at(source, path, msg);
    let inline = from == DocSource::Pushed;

    let listen = match &cfg.server.listen {
        None => None,
        Some(l) => Some(l.parse().map_err(|_| {
            err(
                "server.listen".into(),
                format!("`{l}` is not an address of the form IP:PORT (e.g. 0.0.0.0:8080)"),
            )
        })?),
    };
    let max_body_bytes = match cfg.server.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(0) => return Err(err("server.max_body_bytes".into(), "must be > 0".into())),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };

    let server_secs = |field: &str, v: Option<f64>, default: f64| {
        positive_secs(v, default).map_err(|m| err(format!("server.{field}"), m))
    };
    let max_concurrency = match cfg.server.max_concurrency {
        Some(0) => return Err(err("server.max_concurrency".into(), "must be > 0".into())),
        Some(n) => n as usize,
        None => 10_000,
    };
    let queue_timeout = server_secs("queue_timeout_secs", cfg.server.queue_timeout_secs, 5.0)?;
    let drain_timeout = server_secs("drain_timeout_secs", cfg.server.drain_timeout_secs, 30.0)?;
    let client_idle_timeout = server_secs(
        "client_idle_timeout_secs",
        cfg.server.client_idle_timeout_secs,
        60.0,
    )?;
    let header_read_timeout = server_secs(
        "header_read_timeout_secs",
        cfg.server.header_read_timeout_secs,
        30.0,
    )?;
    let count = |field: &str, v: Option<u64>, default: u64| match v {
        Some(0) => Err(err(format!("server.{field}"), "must be > 0".into())),
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        None => Ok(default as usize),
    };
    let max_connections = count(
        "max_connections",
        cfg.server.max_connections.map(u64::from),
        10_000,
    )?;
    let max_concurrency_per_tenant = count(
        "max_concurrency_per_tenant",
        cfg.server.max_concurrency_per_tenant.map(u64::from),
        1000,
    )?;
    let max_buffered_body_bytes = count(
        "max_buffered_body_bytes",
        cfg.server.max_buffered_body_bytes,
        256 * 1024 * 1024,
    )?;
    let metrics_listen = match &cfg.server.metrics_listen {
        None => None,
        Some(l) => Some(l.parse().map_err(|_| {
            err(
                "server.metrics_listen".into(),
                format!("`{l}` is not an address of the form IP:PORT (e.g. 0.0.0.0:9090)"),
            )
        })?),
    };
    for (i, o) in cfg.server.cors_allowed_origins.iter().enumerate() {
        let ok = o == "*"
            || Url::parse(o).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && !o.ends_with('/')
            });
        if !ok {
            return Err(err(
                format!("server.cors_allowed_origins[{i}]"),
                format!("`{o}` is not an origin (scheme://host[:port], no path) or `*`"),
            ));
        }
    }
    let admin_token = match &cfg.server.admin_token {
        Some(src) => Some(
            secret(src, inline, getenv)
                .map_err(|(f, m)| err(format!("server.admin_token.{f}"), m))?,
        ),
        None => getenv(super::ADMIN_TOKEN_ENV)
            .filter(|v| !v.trim().is_empty())
            .map(|v| Secret::new(v.trim())),
    };
    if admin_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
        return Err(err(
            "server.admin_token".into(),
            format!(
                "the admin token (from server.admin_token or {}) must be at least 16 characters",
                super::ADMIN_TOKEN_ENV
            ),
        ));
    }

    let mut seen = HashSet::new();
    let mut providers = Vec::with_capacity(cfg.providers.len());
    for (i, p) in cfg.providers.iter().enumerate() {
        let at = |field: &str| format!("providers[{i}].{field}");
        if !seen.insert(p.name.as_str()) {
            return Err(err(
                at("name"),
                format!("duplicate provider name `{}`", p.name),
            ));
        }
        let mut p = provider(p, &at, inline, getenv).map_err(|(path, msg)| err(path, msg))?;
        // The quick start probes Ollama; absent is fine.
        p.optional = from == DocSource::Environment && p.discover_models;
        providers.push(p);
    }
    let routing = routing(&cfg.routing, &providers).map_err(|(path, msg)| err(path, msg))?;
    let cache = cache(cfg).map_err(|(path, msg)| err(path, msg))?;
    Ok(Settings {
        cache,
        listen,
        max_body_bytes,
        max_concurrency,
        queue_timeout,
        drain_timeout,
        client_idle_timeout,
        admin_token,
        header_read_timeout,
        max_connections,
        max_concurrency_per_tenant,
        max_buffered_body_bytes,
        metrics_listen,
        cors_allowed_origins: cfg.server.cors_allowed_origins.clone(),
        providers,
        routing,
    })
}

fn positive_secs(v: Option<f64>, default: f64) -> Result<Duration, String> {
    let v = v.unwrap_or(default);
    if v.is_finite() && v > 0.0 && v < 1e7 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{v} is not a positive number of seconds"))
    }
}

/// Reads a secret from its source; errors name the sub-field (`env` or `file`).
fn secret(
    src: &SecretSource,
    inline: bool,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, FieldError> {
    match src {
        SecretSource::Value(v) if inline => Ok(Secret::new(v.trim())),
        SecretSource::Value(_) => Err((
            "value".into(),
            "a secret's value is accepted only in a document pushed to PUT /admin/config; in a file use `env` or `file`".into(),
        )),
        SecretSource::Env(var) => match getenv(var).filter(|v| !v.trim().is_empty()) {
            Some(v) => Ok(Secret::new(v.trim())),
            None => Err((
                "env".into(),
                format!("environment variable `{var}` is not set"),
            )),
        },
        SecretSource::File(path) => match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
            Ok(_) => Err(("file".into(), format!("`{path}` is empty"))),
            Err(e) => Err(("file".into(), format!("cannot read `{path}`: {e}"))),
        },
    }
}

fn breaker(b: Option<&BreakerConfig>, at: &dyn Fn(&str) -> String) -> Result<Breaker, FieldError> {
    let d = Breaker::default();
    let Some(b) = b else { return Ok(d) };
    let at = |f: &str| at(&format!("breaker.{f}"));
    let count = |f: &str, v: Option<u32>, dv: u32| match v {
        Some(0) => Err((at(f), "must be > 0".to_owned())),
        Some(n) => Ok(n),
        None => Ok(dv),
    };
    let secs = |f: &str, v: Option<f64>, dv: Duration| {
        positive_secs(v, dv.as_secs_f64()).map_err(|m| (at(f), m))
    };
    let ratio = b.failure_ratio.unwrap_or(d.failure_ratio);
    if !(ratio > 0.0 && ratio <= 1.0) {
        return Err((at("failure_ratio"), format!("{ratio} must be in (0, 1]")));
    }
    let cfg = Breaker {
        consecutive_failures: count(
            "consecutive_failures",
            b.consecutive_failures,
            d.consecutive_failures,
        )?,
        failure_ratio: ratio,
        min_requests: count("min_requests", b.min_requests, d.min_requests)?,
        window: secs("window_secs", b.window_secs, d.window)?,
        base_backoff: secs("base_backoff_secs", b.base_backoff_secs, d.base_backoff)?,
        max_backoff: secs("max_backoff_secs", b.max_backoff_secs, d.max_backoff)?,
        half_open_probes: count("half_open_probes", b.half_open_probes, d.half_open_probes)?,
        close_after: count("close_after", b.close_after, d.close_after)?,
    };
    if cfg.max_backoff < cfg.base_backoff {
        return Err((
            at("max_backoff_secs"),
            "must be at least base_backoff_secs".to_owned(),
        ));
    }
    Ok(cfg)
}

fn routing(
    r: &RoutingConfig,
    providers: &[ProviderSettings],
) -> Result<RoutingSettings, FieldError> {
    let f = r.failover.clone().unwrap_or_default();
    let failover = FailoverSettings {
        max_attempts: match f.max_attempts {
            Some(0) => return Err(("routing.failover.max_attempts".into(), "must be > 0".into())),
            Some(n) => n,
            None => 3,
        },
        when_all_open: f.when_all_open.unwrap_or(AllOpen::Reject),
        deadline: positive_secs(f.deadline_secs, 120.0)
            .map_err(|m| ("routing.failover.deadline_secs".to_owned(), m))?,
    };
    let decay = r.latency_decay_secs.unwrap_or(DEFAULT_LATENCY_DECAY_SECS);
    if !(decay.is_finite() && decay > 0.0) {
        return Err((
            "routing.latency_decay_secs".into(),
            format!("{decay} is not a positive number of seconds"),
        ));
    }
    let known_tags: BTreeSet<String> = ["local", "tools", "vision", "json"]
        .into_iter()
        .map(str::to_owned)
        .chain(
            providers
                .iter()
                .flat_map(|p| p.models.iter().flat_map(|m| m.tags.iter().cloned())),
        )
        .collect();
    let mut virtuals = builtin_virtuals();
    let mut seen = HashSet::new();
    for (i, v) in r.virtual_models.iter().enumerate() {
        let at = |f: &str| format!("routing.virtual_models[{i}].{f}");
        if v.name.is_empty() || v.name.contains('/') || v.name.chars().any(char::is_whitespace) {
            return Err((
                at("name"),
                format!(
                    "`{}` is not a valid virtual model name (non-empty, no `/`, no spaces)",
                    v.name
                ),
            ));
        }
        if !seen.insert(v.name.as_str()) {
            return Err((at("name"), format!("duplicate virtual model `{}`", v.name)));
        }
        if let Some(p) = providers
            .iter()
            .find(|p| p.models.iter().any(|m| m.name == v.name))
        {
            return Err((
                at("name"),
                format!(
                    "`{}` is already a model of provider `{}`; pick another name",
                    v.name, p.name
                ),
            ));
        }
        if let Some(w) = v.weights {
            for (f, x) in [
                ("cost", w.cost),
                ("quality", w.quality),
                ("latency", w.latency),
            ] {
                if !(x.is_finite() && x >= 0.0) {
                    return Err((
                        at(&format!("weights.{f}")),
                        format!("{x} must be a number >= 0"),
                    ));
                }
            }
            if w.cost + w.quality + w.latency <= 0.0 {
                return Err((at("weights"), "at least one weight must be > 0".into()));
            }
        }
        if let Some(p) = v.local_preference.filter(|p| !(0.0..=1.0).contains(p)) {
            return Err((
                at("local_preference"),
                format!("{p} must be between 0 and 1"),
            ));
        }
        if let Some(sel) = &v.candidates {
            for (j, p) in sel.providers.iter().enumerate() {
                if !providers.iter().any(|x| x.name == *p) {
                    return Err((
                        at(&format!("candidates.providers[{j}]")),
                        format!("no provider named `{p}`"),
                    ));
                }
            }
            for (j, m) in sel.models.iter().enumerate() {
                let known = providers.iter().any(|p| {
                    let qualified = m.strip_prefix(&format!("{}/", p.name));
                    p.models
                        .iter()
                        .any(|x| x.name == *m || Some(x.name.as_str()) == qualified)
                        || (p.discover_models && qualified.is_some())
                });
                if !known {
                    return Err((
                        at(&format!("candidates.models[{j}]")),
                        format!("no enabled provider serves a model named `{m}`"),
                    ));
                }
            }
            for (j, t) in sel.tags.iter().enumerate() {
                if !known_tags.contains(t) {
                    let list: Vec<&str> = known_tags.iter().map(String::as_str).collect();
                    return Err((
                        at(&format!("candidates.tags[{j}]")),
                        format!("unknown tag `{t}`; known tags: {}", list.join(", ")),
                    ));
                }
            }
            if sel.providers.is_empty() && sel.models.is_empty() && sel.tags.is_empty() {
                return Err((
                    at("candidates"),
                    "lists no providers, models or tags; omit it to use every model".into(),
                ));
            }
        }
        let hedge = match &v.hedge {
            None => None,
            Some(h) => Some(match (h.after_secs, h.after_quantile) {
                (Some(s), None) if s.is_finite() && s > 0.0 && s < 1e6 => Hedge::Delay { secs: s },
                (Some(s), None) => {
                    return Err((
                        at("hedge.after_secs"),
                        format!("{s} is not a positive number of seconds"),
                    ))
                }
                (None, Some(q)) if q > 0.0 && q < 1.0 => Hedge::Quantile { q },
                (None, Some(q)) => {
                    return Err((
                        at("hedge.after_quantile"),
                        format!("{q} must be between 0 and 1 (exclusive), e.g. 0.95"),
                    ))
                }
                _ => {
                    return Err((
                        at("hedge"),
                        "set exactly one of after_secs or after_quantile".into(),
                    ))
                }
            }),
        };
        let spec = VirtualSpec {
            name: v.name.clone(),
            strategy: v.strategy,
            weights: v.weights,
            selector: v.candidates.clone(),
            local_preference: v
                .local_preference
                .or_else(|| default_local_preference(v.strategy)),
            classify: v.classify.unwrap_or(true),
            hedge,
        };
        match virtuals.iter_mut().find(|x| x.name == v.name) {
            Some(existing) => *existing = spec,
            None => virtuals.push(spec),
        }
    }
    Ok(RoutingSettings {
        virtuals,
        latency_decay: Duration::from_secs_f64(decay),
        failover,
    })
}

type FieldError = (String, String);

fn threshold(v: Option<f64>, default: f32, at: String) -> Result<f32, FieldError> {
    match v {
        None => Ok(default),
        Some(t) if t.is_finite() && t > 0.0 && t <= 1.0 => Ok(t as f32),
        Some(t) => Err((at, format!("must be in (0, 1], got {t}"))),
    }
}

fn cache(cfg: &GatewayConfig) -> Result<super::CacheSettings, FieldError> {
    let c = &cfg.cache;
    let threshold_default = threshold(
        c.similarity_threshold,
        0.95,
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
            super::RouteCache {
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
    Ok(super::CacheSettings {
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
        routes,
    })
}

fn provider(
    p: &ProviderConfig,
    at: &dyn Fn(&str) -> String,
    inline: bool,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<ProviderSettings, FieldError> {
    let fail = |field: &str, msg: String| Err((at(field), msg));
    if p.name.is_empty() || p.name.contains('/') || p.name.chars().any(char::is_whitespace) {
        return fail(
            "name",
            format!(
                "`{}` is not a valid provider name (non-empty, no `/`, no spaces)",
                p.name
            ),
        );
    }
    let vendor = catalog::vendor(&p.name);
    let Some(protocol) = p.protocol.or(vendor.map(|v| v.protocol)) else {
        return fail(
            "protocol",
            format!(
                "required for provider `{}`: one of openai, anthropic, ollama (only {} have a default)",
                p.name,
                catalog::VENDORS.join(", ")
            ),
        );
    };
    let Some(base) = p
        .base_url
        .as_deref()
        .or(vendor.map(|v| v.base_url.as_str()))
    else {
        return fail("base_url", format!("required for provider `{}`", p.name));
    };
    let base_url = match Url::parse(base.trim_end_matches('/')) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
        Ok(_) => return fail("base_url", format!("`{base}` must be an http(s) URL")),
        Err(e) => return fail("base_url", format!("`{base}` is not a URL: {e}")),
    };
    if !base_url.username().is_empty() || base_url.password().is_some() {
        return fail(
            "base_url",
            "must not contain credentials; use api_key".to_owned(),
        );
    }

    let api_key = match &p.api_key {
        None if KEYED_VENDORS.contains(&p.name.as_str()) => {
            return fail(
                "api_key",
                format!(
                    "provider `{}` needs an API key: set api_key: {{env: VAR}} or {{file: PATH}}",
                    p.name
                ),
            )
        }
        None => None,
        Some(src) => {
            Some(secret(src, inline, getenv).map_err(|(f, m)| (at(&format!("api_key.{f}")), m))?)
        }
    };

    let mut headers = HeaderMap::new();
    for (k, v) in &p.headers {
        let field = format!("headers.{k}");
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| (at(&field), "not a valid header name".to_owned()))?;
        if matches!(
            name.as_str(),
            "authorization" | "x-api-key" | "api-key" | "proxy-authorization"
        ) {
            return fail(
                &field,
                "credentials do not belong in the config file; use api_key".to_owned(),
            );
        }
        let value = HeaderValue::from_str(v)
            .map_err(|_| (at(&field), "not a valid header value".to_owned()))?;
        headers.insert(name, value);
    }

    let secs = |field: &str, v: Option<f64>, default: f64| -> Result<Duration, FieldError> {
        let v = v.unwrap_or(default);
        if v.is_finite() && v > 0.0 && v < 1e7 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err((
                at(field),
                format!("{v} is not a positive number of seconds"),
            ))
        }
    };

    let catalog_name = match p.catalog.as_deref() {
        Some("none") => None,
        Some(c) if catalog::vendor(c).is_some() => Some(c),
        Some(c) => {
            return fail(
                "catalog",
                format!(
                    "unknown catalog `{c}`; one of {}, none",
                    catalog::VENDORS.join(", ")
                ),
            )
        }
        None => vendor.map(|_| p.name.as_str()),
    };
    let base_models = catalog_name
        .and_then(catalog::vendor)
        .map(|v| v.models.clone())
        .unwrap_or_default();

    Ok(ProviderSettings {
        name: p.name.clone(),
        protocol,
        base_url,
        api_key,
        headers,
        connect_timeout: secs("connect_timeout_secs", p.connect_timeout_secs, 10.0)?,
        timeout: secs("timeout_secs", p.timeout_secs, 600.0)?,
        read_idle_timeout: secs("read_idle_timeout_secs", p.read_idle_timeout_secs, 120.0)?,
        first_token_timeout: p
            .first_token_timeout_secs
            .map(|v| secs("first_token_timeout_secs", Some(v), 0.0))
            .transpose()?,
        queue_timeout: secs("queue_timeout_secs", p.queue_timeout_secs, 5.0)?,
        max_response_bytes: match p.max_response_bytes {
            Some(0) => return fail("max_response_bytes", "must be > 0".to_owned()),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => super::DEFAULT_MAX_RESPONSE_BYTES,
        },
        max_concurrency: match p.max_concurrency {
            Some(0) => return fail("max_concurrency", "must be > 0".to_owned()),
            Some(n) => Some(n as usize),
            None => None,
        },
        breaker: breaker(p.breaker.as_ref(), at)?,
        anthropic_version: p
            .anthropic_version
            .clone()
            .unwrap_or_else(|| "2023-06-01".to_owned()),
        default_max_tokens: match p.default_max_tokens {
            Some(0) => return fail("default_max_tokens", "must be > 0".to_owned()),
            Some(n) => n,
            None => DEFAULT_ANTHROPIC_MAX_TOKENS,
        },
        discover_models: p.discover_models.unwrap_or(protocol == Protocol::Ollama),
        optional: false,
        models: merge_models(base_models, &p.models, at)?,
    })
}

/// Catalog models with the config's entries laid over them: a known name overrides the
/// fields it sets, a new name is added.
fn merge_models(
    mut models: Vec<ModelConfig>,
    overrides: &[ModelConfig],
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<ModelInfo>, FieldError> {
    for (j, o) in overrides.iter().enumerate() {
        let field = |f: &str| at(&format!("models[{j}].{f}"));
        if o.name.trim().is_empty() {
            return Err((field("name"), "must not be empty".to_owned()));
        }
        for (f, v) in [
            ("input_usd_per_mtok", o.input_usd_per_mtok),
            ("output_usd_per_mtok", o.output_usd_per_mtok),
            ("latency_ms", o.latency_ms),
        ] {
            if let Some(v) = v.filter(|v| !v.is_finite() || *v < 0.0) {
                return Err((field(f), format!("{v} must be a number >= 0")));
            }
        }
        if let Some(q) = o.quality.filter(|q| !(0.0..=1.0).contains(q)) {
            return Err((field("quality"), format!("{q} must be between 0 and 1")));
        }
        if o.context_window == Some(0) {
            return Err((field("context_window"), "must be > 0".to_owned()));
        }
        if let Some(v) = o
            .first_token_timeout_secs
            .filter(|v| !(v.is_finite() && *v > 0.0 && *v < 1e7))
        {
            return Err((
                field("first_token_timeout_secs"),
                format!("{v} is not a positive number of seconds"),
            ));
        }
        match models.iter_mut().find(|m| m.name == o.name) {
            Some(m) => overlay(m, o),
            None => models.push(o.clone()),
        }
    }
    Ok(models.iter().map(ModelInfo::from_config).collect())
}

fn overlay(m: &mut ModelConfig, o: &ModelConfig) {
    macro_rules! take {
        ($($f:ident),*) => { $( if o.$f.is_some() { m.$f = o.$f.clone(); } )* };
    }
    take!(
        kind,
        input_usd_per_mtok,
        output_usd_per_mtok,
        context_window,
        max_output_tokens,
        capabilities,
        quality,
        latency_ms,
        tags,
        first_token_timeout_secs
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::parse;

    fn run(yaml: &str) -> Result<Settings, ConfigError> {
        let cfg = parse("gw.yaml", yaml)?;
        validate(&cfg, "gw.yaml", &|k| {
            (k == "OPENAI_API_KEY").then(|| "sk-test".to_owned())
        })
    }

    #[test]
    fn invalid_configs_name_the_field_and_the_problem() {
        let cases = [
            ("providers: [{name: openai, api_key: {env: OPENAI_API_KEY}}, {name: openai, api_key: {env: OPENAI_API_KEY}}]", "providers[1].name", "duplicate"),
            ("providers: [{name: anthropic}]", "providers[0].api_key", "needs an API key"),
            ("providers: [{name: groq, api_key: {env: GROQ_API_KEY}}]", "providers[0].api_key.env", "GROQ_API_KEY` is not set"),
            ("providers: [{name: mine}]", "providers[0].protocol", "required"),
            ("providers: [{name: mine, protocol: openai}]", "providers[0].base_url", "required"),
            ("providers: [{name: mine, protocol: openai, base_url: 'ftp://x'}]", "providers[0].base_url", "http(s)"),
            ("providers: [{name: mine, protocol: openai, base_url: 'http://u:p@x/v1'}]", "providers[0].base_url", "credentials"),
            ("providers: [{name: 'a/b', protocol: openai, base_url: 'http://x'}]", "providers[0].name", "not a valid provider name"),
            ("providers: [{name: ollama, headers: {Authorization: Bearer x}}]", "providers[0].headers.Authorization", "use api_key"),
            ("providers: [{name: ollama, timeout_secs: -1}]", "providers[0].timeout_secs", "positive"),
            ("providers: [{name: ollama, catalog: foo}]", "providers[0].catalog", "unknown catalog"),
            ("providers: [{name: ollama, models: [{name: x, quality: 2}]}]", "providers[0].models[0].quality", "between 0 and 1"),
            ("providers: [{name: ollama, models: [{name: x, input_usd_per_mtok: -1}]}]", "providers[0].models[0].input_usd_per_mtok", ">= 0"),
            ("providers: [{name: ollama, api_key: {file: /nonexistent/key}}]", "providers[0].api_key.file", "cannot read"),
            ("server: {listen: 'localhost'}", "server.listen", "IP:PORT"),
            ("server: {max_body_bytes: 0}", "server.max_body_bytes", "> 0"),
            ("routing: {latency_decay_secs: 0}", "routing.latency_decay_secs", "positive"),
            ("routing: {failover: {max_attempts: 0}}", "routing.failover.max_attempts", "> 0"),
            ("routing: {failover: {deadline_secs: 0}}", "routing.failover.deadline_secs", "positive"),
            ("routing: {failover: {when_all_open: panic}}", "routing.failover.when_all_open", "panic"),
            ("server: {drain_timeout_secs: -3}", "server.drain_timeout_secs", "positive"),
            ("server: {header_read_timeout_secs: 0}", "server.header_read_timeout_secs", "positive"),
            ("server: {max_connections: 0}", "server.max_connections", "> 0"),
            ("server: {max_concurrency_per_tenant: 0}", "server.max_concurrency_per_tenant", "> 0"),
            ("server: {metrics_listen: ':9090'}", "server.metrics_listen", "IP:PORT"),
            ("server: {cors_allowed_origins: ['https://a.example/path']}", "server.cors_allowed_origins[0]", "not an origin"),
            ("server: {admin_token: {env: OPENAI_API_KEY}}", "server.admin_token", "at least 16"),
            ("server: {admin_token: {env: NOPE}}", "server.admin_token.env", "`NOPE` is not set"),
            ("providers: [{name: ollama, breaker: {failure_ratio: 2}}]", "providers[0].breaker.failure_ratio", "(0, 1]"),
            ("providers: [{name: ollama, breaker: {consecutive_failures: 0}}]", "providers[0].breaker.consecutive_failures", "> 0"),
            ("providers: [{name: ollama, breaker: {base_backoff_secs: 10, max_backoff_secs: 5}}]", "providers[0].breaker.max_backoff_secs", "at least"),
            ("providers: [{name: ollama, max_concurrency: 0}]", "providers[0].max_concurrency", "> 0"),
            ("providers: [{name: ollama, first_token_timeout_secs: 0}]", "providers[0].first_token_timeout_secs", "positive"),
            ("providers: [{name: ollama, models: [{name: x, first_token_timeout_secs: -2}]}]", "providers[0].models[0].first_token_timeout_secs", "positive"),
            ("routing: {virtual_models: [{name: 'a/b', strategy: cost}]}", "routing.virtual_models[0].name", "not a valid"),
            ("routing: {virtual_models: [{name: x, strategy: cost}, {name: x, strategy: cost}]}", "routing.virtual_models[1].name", "duplicate"),
            ("routing: {virtual_models: [{name: x, strategy: fastest}]}", "routing.virtual_models[0].strategy", "fastest"),
            ("routing: {virtual_models: [{name: x, strategy: cost, weights: {cost: -1}}]}", "routing.virtual_models[0].weights.cost", ">= 0"),
            ("routing: {virtual_models: [{name: x, strategy: cost, weights: {}}]}", "routing.virtual_models[0].weights", "at least one"),
            ("routing: {virtual_models: [{name: x, strategy: cost, local_preference: 1.5}]}", "routing.virtual_models[0].local_preference", "between 0 and 1"),
            ("routing: {virtual_models: [{name: x, strategy: cost, candidates: {providers: [nope]}}]}", "routing.virtual_models[0].candidates.providers[0]", "no provider named `nope`"),
            ("routing: {virtual_models: [{name: x, strategy: cost, candidates: {models: [gpt-99]}}]}", "routing.virtual_models[0].candidates.models[0]", "gpt-99"),
            ("routing: {virtual_models: [{name: x, strategy: cost, candidates: {tags: [fancy]}}]}", "routing.virtual_models[0].candidates.tags[0]", "unknown tag `fancy`"),
            ("routing: {virtual_models: [{name: x, strategy: cost, candidates: {}}]}", "routing.virtual_models[0].candidates", "lists no"),
            ("routing: {virtual_models: [{name: x, strategy: cost, hedge: {}}]}", "routing.virtual_models[0].hedge", "exactly one"),
            ("routing: {virtual_models: [{name: x, strategy: cost, hedge: {after_secs: 1, after_quantile: 0.9}}]}", "routing.virtual_models[0].hedge", "exactly one"),
            ("routing: {virtual_models: [{name: x, strategy: cost, hedge: {after_secs: -1}}]}", "routing.virtual_models[0].hedge.after_secs", "positive"),
            ("routing: {virtual_models: [{name: x, strategy: cost, hedge: {after_quantile: 1}}]}", "routing.virtual_models[0].hedge.after_quantile", "between 0 and 1"),
            ("providers: [{name: ollama, discover_models: false}]\nrouting: {virtual_models: [{name: llama3.2, strategy: cost}]}", "routing.virtual_models[0].name", "already a model"),
        ];
        for (yaml, path, words) in cases {
            let e = run(yaml).expect_err(yaml);
            assert_eq!(e.path, path, "{yaml}: {e}");
            assert!(e.message.contains(words), "{yaml}: {e}");
            assert_eq!(e.source, "gw.yaml");
        }
    }

    #[test]
    fn defaults_come_from_the_vendor_catalog_and_overrides_apply() {
        let s = run("providers:\n- name: openai\n  api_key: {env: OPENAI_API_KEY}\n  models:\n  - {name: gpt-4o-mini, input_usd_per_mtok: 9}\n  - {name: my-finetune, input_usd_per_mtok: 1, output_usd_per_mtok: 2}\n").unwrap();
        let p = &s.providers[0];
        assert_eq!(p.protocol, Protocol::Openai);
        assert_eq!(p.base_url.as_str(), "https://api.openai.com/v1");
        assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-test");
        let mini = p.models.iter().find(|m| m.name == "gpt-4o-mini").unwrap();
        assert_eq!(mini.price.unwrap().input_per_mtok, 9.0);
        assert_eq!(
            mini.price.unwrap().output_per_mtok,
            0.6,
            "unset fields keep the catalog's"
        );
        assert!(p.models.iter().any(|m| m.name == "my-finetune"));
        assert!(!p.discover_models);
    }

    #[test]
    fn key_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-from-file\n").unwrap();
        let yaml = format!(
            "providers: [{{name: together, api_key: {{file: '{}'}}}}]",
            key.display()
        );
        let s = run(&yaml).unwrap();
        assert_eq!(
            s.providers[0].api_key.as_ref().unwrap().expose(),
            "sk-from-file"
        );
        assert!(
            !format!("{:?}", s).contains("sk-from-file"),
            "Debug must not print secrets"
        );
    }
}

#[cfg(test)]
mod routing_tests {
    use super::*;
    use crate::config::file::parse;
    use llm_gateway_crds::Strategy;

    #[test]
    fn config_virtual_models_replace_and_extend_the_builtins() {
        let yaml = "providers: [{name: ollama, discover_models: false}]\nrouting:\n  latency_decay_secs: 5\n  virtual_models:\n  - {name: auto, strategy: quality}\n  - {name: coder, strategy: balanced, local_preference: 0.9, candidates: {tags: [code]}, weights: {quality: 2, cost: 1}}\n";
        let s = validate(&parse("t", yaml).unwrap(), "t", &|_| None).unwrap();
        let names: Vec<&str> = s.routing.virtuals.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["auto", "fast", "cheap", "quality", "coder"]);
        assert_eq!(s.routing.virtuals[0].strategy, Strategy::Quality);
        assert_eq!(
            s.routing.virtuals[0].local_preference, None,
            "quality's default"
        );
        assert_eq!(s.routing.virtuals[4].local_preference, Some(0.9));
        assert_eq!(s.routing.latency_decay, Duration::from_secs(5));
    }
}
