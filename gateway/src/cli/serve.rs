//! `llm-gateway serve`: load and validate the configuration, open the database, Redis and
//! cache, assemble the gateway, keep its configuration live, and serve.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use llm_gateway::api::serve::Threads;
use llm_gateway::budget::counters::Shared;
use llm_gateway::budget::Budgets;
use llm_gateway::clock::SystemClock;
use llm_gateway::config::{self, ConfigError, Settings, DEFAULT_LISTEN};
use llm_gateway::state::Services;
use llm_gateway::store::Store;
use llm_gateway_crds::GatewayConfig;

use super::{open_store, DbArgs, ServeArgs, Threading};

/// The configuration file's document, or the quick start's from the environment.
pub fn load(config: Option<&PathBuf>) -> Result<(GatewayConfig, Settings), ConfigError> {
    let getenv = |k: &str| std::env::var(k).ok();
    match config {
        Some(path) => {
            let doc = config::load_file(path)?;
            let s = config::validate(&doc, &path.display().to_string(), &getenv)?;
            Ok((doc, s))
        }
        None => config::quick_start(&getenv),
    }
}

/// How many threads serve: `--worker-threads`, else tokio's `TOKIO_WORKER_THREADS` (held to
/// the same 1–1024), else one per CPU this process may use.
pub fn thread_count(args: &ServeArgs) -> Result<NonZeroUsize, String> {
    let n = match (args.worker_threads, std::env::var("TOKIO_WORKER_THREADS")) {
        (Some(n), _) => usize::from(n),
        (None, Ok(v)) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| format!("TOKIO_WORKER_THREADS={v:?} is not a number from 1 to 1024"))?,
        (None, Err(std::env::VarError::NotUnicode(v))) => {
            return Err(format!(
                "TOKIO_WORKER_THREADS={v:?} is not a number from 1 to 1024"
            ))
        }
        (None, Err(std::env::VarError::NotPresent)) => {
            std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
        }
    };
    Ok(NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN))
}

/// Where requests are served: `--threading` over `n` threads.
pub fn threads(args: &ServeArgs, n: NonZeroUsize) -> Threads {
    match args.threading {
        Threading::PerThread => Threads::PerThread(n),
        Threading::Shared => Threads::Shared,
    }
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs, db: DbArgs, threads: Threads) -> ExitCode {
    if let Threads::PerThread(n) = threads {
        // Before the providers are built: each thread gets upstream clients of its own.
        llm_gateway::threads::set_count(n.get());
    }
    let missing = args.config.as_ref().is_some_and(|p| !p.exists());
    let loaded = if args.wait_for_config && missing {
        tracing::info!("no configuration file yet: starting without providers until one is pushed");
        let doc = GatewayConfig::default();
        config::validate(&doc, "empty configuration", &|k: &str| {
            std::env::var(k).ok()
        })
        .map(|s| (doc, s))
    } else {
        load(args.config.as_ref())
    };
    let (doc, settings) = match loaded {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = args
        .listen
        .or(settings.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address parses"));
    let store = match open_store(&db).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Keys are required with an explicit database or beyond loopback; the embedded quick
    // start on loopback stays open.
    let required = db.database_url.is_some() || !addr.ip().is_loopback();
    tracing::info!(
        database = store.kind(),
        auth_required = required,
        "key store ready"
    );
    // Usage records go to the database, or to a spool beside the embedded database when it
    // is unreachable.
    let spool = llm_gateway::store::data_dir().join("usage-spool.jsonl");
    let low = store.low_priority_writer(args.ledger_nice);
    if let Some(keep) = args.ledger_retention_days.0 {
        // On SQLite, through the ledger's own lower-priority connection, like its inserts.
        llm_gateway::retention::spawn(low.clone().unwrap_or_else(|| store.clone()), keep);
    }
    let ledger = llm_gateway::ledger::Ledger::start_with(store.clone(), low, spool);
    let budgets = match open_budgets(&db, &store).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    let quality_store = store.clone();
    let mut auth =
        llm_gateway::auth::Auth::new(Some(store), required, llm_gateway::auth::KEY_CACHE_TTL);
    if let Some(w) = args.workload.clone().filter(|w| !w.trim().is_empty()) {
        tracing::info!(workload = %w, "sidecar mode: calls from loopback are this workload");
        auth = auth.with_local_workload(w);
    }
    if args.kubernetes_auth {
        match kube_api(&args) {
            Ok(r) => auth = auth.with_token_reviewer(r),
            Err(e) => {
                eprintln!("error: --kubernetes-auth: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let redis = db
        .redis_url
        .as_deref()
        .map(|u| (u, db.redis_prefix.as_str()));
    let cache = match llm_gateway::cache::Cache::from_settings(&settings.cache, redis).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics_addr = args.metrics_listen.or(settings.metrics_listen);
    let services = Services {
        auth,
        ledger: Some(ledger),
        budgets: Some(budgets),
        cache,
        ..Services::default()
    };
    let gw = match llm_gateway::app::assemble(&doc, settings, services).await {
        Ok(gw) => gw,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(b) = &gw.budgets {
        b.spawn_refresh();
    }
    // 0 turns the file watch off (Kubernetes: the operator's push is the live path).
    if let (Some(path), true) = (&args.config, args.config_poll_secs > 0.0) {
        let every = Duration::from_secs_f64(args.config_poll_secs.clamp(0.1, 3600.0));
        llm_gateway::app::watch_file(gw.clone(), path.clone(), every);
    }
    llm_gateway::app::reload_on_sighup(gw.clone(), args.config.clone());
    llm_gateway::app::refresh_measured_quality(
        gw.clone(),
        quality_store,
        llm_gateway::app::MEASURED_QUALITY_REFRESH,
    );
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = match metrics_addr {
        None => None,
        Some(a) => match tokio::net::TcpListener::bind(a).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: cannot listen on {a} for metrics: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if let Ok(api) = listener.local_addr() {
        let metrics = metrics.as_ref().and_then(|m| m.local_addr().ok());
        let _ = gw.bound.set((api, metrics));
    }
    match llm_gateway::app::serve_with_metrics(listener, metrics, threads, gw).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The TokenReview client of --kubernetes-auth: flags first, else the in-cluster defaults.
fn kube_api(args: &ServeArgs) -> Result<llm_gateway::workload::TokenReviewer, String> {
    use llm_gateway::workload::{ApiServer, TokenReviewer};
    let base = ApiServer::in_cluster();
    let api = ApiServer {
        url: args
            .kube_api
            .clone()
            .or_else(|| base.as_ref().map(|b| b.url.clone()))
            .ok_or("not in a pod: set --kube-api")?,
        ca_file: args
            .kube_ca
            .clone()
            .or_else(|| base.as_ref().map(|b| b.ca_file.clone()))
            .ok_or("set --kube-ca")?,
        token_file: args
            .kube_token_file
            .clone()
            .or_else(|| base.as_ref().map(|b| b.token_file.clone()))
            .ok_or("set --kube-token-file")?,
        audience: args.kube_token_audience.clone(),
    };
    TokenReviewer::new(api)
}

/// The budget engine: definitions from the database, counters in Redis if configured.
async fn open_budgets(db: &DbArgs, store: &Store) -> Result<Budgets, ExitCode> {
    let shared = match &db.redis_url {
        Some(url) => match Shared::connect(url).await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!(
                    "error: cannot use Redis at {}: {e}",
                    llm_gateway::store::redact(url)
                );
                return Err(ExitCode::from(2));
            }
        },
        None => None,
    };
    let budgets = Budgets::new(
        Some(store.clone()),
        shared,
        Arc::new(SystemClock),
        &db.redis_prefix,
    );
    if let Err(e) = budgets.reload().await {
        eprintln!("error: cannot read budgets: {e}");
        return Err(ExitCode::from(2));
    }
    tracing::info!(
        counters = if budgets.is_shared() {
            "redis"
        } else {
            "in-process"
        },
        budgets = budgets.count(),
        "budgets ready"
    );
    if budgets.count() > 0 {
        // Budgeted requests count prompt tokens: load the tokenizer now, off the runtime.
        tokio::task::spawn_blocking(llm_gateway::router::tokens::warm_up);
    }
    Ok(budgets)
}
