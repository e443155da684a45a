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

/// All gateway metrics.
pub struct Metrics {
    registry: Registry,
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

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
