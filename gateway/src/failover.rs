//! Failover: tries a request's candidates in rank order until one answers.
//!
//! A candidate is skipped while its provider's or model's circuit breaker is open. An attempt
//! that fails in a way that is the provider's fault (connect error, timeout, 408/429/5xx,
//! malformed answer, a stream that breaks before its first content) is reported to the
//! breakers and the next candidate of another provider is tried (a provider that just failed
//! is not tried again for the same request: rate limits, outages and network trouble are
//! rarely confined to one model), up to `routing.failover.max_attempts` attempts
//! and while `routing.failover.deadline_secs` has not passed. Errors caused by the request
//! (other 4xx) go straight back to the client.
//!
//! Streams are held back until their first content or tool-call chunk: the role preamble and
//! empty deltas are buffered, so a failure before real content fails over without the client
//! seeing anything. Once content has been sent, a failure ends the stream with an error event.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::warn;

use crate::api::error::{ApiError, Failure, TimeoutKind};
use crate::api::record::Record;
use crate::app::Gateway;
use crate::breaker::Admission;
use crate::models::registry::Target;
use crate::openai::{ChatRequest, Usage};
use crate::providers::{ChatCall, ChatResponse, StreamItem};
use crate::router::Routed;
use llm_gateway_crds::AllOpen;

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
        rx: mpsc::Receiver<StreamItem>,
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
    pub permit: OwnedSemaphorePermit,
}

/// The candidates of a routed request, best first; built as needed (usually only the first).
fn candidates<'a>(
    gw: &'a Gateway,
    routed: &'a Routed,
) -> Box<dyn Iterator<Item = Target> + Send + 'a> {
    match &routed.decision {
        None => Box::new(std::iter::once(routed.target.clone())),
        Some(d) => Box::new(d.ranking.iter().map(|r| {
            gw.registry.target_of(
                &gw.registry.entries()[r.entry],
                Some(d.virtual_model.clone()),
            )
        })),
    }
}

/// Admits a request through the provider's and the model's breakers.
fn admit(record: &Record, t: &Target, now: Instant) -> Result<(), Instant> {
    let (a, tr) = t.provider.breaker.admit(now);
    record.note_transition(&t.provider.name, "*", tr);
    if let Admission::Rejected { until } = a {
        return Err(until);
    }
    if let Some(b) = &t.breaker {
        let (a, tr) = b.admit(now);
        record.note_transition(&t.provider.name, &t.model, tr);
        if let Admission::Rejected { until } = a {
            return Err(until);
        }
    }
    Ok(())
}

/// Calls the candidates in order until one answers.
pub async fn chat(
    gw: &Gateway,
    req: &ChatRequest,
    raw: &Map<String, Value>,
    routed: &Routed,
    record: &mut Record,
) -> Result<Answer, ApiError> {
    let cfg = gw.failover;
    let deadline = Instant::now() + cfg.deadline;
    let mut attempts = 0u32;
    let mut last: Option<(String, ApiError)> = None;
    let mut open: Vec<(String, Instant)> = Vec::new();
    let mut soonest: Option<(Instant, Target)> = None;
    let mut failed: Vec<String> = Vec::new();
    for target in candidates(gw, routed) {
        if attempts >= cfg.max_attempts || (attempts > 0 && Instant::now() >= deadline) {
            break;
        }
        if failed.contains(&target.provider.name) {
            continue;
        }
        if let Err(until) = admit(record, &target, Instant::now()) {
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
        record.set_target(&target);
        record.set_attempts(attempts);
        match attempt(gw, &target, req, raw.clone()).await {
            Ok((committed, permit)) => {
                if matches!(committed, Committed::Json { .. }) {
                    record.report_upstream(None);
                }
                return Ok(Answer {
                    target,
                    committed,
                    attempts,
                    permit,
                });
            }
            Err(e) => {
                let Some(f) = e.failure else { return Err(e) };
                gw.metrics
                    .upstream_failure(&target.provider.name, f.label());
                if f.counts_against_provider() {
                    record.report_upstream(Some(&e));
                }
                warn!(
                    request_id = %record.request_id(),
                    provider = %target.provider.name,
                    model = %target.model,
                    reason = f.label(),
                    error = %e.message,
                    "upstream attempt failed"
                );
                failed.push(target.provider.name.clone());
                last = Some((target.provider.name.clone(), e));
            }
        }
    }
    if let (None, AllOpen::TrySoonest, Some((_, target))) = (&last, cfg.when_all_open, soonest) {
        // Every breaker is open and config says to try anyway: the one that reopens first.
        record.set_target(&target);
        record.set_attempts(1);
        let (committed, permit) =
            attempt(gw, &target, req, raw.clone())
                .await
                .inspect_err(|e| {
                    if e.failure.is_some_and(Failure::counts_against_provider) {
                        record.report_upstream(Some(e));
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
                e.message = format!("{} (after {attempts} attempts)", e.message);
            }
            Err(e)
        }
        None => Err(all_open_error(&open)),
    }
}

/// 503 naming the candidates whose breakers are open and when each is retried.
pub fn all_open_error(open: &[(String, Instant)]) -> ApiError {
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
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        format!(
            "Every candidate's circuit breaker is open: {}.",
            list.join(", ")
        ),
    )
    .with_code("circuit_open")
    .with_failure(Failure::BreakerOpen);
    e.retry_after = Some(format!(
        "{}",
        soonest
            .saturating_duration_since(now)
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64
    ));
    e
}

/// One upstream attempt, up to the moment the response starts.
async fn attempt(
    gw: &Gateway,
    t: &Target,
    req: &ChatRequest,
    raw: Map<String, Value>,
) -> Result<(Committed, OwnedSemaphorePermit), ApiError> {
    let (permit, waited) = t.provider.acquire().await?;
    gw.metrics
        .queue_wait(&t.provider.name, waited.as_secs_f64());
    let started = Instant::now();
    let call = ChatCall {
        req,
        raw,
        model: &t.model,
        info: t.info.as_deref(),
    };
    if !req.is_stream() {
        return match t.provider.chat(call).await? {
            ChatResponse::Json { body, usage } => Ok((Committed::Json { body, usage }, permit)),
            ChatResponse::Stream(_) => Err(ApiError::bad_gateway(
                "provider streamed a non-streaming request",
            )),
        };
    }
    let first_token_deadline =
        tokio::time::Instant::from_std(started + t.provider.first_token_timeout);
    let first_token_timeout = || {
        ApiError::gateway_timeout(format!(
            "provider {} sent no content within {}s",
            t.provider.name,
            t.provider.first_token_timeout.as_secs_f64()
        ))
        .with_failure(Failure::Timeout(TimeoutKind::FirstToken))
    };
    let answer = tokio::time::timeout_at(first_token_deadline, t.provider.chat(call))
        .await
        .map_err(|_| first_token_timeout())??;
    let mut rx = match answer {
        ChatResponse::Stream(rx) => rx,
        ChatResponse::Json { body, usage } => return Ok((Committed::Json { body, usage }, permit)),
    };
    // Hold back the preamble until real content: a failure before it can still fail over.
    let mut held = VecDeque::new();
    loop {
        match tokio::time::timeout_at(first_token_deadline, rx.recv()).await {
            Err(_) => return Err(first_token_timeout()),
            Ok(None) => {
                return Err(ApiError::bad_gateway(format!(
                    "provider {} ended the stream before any content",
                    t.provider.name
                ))
                .with_failure(Failure::StreamCut))
            }
            Ok(Some(StreamItem::Error(mut e))) => {
                e.failure.get_or_insert(Failure::StreamCut);
                return Err(e);
            }
            Ok(Some(item)) => {
                let started_content = matches!(
                    item,
                    StreamItem::End | StreamItem::Chunk { content: 1.., .. }
                );
                held.push_back(item);
                if started_content {
                    break;
                }
            }
        }
    }
    let deadline = started + t.provider.total_timeout();
    Ok((Committed::Stream { held, rx, deadline }, permit))
}
