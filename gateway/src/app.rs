//! Building a running gateway from validated settings: discover models, create providers,
//! build the registry; then serve until a shutdown signal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use llm_gateway_crds::Protocol;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::model::{ModelInfo, Price, UNKNOWN_LATENCY_MS, UNKNOWN_QUALITY};
use crate::config::{ProviderSettings, Settings};
use crate::models::registry::Registry;
use crate::providers::{ollama, Provider};
use crate::router::Router;
use crate::state::Gateway;
use crate::telemetry::metrics::Metrics;

impl Gateway {
    /// Builds the gateway: discovers models where asked, then builds providers and registry.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let mut providers = Vec::new();
        for p in &settings.providers {
            let models = if p.discover_models {
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
            let provider =
                Arc::new(Provider::new(p)?.with_client_idle_timeout(settings.client_idle_timeout));
            info!(
                provider = %p.name,
                protocol = ?p.protocol,
                base_url = %p.base_url,
                models = models.len(),
                "provider enabled"
            );
            providers.push((provider, models));
        }
        let registry = Registry::new(providers);
        let router = Router::new(
            &settings.routing.virtuals,
            &registry,
            settings.routing.latency_decay,
        );
        // The classifier's automaton is small and used on every routed request: build it now.
        // The tokenizer (~40 MB, ~0.2 s) loads on first need: the free byte bound settles
        // the context check for all but prompts near a context window.
        crate::router::classifier::warm_up();
        Ok(Self {
            auth: crate::auth::Auth::open(),
            ledger: None,
            budgets: None,
            cache: None,
            router,
            registry,
            metrics: Metrics::default(),
            max_body_bytes: settings.max_body_bytes,
            ready: AtomicBool::new(true),
            failover: settings.routing.failover,
            admin_token: settings.admin_token.clone(),
            drain_timeout: settings.drain_timeout,
            header_read_timeout: settings.header_read_timeout,
            max_connections: settings.max_connections,
            cors_allowed_origins: settings.cors_allowed_origins.clone(),
            admission: crate::admission::Admission::new(
                settings.max_concurrency,
                settings.max_concurrency_per_tenant,
                settings.max_buffered_body_bytes,
                settings.max_body_bytes,
                settings.queue_timeout,
            ),
        })
    }
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
                    price: (p.protocol == Protocol::Ollama).then_some(Price {
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

/// Serves on `listener` (and `/metrics` on `metrics`, when given) until SIGINT/SIGTERM, then
/// drains in-flight requests for at most the drain timeout.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) -> anyhow::Result<()> {
    serve_with_metrics(listener, None, gw).await
}

/// [`serve`], with `/metrics` on a listener of its own (the API port then does not serve it).
pub async fn serve_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    gw: Arc<Gateway>,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    if gw.registry.providers().is_empty() {
        warn!("no providers enabled: set OPENAI_API_KEY, ANTHROPIC_API_KEY, GROQ_API_KEY or TOGETHER_API_KEY, start Ollama, or pass --config");
    }
    info!(
        models = gw.registry.entries().len(),
        "listening on http://{addr} — point OpenAI SDKs at OPENAI_BASE_URL=http://{addr}/v1"
    );
    let limits = crate::api::serve::Limits {
        header_read_timeout: gw.header_read_timeout,
        max_connections: crate::api::serve::fit_connections(gw.max_connections),
    };
    let app = crate::api::router(gw.clone(), metrics.is_none());
    let ledger = gw.ledger.clone();
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(m) = metrics {
        crate::api::serve::announce("metrics", m.local_addr()?);
        let app = crate::api::metrics_router(gw.clone());
        let rx = stopping.clone();
        let g = gw.clone();
        tokio::spawn(async move {
            let rejected = move || g.metrics.connection_rejected();
            let _ = crate::api::serve::serve(
                m,
                app,
                crate::api::serve::Limits {
                    header_read_timeout: limits.header_read_timeout,
                    max_connections: 64,
                },
                stopped(rx),
                Duration::from_secs(1),
                rejected,
                prometheus_client::metrics::gauge::Gauge::default(),
            )
            .await;
        });
    }
    let g = gw.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        g.ready.store(false, Ordering::Relaxed);
        info!(
            drain_timeout_secs = g.drain_timeout.as_secs_f64(),
            "shutdown signal received; draining in-flight requests"
        );
        let _ = stopping_tx.send(true);
    });
    let g = gw.clone();
    crate::api::serve::serve(
        listener,
        app,
        limits,
        stopped(stopping),
        gw.drain_timeout,
        move || g.metrics.connection_rejected(),
        gw.metrics.connections_open(),
    )
    .await?;
    if let Some(l) = &ledger {
        // Every finished request's record reaches the database or the spool before exit.
        l.flush().await;
    }
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
