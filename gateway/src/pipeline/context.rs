//! What is known about one request as it goes through the steps, and its tail: whatever
//! way a request ends (answered, refused, failed, the client gone), [`RequestContext::finish`]
//! runs exactly once and lists the last steps in order.

use std::sync::Arc;
use std::time::Instant;

use crate::error::Error;
use crate::models::registry::Target;
use crate::router::{Decision, Routed};
use crate::state::{AppState, Snapshot};
use crate::wire::Usage;

/// The outcome recorder of one request; if dropped unfinished (the client went away
/// mid-stream), it records status 499.
pub struct RequestContext {
    pub(super) gw: AppState,
    pub(super) cfg: Arc<Snapshot>,
    pub(super) endpoint: &'static str,
    pub(super) request_id: String,
    pub(super) started: Instant,
    /// When the current upstream attempt began (latency samples exclude failed attempts).
    pub(super) attempt_started: Instant,
    pub(super) target: Option<Target>,
    pub(super) decision: Option<Arc<Decision>>,
    pub(super) first_token: Option<Instant>,
    pub(super) attempts: u32,
    pub(super) caller: Option<crate::auth::Caller>,
    pub(super) held: Option<super::budget::Held>,
    /// Content bytes sent (to estimate completion tokens if no usage is reported).
    pub(super) output_bytes: usize,
    /// The prompt's size in bytes (its token estimate when nothing better is known).
    pub(super) prompt_bytes: usize,
    pub(super) remaining: Option<crate::budget::Remaining>,
    pub(super) estimated: bool,
    pub(super) cache: Option<crate::cache::Outcome>,
    /// The upstream was sent the prompt and the call was then abandoned (a hedge's loser):
    /// with no usage reported, its prompt is estimated and charged.
    pub(super) prompt_billed: bool,
    /// A complete answer to store in the cache once the request is settled.
    pub(super) to_cache: Option<(crate::cache::Lookup, crate::cache::Answer)>,
    done: bool,
}

impl RequestContext {
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
            to_cache: None,
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

    /// Moves the recording into a new owner (the response stream); this one is then done.
    pub fn detach(&mut self) -> RequestContext {
        self.done = true;
        RequestContext {
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
            to_cache: self.to_cache.take(),
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
        let mut r = RequestContext::new(self.gw.clone(), self.endpoint, self.request_id.clone());
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

    /// Keeps a complete answer to store in the cache when the request is settled.
    pub fn keep_for_cache(&mut self, lookup: crate::cache::Lookup, answer: crate::cache::Answer) {
        self.to_cache = Some((lookup, answer));
    }

    /// The request's tail, exactly once, in this order; returns the cost when it is known.
    pub fn finish(&mut self, status: u16, usage: Option<&Usage>) -> Option<f64> {
        if self.done {
            return super::usage::cost(self, usage);
        }
        self.done = true;
        // 1. What was used: the provider's figures, or an estimate if content was produced.
        let usage = super::usage::resolve(self, status, usage);
        // 2. What it cost, at the answering model's price (a cache hit costs nothing).
        let cost = super::usage::cost(self, usage.as_ref());
        // 3. Settle the budgets: release the reservation, charge the real amount.
        super::budget::settle(self, cost, usage.as_ref());
        // 4. Store a complete answer in the cache.
        super::cache::store(self, status);
        // 5. Feed the model's time to first token and total time back to routing.
        super::latency::observe(self, status);
        // 6. Write the usage record to the ledger.
        super::ledger::write(self, status, usage.as_ref(), cost);
        // 7. Metrics and the request's log line.
        super::report::emit(self, status, usage.as_ref(), cost);
        cost
    }
}

impl Drop for RequestContext {
    fn drop(&mut self) {
        if !self.done {
            self.finish(499, None);
        }
    }
}
