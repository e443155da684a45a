//! The `providers` section: names, protocols, URLs, keys, headers, timeouts, breakers, and
//! each provider's models with the built-in catalog merged in.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use llm_gateway_crds::{BreakerConfig, ModelConfig, Protocol, ProviderConfig, SecretSource};
use url::Url;

use super::super::resilience::BreakerConfig as Breaker;
use super::super::{ProviderSettings, Secret, DEFAULT_ANTHROPIC_MAX_TOKENS};
use super::{positive_secs, FieldError, KEYED_VENDORS};
use crate::catalog;
use crate::config::model::ModelInfo;

/// The longest reason a withheld provider's refusals may carry.
const MAX_WITHHELD_REASON: usize = 500;

/// Reads a secret from its source; errors name the sub-field (`env` or `file`).
pub(super) fn secret(
    src: &SecretSource,
    inline: bool,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, FieldError> {
    match src {
        SecretSource::Value(v) if inline => Ok(Secret::new(v.trim())),
        SecretSource::Pushed(_) => Err((
            "pushed".into(),
            "only a provider's api_key can be held by the operator".into(),
        )),
        SecretSource::Withheld(_) => Err((
            "withheld".into(),
            "only a provider's api_key can be withheld by the operator".into(),
        )),
        SecretSource::Value(_) => Err((
            "value".into(),
            "a secret's value is accepted only in a document pushed to PUT /admin/config; in a file use `env` or `file`".into(),
        )),
        // A value written where the variable's name goes (`{env: sk-…}`) must not be repeated
        // in the refusal: a name is letters, digits and `_`, and short.
        SecretSource::Env(var)
            if var.len() > 40
                || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            Err((
                "env".into(),
                "must name an environment variable (letters, digits and `_`, at most 40 characters); what is there looks like a value, and is not repeated here".into(),
            ))
        }
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

pub(super) fn provider(
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
    // The vendor whose defaults (protocol, base URL) apply: the provider's own name, else
    // the catalog it serves (a provider `team-a.openai` with `catalog: openai`).
    let vendor =
        catalog::vendor(&p.name).or_else(|| p.catalog.as_deref().and_then(catalog::vendor));
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
        // Held by the operator: the provider waits for its key (a push) and meanwhile answers
        // 503 `credentials_pending`, so every route that names it stays valid.
        Some(SecretSource::Pushed(_)) => None,
        // Not for this gateway (see `key_withheld`).
        Some(SecretSource::Withheld(_)) => None,
        Some(src) => {
            Some(secret(src, inline, getenv).map_err(|(f, m)| (at(&format!("api_key.{f}")), m))?)
        }
    };
    let key_pending = match &p.api_key {
        Some(SecretSource::Pushed(r)) => Some(r.clone()),
        _ => None,
    };
    let key_withheld = match &p.api_key {
        // Every caller of the provider's models reads it: short and one line (and redacted
        // like upstream messages when the provider is built).
        Some(SecretSource::Withheld(why)) => {
            let why = why.trim();
            if why.is_empty()
                || why.chars().count() > MAX_WITHHELD_REASON
                || why.chars().any(char::is_control)
            {
                return fail(
                    "api_key.withheld",
                    format!("the reason must be one line of 1 to {MAX_WITHHELD_REASON} characters"),
                );
            }
            Some(why.to_owned())
        }
        _ => None,
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
            Err((at(field), super::not_secs(v)))
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
        key_pending,
        key_withheld,
        clients: p.clients.clone(),
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
            None => super::super::DEFAULT_MAX_RESPONSE_BYTES,
        },
        max_concurrency: match p.max_concurrency {
            Some(0) => return fail("max_concurrency", "must be > 0".to_owned()),
            Some(n) => Some(n as usize),
            None => None,
        },
        breaker: breaker(p.breaker.as_ref(), at)?,
        anthropic_version: HeaderValue::from_str(
            p.anthropic_version.as_deref().unwrap_or("2023-06-01"),
        )
        .map_err(|_| {
            (
                at("anthropic_version"),
                "not a valid header value".to_owned(),
            )
        })?,
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
        // Two entries for one model: the last would win silently, as provider and virtual
        // model names may not.
        if overrides[..j].iter().any(|p| p.name == o.name) {
            return Err((
                field("name"),
                format!("duplicate model `{}` in this provider", o.name),
            ));
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
            return Err((field("first_token_timeout_secs"), super::not_secs(v)));
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
