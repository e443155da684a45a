//! The `budgets` section: budgets declared with the configuration (the operator compiles
//! `BudgetPolicy` resources into it).

use llm_gateway_crds::BudgetConfig;

use super::FieldError;
use crate::config::budget::{Budget, OnLimit, Period, Scope};

/// The declared budgets, each checked like a stored one; one budget per scope.
pub(super) fn budgets(list: &[BudgetConfig]) -> Result<Vec<Budget>, FieldError> {
    let mut out: Vec<Budget> = Vec::with_capacity(list.len());
    for (i, b) in list.iter().enumerate() {
        let at = |f: &str| format!("budgets[{i}].{f}");
        let scope = Scope::from_parts(&b.scope, b.subject.trim()).ok_or_else(|| {
            (
                at("scope"),
                format!(
                    "`{}` with subject `{}`: the scope is global (no subject), tenant, key or namespace (each with a subject)",
                    b.scope, b.subject
                ),
            )
        })?;
        let period = match &b.period {
            None => Period::Month,
            Some(p) => Period::parse(p)
                .ok_or_else(|| (at("period"), format!("`{p}` is not month, week or day")))?,
        };
        let on_limit = match b.on_limit.as_deref() {
            None | Some("reject") => OnLimit::Reject,
            Some("downgrade") => OnLimit::Downgrade,
            Some(o) => return Err((at("on_limit"), format!("`{o}` is not reject or downgrade"))),
        };
        let budget = Budget {
            scope,
            period,
            limit_usd: b.limit_usd,
            limit_tokens: b.limit_tokens,
            requests_per_minute: b.requests_per_minute,
            tokens_per_minute: b.tokens_per_minute,
            on_limit,
            declared_by: Some(
                b.source
                    .clone()
                    .unwrap_or_else(|| "the configuration".to_owned()),
            ),
        };
        budget.validate().map_err(|e| {
            let field = e.param.clone().unwrap_or_default();
            (at(&field), e.message.clone())
        })?;
        if let Some(prev) = out.iter().find(|o| o.scope == budget.scope) {
            return Err((
                at("scope"),
                format!(
                    "the {} already has a budget here (declared by {})",
                    budget.scope.describe(),
                    prev.declared_by.as_deref().unwrap_or("?")
                ),
            ));
        }
        out.push(budget);
    }
    Ok(out)
}
