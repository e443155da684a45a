//! Records each request's outcome exactly once: metrics and one log line.

use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::breaker::{Outcome, State, Transition};
use crate::config::model::Price;
use crate::error::Error;
use crate::models::registry::Target;
use crate::router::{Decision, Routed};
use crate::state::{AppState, Snapshot};
use crate::telemetry::metrics::{RequestLabels, UNLISTED};
use crate::wire::Usage;

/// The outcome recorder of one request; if dropped unfinished (the client went away
/// mid-stream), it records status 499.
pub struct Record {
    gw: AppState,
    cfg: Arc<Snapshot>,
    endpoint: &'static str,
    request_id: String,
    started: Instant,
    /// When the current upstream attempt began (latency samples exclude failed attempts).
    attempt_started: Instant,
    target: Option<Target>,
    decision: Option<Arc<Decision>>,
    first_token: Option<Instant>,
    attempts: u32,
    caller: Option<crate::auth::Caller>,
    held: Option<super::budget::Held>,
    /// Content bytes sent (to estimate completion tokens if no usage is reported).
    output_bytes: usize,
    /// The prompt's size in bytes (its token estimate when nothing better is known).
    prompt_bytes: usize,
    remaining: Option<crate::budget::Remaining>,
    estimated: bool,
    cache: Option<crate::cache::Outcome>,
    /// The upstream was sent the prompt and the call was then abandoned (a hedge's loser):
    /// with no usage reported, its prompt is estimated and charged.
    prompt_billed: bool,
    done: bool,
}

impl Record {
    /// Starts timing a request, which runs on the gateway's current configuration.
    pub fn new(gw: AppState, endpoint: &'static str, request_id: String) -> Self {
        Self {
            cfg: gw.config(),
            gw,
            endpoint,
            request_id,
            started: Instant::now(),
            attempt_started: Instant::now(),
            target: None,
            decision: None,
            first_token: None,
            attempts: 0,
            caller: None,
            held: None,
            output_bytes: 0,
            prompt_bytes: 0,
            remaining: None,
            estimated: false,
            cache: None,
            prompt_billed: false,
            done: false,
        }
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The cache outcome, if the cache is on.
    pub fn cache(&self) -> Option<crate::cache::Outcome> {
        self.cache
    }

    /// Notes the cache outcome.
    pub fn set_cache(&mut self, outcome: crate::cache::Outcome) {
        self.cache = Some(outcome);
    }

    /// Holds the request's budget reservation until it is recorded.
    pub fn set_held(&mut self, h: Option<super::budget::Held>) {
        self.held = h;
    }

    /// The budget hold, if any.
    pub fn held(&self) -> Option<&super::budget::Held> {
        self.held.as_ref()
    }

    /// Notes the prompt's size in bytes.
    pub fn set_prompt_bytes(&mut self, n: usize) {
        self.prompt_bytes = n;
    }

    /// Counts content bytes sent to the client.
    pub fn add_output_bytes(&mut self, n: usize) {
        self.output_bytes += n;
    }

    /// What the covering budgets have left after this request (once finished).
    pub fn remaining(&self) -> Option<crate::budget::Remaining> {
        self.remaining
    }

    /// Whether the usage was estimated (the provider reported none).
    pub fn usage_estimated(&self) -> bool {
        self.estimated
    }

    /// Notes who is calling (for the usage ledger and the log).
    pub fn set_caller(&mut self, c: crate::auth::Caller) {
        self.caller = Some(c);
    }

    /// The gateway this request runs in.
    pub fn gw(&self) -> &AppState {
        &self.gw
    }

    /// The configuration this request runs on, from its start to its end.
    pub fn cfg(&self) -> &Arc<Snapshot> {
        &self.cfg
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Notes how many upstream attempts were made.
    pub fn set_attempts(&mut self, n: u32) {
        self.attempts = n;
    }

    /// Upstream attempts made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Counts a breaker transition in metrics and the log.
    pub fn note_transition(&self, provider: &str, model: &str, tr: Option<Transition>) {
        let Some(tr) = tr else { return };
        let to = match tr.to {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        };
        self.gw.metrics.breaker_transition(provider, model, to);
        if tr.to == State::Open {
            warn!(provider, model, "circuit breaker opened");
        } else {
            info!(provider, model, state = to, "circuit breaker state changed");
        }
    }

    /// Reports the current target's upstream outcome to its breakers: `None` for success.
    pub fn report_upstream(&self, failure: Option<&Error>) {
        let Some(t) = &self.target else { return };
        let outcome = match failure {
            None => Outcome::Success,
            Some(e) => Outcome::Failure {
                retry_after: e.retry_after,
            },
        };
        let now = Instant::now();
        let tr = t.provider.breaker.record(now, outcome, fastrand::f64());
        self.note_transition(&t.provider.name, "*", tr);
        if let Some(b) = &t.breaker {
            let tr = b.record(now, outcome, fastrand::f64());
            self.note_transition(&t.provider.name, &t.model, tr);
        }
    }

    /// Notes where the request was routed.
    pub fn set_target(&mut self, t: &Target) {
        self.target = Some(t.clone());
        self.attempt_started = Instant::now();
    }

    /// Notes which target answered, keeping the attempt's start (a hedge that won).
    pub fn switch_target(&mut self, t: &Target) {
        self.target = Some(t.clone());
    }

    /// Notes the routing decision (and counts it in metrics).
    pub fn set_route(&mut self, r: &Routed) {
        self.set_target(&r.target);
        if let Some(d) = &r.decision {
            self.gw.metrics.record_decision(d);
            self.decision = Some(d.clone());
        }
    }

    /// Notes the first content chunk of a stream (time to first token).
    pub fn mark_first_token(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
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
            cfg: self.cfg.clone(),
            endpoint: self.endpoint,
            request_id: self.request_id.clone(),
            started: self.started,
            attempt_started: self.attempt_started,
            target: self.target.clone(),
            decision: self.decision.clone(),
            first_token: self.first_token,
            attempts: self.attempts,
            caller: self.caller.clone(),
            held: self.held.take(),
            output_bytes: self.output_bytes,
            prompt_bytes: self.prompt_bytes,
            remaining: self.remaining,
            estimated: self.estimated,
            cache: self.cache,
            prompt_billed: self.prompt_billed,
            done: false,
        }
    }

    /// Holds the estimate of a second call to `t` (a hedge) on the caller's budgets; an
    /// error when they cannot take it.
    pub async fn hold_extra(&self, t: &Target) -> Result<Option<super::budget::Held>, Error> {
        let Some(caller) = &self.caller else {
            return Ok(None);
        };
        let (prompt, completion) = match &self.held {
            Some(h) => {
                let est = h.reservation.estimate().tokens.max(0) as u64;
                (h.prompt_tokens, est.saturating_sub(h.prompt_tokens))
            }
            None => (
                self.prompt_bytes.div_ceil(4) as u64,
                crate::budget::DEFAULT_COMPLETION_RESERVE,
            ),
        };
        super::budget::hold(&self.gw, caller, t, prompt, completion).await
    }

    /// Records the cancelled loser of a hedge on `t`: a ledger row with this request's id and
    /// status 499, its prompt estimated and settled on `hold`.
    pub fn record_hedge_loser(&self, t: &Target, hold: Option<super::budget::Held>) {
        let mut r = Record::new(self.gw.clone(), self.endpoint, self.request_id.clone());
        r.cfg = self.cfg.clone();
        r.caller = self.caller.clone();
        r.started = self.started;
        r.prompt_bytes = self.prompt_bytes;
        r.attempts = self.attempts;
        r.target = Some(t.clone());
        r.held = hold;
        r.prompt_billed = true;
        r.finish(499, None);
    }

    /// Records the outcome; returns the cost when it is known.
    pub fn finish(&mut self, status: u16, usage: Option<&Usage>) -> Option<f64> {
        if self.done {
            return self.cost(usage);
        }
        self.done = true;
        // Content was produced (and billed upstream) but no usage came back (a cut stream, a
        // provider that omits it): estimate it, about 4 bytes per token, and say so.
        let estimate;
        let usage = match usage {
            Some(u) => Some(u),
            // A cache hit used no upstream tokens.
            None if self.cache.is_some_and(|c| c.is_hit()) => None,
            None if status == 200 || self.output_bytes > 0 || self.prompt_billed => {
                let prompt = self
                    .held
                    .as_ref()
                    .map_or(self.prompt_bytes.div_ceil(4) as u64, |h| h.prompt_tokens);
                let completion = self.output_bytes.div_ceil(4) as u64;
                estimate = Usage {
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    total_tokens: prompt.saturating_add(completion),
                    ..Usage::default()
                };
                self.estimated = true;
                self.gw.metrics.usage_estimated();
                Some(&estimate)
            }
            None => None,
        };
        let cost = match self.cache {
            Some(c) if c.is_hit() => Some(0.0),
            _ => self.cost(usage),
        };
        if let Some(h) = self.held.take() {
            let actual = crate::budget::Amount::bounded(
                crate::config::budget::to_nano(cost.unwrap_or(0.0)),
                usage.map_or(0, |u| u.prompt_tokens.saturating_add(u.completion_tokens)),
            );
            self.remaining = Some(h.reservation.remaining(Some(actual)));
            h.reservation.settle(actual);
        }
        let elapsed = self.started.elapsed();
        let secs = elapsed.as_secs_f64();
        // Latency feeds routing: successes, and timeouts (a slow provider must look slow).
        if let Some(stats) = self.target.as_ref().and_then(|t| t.latency.as_ref()) {
            if status == 200 || status == 504 {
                let ttft = self
                    .first_token
                    .map(|t| t.duration_since(self.attempt_started));
                let total = self.attempt_started.elapsed();
                stats.observe(ttft, total, Instant::now(), self.cfg.router.decay());
            }
        }
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
            route = self.decision.as_ref().map(|d| d.header()),
            attempts = self.attempts,
            tenant = self.caller.as_ref().and_then(|c| c.tenant()),
            "request finished"
        );
        if let Some(ledger) = &self.gw.ledger {
            let key = match &self.caller {
                Some(crate::auth::Caller::Key(k)) => Some(k),
                _ => None,
            };
            let t = self.target.as_ref();
            let ms = |d: std::time::Duration| d.as_millis().min(i64::MAX as u128) as i64;
            ledger.record(crate::store::usage::UsageRecord {
                id: uuid::Uuid::new_v4().to_string(),
                // The budgets' clock, so the spend that seeds a period's counter is the spend
                // the counters saw in it.
                at_ms: self
                    .gw
                    .budgets
                    .as_ref()
                    .map_or_else(crate::clock::unix_ms, |b| b.now_ms()),
                request_id: self.request_id.clone(),
                key_id: key.map(|k| k.id.clone()),
                tenant: key.map(|k| k.tenant.clone()),
                endpoint: self.endpoint.to_owned(),
                virtual_model: t.and_then(|t| t.virtual_model.clone()),
                provider: t.map(|t| t.provider.name.clone()),
                model: t.map(|t| t.model.clone()),
                prompt_tokens: usage.map_or(0, |u| u.prompt_tokens as i64),
                completion_tokens: usage.map_or(0, |u| u.completion_tokens as i64),
                cost_usd: cost,
                usage_estimated: self.estimated,
                latency_ms: ms(elapsed),
                ttft_ms: self.first_token.map(|f| ms(f.duration_since(self.started))),
                cache: self.cache.map(|c| c.header().to_owned()),
                status: status as i32,
                attempts: self.attempts as i32,
            });
        }
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
