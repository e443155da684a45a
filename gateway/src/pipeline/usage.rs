//! The tail's first steps: what a request used — the provider's figures, or an estimate
//! when content was produced but none were reported (a cut stream, a provider that omits
//! them, a hedge's cancelled loser) — and what that cost.

use super::context::RequestContext;
use crate::wire::Usage;

/// The usage to account for a request that ended with `status`.
pub fn resolve(ctx: &mut RequestContext, status: u16, reported: Option<&Usage>) -> Option<Usage> {
    if let Some(u) = reported {
        return Some(u.clone());
    }
    // A cache hit used no upstream tokens.
    if ctx.cache.is_some_and(|c| c.is_hit()) {
        return None;
    }
    if status != 200 && ctx.output_bytes == 0 && !ctx.prompt_billed {
        return None;
    }
    // About four bytes a token; the prompt's counted tokens when the budget step had them.
    let prompt = ctx
        .held
        .as_ref()
        .map_or(ctx.prompt_bytes.div_ceil(4) as u64, |h| h.prompt_tokens);
    let completion = ctx.output_bytes.div_ceil(4) as u64;
    ctx.estimated = true;
    ctx.gw.metrics.usage_estimated();
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        ..Usage::default()
    })
}

/// The cost of `usage` at the answering model's price; nothing for a cache hit; unknown
/// for an unpriced model.
pub fn cost(ctx: &RequestContext, usage: Option<&Usage>) -> Option<f64> {
    if ctx.cache.is_some_and(|c| c.is_hit()) {
        return Some(0.0);
    }
    let price = ctx.target.as_ref()?.info.as_ref()?.price?;
    Some(price.cost(usage?))
}
