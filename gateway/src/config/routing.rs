//! Validated virtual models: their strategy, weights, candidates and hedging.

use llm_gateway_crds::{CandidateSelector, Strategy, Weights};
use serde::Serialize;

/// A validated virtual model.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualSpec {
    /// Name clients send.
    pub name: String,
    /// What it optimises for.
    pub strategy: Strategy,
    /// Fixed weights; `None` uses the strategy's (per-tier for balanced).
    pub weights: Option<Weights>,
    /// Which models it may use; `None` = all chat models.
    pub selector: Option<CandidateSelector>,
    /// Local-first threshold; `None` = off.
    pub local_preference: Option<f64>,
    /// Classify prompts (else everything is `moderate`).
    pub classify: bool,
    /// Hedged requests, if on.
    pub hedge: Option<Hedge>,
    /// The tenants or namespaces this definition is for; `None`: everyone.
    pub clients: Option<Vec<String>>,
}

/// When a virtual model's request is also sent to its next candidate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "after", rename_all = "snake_case")]
pub enum Hedge {
    /// After a fixed delay.
    Delay {
        /// Seconds.
        secs: f64,
    },
    /// Once slower than this quantile of the first candidate's recent times to first content.
    Quantile {
        /// In (0, 1).
        q: f64,
    },
}

impl VirtualSpec {
    /// A built-in virtual model with its strategy's defaults.
    pub fn builtin(name: &str, strategy: Strategy) -> Self {
        Self {
            name: name.to_owned(),
            strategy,
            weights: None,
            selector: None,
            local_preference: default_local_preference(strategy),
            classify: true,
            hedge: None,
            clients: None,
        }
    }
}

/// The four built-in virtual models.
pub fn builtin_virtuals() -> Vec<VirtualSpec> {
    vec![
        VirtualSpec::builtin("auto", Strategy::Balanced),
        VirtualSpec::builtin("fast", Strategy::Latency),
        VirtualSpec::builtin("cheap", Strategy::Cost),
        VirtualSpec::builtin("quality", Strategy::Quality),
    ]
}

/// Local-first threshold by strategy: 0.7 where cost matters, off where it does not.
pub fn default_local_preference(s: Strategy) -> Option<f64> {
    match s {
        Strategy::Balanced | Strategy::Cost => Some(0.7),
        Strategy::Quality | Strategy::Latency => None,
    }
}
