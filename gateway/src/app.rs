//! Assembling a gateway from its configuration and services, keeping its configuration live
//! (file changes, SIGHUP), and serving until a shutdown signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use llm_gateway_crds::GatewayConfig;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api::serve::Threads;
use crate::config::{DocSource, Settings};
use crate::live::{self, Source};
use crate::state::{Fixed, Gateway, Services};

/// Assembles a gateway from a validated configuration and its services: the one way `main`,
/// the tests and the benchmarks build one.
pub async fn assemble(
    doc: &GatewayConfig,
    settings: Settings,
    mut services: Services,
) -> anyhow::Result<Arc<Gateway>> {
    let hash = live::hash(doc, &settings);
    let fixed = Fixed::of(&settings);
    let snapshot = live::build(doc, settings, hash, Source::Start, &services.learned, None).await?;
    if let Some(c) = services.cache.as_mut() {
        c.attach_provider(&snapshot.registry)
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    // The classifier's automaton is small and used on every routed request: build it now.
    // The tokenizer (~40 MB, ~0.2 s) loads on first need: the free byte bound settles the
    // context check for all but prompts near a context window.
    crate::router::classifier::warm_up();
    crate::router::strong_need::warm_up().map_err(|e| anyhow::anyhow!(e))?;
    Ok(Arc::new(Gateway::new(services, fixed, snapshot)))
}

/// Re-reads the configuration file every `every` and applies it when its content changed
/// (a Kubernetes ConfigMap volume swaps a `..data` symlink rather than writing the file, so
/// the path is read afresh each time, never watched by inode).
pub fn watch_file(gw: Arc<Gateway>, path: PathBuf, every: Duration) {
    tokio::spawn(async move {
        // The file and the `{file: …}` secrets it names: a key rotated in its Secret volume
        // (the ConfigMap unchanged) is a change too, and so is a key file that appears after
        // the document naming it was refused for its absence.
        // The secret files' paths, worked out again only when the file's bytes change.
        let mut named: (Vec<u8>, Vec<String>) = (Vec::new(), Vec::new());
        let mut read = |config: Vec<u8>| {
            if named.0 != config {
                named = (config.clone(), secret_files(&config));
            }
            let secrets = named
                .1
                .iter()
                .map(|f| std::fs::read(f).ok())
                .collect::<Vec<_>>();
            (config, secrets)
        };
        let mut last = std::fs::read(&path).ok().map(&mut read);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = match tokio::fs::read(&path).await {
                Ok(b) => read(b),
                Err(e) => {
                    // A ConfigMap update replaces the file in one rename; a read that fails
                    // in between is retried at the next tick.
                    tracing::debug!(path = %path.display(), error = %e, "config file not readable");
                    continue;
                }
            };
            if last.as_ref() == Some(&now) {
                continue;
            }
            last = Some(now);
            reload_file(&gw, &path, Source::File).await;
        }
    });
}

/// The `{file: …}` secrets a configuration file names (none if it does not parse).
fn secret_files(config: &[u8]) -> Vec<String> {
    use llm_gateway_crds::SecretSource;
    let Some(doc) = std::str::from_utf8(config)
        .ok()
        .and_then(|text| crate::config::parse("", text).ok())
    else {
        return Vec::new();
    };
    let admin = doc.server.admin_token.as_ref();
    doc.providers
        .iter()
        .filter_map(|p| p.api_key.as_ref())
        .chain(admin)
        .filter_map(|s| match s {
            SecretSource::File(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// Applies the file at `path` (SIGHUP and the file watcher come here).
pub async fn reload_file(gw: &Gateway, path: &std::path::Path, source: Source) {
    let name = path.display().to_string();
    let doc = match crate::config::load_replacement(path) {
        Ok(d) => d,
        Err(e) => {
            live::report_refused(gw, source, &live::Refused::Invalid(e));
            return;
        }
    };
    let _ = live::apply(gw, doc, DocSource::File(&name), source).await;
}

/// How often running gateways re-read `bench`'s measured quality.
pub const MEASURED_QUALITY_REFRESH: Duration = Duration::from_secs(30);

/// Reads `bench`'s measured quality from the database now and every `every`, into the
/// models routing ranks (a failed read keeps what was read before).
pub fn refresh_measured_quality(gw: Arc<Gateway>, store: crate::store::Store, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store.measured_quality().await {
                Ok(rows) => gw.learned.apply_measured(measured_by_model(&rows)),
                Err(e) => warn!(error = %e, "cannot read measured model quality; keeping the last"),
            }
        }
    });
}

/// Rows of the database's measured quality as `Learned` keeps them (unknown tier names, from
/// a newer gateway's tasks, are skipped).
fn measured_by_model(
    rows: &[crate::store::bench::TierScore],
) -> crate::providers::learned::MeasuredByModel {
    let mut out = crate::providers::learned::MeasuredByModel::default();
    for r in rows {
        if let Some(t) = crate::router::classifier::Tier::parse(&r.tier) {
            out.entry((r.provider.clone(), r.model.clone()))
                .or_default()[t as usize] = Some(r.quality);
        }
    }
    out
}

/// Applies the configuration again on every SIGHUP: the file's, or the environment's in the
/// quick start.
pub fn reload_on_sighup(gw: Arc<Gateway>, path: Option<PathBuf>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading the configuration");
            match &path {
                Some(p) => reload_file(&gw, p, Source::Signal).await,
                None => {
                    let doc = crate::config::from_env(|k: &str| (gw.env)(k));
                    let _ = live::apply(&gw, doc, DocSource::Environment, Source::Signal).await;
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (gw, path);
}

/// Serves on `listener` (and `/metrics` on `metrics`, when given) until SIGINT/SIGTERM, then
/// drains in-flight requests for at most the drain timeout.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) -> anyhow::Result<()> {
    serve_with_metrics(listener, None, Threads::Shared, gw).await
}

/// [`serve`], with `/metrics` on a listener of its own (the API port then does not serve it)
/// and API requests served where `threads` says.
pub async fn serve_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    threads: Threads,
    gw: Arc<Gateway>,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    let cfg = gw.config();
    if cfg.registry.providers().is_empty() {
        warn!("no providers enabled: set OPENAI_API_KEY, ANTHROPIC_API_KEY, GROQ_API_KEY or TOGETHER_API_KEY, start Ollama, or pass --config");
    }
    info!(
        models = cfg.registry.entries().len(),
        worker_threads = match threads {
            Threads::Shared => tokio::runtime::Handle::current().metrics().num_workers(),
            Threads::PerThread(n) => n.get(),
        },
        allocator = crate::alloc::in_use(),
        "listening on http://{addr} — point OpenAI SDKs at OPENAI_BASE_URL=http://{addr}/v1"
    );
    let limits = crate::api::serve::Limits {
        header_read_timeout: gw.fixed.header_read_timeout,
        max_connections: crate::api::serve::fit_connections(gw.fixed.max_connections),
        threads,
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
                    threads: Threads::Shared,
                },
                stopped(rx),
                || Duration::from_secs(1),
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
            drain_timeout_secs = g.config().drain_timeout.as_secs_f64(),
            "shutdown signal received; draining in-flight requests"
        );
        let _ = stopping_tx.send(true);
        // Streams still open just before the drain timeout end with an error event saying
        // why (and are recorded so), rather than being cut mid-frame when it ends; so do
        // requests still waiting upstream (503). A second signal (an impatient Ctrl-C) ends
        // them now: the drain then finishes as soon as they have answered.
        let drain = g.config().drain_timeout;
        tokio::select! {
            _ = tokio::time::sleep(drain.saturating_sub((drain / 4).min(Duration::from_secs(1)))) => {}
            _ = shutdown_signal() => {
                warn!("second shutdown signal: ending the requests still in flight now");
            }
        }
        g.closing.send_replace(true);
    });
    let g = gw.clone();
    let d = gw.clone();
    let drained = crate::api::serve::serve(
        listener,
        app,
        limits,
        stopped(stopping),
        move || d.config().drain_timeout,
        move || g.metrics.connection_rejected(),
        gw.metrics.connections_open(),
    )
    .await?;
    if let Some(l) = &ledger {
        // Every finished request's record reaches the database or the spool before exit.
        l.flush().await;
    }
    drained.close().await;
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
