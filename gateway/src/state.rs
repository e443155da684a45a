//! What every request shares: the gateway's services and settings.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{FailoverSettings, Secret};
use crate::models::registry::Registry;
use crate::router::Router;
use crate::telemetry::metrics::Metrics;

/// Shared state of every handler.
pub type AppState = Arc<Gateway>;

/// Everything the handlers share.
#[derive(Debug)]
pub struct Gateway {
    /// Enabled models and providers.
    pub registry: Registry,
    /// Virtual models and their routing.
    pub router: Router,
    /// Caller authentication.
    pub auth: crate::auth::Auth,
    /// The usage ledger, when there is a database.
    pub ledger: Option<crate::ledger::Ledger>,
    /// Budgets and rate limits, when there is a database.
    pub budgets: Option<Arc<crate::budget::Budgets>>,
    /// The response cache, when enabled.
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Cleared when shutdown begins, so `/readyz` fails at once.
    pub ready: AtomicBool,
    /// Failover limits.
    pub failover: FailoverSettings,
    /// Admin endpoints' bearer token.
    pub admin_token: Option<Secret>,
    /// How long in-flight requests may take to finish on SIGTERM.
    pub drain_timeout: Duration,
    /// Longest wait for a request's headers (and on an idle kept-alive connection).
    pub header_read_timeout: Duration,
    /// Open client connections at most.
    pub max_connections: usize,
    /// Browser origins allowed by CORS.
    pub cors_allowed_origins: Vec<String>,
    /// Global, per-tenant and buffered-body limits, checked before a body is read.
    pub admission: crate::admission::Admission,
}

impl Gateway {
    /// Uses `auth` for callers (keys from a store; anonymous calls allowed or not).
    pub fn with_auth(mut self, auth: crate::auth::Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Records every request's usage through `ledger`.
    pub fn with_ledger(mut self, ledger: crate::ledger::Ledger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Enforces `budgets` (their Redis failures counted in this gateway's metrics).
    pub fn with_budgets(mut self, mut budgets: crate::budget::Budgets) -> Self {
        budgets.count_redis_errors_in(self.metrics.budget_redis_errors());
        self.budgets = Some(Arc::new(budgets));
        self
    }

    /// Serves repeated and rephrased requests from `cache`.
    pub fn with_cache(mut self, mut cache: crate::cache::Cache) -> Self {
        cache.count_evictions_in(self.metrics.cache_evictions());
        if let Some(s) = cache.shared_mut() {
            s.count_errors_in(self.metrics.cache_redis_errors());
        }
        let cache = Arc::new(cache);
        if let Some(s) = cache.shared() {
            s.spawn_listener(cache.clone());
        }
        self.cache = Some(cache);
        self
    }

    /// Publishes the state gauges read at scrape time: breakers, concurrency limits,
    /// learned deadlines.
    pub fn publish_gauges(&self) {
        let now = Instant::now();
        for p in self.registry.providers() {
            self.metrics
                .breaker_state(&p.name, "*", p.breaker.status(now).state.gauge());
            let l = &p.limiter;
            self.metrics
                .provider_concurrency(&p.name, l.limit(), l.in_flight(), l.queued());
        }
        for e in self.registry.entries() {
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
