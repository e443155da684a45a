//! The operator's Prometheus metrics (`/metrics`): reconciles and their errors and
//! durations, pushes and their latency, gateways in sync, leadership.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `ProviderPool`, `LLMRoute`, `BudgetPolicy`.
    pub kind: String,
}

/// `result` of a push.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// `applied`, `refused`, `failed`.
    pub result: String,
}

/// `state` of gateways.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    /// `in_sync` or `out_of_sync`.
    pub state: String,
}

/// `version` of the configuration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// The version the operator compiled last.
    pub version: String,
}

/// All operator metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    reconcile_errors: Family<KindLabels, Counter>,
    reconcile_seconds: Family<KindLabels, Histogram>,
    pushes: Family<PushLabels, Counter>,
    push_seconds: Histogram,
    gateways: Family<GatewayLabels, Gauge>,
    config_info: Family<VersionLabels, Gauge>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("llm_gateway_operator");
        let m = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            pushes: Family::default(),
            push_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            gateways: Family::default(),
            config_info: Family::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles by kind", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconcile took, by kind",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "pushes",
            "Configuration pushes to gateway pods, by result",
            m.pushes.clone(),
        );
        registry.register(
            "push_duration_seconds",
            "How long a gateway took to validate and apply a pushed configuration",
            m.push_seconds.clone(),
        );
        registry.register(
            "gateways",
            "Ready gateway pods, in sync with the current configuration or not",
            m.gateways.clone(),
        );
        registry.register(
            "config_info",
            "The configuration version compiled last (1)",
            m.config_info.clone(),
        );
        registry.register(
            "leader",
            "Whether this replica holds the leader lease (1) or stands by (0)",
            m.leader.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans in trace export batches the collector did not take",
            llm_gateway::telemetry::traces::DROPPED.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Counts a reconcile of `kind` taking `secs`, failed or not.
    pub fn reconcile(&self, kind: &str, secs: f64, failed: bool) {
        let l = KindLabels {
            kind: kind.to_owned(),
        };
        self.reconciles.get_or_create(&l).inc();
        self.reconcile_seconds.get_or_create(&l).observe(secs);
        if failed {
            self.reconcile_errors.get_or_create(&l).inc();
        }
    }

    /// Counts a push with `result` that took `secs`.
    pub fn push(&self, result: &str, secs: f64) {
        self.pushes
            .get_or_create(&PushLabels {
                result: result.to_owned(),
            })
            .inc();
        self.push_seconds.observe(secs);
    }

    /// Publishes how many gateways run the current version.
    pub fn gateways(&self, in_sync: usize, total: usize) {
        let g = |s: &str| {
            self.gateways.get_or_create(&GatewayLabels {
                state: s.to_owned(),
            })
        };
        g("in_sync").set(in_sync as i64);
        g("out_of_sync").set(total.saturating_sub(in_sync) as i64);
    }

    /// Publishes the current version.
    pub fn version(&self, v: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&VersionLabels {
                version: v.to_owned(),
            })
            .set(1);
    }

    /// Publishes leadership.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
