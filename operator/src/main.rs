//! The `llm-gateway-operator` binary: flags, leader election, the controllers, the sync
//! loop, and `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Api, Client};
use llm_gateway_crds::resources::{BudgetPolicy, LLMRoute, ProviderPool};
use llm_gateway_operator::metrics::Metrics;
use llm_gateway_operator::runtime::{Ctx, Settings, Stores};
use tracing::{error, info, warn};

/// Compiles ProviderPool, LLMRoute and BudgetPolicy resources into the configuration of
/// every gateway pod (label llmgateway.io/gateway=true) and keeps it live.
#[derive(Parser, Debug)]
#[command(name = "llm-gateway-operator", version, about)]
struct Cli {
    /// The operator's namespace: its resources are the cluster's defaults; its ConfigMap,
    /// admin Secret and lease live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "llm-gateway")]
    namespace: String,
    /// This replica's name (leases and events).
    #[arg(long, env = "POD_NAME", default_value = "llm-gateway-operator")]
    identity: String,
    /// The ConfigMap the compiled configuration (without secrets) is written to.
    #[arg(long, default_value = "llm-gateway-config")]
    config_map: String,
    /// The Secret holding the gateways' admin token (created if missing).
    #[arg(long, default_value = "llm-gateway-admin")]
    admin_secret: String,
    /// A GatewayConfig YAML file every compiled configuration starts from (server and
    /// cache settings).
    #[arg(long, env = "LLM_GATEWAY_OPERATOR_BASE_CONFIG")]
    base_config: Option<std::path::PathBuf>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, default_value = "0.0.0.0:8081")]
    metrics_listen: SocketAddr,
    /// Leader lease duration, seconds: a standby takes over within it after the leader dies.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// How often everything is recompiled and every status refreshed (budget figures
    /// included), seconds.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// Serve the sidecar-injection webhook (HTTPS) here; every replica serves it.
    #[arg(long)]
    webhook_listen: Option<SocketAddr>,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps (own certificates).
    #[arg(long, default_value = "llm-gateway")]
    webhook_config: String,
    /// The Secret holding the operator's own webhook certificate.
    #[arg(long, default_value = "llm-gateway-webhook-tls")]
    webhook_secret: String,
    /// The webhook Service (its DNS names go into the certificate).
    #[arg(long, default_value = "llm-gateway-webhook")]
    webhook_service: String,
    /// Extra names or addresses for the certificate (e.g. 127.0.0.1 when the API server
    /// calls a URL).
    #[arg(long, value_delimiter = ',')]
    webhook_host: Vec<String>,
    /// Serve cert-manager's certificate from here (tls.crt, tls.key) instead of making one.
    #[arg(long)]
    webhook_cert_dir: Option<std::path::PathBuf>,
    /// The gateway image injected as a sidecar.
    #[arg(
        long,
        env = "LLM_GATEWAY_IMAGE",
        default_value = "ghcr.io/llm-gateway/llm-gateway:0.1.0"
    )]
    gateway_image: String,
    /// The label selector of the namespaces whose gateways (sidecars) get the keys of the
    /// cluster's pools, those of the operator's namespace; elsewhere those providers refuse
    /// calls (403 `provider_withheld`). `*`: every namespace.
    #[arg(long, default_value = "llmgateway.io/cluster-keys=allowed")]
    cluster_keys_namespaces: String,
    /// `native` (an init container with restartPolicy Always, Kubernetes 1.29+), `container`,
    /// or `auto` (native when the API server is 1.29 or newer).
    #[arg(long, default_value = "auto", value_parser = ["auto", "native", "container"])]
    sidecar_mode: String,
    /// The sidecar's API port (apps call http://127.0.0.1:PORT/v1).
    #[arg(long, default_value_t = 18080)]
    sidecar_port: u16,
    /// The sidecar's metrics port (named llm-metrics, for the PodMonitor).
    #[arg(long, default_value_t = 18090)]
    sidecar_metrics_port: u16,
    /// The sidecar's CPU request.
    #[arg(long, default_value = "50m")]
    sidecar_cpu_request: String,
    /// The sidecar's memory request.
    #[arg(long, default_value = "64Mi")]
    sidecar_memory_request: String,
    /// The sidecar's memory limit.
    #[arg(long, default_value = "256Mi")]
    sidecar_memory_limit: String,
    /// The sidecar's request-serving threads (its LLM_GATEWAY_WORKER_THREADS).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1024))]
    sidecar_worker_threads: u16,
    /// The sidecar's image pull policy.
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    image_pull_policy: String,
    /// Print the pod in this file (YAML or JSON) as the webhook would inject it, and exit
    /// (with --sidecar-mode native or container; no API server needed).
    #[arg(long)]
    print_injected: Option<std::path::PathBuf>,
}

/// How long a reconcile waits before refreshing its resource's status again.
const REQUEUE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ReconcileError(String);

fn main() -> std::process::ExitCode {
    llm_gateway_operator::install_crypto();
    // Reconciles are traced when the standard OTEL_* variables ask for it.
    let traces = match llm_gateway::telemetry::traces::provider("llm-gateway-operator") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: traces: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    {
        use opentelemetry::trace::TracerProvider;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let fmt = tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(false)
            .with_filter(filter);
        let otel = traces.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("llm-gateway-operator"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
        });
        tracing_subscriber::registry().with(fmt).with(otel).init();
    }
    let cli = Cli::parse();
    if let Some(path) = &cli.print_injected {
        return match print_injected(&cli, path) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}: {e:#}", path.display());
                std::process::ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let base = match &cli.base_config {
        None => Default::default(),
        Some(p) => yaml_serde::from_str(&std::fs::read_to_string(p)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
    };
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve_metrics(
        cli.metrics_listen,
        metrics.clone(),
        ready.clone(),
    ));

    // Namespaces given the cluster's keys: a bad selector stops the start with its own
    // message (before this replica is ready or stands for leader, so a rollout with a typo
    // stops at its first pod rather than once the old ones are gone).
    let key_selector = match cli.cluster_keys_namespaces.trim() {
        "*" => None,
        "" => anyhow::bail!(
            "--cluster-keys-namespaces is empty: give a label selector, or `*` for every namespace"
        ),
        sel => {
            Api::<Namespace>::all(client.clone())
                .list_metadata(&kube::api::ListParams::default().labels(sel).limit(1))
                .await
                .map_err(|e| {
                    anyhow::anyhow!("--cluster-keys-namespaces `{sel}`: cannot list the namespaces it selects (a bad selector, or no permission to list namespaces): {e}")
                })?;
            Some(sel.to_owned())
        }
    };
    // Leader election: only the lease holder reconciles and pushes; a standby waits.
    let lease =
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "llm-gateway-operator")
            .with_namespace(cli.namespace.clone())
            .with_identity(cli.identity.clone())
            .with_duration(cli.lease_seconds)
            .with_grace(cli.lease_seconds.div_ceil(3).max(1))
            .build()
            .await?;
    if let Some(addr) = cli.webhook_listen {
        start_webhook(&cli, client.clone(), addr).await?;
    }
    let (mut leader, _lease_task) = lease.watch().await;
    ready.store(true, Ordering::Relaxed);
    info!(identity = %cli.identity, "waiting for the leader lease");
    while !*leader.borrow_and_update() {
        leader.changed().await?;
    }
    info!(identity = %cli.identity, "leading");
    metrics.set_leader(true);

    let pools_ctl = Controller::new(
        Api::<ProviderPool>::all(client.clone()),
        watcher::Config::default(),
    );
    let routes_ctl = Controller::new(
        Api::<LLMRoute>::all(client.clone()),
        watcher::Config::default(),
    );
    let policies_ctl = Controller::new(
        Api::<BudgetPolicy>::all(client.clone()),
        watcher::Config::default(),
    );
    let (key_namespaces, key_namespaces_stream) = match &key_selector {
        None => (None, None),
        Some(sel) => {
            let (store, writer) = reflector::store();
            let stream = reflector::reflector(
                writer,
                watcher(
                    Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                    watcher::Config::default().labels(sel),
                ),
            )
            .default_backoff()
            .touched_objects();
            (Some(store), Some(stream))
        }
    };
    let (pods, pods_writer) = reflector::store();
    let ctx = Ctx::new(
        client.clone(),
        Settings {
            namespace: cli.namespace.clone(),
            config_map: cli.config_map.clone(),
            admin_secret: cli.admin_secret.clone(),
            base,
            identity: cli.identity.clone(),
            sidecar_image: cli.gateway_image.clone(),
            cluster_keys: key_selector,
        },
        Stores {
            pools: pools_ctl.store(),
            routes: routes_ctl.store(),
            policies: policies_ctl.store(),
            pods,
            key_namespaces,
        },
        metrics.clone(),
    )
    .await?;

    // Gateway pods and referenced Secrets: a change wakes the sync loop.
    let pod_api = Api::<Pod>::all(client.clone());
    let pods_stream = reflector::reflector(
        pods_writer,
        watcher(
            pod_api,
            watcher::Config::default().labels(&format!(
                "{}=true",
                llm_gateway_operator::gateways::GATEWAY_LABEL
            )),
        ),
    )
    .default_backoff()
    .touched_objects();
    let secrets_stream = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let c = ctx.clone();
    tokio::spawn(async move {
        let namespaces_stream = match key_namespaces_stream {
            Some(s) => s.map(|_| ()).boxed(),
            None => futures::stream::pending().boxed(),
        };
        let mut events = std::pin::pin!(futures::stream::select_all([
            pods_stream.map(|_| ()).boxed(),
            secrets_stream.map(|_| ()).boxed(),
            namespaces_stream,
        ]));
        while events.next().await.is_some() {
            c.wake.notify_one();
        }
    });

    // The sync loop: on a wake-up (debounced), or periodically, and soon again while some
    // gateway is behind.
    let c = ctx.clone();
    let resync = Duration::from_secs(cli.resync_seconds.max(1));
    tokio::spawn(async move {
        loop {
            let wait = if c.behind() {
                Duration::from_secs(1)
            } else {
                resync
            };
            let _ = tokio::time::timeout(wait, c.wake.notified()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Err(e) = c.sync().await {
                warn!(error = %e, "sync failed; retrying");
            }
        }
    });

    // Leadership lost: stop at once, so that two replicas never both push.
    tokio::spawn(async move {
        while leader.changed().await.is_ok() {
            if !*leader.borrow() {
                error!("lost the leader lease; exiting");
                std::process::exit(1);
            }
        }
    });

    let pools = pools_ctl
        .shutdown_on_signal()
        .run(
            reconcile::<ProviderPool>,
            error_policy::<ProviderPool>,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let routes = routes_ctl
        .shutdown_on_signal()
        .run(reconcile::<LLMRoute>, error_policy::<LLMRoute>, ctx.clone())
        .for_each(|_| async {});
    let policies = policies_ctl
        .shutdown_on_signal()
        .run(
            reconcile::<BudgetPolicy>,
            error_policy::<BudgetPolicy>,
            ctx.clone(),
        )
        .for_each(|_| async {});
    tokio::join!(pools, routes, policies);
    info!("stopped");
    Ok(())
}

/// How the webhook makes sidecars.
fn sidecar(cli: &Cli, native: bool) -> llm_gateway_operator::webhook::inject::Sidecar {
    llm_gateway_operator::webhook::inject::Sidecar {
        image: cli.gateway_image.clone(),
        pull_policy: cli.image_pull_policy.clone(),
        port: cli.sidecar_port,
        metrics_port: cli.sidecar_metrics_port,
        native,
        config_map: cli.config_map.clone(),
        admin_secret: cli.admin_secret.clone(),
        requests_cpu: cli.sidecar_cpu_request.clone(),
        requests_memory: cli.sidecar_memory_request.clone(),
        limits_memory: cli.sidecar_memory_limit.clone(),
        worker_threads: cli.sidecar_worker_threads,
    }
}

/// --print-injected: the pod in `path` as the webhook would return it.
fn print_injected(cli: &Cli, path: &std::path::Path) -> anyhow::Result<()> {
    use llm_gateway_operator::webhook::inject;
    let text = std::fs::read_to_string(path)?;
    let pod: serde_json::Value = yaml_serde::from_str(&text)?;
    let native = match cli.sidecar_mode.as_str() {
        "native" => true,
        "container" => false,
        _ => anyhow::bail!("--print-injected needs --sidecar-mode native or container"),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&inject::inject(&pod, &sidecar(cli, native)))?
    );
    Ok(())
}

/// Serves the injection webhook (every replica, leader or not).
async fn start_webhook(cli: &Cli, client: Client, addr: SocketAddr) -> anyhow::Result<()> {
    use llm_gateway_operator::webhook::{self, tls};
    let native = match cli.sidecar_mode.as_str() {
        "native" => true,
        "container" => false,
        _ => {
            let v = client.apiserver_version().await?;
            let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(0);
            v.major == "1" && minor >= 29
        }
    };
    let source = match &cli.webhook_cert_dir {
        Some(dir) => tls::Source::Files(dir.clone()),
        None => {
            let svc = &cli.webhook_service;
            let ns = &cli.namespace;
            let mut names = vec![
                format!("{svc}.{ns}.svc"),
                format!("{svc}.{ns}.svc.cluster.local"),
                format!("{svc}.{ns}"),
            ];
            names.extend(cli.webhook_host.iter().cloned());
            tls::Source::Own {
                namespace: ns.clone(),
                secret: cli.webhook_secret.clone(),
                config: cli.webhook_config.clone(),
                names,
            }
        }
    };
    let acceptor = Arc::new(arc_swap::ArcSwap::from_pointee(
        tls::load(&client, &source).await?,
    ));
    tokio::spawn(tls::keep(client.clone(), source, acceptor.clone()));
    let settings = Settings {
        namespace: cli.namespace.clone(),
        config_map: cli.config_map.clone(),
        admin_secret: cli.admin_secret.clone(),
        base: Default::default(),
        identity: cli.identity.clone(),
        sidecar_image: cli.gateway_image.clone(),
        // The webhook prepares namespaces; it pushes no keys.
        cluster_keys: None,
    };
    let c = client.clone();
    let w = Arc::new(webhook::Webhook {
        client: client.clone(),
        sidecar: sidecar(cli, native),
        operator_namespace: cli.namespace.clone(),
        prepare: Arc::new(move |ns| {
            Box::pin(llm_gateway_operator::runtime::prepare_namespace(
                c.clone(),
                settings.clone(),
                ns,
            ))
        }),
    });
    let listener =
        webhook::tls::TlsListener::new(tokio::net::TcpListener::bind(addr).await?, acceptor)?;
    info!(%addr, native, "serving the sidecar-injection webhook");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, webhook::router(w)).await {
            error!(error = %e, "the webhook server stopped");
        }
    });
    Ok(())
}

/// One resource changed (or its requeue came): compile and push (a no-op if nothing
/// changed), then its status is written with everyone else's.
async fn reconcile<K>(obj: Arc<K>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError>
where
    K: kube::Resource<DynamicType = ()>,
{
    use tracing::Instrument;
    let started = Instant::now();
    let kind = K::kind(&());
    let span = tracing::info_span!(
        "reconcile",
        otel.name = %format!("reconcile {kind}"),
        otel.status_code = tracing::field::Empty,
        k8s.resource.kind = %kind,
        k8s.namespace.name = obj.meta().namespace.as_deref().unwrap_or(""),
        k8s.resource.name = obj.meta().name.as_deref().unwrap_or(""),
        error.message = tracing::field::Empty,
    );
    let result = ctx.sync().instrument(span.clone()).await;
    if let Err(e) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("error.message", format!("{e:#}").as_str());
    }
    ctx.metrics
        .reconcile(&kind, started.elapsed().as_secs_f64(), result.is_err());
    result
        .map(|()| Action::requeue(REQUEUE))
        .map_err(|e| ReconcileError(format!("{e:#}")))
}

fn error_policy<K>(_obj: Arc<K>, e: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    warn!(error = %e, "reconcile failed; retrying in 5 s");
    Action::requeue(Duration::from_secs(5))
}

/// `/metrics` (OpenMetrics), `/healthz` (the process answers), `/readyz` (it has reached
/// the API server and joined the election: a standby is ready too).
async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = ready.clone();
                async move {
                    if r.load(Ordering::Relaxed) {
                        (http::StatusCode::OK, "ready")
                    } else {
                        (http::StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            info!(%addr, "serving /metrics, /healthz, /readyz");
            if let Err(e) = axum::serve(l, app).await {
                error!(error = %e, "the metrics server stopped");
            }
        }
        Err(e) => error!(%addr, error = %e, "cannot listen for metrics"),
    }
}
