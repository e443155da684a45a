//! What is known about one request as it goes through the steps, and its tail: whatever
//! way a request ends (answered, refused, failed, the client gone), [`RequestContext::finish`]
//! runs exactly once and lists the last steps in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::error::Error;
use crate::models::registry::Target;
use crate::router::{Decision, Routed};
use crate::state::{AppState, Snapshot};
use crate::wire::Usage;

/// Index in [`RequestContext::sent`] of the request's current upstream attempt.
pub const PRIMARY: usize = 0;
/// Index in [`RequestContext::sent`] of its hedge.
pub const HEDGE: usize = 1;

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
    /// When the upstream's answer was complete: latency samples end here, not after the
    /// gateway's own waits (storing it in the cache).
    pub(super) answered: Option<Instant>,
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
    /// Whether the request's upstream call ([`PRIMARY`]) and its hedge ([`HEDGE`]) have been
    /// sent to their providers and have not failed: a client that leaves then has the prompt
    /// billed, one that leaves while the call still waits for a concurrency slot does not.
    /// Atomic so an attempt in flight can mark it while the hedge reads the context.
    pub(super) sent: [AtomicBool; 2],
    /// Where the request's hedge went, once sent (one per request).
    pub(super) hedge_target: std::sync::OnceLock<Target>,
    /// The hedge's estimate held on the caller's budgets while the race runs (settled by
    /// the loser's row, or by the hedge's own row if the client leaves during the race).
    pub(super) hedge_hold: std::sync::Mutex<Option<super::budget::Held>>,
    /// A complete answer to store in the cache once the request is settled.
    pub(super) to_cache: Option<(crate::cache::Lookup, crate::cache::Answer)>,
    /// The request's server span (disabled when traces are off).
    pub(super) span: tracing::Span,
    /// The span of the upstream attempt that answers, kept open until the request ends so
    /// the usage can be written on it.
    pub(super) attempt_span: Option<tracing::Span>,
    /// Finish reasons seen in the answer (kept only when traces are on).
    pub(super) finish_reasons: Vec<String>,
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
            answered: None,
            attempts: 0,
            caller: None,
            held: None,
            output_bytes: 0,
            prompt_bytes: 0,
            remaining: None,
            estimated: false,
            cache: None,
            prompt_billed: false,
            sent: Default::default(),
            hedge_target: std::sync::OnceLock::new(),
            hedge_hold: std::sync::Mutex::new(None),
            to_cache: None,
            span: tracing::Span::current(),
            attempt_span: None,
            finish_reasons: Vec::new(),
            done: false,
        }
    }

    /// Opens the span of upstream attempt `n` to `t` (a child of the request's span) and
    /// keeps it as the answering attempt's until another starts.
    pub fn attempt_span(&mut self, t: &Target, n: u32) -> tracing::Span {
        let span = self.child_span(t, n);
        self.attempt_span = Some(span.clone());
        span
    }

    /// The span of an upstream attempt `n` to `t`, a child of the request's span.
    pub fn child_span(&self, t: &Target, n: u32) -> tracing::Span {
        if !crate::telemetry::traces::on() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            parent: &self.span,
            "attempt",
            otel.name = %format!("chat {}", t.model),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = %t.provider.name,
            gen_ai.request.model = %t.model,
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            gen_ai.response.finish_reasons = tracing::field::Empty,
            error.type = tracing::field::Empty,
            llm_gateway.attempt = i64::from(n),
            llm_gateway.virtual_model = t.virtual_model.as_deref().unwrap_or(""),
            llm_gateway.cost_usd = tracing::field::Empty,
        )
    }

    /// Notes a failed attempt on the current attempt's span.
    pub fn attempt_failed(&self, reason: &str) {
        if let Some(s) = &self.attempt_span {
            s.record("error.type", reason);
            s.record("otel.status_code", "ERROR");
        }
    }

    /// Notes the finish reasons in a completion or a stream chunk (only when traces are on).
    pub fn note_finish_reasons(&mut self, json: &[u8]) {
        if !crate::telemetry::traces::on() {
            return;
        }
        const KEY: &[u8] = b"\"finish_reason\":\"";
        let mut rest = json;
        while let Some(i) = rest.windows(KEY.len()).position(|w| w == KEY) {
            rest = &rest[i + KEY.len()..];
            let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
            let reason = String::from_utf8_lossy(&rest[..end]).into_owned();
            if !reason.is_empty() && reason.len() < 32 && !self.finish_reasons.contains(&reason) {
                self.finish_reasons.push(reason);
            }
        }
    }

    /// Writes the outcome on the request's spans (when traces are on).
    pub(super) fn record_spans(&self, status: u16, usage: Option<&Usage>, cost: Option<f64>) {
        if !crate::telemetry::traces::on() {
            return;
        }
        let s = &self.span;
        s.record("llm_gateway.request_id", self.request_id.as_str());
        s.record("llm_gateway.attempts", i64::from(self.attempts));
        if let Some(c) = self.cache {
            s.record("llm_gateway.cache", c.header());
        }
        if let Some(d) = &self.decision {
            s.record("llm_gateway.route", d.header().as_str());
        }
        if let Some(c) = cost {
            s.record("llm_gateway.cost_usd", c);
        }
        let Some(a) = &self.attempt_span else { return };
        if let Some(t) = &self.target {
            a.record("gen_ai.response.model", &*t.model);
        }
        if let Some(u) = usage {
            // The exporter keeps signed integers as numbers (unsigned ones become text).
            let (input, output) = (
                i64::try_from(u.prompt_tokens).unwrap_or(i64::MAX),
                i64::try_from(u.completion_tokens).unwrap_or(i64::MAX),
            );
            a.record("gen_ai.usage.input_tokens", input);
            a.record("gen_ai.usage.output_tokens", output);
            s.record("gen_ai.usage.input_tokens", input);
            s.record("gen_ai.usage.output_tokens", output);
        }
        if !self.finish_reasons.is_empty() {
            a.record(
                "gen_ai.response.finish_reasons",
                format!("{:?}", self.finish_reasons).as_str(),
            );
        }
        if let Some(c) = cost {
            a.record("llm_gateway.cost_usd", c);
        }
        if status >= 400 {
            a.record("error.type", status.to_string().as_str());
            a.record("otel.status_code", "ERROR");
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

    /// Marks the upstream's answer as complete (the first mark counts).
    pub fn mark_answered(&mut self) {
        self.answered.get_or_insert_with(Instant::now);
    }

    /// Whether a stream's first content has been marked.
    pub fn first_token_marked(&self) -> bool {
        self.first_token.is_some()
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
            answered: self.answered,
            attempts: self.attempts,
            caller: self.caller.clone(),
            held: self.held.take(),
            output_bytes: self.output_bytes,
            prompt_bytes: self.prompt_bytes,
            remaining: self.remaining,
            estimated: self.estimated,
            cache: self.cache,
            prompt_billed: self.prompt_billed,
            sent: [
                AtomicBool::new(self.sent[PRIMARY].load(Ordering::Relaxed)),
                AtomicBool::new(self.sent[HEDGE].load(Ordering::Relaxed)),
            ],
            hedge_target: self.hedge_target.clone(),
            hedge_hold: std::sync::Mutex::new(self.take_hedge_hold()),
            to_cache: self.to_cache.take(),
            span: self.span.clone(),
            attempt_span: self.attempt_span.clone(),
            finish_reasons: std::mem::take(&mut self.finish_reasons),
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

    /// Records the cancelled loser of a hedge on `t`, whose call was `slot` ([`PRIMARY`] or
    /// [`HEDGE`]): a ledger row with this request's id and status 499, its prompt estimated
    /// and settled on `hold`, if the call had been sent; nothing if it was still waiting for
    /// a concurrency slot (dropping `hold` releases it).
    pub fn record_hedge_loser(&self, t: &Target, slot: usize, hold: Option<super::budget::Held>) {
        if !self.sent[slot].swap(false, Ordering::Relaxed) {
            return;
        }
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

    /// Holds the hedge's estimate until the race is decided.
    pub fn keep_hedge_hold(&self, hold: Option<super::budget::Held>) {
        *self.hedge_hold.lock().unwrap_or_else(|e| e.into_inner()) = hold;
    }

    /// The hedge's estimate, once the race is decided (or the client has left).
    pub fn take_hedge_hold(&self) -> Option<super::budget::Held> {
        self.hedge_hold
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
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
        let _settle = crate::telemetry::traces::on()
            .then(|| tracing::info_span!(parent: &self.span, "settle").entered());
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
        // 8. The outcome on the request's trace spans.
        self.record_spans(status, usage.as_ref(), cost);
        self.attempt_span = None;
        cost
    }
}

impl RequestContext {
    /// The upstream calls were dropped unanswered (the client left, or the drain timeout
    /// came): a call that had gone upstream was read (and will be billed) by its provider,
    /// so its prompt is estimated and charged, as for a hedge's loser, rather than recorded
    /// as free. A call still queued for a slot sent nothing. Call before [`Self::finish`].
    pub fn abandon_calls(&mut self) {
        if self.done {
            return;
        }
        let primary = self.sent[PRIMARY].load(Ordering::Relaxed);
        let hedge = self.sent[HEDGE].load(Ordering::Relaxed);
        let hedge_hold = self.take_hedge_hold();
        if let (true, Some(t)) = (hedge, self.hedge_target.get().cloned()) {
            if primary {
                // Both calls were at their providers: both bill, as after a race.
                self.record_hedge_loser(&t, HEDGE, hedge_hold);
            } else {
                // Only the hedge reached its provider: that is the model that bills.
                self.target = Some(t);
            }
        }
        if self.target.is_some() && (primary || hedge) {
            self.prompt_billed = true;
        }
    }
}

impl Drop for RequestContext {
    fn drop(&mut self) {
        if !self.done {
            // The client went away.
            self.abandon_calls();
            self.finish(499, None);
        }
    }
}
