//! A tail step: the answering model's time to first token and total time feed routing's
//! latency estimates — successes, and timeouts (a slow provider must look slow).

use std::time::Instant;

use super::context::RequestContext;

/// Feeds the request's timings to its model's latency estimate.
pub fn observe(ctx: &RequestContext, status: u16) {
    if status != 200 && status != 504 {
        return;
    }
    let Some(stats) = ctx.target.as_ref().and_then(|t| t.latency.as_ref()) else {
        return;
    };
    let ttft = ctx
        .first_token
        .map(|t| t.duration_since(ctx.attempt_started));
    let total = ctx
        .answered
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(ctx.attempt_started);
    stats.observe(ttft, total, Instant::now(), ctx.cfg.router.decay());
}
