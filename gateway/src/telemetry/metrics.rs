//! Prometheus metrics. Label values are bounded: provider names and catalog model names come
//! from configuration; a model the catalog does not list is labelled `unlisted`, so clients
//! cannot grow the label set.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::wire::Usage;

/// Label for a model the catalog does not list.
pub const UNLISTED: &str = "unlisted";

/// A label value every request's series share: built once, so that labelling a request
/// clones a pointer instead of allocating a string.
pub type Label = Arc<str>;

/// [`UNLISTED`] as a [`Label`].
pub fn unlisted() -> Label {
    static L: LazyLock<Label> = LazyLock::new(|| Label::from(UNLISTED));
    L.clone()
}

/// `global` (the gateway-wide concurrency limit's queue) as a [`Label`].
pub fn global() -> Label {
    static L: LazyLock<Label> = LazyLock::new(|| Label::from("global"));
    L.clone()
}

/// `none` (a request that reached no provider) as a [`Label`].
pub fn none() -> Label {
    static L: LazyLock<Label> = LazyLock::new(|| Label::from("none"));
    L.clone()
}

/// `endpoint`, `provider`, `model`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `chat` or `embeddings`.
    pub endpoint: &'static str,
    /// Provider name, or `none` when the request never reached one.
    pub provider: Label,
    /// Catalog model name or `unlisted`.
    pub model: Label,
    /// HTTP status (499 when the client went away mid-stream).
    pub status: u16,
}

/// `provider`, `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Provider name.
    pub provider: Label,
    /// Catalog model name or `unlisted`.
    pub model: Label,
}

/// `provider`, `model`, `kind` (prompt/completion).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Provider name.
    pub provider: Label,
    /// Catalog model name or `unlisted`.
    pub model: Label,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

/// `virtual_model`, `tier`, `provider`, `model` of a routing decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Virtual model name (from configuration).
    pub virtual_model: String,
    /// Classifier tier.
    pub tier: String,
    /// Chosen provider.
    pub provider: String,
    /// Chosen model.
    pub model: String,
}

/// `provider`, `model` (`*` for the provider-wide breaker).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    /// Provider name.
    pub provider: String,
    /// Model name, or `*`.
    pub model: String,
}

/// A breaker transition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// Provider name.
    pub provider: String,
    /// Model name, or `*`.
    pub model: String,
    /// New state.
    pub to: String,
}

/// An upstream failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Provider name.
    pub provider: String,
    /// Bounded reason (`connect`, `timeout_first_token`, `status_5xx`, ...).
    pub reason: String,
}

/// A failover from one provider to the next candidate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    /// The provider that failed.
    pub from: String,
    /// The provider tried next.
    pub to: String,
    /// Why the first failed.
    pub reason: String,
}

/// Labels of cache outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit_exact`, `hit_semantic`, `miss`, `bypass`.
    pub outcome: String,
}

/// Labels of budget outcomes: scope kind (`global`, `tenant`, `key`) and which limit, never
/// the tenant or key itself (unbounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// `global`, `tenant` or `key`.
    pub scope: String,
    /// `usd`, `tokens`, `requests_per_minute`, `tokens_per_minute`.
    pub limit: String,
    /// `rejected` or `downgraded`.
    pub outcome: String,
}

/// A hedge: the provider it went to, and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HedgeLabels {
    /// The hedge's provider.
    pub provider: String,
    /// `won` (it answered first), `lost` (the first candidate did), `failed` (both failed).
    pub outcome: String,
}

/// `provider`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider name.
    pub provider: String,
}

/// The configuration running: `version` and `hash`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigInfoLabels {
    /// As its writer set it (empty if none).
    pub version: String,
    /// Its content hash (first 16 hex digits).
    pub hash: String,
}

/// A configuration reload: how it came and what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `start`, `push`, `file` or `signal`.
    pub source: String,
    /// `applied`, `unchanged` or `refused`.
    pub result: String,
}

/// Where a request waited for a concurrency slot.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `global` or a provider name.
    pub scope: Label,
}

/// One budget's labels (key-scoped budgets are left out: their subject is a key id, an
/// unbounded set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetFigureLabels {
    /// `global`, `tenant` or `namespace`.
    pub scope: String,
    /// The tenant or namespace (empty for global).
    pub subject: String,
    /// `month`, `week` or `day`.
    pub period: String,
}

/// The endpoint of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// `chat`, `embeddings`, ...
    pub endpoint: &'static str,
}

type FloatGauge = prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>;

/// All gateway metrics.
pub struct Metrics {
    ttft: Family<ModelLabels, Histogram>,
    overhead: Family<EndpointLabels, Histogram>,
    budget_used_usd: Family<BudgetFigureLabels, FloatGauge>,
    budget_limit_usd: Family<BudgetFigureLabels, FloatGauge>,
    budget_used_tokens: Family<BudgetFigureLabels, FloatGauge>,
    budget_limit_tokens: Family<BudgetFigureLabels, FloatGauge>,
    registry: Registry,
    breaker_state: Family<BreakerLabels, prometheus_client::metrics::gauge::Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    upstream_failures: Family<FailureLabels, Counter>,
    failovers: Family<FailoverLabels, Counter>,
    queue_wait: Family<QueueLabels, Histogram>,
    decisions: Family<DecisionLabels, Counter>,
    classifier_seconds: Histogram,
    routing_seconds: Histogram,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    budget_outcomes: Family<BudgetLabels, Counter>,
    cache_outcomes: Family<CacheLabels, Counter>,
    cache_lookup_seconds: Histogram,
    cache_embedding_seconds: Histogram,
    cache_entries: prometheus_client::metrics::gauge::Gauge,
    cache_evictions: Counter,
    cache_redis_errors: Counter,
    budget_backend_errors: Counter,
    estimated_usage: Counter,
    hedges: Family<HedgeLabels, Counter>,
    provider_limit: Family<ProviderLabels, prometheus_client::metrics::gauge::Gauge>,
    provider_in_flight: Family<ProviderLabels, prometheus_client::metrics::gauge::Gauge>,
    provider_queued: Family<ProviderLabels, prometheus_client::metrics::gauge::Gauge>,
    first_content_deadline:
        Family<ModelLabels, prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>>,
    connections_open: prometheus_client::metrics::gauge::Gauge,
    connections_rejected: Counter,
    admin_auth_failures: Counter,
    config_info: Family<ConfigInfoLabels, prometheus_client::metrics::gauge::Gauge>,
    config_reloads: Family<ReloadLabels, Counter>,
    config_last_success: prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("llm_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let tokens = Family::<TokenLabels, Counter>::default();
        let cost = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let breaker_state =
            Family::<BreakerLabels, prometheus_client::metrics::gauge::Gauge>::default();
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        let upstream_failures = Family::<FailureLabels, Counter>::default();
        let failovers = Family::<FailoverLabels, Counter>::default();
        let queue_wait = Family::<QueueLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 4.0, 10))
        });
        registry.register(
            "breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open (model * = provider-wide)",
            breaker_state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit breaker transitions by new state",
            breaker_transitions.clone(),
        );
        registry.register(
            "upstream_failures",
            "Failed upstream attempts by reason (timeouts by kind: timeout_connect, timeout_first_token, timeout_idle, timeout_total)",
            upstream_failures.clone(),
        );
        registry.register(
            "failovers",
            "Requests moved to the next candidate after a failed attempt",
            failovers.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time spent waiting for a concurrency slot",
            queue_wait.clone(),
        );
        // 1 µs to ~16 ms: the classifier and the router work in microseconds.
        let classifier_seconds = Histogram::new(exponential_buckets(1e-6, 2.0, 15));
        let routing_seconds = Histogram::new(exponential_buckets(1e-6, 2.0, 15));
        registry.register(
            "routing_decisions",
            "Routing decisions by virtual model, tier and chosen model",
            decisions.clone(),
        );
        registry.register(
            "classifier_duration_seconds",
            "Time to classify a prompt's complexity",
            classifier_seconds.clone(),
        );
        registry.register(
            "routing_duration_seconds",
            "Time to make a routing decision (classifier included)",
            routing_seconds.clone(),
        );
        registry.register(
            "requests",
            "Requests by endpoint, provider, model and HTTP status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the last byte of the response",
            duration.clone(),
        );
        registry.register("tokens", "Tokens reported by providers", tokens.clone());
        registry.register(
            "cost_usd",
            "Cost in USD of the usage providers reported, at catalog prices",
            cost.clone(),
        );
        let budget_outcomes = Family::<BudgetLabels, Counter>::default();
        let budget_backend_errors = Counter::default();
        let estimated_usage = Counter::default();
        registry.register(
            "budget_limited",
            "Requests refused or downgraded by a budget or rate limit, by scope kind and limit",
            budget_outcomes.clone(),
        );
        registry.register(
            "budget_redis_errors",
            "Failed budget counter operations on Redis (each falls back to in-process counters)",
            budget_backend_errors.clone(),
        );
        registry.register(
            "usage_estimated",
            "Requests whose usage the provider did not report, so was estimated with a tokenizer",
            estimated_usage.clone(),
        );
        let cache_outcomes = Family::<CacheLabels, Counter>::default();
        let cache_lookup_seconds = Histogram::new(exponential_buckets(1e-6, 3.0, 14));
        let cache_embedding_seconds = Histogram::new(exponential_buckets(1e-4, 2.0, 14));
        let cache_entries = prometheus_client::metrics::gauge::Gauge::default();
        let cache_evictions = Counter::default();
        let cache_redis_errors = Counter::default();
        registry.register(
            "cache_redis_errors",
            "Failed cache operations on Redis (entries then stay in this replica)",
            cache_redis_errors.clone(),
        );
        registry.register(
            "cache_requests",
            "Cache outcomes: hit_exact, hit_semantic, miss, bypass",
            cache_outcomes.clone(),
        );
        registry.register(
            "cache_lookup_duration_seconds",
            "Time to look a request up in the cache (embedding included)",
            cache_lookup_seconds.clone(),
        );
        registry.register(
            "cache_embedding_duration_seconds",
            "Time to embed a prompt for the semantic cache",
            cache_embedding_seconds.clone(),
        );
        registry.register(
            "cache_entries",
            "Entries in the cache",
            cache_entries.clone(),
        );
        registry.register(
            "cache_evictions",
            "Entries evicted to make room",
            cache_evictions.clone(),
        );
        let hedges = Family::<HedgeLabels, Counter>::default();
        registry.register(
            "hedges",
            "Hedged requests by the hedge's provider and outcome (won, lost, failed)",
            hedges.clone(),
        );
        let provider_limit = Family::default();
        let provider_in_flight = Family::default();
        let provider_queued = Family::default();
        let first_content_deadline = Family::default();
        registry.register(
            "provider_concurrency_limit",
            "The adaptive concurrency limit of each provider",
            provider_limit.clone(),
        );
        registry.register(
            "provider_in_flight",
            "Requests holding one of a provider's slots",
            provider_in_flight.clone(),
        );
        registry.register(
            "provider_queued",
            "Requests waiting for one of a provider's slots",
            provider_queued.clone(),
        );
        registry.register(
            "first_content_deadline_seconds",
            "How long a stream of each model may wait for its first content (learned, or the configured value)",
            first_content_deadline.clone(),
        );
        let connections_open = prometheus_client::metrics::gauge::Gauge::default();
        let connections_rejected = Counter::default();
        registry.register(
            "connections_open",
            "Client connections open on the API port",
            connections_open.clone(),
        );
        registry.register(
            "connections_rejected",
            "Client connections closed at once because server.max_connections were open",
            connections_rejected.clone(),
        );
        let admin_auth_failures = Counter::default();
        registry.register(
            "admin_auth_failures",
            "Admin API calls refused for a missing or wrong admin token",
            admin_auth_failures.clone(),
        );
        let ttft = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 14))
        });
        registry.register(
            "time_to_first_token_seconds",
            "Streams: time from the request's arrival to its first content chunk",
            ttft.clone(),
        );
        let overhead = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00005, 2.0, 16))
        });
        registry.register(
            "overhead_seconds",
            "Time in the gateway before the upstream call (auth, parsing, routing, cache lookup, budget reservation; waiting for a provider slot is in queue_wait_seconds), or the whole request when no provider was called; failed-over requests are left out",
            overhead.clone(),
        );
        let budget_used_usd = Family::<BudgetFigureLabels, FloatGauge>::default();
        let budget_limit_usd = Family::<BudgetFigureLabels, FloatGauge>::default();
        let budget_used_tokens = Family::<BudgetFigureLabels, FloatGauge>::default();
        let budget_limit_tokens = Family::<BudgetFigureLabels, FloatGauge>::default();
        registry.register(
            "budget_used_usd",
            "Spend in the budget's current period (settled plus held), USD",
            budget_used_usd.clone(),
        );
        registry.register(
            "budget_limit_usd",
            "The budget's spend limit per period, USD",
            budget_limit_usd.clone(),
        );
        registry.register(
            "budget_used_tokens",
            "Tokens in the budget's current period (settled plus held)",
            budget_used_tokens.clone(),
        );
        registry.register(
            "budget_limit_tokens",
            "The budget's token limit per period",
            budget_limit_tokens.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans in trace export batches the collector did not take",
            super::traces::DROPPED.clone(),
        );
        let config_info = Family::default();
        let config_reloads = Family::default();
        let config_last_success = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "config_info",
            "The configuration this gateway runs (1 for its version and hash)",
            config_info.clone(),
        );
        registry.register(
            "config_reloads",
            "Configurations received, by source and result (applied, unchanged, refused)",
            config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the running configuration was applied, Unix seconds",
            config_last_success.clone(),
        );
        Self {
            ttft,
            overhead,
            budget_used_usd,
            budget_limit_usd,
            budget_used_tokens,
            budget_limit_tokens,
            config_info,
            config_reloads,
            config_last_success,
            connections_open,
            connections_rejected,
            admin_auth_failures,
            hedges,
            provider_limit,
            provider_in_flight,
            provider_queued,
            first_content_deadline,
            cache_outcomes,
            cache_lookup_seconds,
            cache_embedding_seconds,
            cache_entries,
            cache_evictions,
            cache_redis_errors,
            budget_outcomes,
            budget_backend_errors,
            estimated_usage,
            registry,
            breaker_state,
            breaker_transitions,
            upstream_failures,
            failovers,
            queue_wait,
            decisions,
            classifier_seconds,
            routing_seconds,
            requests,
            duration,
            tokens,
            cost,
        }
    }
}

impl Metrics {
    /// Records a cache lookup: its outcome, time, and embedding time if it ran.
    pub fn cache_lookup(
        &self,
        outcome: crate::cache::Outcome,
        secs: Option<f64>,
        embed_secs: Option<f64>,
    ) {
        self.cache_outcomes
            .get_or_create(&CacheLabels {
                outcome: outcome.label().to_owned(),
            })
            .inc();
        if let Some(s) = secs {
            self.cache_lookup_seconds.observe(s);
        }
        if let Some(s) = embed_secs {
            self.cache_embedding_seconds.observe(s);
        }
    }

    /// The number of cache entries.
    pub fn cache_entries(&self, n: usize) {
        self.cache_entries.set(n as i64);
    }

    /// The counter of cache evictions (the cache increments it).
    pub fn cache_evictions(&self) -> Counter {
        self.cache_evictions.clone()
    }

    /// The counter of failed Redis cache operations.
    pub fn cache_redis_errors(&self) -> Counter {
        self.cache_redis_errors.clone()
    }

    /// Counts a request refused (`rejected`) or downgraded by a budget.
    pub fn budget_limited(&self, scope: &str, limit: &str, outcome: &str) {
        self.budget_outcomes
            .get_or_create(&BudgetLabels {
                scope: scope.to_owned(),
                limit: limit.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The counter of failed Redis budget operations (the budget engine increments it).
    pub fn budget_redis_errors(&self) -> Counter {
        self.budget_backend_errors.clone()
    }

    /// Counts a request whose usage was estimated.
    pub fn usage_estimated(&self) {
        self.estimated_usage.inc();
    }

    /// Counts a stream's time to first token.
    pub fn time_to_first_token(&self, provider: &Label, model: &Label, seconds: f64) {
        self.ttft
            .get_or_create(&ModelLabels {
                provider: provider.clone(),
                model: model.clone(),
            })
            .observe(seconds);
    }

    /// Counts the gateway's own time in a request of `endpoint`.
    pub fn overhead(&self, endpoint: &'static str, seconds: f64) {
        self.overhead
            .get_or_create(&EndpointLabels { endpoint })
            .observe(seconds);
    }

    /// Replaces the budget figures with `figures` (a deleted budget's series go away).
    pub fn budgets(&self, figures: &[crate::budget::BudgetStatus]) {
        for f in [
            &self.budget_used_usd,
            &self.budget_limit_usd,
            &self.budget_used_tokens,
            &self.budget_limit_tokens,
        ] {
            f.clear();
        }
        for st in figures {
            let b = &st.budget;
            if matches!(b.scope, crate::config::budget::Scope::Key(_)) {
                continue;
            }
            let l = BudgetFigureLabels {
                scope: b.scope.kind().to_owned(),
                subject: b.scope.subject().to_owned(),
                period: b.period.name().to_owned(),
            };
            if let Some(limit) = b.limit_usd {
                self.budget_limit_usd.get_or_create(&l).set(limit);
                self.budget_used_usd
                    .get_or_create(&l)
                    .set(st.used_usd + st.reserved_usd);
            }
            if let Some(limit) = b.limit_tokens {
                self.budget_limit_tokens.get_or_create(&l).set(limit as f64);
                self.budget_used_tokens
                    .get_or_create(&l)
                    .set((st.used_tokens + st.reserved_tokens) as f64);
            }
        }
    }

    /// Counts a finished request.
    pub fn record(
        &self,
        labels: RequestLabels,
        seconds: f64,
        usage: Option<&Usage>,
        cost: Option<f64>,
    ) {
        if let Some(u) = usage {
            for (kind, n) in [
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
            ] {
                self.tokens
                    .get_or_create(&TokenLabels {
                        provider: labels.provider.clone(),
                        model: labels.model.clone(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
        if let Some(c) = cost {
            self.cost
                .get_or_create(&ModelLabels {
                    provider: labels.provider.clone(),
                    model: labels.model.clone(),
                })
                .inc_by(c);
        }
        self.duration.get_or_create(&labels).observe(seconds);
        self.requests.get_or_create(&labels).inc();
    }

    /// Records a routing decision.
    pub fn record_decision(&self, d: &crate::router::Decision) {
        if let Some(best) = d.ranking.first() {
            let (provider, model) = best.model.split_once('/').unwrap_or(("", &best.model));
            self.decisions
                .get_or_create(&DecisionLabels {
                    virtual_model: d.virtual_model.clone(),
                    tier: d.tier.as_str().to_owned(),
                    provider: provider.to_owned(),
                    model: model.to_owned(),
                })
                .inc();
        }
        if d.classification.is_some() {
            self.classifier_seconds.observe(d.classifier_us / 1e6);
        }
        self.routing_seconds.observe(d.decision_us / 1e6);
    }

    /// Sets a breaker's state gauge.
    pub fn breaker_state(&self, provider: &str, model: &str, gauge: i64) {
        self.breaker_state
            .get_or_create(&BreakerLabels {
                provider: provider.to_owned(),
                model: model.to_owned(),
            })
            .set(gauge);
    }

    /// Counts a breaker transition.
    pub fn breaker_transition(&self, provider: &str, model: &str, to: &str) {
        self.breaker_transitions
            .get_or_create(&TransitionLabels {
                provider: provider.to_owned(),
                model: model.to_owned(),
                to: to.to_owned(),
            })
            .inc();
    }

    /// Counts a failed upstream attempt.
    pub fn upstream_failure(&self, provider: &str, reason: &str) {
        self.upstream_failures
            .get_or_create(&FailureLabels {
                provider: provider.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a failover.
    pub fn failover(&self, from: &str, to: &str, reason: &str) {
        self.failovers
            .get_or_create(&FailoverLabels {
                from: from.to_owned(),
                to: to.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records a wait for a concurrency slot.
    pub fn queue_wait(&self, scope: &Label, seconds: f64) {
        self.queue_wait
            .get_or_create(&QueueLabels {
                scope: scope.clone(),
            })
            .observe(seconds);
    }

    /// The open-connections gauge (kept up to date by the listener).
    pub fn connections_open(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.connections_open.clone()
    }

    /// Counts a connection closed at the cap.
    pub fn connection_rejected(&self) {
        self.connections_rejected.inc();
    }

    /// Counts an admin call refused for its token; the total so far.
    pub fn admin_auth_failed(&self) -> u64 {
        self.admin_auth_failures.inc() + 1
    }

    /// Counts a hedge.
    pub fn hedge(&self, provider: &str, outcome: &str) {
        self.hedges
            .get_or_create(&HedgeLabels {
                provider: provider.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Publishes a provider's concurrency figures.
    pub fn provider_concurrency(
        &self,
        provider: &str,
        limit: usize,
        in_flight: usize,
        queued: usize,
    ) {
        let l = ProviderLabels {
            provider: provider.to_owned(),
        };
        let g = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.provider_limit.get_or_create(&l).set(g(limit));
        self.provider_in_flight.get_or_create(&l).set(g(in_flight));
        self.provider_queued.get_or_create(&l).set(g(queued));
    }

    /// A configuration is live: `llm_gateway_config_info` names it alone, and the reload
    /// counts as `applied`.
    pub fn config_applied(&self, version: Option<&str>, hash: &str, source: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&ConfigInfoLabels {
                version: version.unwrap_or_default().to_owned(),
                hash: hash.chars().take(16).collect(),
            })
            .set(1);
        self.config_reload(source, "applied");
        self.config_last_success
            .set(crate::clock::unix_ms() as f64 / 1000.0);
    }

    /// Counts a configuration received from `source` with `result`.
    pub fn config_reload(&self, source: &str, result: &str) {
        self.config_reloads
            .get_or_create(&ReloadLabels {
                source: source.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Publishes a model's current first-content deadline for streams.
    pub fn first_content_deadline(&self, provider: &str, model: &str, secs: f64) {
        self.first_content_deadline
            .get_or_create(&ModelLabels {
                provider: Label::from(provider),
                model: Label::from(model),
            })
            .set(secs);
    }

    /// Forgets the gauges published per provider and model (breaker states, concurrency,
    /// first-content deadlines): after a new configuration, those of providers and models it
    /// dropped must not stay frozen at their last value. The next scrape publishes the rest.
    pub fn forget_configured_gauges(&self) {
        self.breaker_state.clear();
        self.provider_limit.clear();
        self.provider_in_flight.clear();
        self.provider_queued.clear();
        self.first_content_deadline.clear();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
