//! Live configuration: a whole new `GatewayConfig` replaces the running one while the gateway
//! serves, by one path whichever way it arrives (`PUT /admin/config`, a change of the
//! `--config` file, SIGHUP).
//!
//! The document is validated in full (the same checks and messages as at start, with field
//! paths), built into a [`Snapshot`] — providers, registry and router — and swapped in
//! atomically; on any error the running configuration stays. A document whose hash equals
//! the running one's changes nothing. One change is applied at a time.
//!
//! What a swap keeps: every provider's and model's breaker, concurrency limit, latency figures
//! and learned deadlines, by name ([`crate::providers::learned`]); the HTTP client (and its
//! pooled connections) of a provider whose connection settings did not change; the admission
//! limits if unchanged; and all the services (keys, budgets, ledger, cache entries, metrics).
//! Requests already running finish on the snapshot they started with. What needs a restart
//! (the listener's settings, the cache's store and embedding model) is refused with a message
//! naming the fields.

use std::sync::Arc;

use llm_gateway_crds::{GatewayConfig, SecretSource};
use ring::digest::{Context, SHA256};
use tracing::{info, warn};

use crate::admission::Admission;
use crate::config::model::{ModelInfo, Price, UNKNOWN_LATENCY_MS, UNKNOWN_QUALITY};
use crate::config::{ConfigError, DocSource, ProviderSettings, Settings};
use crate::models::registry::Registry;
use crate::providers::learned::Learned;
use crate::providers::{ollama, Provider};
use crate::router::Router;
use crate::state::{Gateway, Meta, Snapshot};

/// How a configuration arrived (a metric label and the `source` in `GET /admin/config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configuration the process started with.
    Start,
    /// `PUT /admin/config`.
    Push,
    /// The `--config` file changed.
    File,
    /// SIGHUP.
    Signal,
}

impl Source {
    /// Its label.
    pub fn label(self) -> &'static str {
        match self {
            Source::Start => "start",
            Source::Push => "push",
            Source::File => "file",
            Source::Signal => "signal",
        }
    }
}

/// Why a configuration was not applied.
#[derive(Debug)]
pub enum Refused {
    /// It is invalid: the field and the problem.
    Invalid(ConfigError),
    /// It changes settings that only a restart applies.
    NeedsRestart(Vec<&'static str>),
    /// It could not be built (a provider's HTTP client, say).
    Build(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Invalid(e) => write!(f, "{e}"),
            Refused::NeedsRestart(fields) => write!(
                f,
                "these settings apply only at start; restart the gateway to change them: {}",
                fields.join(", ")
            ),
            Refused::Build(m) => write!(f, "cannot build the configuration: {m}"),
        }
    }
}

/// What applying a configuration did.
#[derive(Debug, Clone)]
pub enum Applied {
    /// It is live now.
    Swapped(Meta),
    /// It is the running one already (same hash): nothing changed.
    Unchanged(Meta),
}

/// Validates `doc` as coming `from` and applies it (see the module docs).
pub async fn apply(
    gw: &Gateway,
    doc: GatewayConfig,
    from: DocSource<'_>,
    source: Source,
) -> Result<Applied, Refused> {
    let result = apply_inner(gw, doc, from, source).await;
    report(gw, source, &result);
    result
}

/// Counts and logs what became of a configuration from `source`.
pub fn report(gw: &Gateway, source: Source, result: &Result<Applied, Refused>) {
    match result {
        Ok(Applied::Swapped(m)) => {
            gw.metrics
                .config_applied(m.version.as_deref(), &m.hash, source.label());
            info!(
                source = source.label(),
                version = m.version.as_deref().unwrap_or(""),
                hash = %m.hash,
                "configuration applied"
            );
        }
        Ok(Applied::Unchanged(_)) => gw.metrics.config_reload(source.label(), "unchanged"),
        Err(e) => report_refused(gw, source, e),
    }
}

/// Counts and logs a refused configuration (one that did not even parse included).
pub fn report_refused(gw: &Gateway, source: Source, e: &Refused) {
    gw.metrics.config_reload(source.label(), "refused");
    warn!(source = source.label(), error = %e, "configuration refused; the running one stays");
}

async fn apply_inner(
    gw: &Gateway,
    doc: GatewayConfig,
    from: DocSource<'_>,
    source: Source,
) -> Result<Applied, Refused> {
    let _one_at_a_time = gw.applying.lock().await;
    let settings =
        crate::config::validate_as(&doc, from, &|k: &str| (gw.env)(k)).map_err(Refused::Invalid)?;
    let current = gw.config();
    let hash = hash(&doc, &settings);
    if hash == current.meta.hash {
        return Ok(Applied::Unchanged(current.meta.clone()));
    }
    let fixed = needs_restart(&current.settings, &settings, gw.bound.get());
    if !fixed.is_empty() {
        return Err(Refused::NeedsRestart(fixed));
    }
    let next = build(&doc, settings, hash, source, &gw.learned, Some(&current))
        .await
        .map_err(|e| Refused::Build(format!("{e:#}")))?;
    if let Some(c) = &gw.cache {
        c.set_settings(next.settings.cache.clone());
    }
    if let Some(b) = &gw.budgets {
        b.set_declared(next.settings.budgets.clone());
    }
    let meta = next.meta.clone();
    let keep_providers: Vec<String> = next
        .settings
        .providers
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let keep_models: Vec<(String, String)> = next
        .registry
        .entries()
        .iter()
        .map(|e| (e.provider.name.to_string(), e.info.name.clone()))
        .collect();
    gw.swap(next);
    gw.learned.retain(
        &keep_providers
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &keep_models
            .iter()
            .map(|(p, m)| (p.as_str(), m.as_str()))
            .collect::<Vec<_>>(),
    );
    Ok(Applied::Swapped(meta))
}

/// Builds a snapshot from validated `settings` (discovering models where asked), reusing
/// what `learned` knows and, from `previous`, admission limits that did not change.
pub async fn build(
    doc: &GatewayConfig,
    settings: Settings,
    hash: String,
    source: Source,
    learned: &Learned,
    previous: Option<&Snapshot>,
) -> anyhow::Result<Snapshot> {
    let mut providers = Vec::new();
    for p in &settings.providers {
        // A provider withheld from this gateway is asked nothing, not even its models.
        let models = if p.discover_models && p.key_withheld.is_none() {
            match ollama::list_models(p.base_url.as_str()).await {
                Ok(names) => discovered_models(p, &names),
                Err(e) if p.optional => {
                    info!(provider = %p.name, base_url = %p.base_url, error = %e, "provider not reachable; skipping it");
                    continue;
                }
                Err(e) => {
                    warn!(provider = %p.name, base_url = %p.base_url, error = %e, "model discovery failed; serving the configured models");
                    p.models.clone()
                }
            }
        } else {
            p.models.clone()
        };
        let provider = Arc::new(
            Provider::new(p, learned)?.with_client_idle_timeout(settings.client_idle_timeout),
        );
        info!(
            provider = %p.name,
            protocol = ?p.protocol,
            base_url = %p.base_url,
            models = models.len(),
            "provider enabled"
        );
        providers.push((provider, models));
    }
    let registry = Registry::new(providers, learned);
    let router = Router::new(
        &settings.routing.virtuals,
        &registry,
        settings.routing.latency_decay,
    );
    let admission = match previous {
        Some(p) if same_admission(&p.settings, &settings) => p.admission.clone(),
        _ => Arc::new(Admission::new(
            settings.max_concurrency,
            settings.max_concurrency_per_tenant,
            settings.max_buffered_body_bytes,
            settings.max_body_bytes,
            settings.queue_timeout,
        )),
    };
    Ok(Snapshot {
        registry,
        router,
        failover: settings.routing.failover,
        admin_token: settings.admin_token.clone(),
        max_body_bytes: settings.max_body_bytes,
        drain_timeout: settings.drain_timeout,
        admission,
        meta: Meta {
            version: doc.version.clone(),
            header: Meta::header_value(doc.version.as_deref(), &hash),
            hash,
            applied_at_ms: crate::clock::unix_ms(),
            source: source.label(),
            redacted: redacted(doc),
        },
        settings,
    })
}

/// SHA-256 of the document and of the secrets it resolved to (so a rotated key in a mounted
/// file is a change), hex.
pub fn hash(doc: &GatewayConfig, settings: &Settings) -> String {
    let mut h = Context::new(&SHA256);
    let part = |h: &mut Context, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    part(&mut h, &serde_json::to_vec(doc).unwrap_or_default());
    for p in &settings.providers {
        part(
            &mut h,
            p.api_key.as_ref().map_or(b"", |s| s.expose().as_bytes()),
        );
    }
    part(
        &mut h,
        settings
            .admin_token
            .as_ref()
            .map_or(b"", |s| s.expose().as_bytes()),
    );
    h.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The document with every inline secret value replaced (variable names and file paths say
/// where a secret is, not what it is, and stay).
pub fn redacted(doc: &GatewayConfig) -> GatewayConfig {
    let mut d = doc.clone();
    let hide = |s: &mut Option<SecretSource>| {
        if let Some(SecretSource::Value(v)) = s {
            *v = "<redacted>".into();
        }
    };
    hide(&mut d.server.admin_token);
    for p in &mut d.providers {
        hide(&mut p.api_key);
    }
    d
}

/// Settings a running gateway cannot change, named by their field paths. An address counts
/// as changed only if it differs both from the running document's and from the one in use
/// (`bound`: a gateway started with `--listen` and no file is given a document naming that
/// address, say, or `--listen` overrides the file's); one left out keeps what runs.
fn needs_restart(
    old: &Settings,
    new: &Settings,
    bound: Option<&(std::net::SocketAddr, Option<std::net::SocketAddr>)>,
) -> Vec<&'static str> {
    let (a, b) = (&old.cache, &new.cache);
    let moved = |wanted: Option<std::net::SocketAddr>,
                 was: Option<std::net::SocketAddr>,
                 running: Option<std::net::SocketAddr>| {
        wanted.is_some_and(|w| Some(w) != was && Some(w) != running)
    };
    [
        (
            moved(new.listen, old.listen, bound.map(|b| b.0)),
            "server.listen",
        ),
        (
            moved(
                new.metrics_listen,
                old.metrics_listen,
                bound.and_then(|b| b.1),
            ),
            "server.metrics_listen",
        ),
        (
            old.header_read_timeout != new.header_read_timeout,
            "server.header_read_timeout_secs",
        ),
        (
            old.max_connections != new.max_connections,
            "server.max_connections",
        ),
        (
            old.cors_allowed_origins != new.cors_allowed_origins,
            "server.cors_allowed_origins",
        ),
        (a.enabled != b.enabled, "cache.enabled"),
        (a.semantic != b.semantic, "cache.semantic"),
        (a.max_entries != b.max_entries, "cache.max_entries"),
        (
            a.embedding_model != b.embedding_model,
            "cache.embedding_model",
        ),
        (
            a.embedding_provider != b.embedding_provider,
            "cache.embedding_provider",
        ),
        (
            a.verifier_weights != b.verifier_weights,
            "cache.verifier_weights",
        ),
        (
            a.redis_max_bytes != b.redis_max_bytes,
            "cache.redis_max_bytes",
        ),
    ]
    .into_iter()
    .filter_map(|(changed, field)| changed.then_some(field))
    .collect()
}

fn same_admission(a: &Settings, b: &Settings) -> bool {
    (
        a.max_concurrency,
        a.max_concurrency_per_tenant,
        a.max_buffered_body_bytes,
        a.max_body_bytes,
        a.queue_timeout,
    ) == (
        b.max_concurrency,
        b.max_concurrency_per_tenant,
        b.max_buffered_body_bytes,
        b.max_body_bytes,
        b.queue_timeout,
    )
}

/// Models a provider listed, with what the catalog knows of each (`llama3.2:3b` takes the
/// entry of `llama3.2`); local models the catalog lacks are free with unknown capabilities.
fn discovered_models(p: &ProviderSettings, names: &[String]) -> Vec<ModelInfo> {
    names
        .iter()
        .map(|name| {
            let family = name.split_once(':').map_or(name.as_str(), |(f, _)| f);
            let known = p
                .models
                .iter()
                .find(|m| m.name == *name)
                .or_else(|| p.models.iter().find(|m| m.name == family));
            match known {
                Some(m) => ModelInfo {
                    name: name.clone(),
                    ..m.clone()
                },
                None => ModelInfo {
                    name: name.clone(),
                    kind: if name.contains("embed") || name.contains("minilm") {
                        llm_gateway_crds::ModelKind::Embedding
                    } else {
                        llm_gateway_crds::ModelKind::Chat
                    },
                    price: (p.protocol == llm_gateway_crds::Protocol::Ollama).then_some(Price {
                        input_per_mtok: 0.0,
                        output_per_mtok: 0.0,
                    }),
                    context_window: None,
                    max_output_tokens: None,
                    capabilities: None,
                    quality: UNKNOWN_QUALITY,
                    latency_ms: UNKNOWN_LATENCY_MS,
                    tags: vec![],
                    first_token_timeout: None,
                },
            }
        })
        .collect()
}
