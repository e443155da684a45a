//! Failover: tries a request's candidates in rank order until one answers.
//!
//! A candidate is skipped while its provider's or model's circuit breaker is open. An attempt
//! that fails in a way that is the provider's fault (connect error, timeout, 408/429/5xx,
//! malformed answer, a stream that breaks before its first content) is reported to the
//! breakers and the next candidate of another provider is tried (a provider that just failed
//! is not tried again for the same request: outages and network trouble are rarely confined
//! to one model), up to `routing.failover.max_attempts` attempts. A 429 is the exception:
//! providers rate-limit each model apart, so it opens only that model's breaker and the
//! provider's other models stay candidates, tried after every other provider's (unless it
//! says the account's quota is spent).
//! Errors caused by the request (other 4xx) go straight back to the client.
//!
//! **Deadlines, designed together.** The request has one deadline for a response to start:
//! `routing.failover.deadline_secs`, or sooner if the client declares its own timeout
//! ([`Plan::new`]). Each attempt may wait for its model's learned first-content deadline
//! ([`crate::deadline`]), but an attempt that could still be followed by another gets at most
//! half of what is left, so a timed-out attempt always leaves time for the next candidate.
//!
//! **Hedging** (opt-in per virtual model): when the first candidate has not started
//! answering after the hedge delay, the next-ranked candidate of another provider is asked
//! too; the first to produce content wins and the other is cancelled. The loser, if it had
//! been sent (not still queued for a slot), is recorded (ledger row with the same request id,
//! status 499, its prompt estimated) and its cost held to the caller's budgets.
//!
//! Streams are held back until their first content or tool-call chunk: the role preamble and
//! empty deltas are buffered, so a failure before real content fails over without the client
//! seeing anything. Once content has been sent, a failure ends the stream with an error event.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Map, Value};
use tracing::warn;

use crate::breaker::{Admission, Outcome as BreakerOutcome, State as BreakerState, Transition};
use crate::config::FailoverSettings;
use crate::deadline::{self, Mode};
use crate::error::{Error, Failure, Kind, TimeoutKind};
use crate::models::registry::Registry;
use crate::models::registry::Target;
use crate::pipeline::context::{RequestContext, HEDGE, PRIMARY};
use crate::providers::limiter::Permit;
use crate::providers::{ChatCall, ChatResponse, StreamItem};
use crate::router::{Hedge, Routed};
use crate::state::Gateway;
use crate::telemetry::metrics::Metrics;
use crate::wire::{ChatRequest, Usage};
use llm_gateway_crds::AllOpen;

/// Longest wait for a busy provider's slot when another candidate could take the request.
pub const SPILL_WAIT: Duration = Duration::from_millis(250);
/// Header in which a client may declare how long it waits, in seconds.
pub const TIMEOUT_HEADER: &str = "x-llm-gateway-timeout";
/// The read timeout the official OpenAI SDKs declare on every request, in seconds.
pub const SDK_TIMEOUT_HEADER: &str = "x-stainless-read-timeout";

/// A response that has started: nothing after this point fails over.
pub enum Committed {
    /// A complete body.
    Json {
        /// The body.
        body: Bytes,
        /// Its usage.
        usage: Option<Usage>,
    },
    /// A stream whose first content has arrived.
    Stream {
        /// Items received so far (preamble and first content), in order.
        held: VecDeque<StreamItem>,
        /// The rest.
        rx: crate::providers::StreamRx,
        /// When the whole request times out.
        deadline: Instant,
    },
}

/// The answer and who gave it.
pub struct Answer {
    /// The candidate that answered.
    pub target: Target,
    /// Its response.
    pub committed: Committed,
    /// Upstream attempts made, this one included.
    pub attempts: u32,
    /// The provider concurrency slot, held until the response is done.
    pub permit: Permit,
}

/// The time limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// When a response must have started.
    pub deadline: Instant,
    /// What the request brings to each model's deadline.
    pub ask: deadline::Ask,
    /// Stream or not.
    pub mode: Mode,
}

impl Plan {
    /// The plan of a request that arrived at `started`: the configured deadline, shortened to
    /// just under a timeout the client declares (`x-llm-gateway-timeout`, or the OpenAI SDKs'
    /// `x-stainless-read-timeout`): answering after the client gave up helps nobody.
    pub fn new(
        failover: &FailoverSettings,
        headers: &HeaderMap,
        started: Instant,
        req: &ChatRequest,
        prompt_bytes: usize,
    ) -> Self {
        let mut budget = failover.deadline;
        if let Some(client) = client_timeout(headers) {
            // A margin for the network and the client's own bookkeeping.
            let margin = client.mul_f64(0.05).max(Duration::from_millis(250));
            budget = budget.min(client.saturating_sub(margin).max(client / 2));
        }
        Self {
            deadline: started + budget,
            ask: deadline::Ask {
                // Bytes over-count tokens; a third is a generous estimate for any script.
                prompt_tokens: prompt_bytes / 3,
                max_output: req.max_output(),
            },
            mode: if req.is_stream() {
                Mode::Stream
            } else {
                Mode::Json
            },
        }
    }

    /// Time left until the deadline.
    fn left(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }

    /// How long one attempt on `t` may wait for content: its model's deadline, but at most
    /// half of what is left if another attempt could follow.
    fn attempt_limit(&self, t: &Target, more_possible: bool, now: Instant) -> Duration {
        let model = t.deadlines.deadline(
            self.mode,
            self.ask,
            t.provider.first_token_bounds(t.info.as_deref()),
        );
        let left = self.left(now);
        model.min(if more_possible { left / 2 } else { left })
    }
}

/// A timeout the client declared, if it is a sane number of seconds.
fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    [TIMEOUT_HEADER, SDK_TIMEOUT_HEADER].iter().find_map(|h| {
        headers
            .get(*h)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e6)
            .map(Duration::from_secs_f64)
    })
}

/// The candidates of a routed request in rank order, built only when tried.
struct Candidates<'a> {
    registry: &'a Registry,
    routed: &'a Routed,
}

impl Candidates<'_> {
    fn len(&self) -> usize {
        self.routed.decision.as_ref().map_or(1, |d| d.ranking.len())
    }

    fn provider(&self, i: usize) -> &str {
        match &self.routed.decision {
            None => &self.routed.target.provider.name,
            Some(d) => &self.registry.entries()[d.ranking[i].entry].provider.name,
        }
    }

    fn target(&self, i: usize) -> Target {
        match &self.routed.decision {
            None => self.routed.target.clone(),
            Some(d) => self.registry.target_of(
                &self.registry.entries()[d.ranking[i].entry],
                Some(d.virtual_model.clone()),
            ),
        }
    }

    /// The first candidate after `i` not tried yet whose provider is neither `provider` nor
    /// among `skip` (failed or rate-limited).
    fn next_other(
        &self,
        i: usize,
        provider: &str,
        skip: &[String],
        tried: &[bool],
    ) -> Option<usize> {
        (i + 1..self.len()).find(|&j| {
            let p = self.provider(j);
            !tried[j] && p != provider && !skip.iter().any(|f| f == p)
        })
    }
}

/// Reports an upstream outcome of `t` to its provider's and its model's breakers — the one
/// place breakers hear about outcomes: `None` is a success, an error a failure (only errors
/// that are the provider's fault are reported; see [`Failure::counts_against_provider`]).
/// A rate limit (429) is the model's alone: providers limit each model apart, so one
/// model's limit must not take its provider's other models away — unless it says the
/// account's quota is spent, which stops every model.
pub fn report(metrics: &Metrics, t: &Target, failure: Option<&Error>) {
    let outcome = match failure {
        None => BreakerOutcome::Success,
        // A spent account does not come back within a backoff: the breaker opens at once,
        // for its longest backoff unless the provider said otherwise.
        Some(e) if is_quota_spent(e) => BreakerOutcome::Failure {
            retry_after: Some(e.retry_after.unwrap_or(Duration::MAX)),
        },
        // A model's rate limit with its reset time: traffic resumes in full at the reset.
        Some(e) if is_model_rate_limit(e) && e.retry_after.is_some() => {
            BreakerOutcome::RateLimited {
                retry_after: e.retry_after.unwrap_or_default(),
            }
        }
        Some(e) => BreakerOutcome::Failure {
            retry_after: e.retry_after,
        },
    };
    // A model outside the catalog has no breaker of its own: its rate limit goes to no
    // breaker rather than its provider's.
    let model_only = failure.is_some_and(is_model_rate_limit);
    let now = Instant::now();
    if !model_only {
        let tr = t.provider.breaker.record(now, outcome, fastrand::f64());
        note_transition(metrics, &t.provider.name, "*", tr);
    }
    if let Some(b) = &t.breaker {
        let tr = b.record(now, outcome, fastrand::f64());
        note_transition(metrics, &t.provider.name, &t.model, tr);
    }
}

/// A 429 that limits one model (not `insufficient_quota`, OpenAI's spent account).
fn is_model_rate_limit(e: &Error) -> bool {
    e.failure == Some(Failure::Status(429)) && !is_quota_spent(e)
}

/// OpenAI's 429 `insufficient_quota`: the account's credit is spent, for every model.
fn is_quota_spent(e: &Error) -> bool {
    e.failure == Some(Failure::Status(429)) && e.code.as_deref() == Some("insufficient_quota")
}

/// How a committed stream ended, for its breakers: complete, cut by the provider, or ended
/// by the client (which says nothing of the provider and is not reported).
pub fn report_stream_end(ctx: &RequestContext, failure: Option<&Error>) {
    if let Some(t) = ctx.target() {
        report(&ctx.gw().metrics, t, failure);
    }
}

/// Counts a breaker transition in metrics and the log.
fn note_transition(metrics: &Metrics, provider: &str, model: &str, tr: Option<Transition>) {
    let Some(tr) = tr else { return };
    let to = match tr.to {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    };
    metrics.breaker_transition(provider, model, to);
    if tr.to == BreakerState::Open {
        warn!(provider, model, "circuit breaker opened");
    } else {
        tracing::info!(provider, model, state = to, "circuit breaker state changed");
    }
}

/// Admits a request through the provider's and the model's breakers.
fn admit(ctx: &RequestContext, t: &Target, now: Instant) -> Result<(), Instant> {
    let (a, tr) = t.provider.breaker.admit(now);
    note_transition(&ctx.gw().metrics, &t.provider.name, "*", tr);
    if let Admission::Rejected { until } = a {
        return Err(until);
    }
    if let Some(b) = &t.breaker {
        let (a, tr) = b.admit(now);
        note_transition(&ctx.gw().metrics, &t.provider.name, &t.model, tr);
        if let Admission::Rejected { until } = a {
            return Err(until);
        }
    }
    Ok(())
}

type Attempted = Result<(Committed, Permit), Error>;

/// Calls the candidates in order until one answers.
pub async fn chat(
    gw: &Gateway,
    req: &ChatRequest,
    raw: &Map<String, Value>,
    routed: &Routed,
    plan: &Plan,
    ctx: &mut RequestContext,
) -> Result<Answer, Error> {
    let snapshot = ctx.cfg().clone();
    let cfg = snapshot.failover;
    let cands = Candidates {
        registry: &snapshot.registry,
        routed,
    };
    let hedge = routed.decision.as_ref().and_then(|d| d.hedge);
    let mut attempts = 0u32;
    let mut last: Option<(String, Error)> = None;
    let mut open: Vec<(String, Instant)> = Vec::new();
    let mut soonest: Option<(Instant, Target)> = None;
    let mut failed: Vec<String> = Vec::new();
    // Providers one of whose models answered 429: their other models are tried only after
    // every other provider's, so a rate limit never spends the attempts a healthy provider
    // further down the ranking needs.
    let mut limited: Vec<String> = Vec::new();
    let mut order: VecDeque<usize> = (0..cands.len()).collect();
    let mut deferred = vec![false; cands.len()];
    // Asked already, as an attempt or as a hedge (never twice in one request).
    let mut tried = vec![false; cands.len()];
    let mut hedged = false;
    while let Some(i) = order.pop_front() {
        let now = Instant::now();
        if attempts >= cfg.max_attempts || (attempts > 0 && now >= plan.deadline) {
            break;
        }
        if tried[i] || failed.iter().any(|f| f == cands.provider(i)) {
            continue;
        }
        if !deferred[i] && limited.iter().any(|f| f == cands.provider(i)) {
            deferred[i] = true;
            order.push_back(i);
            continue;
        }
        let target = cands.target(i);
        if let Err(until) = admit(ctx, &target, now) {
            open.push((format!("{}/{}", target.provider.name, target.model), until));
            if soonest.as_ref().is_none_or(|(u, _)| until < *u) {
                soonest = Some((until, target));
            }
            continue;
        }
        if let Some((from, e)) = &last {
            let reason = e.failure.map_or("error", |f| f.label());
            gw.metrics.failover(from, &target.provider.name, reason);
        }
        attempts += 1;
        tried[i] = true;
        // Another attempt may follow if any candidate is left whose provider has not failed
        // (the deferred ones of a rate-limited provider included).
        let more = attempts < cfg.max_attempts
            && order
                .iter()
                .any(|&j| !tried[j] && !failed.iter().any(|f| f == cands.provider(j)));
        let limit = plan.attempt_limit(&target, more, now);
        // With another candidate to go to, a provider at its concurrency limit is not
        // waited for long: the request spills over instead.
        let queue = if more {
            SlotWait::Spill
        } else {
            SlotWait::LastResort
        };
        ctx.set_target(&target);
        ctx.set_attempts(attempts);
        let span = ctx.attempt_span(&target, attempts);
        let primary = attempt(
            gw,
            &target,
            req,
            raw,
            limit,
            queue,
            plan,
            &ctx.sent[PRIMARY],
        )
        .instrument(span);
        // A hedge, once per request, to the next candidate of another provider (not one
        // that failed or is rate-limited).
        let skip: Vec<String> = failed.iter().chain(&limited).cloned().collect();
        let hedge_to = match hedge {
            Some(h) if !hedged && attempts < cfg.max_attempts => cands
                .next_other(i, &target.provider.name, &skip, &tried)
                .map(|j| (h, j)),
            _ => None,
        };
        let outcome = match hedge_to {
            None => Outcome::One(target.clone(), primary.await),
            Some((h, j)) => {
                hedged = true;
                let delay = hedge_delay(h, &target, plan);
                // Boxed: the race holds two attempts, and inline it doubled the size of every
                // request's future, hedged or not (copied whole when axum boxes it).
                Box::pin(race(
                    gw,
                    ctx,
                    &cands,
                    j,
                    target.clone(),
                    primary,
                    delay,
                    plan,
                    req,
                    raw,
                ))
                .await
            }
        };
        let results = match outcome {
            Outcome::One(t, r) => vec![(t, r)],
            Outcome::Won {
                target,
                result,
                extra_attempt,
            } => {
                if extra_attempt {
                    attempts += 1;
                    ctx.set_attempts(attempts);
                }
                vec![(target, Ok(result))]
            }
            Outcome::Two(a, b) => {
                attempts += 1;
                ctx.set_attempts(attempts);
                // The hedge was asked: it is not asked again.
                if let Some((_, j)) = hedge_to {
                    tried[j] = true;
                }
                vec![a, b]
            }
        };
        // After a hedge race, the other call's answer stands even where one provider refused
        // the request itself (a 4xx): that call was made, and is paid for.
        let answered = results.iter().any(|(_, r)| r.is_ok());
        for (t, r) in results {
            match r {
                Ok((committed, permit)) => {
                    ctx.switch_target(&t);
                    // A whole JSON answer is a success now; a stream's is known at its end.
                    if matches!(committed, Committed::Json { .. }) {
                        report(&gw.metrics, &t, None);
                    }
                    return Ok(Answer {
                        target: t,
                        committed,
                        attempts,
                        permit,
                    });
                }
                Err(e) => {
                    let Some(f) = e.failure else {
                        if answered {
                            continue;
                        }
                        return Err(e);
                    };
                    note_failure(gw, ctx, &t, &e, f);
                    // A model's own rate limit leaves its provider's other models to try,
                    // after the other providers'.
                    if is_model_rate_limit(&e) {
                        limited.push(t.provider.name.to_string());
                    } else {
                        failed.push(t.provider.name.to_string());
                    }
                    last = Some((t.provider.name.to_string(), e));
                }
            }
        }
    }
    if let (None, AllOpen::TrySoonest, Some((_, target))) = (&last, cfg.when_all_open, soonest) {
        // Every breaker is open and config says to try anyway: the one that reopens first.
        ctx.set_target(&target);
        ctx.set_attempts(1);
        let limit = plan.attempt_limit(&target, false, Instant::now());
        let span = ctx.attempt_span(&target, 1);
        let sent = &ctx.sent[PRIMARY];
        let (committed, permit) = attempt(
            gw,
            &target,
            req,
            raw,
            limit,
            SlotWait::LastResort,
            plan,
            sent,
        )
        .instrument(span)
        .await
        .inspect_err(|e| {
            if e.failure.is_some_and(Failure::counts_against_provider) {
                report(&gw.metrics, &target, Some(e));
            }
        })?;
        return Ok(Answer {
            target,
            committed,
            attempts: 1,
            permit,
        });
    }
    match last {
        Some((_, mut e)) => {
            if attempts > 1 {
                e = e.map_message(|m| format!("{m} (after {attempts} attempts)"));
            }
            Err(e)
        }
        None => Err(all_open_error(&open)),
    }
}

/// Counts and logs a failed attempt, and tells the breakers if it was the provider's fault.
fn note_failure(gw: &Gateway, ctx: &mut RequestContext, t: &Target, e: &Error, f: Failure) {
    gw.metrics.upstream_failure(&t.provider.name, f.label());
    ctx.attempt_failed(f.label());
    // A 429 without Retry-After is a capacity signal: it shrinks the provider's concurrency
    // limit, and only once that is at its floor and the provider still refuses is it a
    // quota the breaker should keep traffic from. With Retry-After, the provider said when
    // to come back, and the breaker keeps traffic away until then.
    // A spent quota is no capacity signal: it counts at once.
    let capacity =
        is_model_rate_limit(e) && e.retry_after.is_none() && !t.provider.limiter.at_floor();
    if f.counts_against_provider() && !capacity {
        ctx.switch_target(t);
        report(&gw.metrics, t, Some(e));
    }
    warn!(
        request_id = %ctx.request_id(),
        provider = %t.provider.name,
        model = %t.model,
        reason = f.label(),
        error = %e.message,
        "upstream attempt failed"
    );
}

/// What one (possibly hedged) step of failover produced.
enum Outcome {
    /// A single attempt's result.
    One(Target, Attempted),
    /// One of two racing attempts answered; `extra_attempt` if the hedge was sent.
    Won {
        target: Target,
        result: (Committed, Permit),
        extra_attempt: bool,
    },
    /// The first of two racing attempts failed; the second's result (tried in this order).
    Two((Target, Attempted), (Target, Attempted)),
}

/// How long to wait for the first candidate before hedging.
fn hedge_delay(h: Hedge, t: &Target, plan: &Plan) -> Duration {
    match h {
        Hedge::Delay { secs } => Duration::from_secs_f64(secs),
        // Until the model's own times are known, four times its catalog prior stands in.
        Hedge::Quantile { q } => {
            let usual = t.deadlines.quantile(plan.mode, q).unwrap_or_else(|| {
                Duration::from_secs_f64(
                    t.info.as_ref().map_or(1000.0, |i| i.latency_ms) * 4.0 / 1e3,
                )
            });
            usual + deadline::prefill(plan.ask.prompt_tokens)
        }
    }
}

/// Runs `primary`; if it has not answered after `delay`, also candidate `j`; the first to
/// answer wins, the other is cancelled and recorded as a paid loser.
#[allow(clippy::too_many_arguments)]
async fn race(
    gw: &Gateway,
    ctx: &RequestContext,
    cands: &Candidates<'_>,
    j: usize,
    first: Target,
    primary: impl std::future::Future<Output = Attempted>,
    delay: Duration,
    plan: &Plan,
    req: &ChatRequest,
    raw: &Map<String, Value>,
) -> Outcome {
    tokio::pin!(primary);
    tokio::select! {
        r = &mut primary => return Outcome::One(first, r),
        _ = tokio::time::sleep(delay) => {}
    }
    let second = cands.target(j);
    if admit(ctx, &second, Instant::now()).is_err() {
        return Outcome::One(first, primary.await);
    }
    // The hedge is paid for: hold its estimate on the caller's budgets, or do not send it.
    match ctx.hold_extra(&second).await {
        Ok(h) => ctx.keep_hedge_hold(h),
        Err(_) => return Outcome::One(first, primary.await),
    }
    let limit = plan.attempt_limit(&second, false, Instant::now());
    let _ = ctx.hedge_target.set(second.clone());
    let sent = &ctx.sent[HEDGE];
    let hedge = attempt(gw, &second, req, raw, limit, SlotWait::Spill, plan, sent)
        .instrument(ctx.child_span(&second, ctx.attempts() + 1));
    tokio::pin!(hedge);
    let (winner_is_hedge, r) = tokio::select! {
        r = &mut primary => (false, r),
        r = &mut hedge => (true, r),
    };
    let (winner, loser, loser_slot) = if winner_is_hedge {
        (second.clone(), first.clone(), PRIMARY)
    } else {
        (first.clone(), second.clone(), HEDGE)
    };
    match r {
        Ok(result) => {
            gw.metrics.hedge(
                &second.provider.name,
                if winner_is_hedge { "won" } else { "lost" },
            );
            // The loser's future is dropped with this frame: its upstream call is cancelled.
            ctx.record_hedge_loser(&loser, loser_slot, ctx.take_hedge_hold());
            Outcome::Won {
                target: winner,
                result,
                extra_attempt: true,
            }
        }
        Err(e) => {
            // One failed; the other may still answer.
            let other = if winner_is_hedge {
                primary.await
            } else {
                hedge.await
            };
            match other {
                Ok(result) => {
                    gw.metrics.hedge(
                        &second.provider.name,
                        if winner_is_hedge { "lost" } else { "won" },
                    );
                    drop(ctx.take_hedge_hold());
                    Outcome::Two((winner, Err(e)), (loser, Ok(result)))
                }
                Err(e2) => {
                    gw.metrics.hedge(&second.provider.name, "failed");
                    drop(ctx.take_hedge_hold());
                    Outcome::Two((winner, Err(e)), (loser, Err(e2)))
                }
            }
        }
    }
}

/// 503 naming the candidates whose breakers are open and when each is retried.
pub fn all_open_error(open: &[(String, Instant)]) -> Error {
    let now = Instant::now();
    let soonest = open.iter().map(|(_, u)| *u).min().unwrap_or(now);
    let list: Vec<String> = open
        .iter()
        .map(|(m, u)| {
            format!(
                "{m} (retried in {:.0}s)",
                u.saturating_duration_since(now).as_secs_f64().ceil()
            )
        })
        .collect();
    let mut e = Error::new(
        Kind::Unavailable,
        format!(
            "Every candidate's circuit breaker is open: {}.",
            list.join(", ")
        ),
    )
    .with_code("circuit_open")
    .with_failure(Failure::BreakerOpen);
    e = e.with_retry_after(
        soonest
            .saturating_duration_since(now)
            .max(std::time::Duration::from_secs(1)),
    );
    e
}

/// Whether a failure says the provider is overloaded or unresponsive (its limit shrinks).
fn is_overload(f: Failure) -> bool {
    matches!(
        f,
        Failure::Status(408 | 429 | 500..=599) | Failure::Timeout(_) | Failure::Connect
    )
}

/// How an attempt waits for a provider's concurrency slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotWait {
    /// Another candidate can take the request: wait at most [`SPILL_WAIT`].
    Spill,
    /// Nowhere else to go: wait the queue timeout, or (if only latency set the limit) up to
    /// the request's deadline; the attempt's own time starts with its slot.
    LastResort,
}

/// One upstream attempt, up to the moment the response starts, waiting at most `limit` for
/// it, part of which for a concurrency slot; `sent` is set while the call is at the provider
/// (from its slot until it fails, or for good once it answers).
#[allow(clippy::too_many_arguments)]
async fn attempt(
    gw: &Gateway,
    t: &Target,
    req: &ChatRequest,
    raw: &Map<String, Value>,
    limit: Duration,
    queue: SlotWait,
    plan: &Plan,
    sent: &AtomicBool,
) -> Attempted {
    let mut began = Instant::now();
    let mut limit = limit;
    let (permit, waited) = match queue {
        SlotWait::Spill => t.provider.acquire(limit.min(SPILL_WAIT), false).await?,
        SlotWait::LastResort => {
            // Time spent in this gateway's own queue is not the provider's slowness: it may
            // use the request's time, and the model's first-content deadline starts with
            // the slot.
            let got = t.provider.acquire(plan.left(began), true).await?;
            began = Instant::now();
            limit = plan.attempt_limit(t, false, began);
            got
        }
    };
    gw.metrics
        .queue_wait(&t.provider.name, waited.as_secs_f64());
    sent.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let content_deadline = tokio::time::Instant::from_std(began + limit);
    let timed_out = || {
        let what = match plan.mode {
            Mode::Stream => "sent no content",
            Mode::Json => "did not answer",
        };
        Error::gateway_timeout(format!(
            "provider {} {what} within {:.1}s",
            t.provider.name,
            limit.as_secs_f64()
        ))
        .with_failure(Failure::Timeout(TimeoutKind::FirstToken))
    };
    let result = until_content(t, req, raw, content_deadline, timed_out).await;
    let now = Instant::now();
    match &result {
        Ok(committed) => {
            let took = now.duration_since(started);
            let mode = match committed {
                Committed::Json { .. } => Mode::Json,
                Committed::Stream { .. } => Mode::Stream,
            };
            t.deadlines.observe(mode, took, plan.ask.prompt_tokens);
            let signal = (mode == Mode::Stream)
                .then(|| took.saturating_sub(deadline::prefill(plan.ask.prompt_tokens)));
            t.provider.limiter.on_success(signal, now);
        }
        Err(e) => {
            // A failed call is not billed (as when another candidate then answers).
            sent.store(false, Ordering::Relaxed);
            if e.failure.is_some_and(is_overload) {
                t.provider.limiter.on_overload(now);
            }
        }
    }
    let committed = result?;
    Ok((
        match committed {
            Committed::Stream { held, rx, .. } => Committed::Stream {
                held,
                rx,
                deadline: started + t.provider.total_timeout(),
            },
            json => json,
        },
        permit,
    ))
}

/// Sends the request and waits, until `deadline`, for a complete JSON answer or a stream's
/// first content (holding back its preamble).
async fn until_content(
    t: &Target,
    req: &ChatRequest,
    raw: &Map<String, Value>,
    deadline: tokio::time::Instant,
    timed_out: impl Fn() -> Error,
) -> Result<Committed, Error> {
    let call = ChatCall {
        req,
        raw,
        model: &t.model,
        info: t.info.as_deref(),
    };
    let answer = tokio::time::timeout_at(deadline, t.provider.chat(call))
        .await
        .map_err(|_| timed_out())??;
    let mut rx = match answer {
        ChatResponse::Stream(rx) => rx,
        ChatResponse::Json { body, usage } => return Ok(Committed::Json { body, usage }),
    };
    let mut held = VecDeque::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err(timed_out()),
            Ok(None) => {
                return Err(Error::bad_gateway(format!(
                    "provider {} ended the stream before any content",
                    t.provider.name
                ))
                .with_failure(Failure::StreamCut))
            }
            Ok(Some(StreamItem::Error(e))) => {
                return Err(e.or_failure(Failure::StreamCut));
            }
            Ok(Some(item)) => {
                let started_content = matches!(
                    item,
                    StreamItem::End | StreamItem::Chunk { content: 1.., .. }
                );
                held.push_back(item);
                if started_content {
                    // The stream's total deadline is set by the caller.
                    return Ok(Committed::Stream {
                        held,
                        rx,
                        deadline: Instant::now(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_timeouts_are_read_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(client_timeout(&h), None);
        h.insert(SDK_TIMEOUT_HEADER, "30.0".parse().unwrap());
        assert_eq!(client_timeout(&h), Some(Duration::from_secs(30)));
        h.insert(TIMEOUT_HEADER, "12".parse().unwrap());
        assert_eq!(client_timeout(&h), Some(Duration::from_secs(12)));
        for bad in ["-1", "nan", "soon", "0"] {
            let mut h = HeaderMap::new();
            h.insert(TIMEOUT_HEADER, bad.parse().unwrap());
            assert_eq!(client_timeout(&h), None, "{bad}");
        }
    }
}
