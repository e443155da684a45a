//! Reserve and settle over the whole amount domain, on both counter backends: zero estimates
//! (free local models, unpriced models under token-only budgets), the largest amounts, and
//! everything between, drawn at random with fixed seeds. After every reservation is settled
//! nothing stays reserved, the settled use is exactly the sum of what was charged, and a
//! request was refused exactly when it would not have fitted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use llm_gateway::budget::counters::Shared;
use llm_gateway::budget::{Amount, Budgets, MAX_AMOUNT};
use llm_gateway::clock::Clock;
use llm_gateway::clock::{ManualClock, SystemClock};
use llm_gateway::config::budget::{Budget, OnLimit, Period, Scope};

/// An amount spread over the whole domain: zero, the maximum, and log-uniform between.
fn draw(rng: &mut fastrand::Rng) -> i64 {
    match rng.u8(0..10) {
        0 => 0,
        1 => MAX_AMOUNT,
        _ => {
            let bits = rng.u32(0..53);
            rng.i64(0..=(1i64 << bits))
        }
    }
}

async fn property(shared: Option<Shared>, prefix: &str) {
    for seed in 0..8u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let clock = Arc::new(ManualClock::at(SystemClock.now_ms()));
        let p = format!("{prefix}{seed}:");
        let engine = Arc::new(Budgets::new(None, shared.clone(), clock, &p));
        // Limits that some requests fit and others do not.
        let limit_nano = rng.i64(1..=MAX_AMOUNT);
        let limit_tokens = rng.i64(1..=MAX_AMOUNT);
        let budget = Arc::new(Budget {
            scope: Scope::Global,
            period: Period::Month,
            limit_usd: Some(limit_nano as f64 / 1e9),
            limit_tokens: Some(limit_tokens as u64),
            requests_per_minute: None,
            tokens_per_minute: None,
            on_limit: OnLimit::Reject,
            declared_by: None,
        });
        let limit_nano = llm_gateway::config::budget::to_nano(limit_nano as f64 / 1e9);
        let (mut used_a, mut used_b) = (0i64, 0i64);
        for i in 0..60 {
            let est = Amount {
                nano: draw(&mut rng),
                tokens: draw(&mut rng),
            };
            let fits = (est.nano == 0 || used_a.saturating_add(est.nano) <= limit_nano)
                && (est.tokens == 0 || used_b.saturating_add(est.tokens) <= limit_tokens);
            match engine.reserve(vec![budget.clone()], est).await {
                Ok(r) => {
                    assert!(
                        fits,
                        "seed {seed} #{i}: {est:?} admitted over {used_a}/{used_b}"
                    );
                    // What a request really costs: anything up to its estimate, or zero.
                    let actual = Amount {
                        nano: if est.nano == 0 {
                            0
                        } else {
                            rng.i64(0..=est.nano)
                        },
                        tokens: if est.tokens == 0 {
                            0
                        } else {
                            rng.i64(0..=est.tokens)
                        },
                    };
                    r.settle(actual);
                    used_a += actual.nano;
                    used_b += actual.tokens;
                }
                Err(refusal) => {
                    assert!(!fits, "seed {seed} #{i}: {est:?} refused: {refusal:?}")
                }
            }
            // Settling on Redis runs off the request path: let it land before the next one.
            if shared.is_some() {
                settle_wait(&engine, &budget, used_a, used_b).await;
            }
        }
        let s = &engine.status(std::slice::from_ref(&budget)).await[0];
        assert_eq!(s.reserved_tokens, 0, "seed {seed}: {s:?}");
        assert_eq!(s.used_tokens, used_b, "seed {seed}");
        assert_eq!(
            llm_gateway::config::budget::to_nano(s.used_usd),
            llm_gateway::config::budget::to_nano(used_a as f64 / 1e9),
            "seed {seed}"
        );
    }
}

async fn settle_wait(engine: &Arc<Budgets>, b: &Arc<Budget>, _a: i64, used_b: i64) {
    for _ in 0..200 {
        let s = &engine.status(std::slice::from_ref(b)).await[0];
        if s.reserved_tokens == 0 && s.used_tokens == used_b {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("a settlement never landed");
}

#[tokio::test]
async fn any_amount_in_process() {
    property(None, "").await;
}

#[tokio::test]
async fn any_amount_on_redis() {
    let prefix = format!("lgw-test-{}:", uuid::Uuid::new_v4());
    property(Some(Shared::connect(redis_url()).await.unwrap()), &prefix).await;
    delete_redis_keys(&prefix).await;
}
