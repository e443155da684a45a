//! A tail step: the request's usage record, handed to the ledger (batched off the request
//! path; spooled while the database is down).

use super::context::RequestContext;
use crate::store::usage::UsageRecord;
use crate::wire::Usage;

/// Writes the record of a request that ended with `status`.
pub fn write(ctx: &RequestContext, status: u16, usage: Option<&Usage>, cost: Option<f64>) {
    let Some(ledger) = &ctx.gw.ledger else { return };
    let key = match &ctx.caller {
        Some(crate::auth::Caller::Key(k)) => Some(k),
        _ => None,
    };
    let t = ctx.target.as_ref();
    let ms = |d: std::time::Duration| d.as_millis().min(i64::MAX as u128) as i64;
    ledger.record(UsageRecord {
        id: uuid::Uuid::new_v4().to_string(),
        // The budgets' clock, so the spend that seeds a period's counter is the spend the
        // counters saw in it.
        at_ms: ctx
            .gw
            .budgets
            .as_ref()
            .map_or_else(crate::clock::unix_ms, |b| b.now_ms()),
        request_id: ctx.request_id.clone(),
        key_id: key.map(|k| k.id.clone()),
        // Workloads (sidecar callers, service-account tokens) are tenants too: their spend
        // must reach the usage API and seed their budgets' counters.
        tenant: ctx
            .caller
            .as_ref()
            .and_then(|c| c.tenant())
            .map(str::to_owned),
        endpoint: ctx.endpoint.to_owned(),
        virtual_model: t.and_then(|t| t.virtual_model.clone()),
        provider: t.map(|t| t.provider.name.clone()),
        model: t.map(|t| t.model.clone()),
        prompt_tokens: usage.map_or(0, |u| u.prompt_tokens as i64),
        completion_tokens: usage.map_or(0, |u| u.completion_tokens as i64),
        cost_usd: cost,
        usage_estimated: ctx.estimated,
        latency_ms: ms(ctx.started.elapsed()),
        ttft_ms: ctx.first_token.map(|f| ms(f.duration_since(ctx.started))),
        cache: ctx.cache.map(|c| c.header().to_owned()),
        status: status as i32,
        attempts: ctx.attempts as i32,
    });
}
