//! Turning a `GatewayConfig` into [`Settings`]: defaults filled in, secrets read, catalogs
//! merged, every field checked, each error naming its field path.

use std::collections::HashSet;
use std::time::Duration;

use llm_gateway_crds::GatewayConfig;
use url::Url;

use super::{ConfigError, DocSource, Secret, Settings, DEFAULT_MAX_BODY_BYTES};

mod budgets;
mod cache;
mod providers;
mod routing;

use budgets::budgets;
use cache::cache;
use providers::{provider, secret};
use routing::routing;

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
    let budgets = budgets(&cfg.budgets).map_err(|(path, msg)| err(path, msg))?;
    Ok(Settings {
        budgets,
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
        Err(not_secs(v))
    }
}

/// Why `v` is not a number of seconds, in a line of its own size (1e308 is not written out
/// in 309 digits).
fn not_secs(v: f64) -> String {
    if v.is_finite() && v >= 1e6 {
        format!("{v:e} seconds is more than this setting allows")
    } else {
        format!("{v} is not a positive number of seconds")
    }
}

type FieldError = (String, String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::parse;
    use llm_gateway_crds::Protocol;

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
            ("providers: [{name: ollama, models: [{name: x}, {name: y}, {name: x}]}]", "providers[0].models[2].name", "duplicate model `x`"),
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
            ("providers: [{name: groq, api_key: {env: sk-proj-SECRET9}}]", "providers[0].api_key.env", "is not repeated"),
            ("providers: [{name: groq, api_key: {env: gsk_SECRET9SECRET9SECRET9SECRET9SECRET9SECRET9}}]", "providers[0].api_key.env", "is not repeated"),
            ("providers: [{name: groq, api_key: {value: 99999999999999999}}]", "providers[0].api_key.value", "not repeated"),
            ("providers: [{name: groq, api_key: {withheld: '  '}}]", "providers[0].api_key.withheld", "one line"),
            ("providers: [{name: groq, api_key: {withheld: \"a\\nb\"}}]", "providers[0].api_key.withheld", "one line"),
            ("providers: [{name: groq, api_key: {withheld: \"a\\rb\"}}]", "providers[0].api_key.withheld", "one line"),
            ("server: {admin_token: {withheld: because}}", "server.admin_token.withheld", "only a provider's api_key"),
            ("providers: [{name: ollama, breaker: {failure_ratio: 2}}]", "providers[0].breaker.failure_ratio", "(0, 1]"),
            ("providers: [{name: ollama, breaker: {consecutive_failures: 0}}]", "providers[0].breaker.consecutive_failures", "> 0"),
            ("providers: [{name: ollama, breaker: {base_backoff_secs: 10, max_backoff_secs: 5}}]", "providers[0].breaker.max_backoff_secs", "at least"),
            ("providers: [{name: ollama, max_concurrency: 0}]", "providers[0].max_concurrency", "> 0"),
            ("providers: [{name: ollama, anthropic_version: \"2023-06-01\\n\"}]", "providers[0].anthropic_version", "not a valid header value"),
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
            ("providers: [{name: ollama, timeout_secs: 1e308}]", "providers[0].timeout_secs", "1e308 seconds is more than"),
            ("server: {drain_timeout_secs: 1e300}", "server.drain_timeout_secs", "1e300 seconds"),
        ];
        for (yaml, path, words) in cases {
            let e = run(yaml).expect_err(yaml);
            assert_eq!(e.path, path, "{yaml}: {e}");
            assert!(e.message.contains(words), "{yaml}: {e}");
            assert!(!e.to_string().contains("SECRET9"), "a value repeated: {e}");
            assert!(!e.to_string().contains("99999"), "a value repeated: {e}");
            assert_eq!(e.source, "gw.yaml");
            assert!(e.message.len() < 200, "{e}");
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
