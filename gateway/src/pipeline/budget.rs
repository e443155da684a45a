//! The budget steps of the request path: before the call, estimate the request's cost on the
//! routed model and reserve it on every covering budget — at a limit either downgrade
//! (virtual models under a `downgrade` budget: re-route among the models that still fit) or
//! refuse with 429; in the tail, settle the reservation with the real amount.

use std::sync::Arc;

use crate::auth::Caller;
use crate::budget::{
    Amount, Refusal, Remaining, Reservation, DEFAULT_COMPLETION_RESERVE, MAX_COMPLETION_RESERVE,
    UNKNOWN_MODEL_OUTPUT_RESERVE,
};
use crate::config::budget::{to_nano, Budget};
use crate::config::model::Price;
use crate::error::{Error, Kind};
use crate::models::registry::{Entry, Target};
use crate::router::{tokens, CandidateFilter, Exclusion, Routed};
use crate::state::{AppState, Snapshot};
use crate::wire::{ChatRequest, Usage};

/// A request's hold on its budgets.
#[derive(Debug)]
pub struct Held {
    /// The reservation, settled when the request is recorded.
    pub reservation: Reservation,
    /// The prompt's counted tokens (the estimate used if the provider reports no usage).
    pub prompt_tokens: u64,
    /// Routed to a cheaper model than first chosen because of a budget.
    pub downgraded: bool,
}

impl Held {
    /// What is left once the estimate is spent (for headers sent before the cost is known).
    pub fn remaining(&self) -> Remaining {
        self.reservation.remaining(None)
    }
}

fn is_free(p: &Price) -> bool {
    p.input_per_mtok == 0.0 && p.output_per_mtok == 0.0
}

/// The cost and tokens of `prompt` + `completion` tokens at `price`, each bounded to
/// [`crate::budget::MAX_AMOUNT`] (no wrap-around, however large the request).
pub fn amount(price: Option<&Price>, prompt: u64, completion: u64) -> Option<Amount> {
    let usage = Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        ..Usage::default()
    };
    Some(Amount::bounded(
        to_nano(price?.cost(&usage)),
        usage.total_tokens,
    ))
}

/// Keeps only the models whose estimated cost fits in what a budget has left (free local
/// models always fit).
struct Affordable {
    left_nano: i64,
    prompt: u64,
    completion: u64,
}

impl CandidateFilter for Affordable {
    fn check(&self, e: &Entry) -> Option<Exclusion> {
        let fits = e.info.price.as_ref().is_some_and(|p| {
            is_free(p)
                || amount(Some(p), self.prompt, self.completion)
                    .is_some_and(|a| a.nano <= self.left_nano)
        });
        (!fits).then(|| Exclusion::Unavailable {
            detail: "over budget: its estimated cost exceeds what the budget has left".into(),
            retry_after_secs: None,
        })
    }
}

/// Reserves `prompt` + `completion` tokens on `t` on the budgets covering `caller` (no
/// downgrade: for endpoints without virtual models). `None` when no budget covers the caller.
pub async fn hold(
    gw: &AppState,
    caller: &Caller,
    t: &Target,
    prompt: u64,
    completion: u64,
) -> Result<Option<Held>, Error> {
    let Some(engine) = &gw.budgets else {
        return Ok(None);
    };
    let budgets = engine.covering(caller);
    if budgets.is_empty() {
        return Ok(None);
    }
    let est = estimate(&budgets, t, prompt, completion)?;
    match engine.reserve(budgets, est).await {
        Ok(reservation) => Ok(Some(Held {
            reservation,
            prompt_tokens: prompt,
            downgraded: false,
        })),
        Err(r) => Err(refuse(gw, &r)),
    }
}

/// Reserves the request's estimate on the budgets covering `caller`; may re-route to a
/// cheaper model. `None` when no budget covers the caller.
pub async fn reserve(
    gw: &AppState,
    cfg: &Snapshot,
    caller: &Caller,
    req: &ChatRequest,
    raw: &serde_json::Map<String, serde_json::Value>,
    routed: Routed,
    breakers: &dyn CandidateFilter,
) -> Result<(Routed, Option<Held>), Error> {
    let Some(engine) = &gw.budgets else {
        return Ok((routed, None));
    };
    let budgets = engine.covering(caller);
    if budgets.is_empty() {
        return Ok((routed, None));
    }
    if budgets.iter().any(|b| b.limit_usd.is_some()) {
        unpriced_features(raw)?;
    }
    let tools = raw.get("tools");
    let prompt = tokens::count(req, tools) as u64;
    let completion = completion_estimate(req, &routed.target, prompt);
    let est = estimate(&budgets, &routed.target, prompt, completion)?;
    let refusal = match engine.reserve(budgets.clone(), est).await {
        Ok(reservation) => {
            return Ok((
                routed,
                Some(Held {
                    reservation,
                    prompt_tokens: prompt,
                    downgraded: false,
                }),
            ))
        }
        Err(r) => r,
    };
    // Downgrade: only virtual models choose among candidates.
    let left = refusal.remaining_usd().filter(|_| refusal.downgrades());
    if let (Some(left), Some(_)) = (left, &routed.decision) {
        let filter = Affordable {
            left_nano: to_nano(left),
            prompt,
            completion,
        };
        if let Ok(cheaper) = cfg.router.route(
            &cfg.registry,
            req,
            caller.tenant(),
            tools,
            &[breakers, &filter],
        ) {
            let est = estimate(&budgets, &cheaper.target, prompt, completion)?;
            if let Ok(reservation) = engine.reserve(budgets, est).await {
                gw.metrics
                    .budget_limited(refusal.budget.scope.kind(), "usd", "downgraded");
                return Ok((
                    cheaper,
                    Some(Held {
                        reservation,
                        prompt_tokens: prompt,
                        downgraded: true,
                    }),
                ));
            }
        }
    }
    Err(refuse(gw, &refusal))
}

/// The completion tokens to reserve: `max_tokens` (or [`DEFAULT_COMPLETION_RESERVE`]) for
/// every one of `n` choices, but never more than the model can write — its maximum output and
/// what its context window leaves after the prompt, or [`UNKNOWN_MODEL_OUTPUT_RESERVE`] for a
/// model neither is known of — and never more than [`MAX_COMPLETION_RESERVE`] in all.
pub fn completion_estimate(req: &ChatRequest, t: &Target, prompt: u64) -> u64 {
    let mut per_choice = req
        .max_output()
        .map_or(DEFAULT_COMPLETION_RESERVE, u64::from);
    let info = t.info.as_deref();
    let (max_out, window) = (
        info.and_then(|i| i.max_output_tokens),
        info.and_then(|i| i.context_window),
    );
    if let Some(m) = max_out {
        per_choice = per_choice.min(u64::from(m));
    }
    if let Some(w) = window {
        per_choice = per_choice.min(u64::from(w).saturating_sub(prompt).max(1));
    }
    if max_out.is_none() && window.is_none() {
        per_choice = per_choice.min(UNKNOWN_MODEL_OUTPUT_RESERVE);
    }
    per_choice
        .saturating_mul(u64::from(req.n.unwrap_or(1).max(1)))
        .min(MAX_COMPLETION_RESERVE)
}

/// Refuses request fields that make a call cost more than the price table knows (a premium
/// service tier, audio, built-in web search or other hosted tools): under a USD budget they
/// would run unmetered.
fn unpriced_features(raw: &serde_json::Map<String, serde_json::Value>) -> Result<(), Error> {
    use serde_json::Value;
    let refuse = |param: &str, what: &str| -> Result<(), Error> {
        Err(Error::new(Kind::Forbidden,
            format!("{what} costs more than this gateway's price table knows, so a USD budget covering this key cannot hold it; send the request without `{param}`."),
        )
        .with_code("unpriced_feature")
        .with_param(param))
    };
    if let Some(t) = raw.get("service_tier").and_then(Value::as_str) {
        if !matches!(t, "auto" | "default" | "flex" | "standard_only") {
            return refuse("service_tier", &format!("The `{t}` service tier"));
        }
    }
    if raw.get("audio").is_some_and(|v| !v.is_null())
        || raw
            .get("modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|x| x == "audio"))
    {
        return refuse("audio", "Audio output");
    }
    if raw.get("web_search_options").is_some_and(|v| !v.is_null()) {
        return refuse("web_search_options", "Built-in web search");
    }
    if let Some(tools) = raw.get("tools").and_then(Value::as_array) {
        if let Some(t) = tools
            .iter()
            .filter_map(|t| t.get("type").and_then(Value::as_str))
            .find(|t| *t != "function")
        {
            return refuse("tools", &format!("The hosted `{t}` tool"));
        }
    }
    Ok(())
}

fn refuse(gw: &AppState, r: &Refusal) -> Error {
    let limit = serde_json::to_value(r.limit)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    gw.metrics
        .budget_limited(r.budget.scope.kind(), &limit, "rejected");
    r.to_error()
}

/// The estimate on `t`; a model with no known price cannot be held to a USD limit, so it
/// is refused when one applies.
fn estimate(
    budgets: &[Arc<Budget>],
    t: &Target,
    prompt: u64,
    completion: u64,
) -> Result<Amount, Error> {
    match amount(t.info.as_ref().and_then(|i| i.price.as_ref()), prompt, completion) {
        Some(a) => Ok(a),
        None if budgets.iter().any(|b| b.limit_usd.is_some()) => Err(Error::new(Kind::Forbidden,
            format!(
                "Model `{}/{}` has no known price, so a USD budget covering this key cannot be enforced on it; add its price to the provider's models in the config.",
                t.provider.name, t.model
            ),
        )
        .with_code("unpriced_model")),
        None => Ok(Amount::bounded(0, prompt.saturating_add(completion))),
    }
}

/// The tail's settle step: the reservation is released and the real amount charged.
pub fn settle(ctx: &mut super::context::RequestContext, cost: Option<f64>, usage: Option<&Usage>) {
    let Some(h) = ctx.held.take() else { return };
    let actual = Amount::bounded(
        to_nano(cost.unwrap_or(0.0)),
        usage.map_or(0, |u| u.prompt_tokens.saturating_add(u.completion_tokens)),
    );
    ctx.remaining = Some(h.reservation.remaining(Some(actual)));
    h.reservation.settle(actual);
}
