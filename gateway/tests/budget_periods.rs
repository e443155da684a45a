//! Budget periods at their boundaries, on an injected clock, on both counter backends: month
//! end → month start, Dec 31 → Jan 1, Feb 28/29 in common and leap years, the UTC week start,
//! and the minute of a rate limit. Every absolute instant here lives only in this process:
//! Redis is handed relative expiries, so these pass on any real date (and under the shifted
//! clock test-all.sh runs them with).

mod common;

use std::sync::Arc;

use common::*;
use llm_gateway::budget::counters::Shared;
use llm_gateway::budget::{Amount, Budgets};
use llm_gateway::clock::ManualClock;
use llm_gateway::config::budget::{Budget, OnLimit, Period, Scope};
use time::macros::datetime;
use time::OffsetDateTime;

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn budget(period: Period) -> Arc<Budget> {
    Arc::new(Budget {
        scope: Scope::Global,
        period,
        limit_usd: Some(1.0),
        limit_tokens: Some(1000),
        requests_per_minute: None,
        tokens_per_minute: None,
        on_limit: OnLimit::Reject,
        declared_by: None,
    })
}

const FULL: Amount = Amount {
    nano: 1_000_000_000,
    tokens: 10,
};
const TINY: Amount = Amount { nano: 1, tokens: 1 };

/// One boundary: the budget is spent just before `at`; is it fresh again at `at`?
struct Case {
    what: &'static str,
    period: Period,
    at: OffsetDateTime,
    resets: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "month end -> month start",
            period: Period::Month,
            at: datetime!(2026-12-01 00:00 UTC),
            resets: true,
        },
        Case {
            what: "Dec 31 -> Jan 1 (month)",
            period: Period::Month,
            at: datetime!(2027-01-01 00:00 UTC),
            resets: true,
        },
        Case {
            what: "Dec 31 -> Jan 1 (day)",
            period: Period::Day,
            at: datetime!(2027-01-01 00:00 UTC),
            resets: true,
        },
        Case {
            what: "Dec 31 -> Jan 1 inside an ISO week (no reset)",
            period: Period::Week,
            at: datetime!(2027-01-01 00:00 UTC),
            resets: false,
        },
        Case {
            what: "Feb 28 -> Mar 1 in a common year",
            period: Period::Month,
            at: datetime!(2027-03-01 00:00 UTC),
            resets: true,
        },
        Case {
            what: "Feb 28 -> Feb 29 in a leap year (month goes on)",
            period: Period::Month,
            at: datetime!(2028-02-29 00:00 UTC),
            resets: false,
        },
        Case {
            what: "Feb 28 -> Feb 29 in a leap year (day)",
            period: Period::Day,
            at: datetime!(2028-02-29 00:00 UTC),
            resets: true,
        },
        Case {
            what: "Feb 29 -> Mar 1 in a leap year",
            period: Period::Month,
            at: datetime!(2028-03-01 00:00 UTC),
            resets: true,
        },
        Case {
            what: "Sunday -> Monday, the UTC week start",
            period: Period::Week,
            at: datetime!(2026-11-30 00:00 UTC),
            resets: true,
        },
        Case {
            what: "Monday -> Tuesday inside a week (no reset)",
            period: Period::Week,
            at: datetime!(2026-12-01 00:00 UTC),
            resets: false,
        },
    ]
}

async fn boundaries(shared: Option<Shared>, prefix: &str) {
    for c in cases() {
        let boundary = ms(c.at);
        let clock = Arc::new(ManualClock::at(boundary - 60_000));
        // A fresh prefix per case: each case's counters start empty.
        let p = format!("{prefix}{}:", uuid::Uuid::new_v4().simple());
        let engine = Arc::new(Budgets::new(None, shared.clone(), clock.clone(), &p));
        let b = budget(c.period);
        let spent = engine
            .reserve(vec![b.clone()], FULL)
            .await
            .unwrap_or_else(|r| panic!("{}: the first request fits: {r:?}", c.what));
        clock.set(boundary - 1);
        let refused = engine
            .reserve(vec![b.clone()], TINY)
            .await
            .expect_err(c.what);
        if c.resets {
            assert_eq!(
                refused.resets_at_ms, boundary,
                "{}: the refusal names the reset",
                c.what
            );
        }
        clock.set(boundary);
        let after = engine.reserve(vec![b.clone()], TINY).await;
        assert_eq!(after.is_ok(), c.resets, "{}: {after:?}", c.what);
        drop(after);
        drop(spent);
    }
}

#[tokio::test]
async fn period_boundaries_in_process() {
    boundaries(None, "").await;
}

#[tokio::test]
async fn period_boundaries_on_redis() {
    let prefix = format!("lgw-test-{}:", uuid::Uuid::new_v4());
    let shared = Shared::connect(redis_url()).await.unwrap();
    boundaries(Some(shared), &prefix).await;
    delete_redis_keys(&prefix).await;
}

async fn minute_boundary(shared: Option<Shared>, prefix: &str) {
    let clock = Arc::new(ManualClock::at(ms(datetime!(2026-12-31 23:59:00 UTC))));
    let engine = Arc::new(Budgets::new(None, shared, clock.clone(), prefix));
    let rate = Arc::new(Budget {
        scope: Scope::Tenant("t".into()),
        period: Period::Month,
        limit_usd: None,
        limit_tokens: None,
        requests_per_minute: Some(1),
        tokens_per_minute: None,
        on_limit: OnLimit::Reject,
        declared_by: None,
    });
    let first = engine.reserve(vec![rate.clone()], TINY).await.unwrap();
    clock.set(ms(datetime!(2026-12-31 23:59:59.999 UTC)));
    let refused = engine
        .reserve(vec![rate.clone()], TINY)
        .await
        .expect_err("one request per minute");
    assert_eq!(refused.resets_at_ms, ms(datetime!(2027-01-01 00:00 UTC)));
    clock.set(ms(datetime!(2027-01-01 00:00 UTC)));
    let next = engine.reserve(vec![rate], TINY).await;
    assert!(next.is_ok(), "a new minute: {next:?}");
    drop(first);
}

#[tokio::test]
async fn rate_minutes_roll_over_in_process() {
    minute_boundary(None, "").await;
}

#[tokio::test]
async fn rate_minutes_roll_over_on_redis() {
    let prefix = format!("lgw-test-{}:", uuid::Uuid::new_v4());
    minute_boundary(Some(Shared::connect(redis_url()).await.unwrap()), &prefix).await;
    delete_redis_keys(&prefix).await;
}
