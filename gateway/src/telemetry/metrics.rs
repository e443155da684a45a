//! Prometheus metrics. Label values are bounded: provider names and catalog model names come
//! from configuration; a model the catalog does not list is labelled `unlisted`, so clients
//! cannot grow the label set.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::openai::Usage;

/// Label for a model the catalog does not list.
pub const UNLISTED: &str = "unlisted";

/// `endpoint`, `provider`, `model`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `chat` or `embeddings`.
    pub endpoint: String,
    /// Provider name, or `none` when the request never reached one.
    pub provider: String,
    /// Catalog model name or `unlisted`.
    pub model: String,
    /// HTTP status (499 when the client went away mid-stream).
    pub status: String,
}

/// `provider`, `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Provider name.
    pub provider: String,
    /// Catalog model name or `unlisted`.
    pub model: String,
}

/// `provider`, `model`, `kind` (prompt/completion).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Provider name.
    pub provider: String,
    /// Catalog model name or `unlisted`.
    pub model: String,
    /// `prompt` or `completion`.
    pub kind: String,
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

/// All gateway metrics.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    classifier_seconds: Histogram,
    routing_seconds: Histogram,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
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
        Self {
            registry,
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
    /// Records one finished request.
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
                        kind: kind.to_owned(),
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

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
