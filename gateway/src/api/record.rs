//! Records each request's outcome exactly once: metrics and one log line.

use std::time::Instant;

use tracing::info;

use super::AppState;
use crate::models::info::Price;
use crate::models::registry::Target;
use crate::openai::Usage;
use crate::telemetry::metrics::{RequestLabels, UNLISTED};

/// The outcome recorder of one request; if dropped unfinished (the client went away
/// mid-stream), it records status 499.
pub struct Record {
    gw: AppState,
    endpoint: &'static str,
    request_id: String,
    started: Instant,
    target: Option<Target>,
    done: bool,
}

impl Record {
    /// Starts timing a request.
    pub fn new(gw: AppState, endpoint: &'static str, request_id: String) -> Self {
        Self {
            gw,
            endpoint,
            request_id,
            started: Instant::now(),
            target: None,
            done: false,
        }
    }

    /// Notes where the request was routed.
    pub fn set_target(&mut self, t: &Target) {
        self.target = Some(t.clone());
    }

    /// Where the request was routed, once known.
    pub fn target(&self) -> Option<&Target> {
        self.target.as_ref()
    }

    fn price(&self) -> Option<Price> {
        self.target.as_ref()?.info.as_ref()?.price
    }

    /// The cost of `usage` at the target's price.
    pub fn cost(&self, usage: Option<&Usage>) -> Option<f64> {
        Some(self.price()?.cost(usage?))
    }

    /// Moves the recording into a new owner (the response stream); this one is then done.
    pub fn detach(&mut self) -> Record {
        self.done = true;
        Record {
            gw: self.gw.clone(),
            endpoint: self.endpoint,
            request_id: self.request_id.clone(),
            started: self.started,
            target: self.target.clone(),
            done: false,
        }
    }

    /// Records the outcome; returns the cost when it is known.
    pub fn finish(&mut self, status: u16, usage: Option<&Usage>) -> Option<f64> {
        let cost = self.cost(usage);
        if std::mem::replace(&mut self.done, true) {
            return cost;
        }
        let secs = self.started.elapsed().as_secs_f64();
        let (provider, model, label) = match &self.target {
            Some(t) => (
                t.provider.name.as_str(),
                t.model.as_str(),
                t.info.as_ref().map_or(UNLISTED, |i| i.name.as_str()),
            ),
            None => ("none", "", "none"),
        };
        self.gw.metrics.record(
            RequestLabels {
                endpoint: self.endpoint.to_owned(),
                provider: provider.to_owned(),
                model: label.to_owned(),
                status: status.to_string(),
            },
            secs,
            usage,
            cost,
        );
        info!(
            request_id = %self.request_id,
            endpoint = self.endpoint,
            provider,
            model,
            status,
            duration_ms = (secs * 1000.0).round() as u64,
            prompt_tokens = usage.map(|u| u.prompt_tokens),
            completion_tokens = usage.map(|u| u.completion_tokens),
            cost_usd = cost,
            "request finished"
        );
        cost
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            self.finish(499, None);
        }
    }
}
