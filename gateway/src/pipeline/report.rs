//! The tail's last step: the request's metrics and its one log line.

use tracing::info;

use super::context::RequestContext;
use crate::telemetry::metrics::{self, RequestLabels};
use crate::wire::Usage;

/// Counts the request in metrics and writes its log line.
pub fn emit(ctx: &RequestContext, status: u16, usage: Option<&Usage>, cost: Option<f64>) {
    let secs = ctx.started.elapsed().as_secs_f64();
    let (provider, model, label) = match &ctx.target {
        Some(t) => (
            t.provider.name.clone(),
            &*t.model,
            // A catalog target's model is its catalog name.
            if t.info.is_some() {
                t.model.clone()
            } else {
                metrics::unlisted()
            },
        ),
        None => (metrics::none(), "", metrics::none()),
    };
    // The gateway's own time: up to the answering attempt when there was one (and only one:
    // after a failover, earlier attempts' time is upstream time), else all of it.
    let overhead = match ctx.attempts {
        0 => Some(ctx.started.elapsed()),
        1 => Some(ctx.attempt_started.saturating_duration_since(ctx.started)),
        _ => None,
    };
    if let Some(o) = overhead {
        ctx.gw.metrics.overhead(ctx.endpoint, o.as_secs_f64());
    }
    if let (Some(first), 200) = (ctx.first_token, status) {
        let ttft = first.saturating_duration_since(ctx.started).as_secs_f64();
        ctx.gw.metrics.time_to_first_token(&provider, &label, ttft);
    }
    ctx.gw.metrics.record(
        RequestLabels {
            endpoint: ctx.endpoint,
            provider: provider.clone(),
            model: label,
            status,
        },
        secs,
        usage,
        cost,
    );
    let trace = crate::telemetry::traces::on().then(|| {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        ctx.span
            .context()
            .span()
            .span_context()
            .trace_id()
            .to_string()
    });
    info!(
        request_id = %ctx.request_id,
        trace_id = trace.as_deref(),
        endpoint = ctx.endpoint,
        provider = &*provider,
        model,
        status,
        duration_ms = (secs * 1000.0).round() as u64,
        prompt_tokens = usage.map(|u| u.prompt_tokens),
        completion_tokens = usage.map(|u| u.completion_tokens),
        cost_usd = cost,
        route = ctx.decision.as_ref().map(|d| d.header()),
        attempts = ctx.attempts,
        tenant = ctx.caller.as_ref().and_then(|c| c.tenant()),
        "request finished"
    );
}
