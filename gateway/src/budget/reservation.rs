//! A request's hold on its budgets.

use std::sync::Arc;

use super::counters::{Kind, Level, Line};
use super::engine::{Backend, Budgets, LineRef};
use super::figures::{Amount, Remaining};
use crate::config::budget::{from_nano, Budget};

/// A request's hold on its budgets: settle it with the real figures, or drop it to release.
#[derive(Debug)]
pub struct Reservation {
    pub(super) owner: Arc<Budgets>,
    pub(super) id: String,
    pub(super) lines: Vec<Line>,
    pub(super) refs: Vec<LineRef>,
    pub(super) budgets: Vec<Arc<Budget>>,
    pub(super) est: Amount,
    pub(super) levels: Vec<Level>,
    pub(super) backend: Backend,
    pub(super) done: bool,
}

impl Reservation {
    /// What the tightest budgets have left once this request costs `actual` (or, before it
    /// is known, its estimate).
    pub fn remaining(&self, actual: Option<Amount>) -> Remaining {
        let spent = actual.unwrap_or(self.est);
        let mut r = Remaining::default();
        for (lv, lr) in self.levels.iter().zip(&self.refs) {
            if lr.kind != Kind::Budget {
                continue;
            }
            let b = &self.budgets[lr.budget];
            let held_a = lv.used_a + lv.reserved_a - self.est.nano + spent.nano;
            let held_b = lv.used_b + lv.reserved_b - self.est.tokens + spent.tokens;
            if let Some(l) = b.limit_usd {
                let left = (l - from_nano(held_a)).max(0.0);
                r.usd = Some(r.usd.map_or(left, |u: f64| u.min(left)));
            }
            if let Some(l) = b.limit_tokens {
                let left = (l as i64 - held_b).max(0);
                r.tokens = Some(r.tokens.map_or(left, |t: i64| t.min(left)));
            }
        }
        r
    }

    /// The estimate reserved.
    pub fn estimate(&self) -> Amount {
        self.est
    }

    /// Replaces the estimate with what the request really used.
    pub fn settle(mut self, actual: Amount) {
        self.finish(actual);
    }

    fn finish(&mut self, actual: Amount) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let actual = Amount::bounded(actual.nano, actual.tokens.max(0) as u64);
        self.owner.settle_now(
            self.backend,
            std::mem::take(&mut self.lines),
            std::mem::take(&mut self.id),
            self.est.tokens,
            actual,
        );
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(Amount::default());
    }
}
