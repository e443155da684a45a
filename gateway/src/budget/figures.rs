//! The figures budgets speak in: amounts, a refusal and its 429, what remains, a budget's
//! status in its window.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::MAX_AMOUNT;
use crate::config::budget::{rfc3339, Budget, OnLimit, Scope};
use crate::error::Error;

/// Nano-dollars and tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    /// Nano-USD.
    pub nano: i64,
    /// Prompt + completion tokens.
    pub tokens: i64,
}

impl Amount {
    /// An amount from unbounded figures, each clamped to [0, [`MAX_AMOUNT`]].
    pub fn bounded(nano: i64, tokens: u64) -> Self {
        Self {
            nano: nano.clamp(0, MAX_AMOUNT),
            tokens: i64::try_from(tokens).unwrap_or(i64::MAX).min(MAX_AMOUNT),
        }
    }
}

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Spend per period.
    Usd,
    /// Tokens per period.
    Tokens,
    /// Requests per minute.
    RequestsPerMinute,
    /// Tokens per minute.
    TokensPerMinute,
}

/// A request that would exceed a limit.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The budget.
    pub budget: Arc<Budget>,
    /// Which of its limits.
    pub limit: LimitKind,
    /// The limit (USD or a count).
    pub limit_value: f64,
    /// Settled use in the window.
    pub used: f64,
    /// Held by requests in flight.
    pub reserved: f64,
    /// What this request needed.
    pub asked: f64,
    /// When the window resets, Unix ms.
    pub resets_at_ms: i64,
    /// The clock when refused.
    pub now_ms: i64,
}

impl Refusal {
    /// Whether the budget asks to downgrade rather than reject (USD limits only: a token or
    /// rate limit binds every model alike).
    pub fn downgrades(&self) -> bool {
        self.limit == LimitKind::Usd && self.budget.on_limit == OnLimit::Downgrade
    }

    /// USD still free in the window (for downgrading), if this was a USD refusal.
    pub fn remaining_usd(&self) -> Option<f64> {
        (self.limit == LimitKind::Usd)
            .then(|| (self.limit_value - self.used - self.reserved).max(0.0))
    }

    /// The 429 answer: OpenAI error JSON naming the budget, its limit, its use and its reset,
    /// with `Retry-After`.
    pub fn to_error(&self) -> Error {
        let b = &self.budget;
        let (what, fmt): (&str, fn(f64) -> String) = match self.limit {
            LimitKind::Usd => ("USD budget", |v| format!("${v:.6}")),
            LimitKind::Tokens => ("token budget", |v| format!("{v:.0} tokens")),
            LimitKind::RequestsPerMinute => ("request rate limit", |v| format!("{v:.0} requests")),
            LimitKind::TokensPerMinute => ("token rate limit", |v| format!("{v:.0} tokens")),
        };
        let per = match self.limit {
            LimitKind::Usd | LimitKind::Tokens => b.period.name(),
            _ => "minute",
        };
        let retry = ((self.resets_at_ms - self.now_ms).max(0) as f64 / 1000.0)
            .ceil()
            .max(1.0) as u64;
        // The global budget's figures move with every tenant's traffic: they are not shown
        // to one tenant.
        let global = b.scope == Scope::Global;
        let message = if global {
            format!(
                "The global {what} per {per} of this gateway is exhausted. It resets at {}.",
                rfc3339(self.resets_at_ms),
            )
        } else {
            format!(
                "The {} {what} per {per} is exhausted: limit {}, used {}, reserved by requests in flight {}, this request needs {}. It resets at {}.",
                b.scope.describe(),
                fmt(self.limit_value),
                fmt(self.used),
                fmt(self.reserved),
                fmt(self.asked),
                rfc3339(self.resets_at_ms),
            )
        };
        let rate = matches!(
            self.limit,
            LimitKind::RequestsPerMinute | LimitKind::TokensPerMinute
        );
        let (kind, code) = if rate {
            (crate::error::Kind::RateLimited, "rate_limit_exceeded")
        } else {
            (crate::error::Kind::BudgetExceeded, "budget_exceeded")
        };
        Error::new(kind, message)
            .with_code(code)
            .with_retry_after(Duration::from_secs(retry))
            .with_details(
                "budget",
                if global {
                    serde_json::json!({
                        "scope": "global",
                        "period": per,
                        "limit_kind": self.limit,
                        "resets_at": rfc3339(self.resets_at_ms),
                        "on_limit": b.on_limit.name(),
                    })
                } else {
                    serde_json::json!({
                    "scope": b.scope.kind(),
                    "subject": b.scope.subject(),
                    "period": per,
                    "limit_kind": self.limit,
                    "limit": self.limit_value,
                    "used": self.used,
                    "reserved": self.reserved,
                    "requested": self.asked,
                    "resets_at": rfc3339(self.resets_at_ms),
                    "on_limit": b.on_limit.name(),
                    })
                },
            )
    }
}

/// What is left of the tightest budgets after a request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Remaining {
    /// USD, when some covering budget limits spend.
    pub usd: Option<f64>,
    /// Tokens, when some covering budget limits tokens.
    pub tokens: Option<i64>,
}

/// A budget's figures in its current window (for `GET /v1/budget` and the admin API).
#[derive(Debug, Clone, Serialize)]
pub struct BudgetStatus {
    /// The budget.
    #[serde(flatten)]
    pub budget: Budget,
    /// Window start, RFC 3339.
    pub period_start: String,
    /// When it resets, RFC 3339.
    pub resets_at: String,
    /// Settled spend, USD.
    pub used_usd: f64,
    /// Held by requests in flight, USD.
    pub reserved_usd: f64,
    /// Left, USD.
    pub remaining_usd: Option<f64>,
    /// Settled tokens.
    pub used_tokens: i64,
    /// Held by requests in flight.
    pub reserved_tokens: i64,
    /// Left.
    pub remaining_tokens: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::budget::{Period, Scope};

    fn refusal(limit: LimitKind, on_limit: OnLimit) -> Refusal {
        Refusal {
            budget: Arc::new(Budget {
                scope: Scope::Tenant("team-a".into()),
                period: Period::Month,
                limit_usd: Some(10.0),
                limit_tokens: Some(1000),
                requests_per_minute: None,
                tokens_per_minute: None,
                on_limit,
                declared_by: None,
            }),
            limit,
            limit_value: 10.0,
            used: 7.5,
            reserved: 2.0,
            asked: 1.0,
            resets_at_ms: 60_000,
            now_ms: 0,
        }
    }

    #[test]
    fn amounts_are_clamped_to_what_the_counters_hold_exactly() {
        assert_eq!(
            Amount::bounded(-5, u64::MAX),
            Amount {
                nano: 0,
                tokens: MAX_AMOUNT
            }
        );
        assert_eq!(Amount::bounded(i64::MAX, 3).nano, MAX_AMOUNT);
    }

    #[test]
    fn only_a_usd_limit_under_downgrade_downgrades_and_says_what_is_left() {
        let r = refusal(LimitKind::Usd, OnLimit::Downgrade);
        assert!(r.downgrades());
        assert_eq!(r.remaining_usd(), Some(0.5));
        assert!(!refusal(LimitKind::Tokens, OnLimit::Downgrade).downgrades());
        assert!(!refusal(LimitKind::Usd, OnLimit::Reject).downgrades());
        assert_eq!(
            refusal(LimitKind::Tokens, OnLimit::Reject).remaining_usd(),
            None
        );
        let e = r.to_error();
        assert_eq!(e.kind, crate::error::Kind::BudgetExceeded);
        assert_eq!(e.retry_after, Some(Duration::from_secs(60)));
    }
}
