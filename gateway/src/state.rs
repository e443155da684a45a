//! What every request shares, in two parts: the gateway's long-lived services (built once,
//! kept for the life of the process) and the configuration snapshot it serves with (replaced
//! whole while serving, see [`crate::live`]). A request loads the snapshot once, at its start,
//! and finishes on it — across failover and a long stream — while the next request sees the
//! newest.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use llm_gateway_crds::GatewayConfig;

use crate::admission::Admission;
use crate::auth::Auth;
use crate::budget::Budgets;
use crate::cache::Cache;
use crate::config::{FailoverSettings, Secret, Settings};
use crate::ledger::Ledger;
use crate::models::registry::Registry;
use crate::providers::learned::Learned;
use crate::router::Router;
use crate::telemetry::metrics::Metrics;

/// Shared state of every handler.
pub type AppState = Arc<Gateway>;

/// Reads an environment variable (the process's, or a test's stand-in).
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment.
pub fn process_env() -> Env {
    Arc::new(|k: &str| std::env::var(k).ok())
}

/// The long-lived services and the current configuration snapshot.
pub struct Gateway {
    /// Caller authentication.
    pub auth: Auth,
    /// The usage ledger, when there is a database.
    pub ledger: Option<Ledger>,
    /// Budgets and rate limits, when there is a database.
    pub budgets: Option<Arc<Budgets>>,
    /// The response cache, when enabled at start.
    pub cache: Option<Arc<Cache>>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Cleared when shutdown begins, so `/readyz` fails at once.
    pub ready: AtomicBool,
    /// Set just before the drain timeout ends: streams still open end with an error event
    /// saying so (and are recorded as such) instead of being cut mid-frame.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// Breakers, limits, latency figures and HTTP clients of providers and models, by name.
    pub learned: Learned,
    /// Settings of the listener, fixed at start.
    pub fixed: Fixed,
    /// Reads the environment variables a configuration's `env` secrets name.
    pub env: Env,
    current: ArcSwap<Snapshot>,
    /// Held while a new configuration is validated, built and swapped in: one at a time.
    pub(crate) applying: tokio::sync::Mutex<()>,
    /// Configurations swapped in so far.
    swaps: std::sync::atomic::AtomicU64,
    /// The value of `swaps` the state gauges were last published for.
    gauges_for: std::sync::Mutex<u64>,
    /// The API and metrics addresses it actually listens on (set once bound): a new
    /// configuration naming the same ones changes nothing that needs a restart.
    pub bound: std::sync::OnceLock<(std::net::SocketAddr, Option<std::net::SocketAddr>)>,
}

/// Settings read once at start; a new configuration that changes them is refused (they need
/// a restart).
#[derive(Debug, Clone)]
pub struct Fixed {
    /// Longest wait for a request's headers (and on an idle kept-alive connection).
    pub header_read_timeout: Duration,
    /// Open client connections at most.
    pub max_connections: usize,
    /// Browser origins allowed by CORS.
    pub cors_allowed_origins: Vec<String>,
}

impl Fixed {
    /// The fixed part of `s`.
    pub fn of(s: &Settings) -> Self {
        Self {
            header_read_timeout: s.header_read_timeout,
            max_connections: s.max_connections,
            cors_allowed_origins: s.cors_allowed_origins.clone(),
        }
    }
}

/// One configuration, as requests use it.
#[derive(Debug)]
pub struct Snapshot {
    /// Enabled models and providers.
    pub registry: Registry,
    /// Virtual models and their routing.
    pub router: Router,
    /// Failover limits.
    pub failover: FailoverSettings,
    /// Admin endpoints' bearer token.
    pub admin_token: Option<Secret>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish on SIGTERM.
    pub drain_timeout: Duration,
    /// Global, per-tenant and buffered-body limits, checked before a body is read (shared
    /// with the previous snapshot when they did not change).
    pub admission: Arc<Admission>,
    /// The validated settings it was built from (the next configuration is compared to them).
    pub settings: Settings,
    /// Where it came from.
    pub meta: Meta,
}

/// What identifies a configuration.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The `version` its writer set (the operator writes the generation it compiled).
    pub version: Option<String>,
    /// SHA-256 of the document and the secrets it resolved to, hex: equal hashes, equal
    /// configurations.
    pub hash: String,
    /// When it was applied, Unix milliseconds.
    pub applied_at_ms: i64,
    /// How it arrived: `start`, `push`, `file` or `signal`.
    pub source: &'static str,
    /// The document with every secret value replaced by `<redacted>`.
    pub redacted: GatewayConfig,
    /// The `x-llm-gateway-config` value every response carries, built once (`None` if the
    /// version cannot be a header value).
    pub header: Option<http::HeaderValue>,
}

impl Meta {
    /// The configuration header's value: its `version`, else `sha256:` and its hash's start.
    pub fn header_value(version: Option<&str>, hash: &str) -> Option<http::HeaderValue> {
        match version {
            Some(v) => http::HeaderValue::from_str(v),
            None => {
                http::HeaderValue::from_str(&format!("sha256:{}", hash.get(..12).unwrap_or(hash)))
            }
        }
        .ok()
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config().meta.hash)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway serving `snapshot` with these services.
    pub fn new(services: Services, fixed: Fixed, snapshot: Snapshot) -> Self {
        let metrics = services.metrics;
        let budgets = services.budgets.map(|mut b| {
            b.count_redis_errors_in(metrics.budget_redis_errors());
            b.set_declared(snapshot.settings.budgets.clone());
            Arc::new(b)
        });
        let cache = services.cache.map(|mut c| {
            c.count_evictions_in(metrics.cache_evictions());
            if let Some(s) = c.shared_mut() {
                s.count_errors_in(metrics.cache_redis_errors());
            }
            let c = Arc::new(c);
            if let Some(s) = c.shared() {
                s.spawn_listener(c.clone());
            }
            c
        });
        metrics.config_applied(
            snapshot.meta.version.as_deref(),
            &snapshot.meta.hash,
            "start",
        );
        Self {
            auth: services.auth,
            ledger: services.ledger,
            budgets,
            cache,
            metrics,
            ready: AtomicBool::new(true),
            closing: tokio::sync::watch::Sender::new(false),
            learned: services.learned,
            env: services.env.unwrap_or_else(process_env),
            fixed,
            current: ArcSwap::from_pointee(snapshot),
            swaps: std::sync::atomic::AtomicU64::new(0),
            gauges_for: std::sync::Mutex::new(0),
            applying: tokio::sync::Mutex::new(()),
            bound: std::sync::OnceLock::new(),
        }
    }

    /// The configuration to serve a new request with.
    pub fn config(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Makes `next` the configuration of every request from now on.
    pub(crate) fn swap(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
        self.swaps
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// The metrics exposition, with the state gauges published first. Scrapes take turns,
    /// so one never encodes while another clears the gauges of a replaced configuration.
    pub fn metrics_text(&self) -> String {
        let mut published_for = self.gauges_for.lock().unwrap_or_else(|e| e.into_inner());
        // Read before the configuration: a swap in between only clears once more next time.
        let id = self.swaps.load(std::sync::atomic::Ordering::Acquire);
        let cfg = self.config();
        if *published_for != id {
            // Providers and models the new configuration dropped must not stay frozen at
            // their last value.
            self.metrics.forget_configured_gauges();
            *published_for = id;
        }
        self.publish_gauges_of(&cfg);
        self.metrics.encode()
    }

    /// Publishes the state gauges read at scrape time: breakers, concurrency limits,
    /// learned deadlines.
    fn publish_gauges_of(&self, cfg: &Snapshot) {
        let now = Instant::now();
        for p in cfg.registry.providers() {
            self.metrics
                .breaker_state(&p.name, "*", p.breaker.status(now).state.gauge());
            let l = &p.limiter;
            self.metrics
                .provider_concurrency(&p.name, l.limit(), l.in_flight(), l.queued());
        }
        for e in cfg.registry.entries() {
            self.metrics.breaker_state(
                &e.provider.name,
                &e.info.name,
                e.breaker.status(now).state.gauge(),
            );
            if e.info.kind == llm_gateway_crds::ModelKind::Chat {
                let d = e.deadlines.deadline(
                    crate::deadline::Mode::Stream,
                    crate::deadline::Ask::default(),
                    e.provider.first_token_bounds(Some(&e.info)),
                );
                self.metrics.first_content_deadline(
                    &e.provider.name,
                    &e.info.name,
                    d.as_secs_f64(),
                );
            }
        }
    }
}

/// The long-lived services a gateway is built with.
#[derive(Default)]
pub struct Services {
    /// Caller authentication (default: anonymous calls allowed, no key store).
    pub auth: Auth,
    /// The usage ledger.
    pub ledger: Option<Ledger>,
    /// The budget engine.
    pub budgets: Option<Budgets>,
    /// The response cache.
    pub cache: Option<Cache>,
    /// Metrics (a fresh registry by default).
    pub metrics: Metrics,
    /// What is known of providers and models (the snapshot was built with it).
    pub learned: Learned,
    /// The environment `env` secrets are read from (default: the process's).
    pub env: Option<Env>,
}

#[cfg(test)]
mod tests {
    use super::Meta;

    #[test]
    fn the_config_header_is_the_version_or_the_hashs_start() {
        let hash = "0123456789abcdef0123";
        let v = |version| Meta::header_value(version, hash).map(|h| h.to_str().unwrap().to_owned());
        assert_eq!(v(Some("gen-7")).as_deref(), Some("gen-7"));
        assert_eq!(v(None).as_deref(), Some("sha256:0123456789ab"));
        // A version no header can carry: no header, rather than a failed request.
        assert_eq!(v(Some("line\nbreak")), None);
        assert_eq!(
            Meta::header_value(None, "short").unwrap().to_str().unwrap(),
            "sha256:short"
        );
    }
}
