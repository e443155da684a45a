//! Budgets and rate limits, enforced before the upstream call.
//!
//! Each request that some budget covers reserves an estimate of its cost and tokens (prompt
//! counted with the tokenizer, plus `max_tokens` or [`DEFAULT_COMPLETION_RESERVE`]) on the
//! counters of every budget that covers it — global, its tenant's, its key's — and on its
//! per-minute rate buckets, all or nothing. After the call the real figures replace the
//! estimate; a failed call releases it.
//!
//! Counters live in Redis when configured (one atomic script per operation, shared by every
//! replica) and in process otherwise; a counter new to its backend (a new period, a Redis
//! restart) is first seeded with the period's spend recorded in the database, which stays
//! the source of truth. While Redis is unreachable each replica falls back to its own
//! counters. Budget definitions are reloaded from the database every [`REFRESH`].

pub mod counters;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tracing::{error, warn};

use crate::auth::Caller;
use crate::clock::Clock;
pub use crate::config::budget::MAX_AMOUNT;
use crate::config::budget::{from_nano, rfc3339, Budget, OnLimit, Scope, Window};
use crate::error::Error;
use crate::store::Store;
use counters::{Ask, Kind, Level, Line, Local, Reserved, Shared};

/// How often budget definitions are reloaded: the longest a change takes on every replica.
pub const REFRESH: Duration = Duration::from_secs(5);
/// Completion tokens reserved for a request without `max_tokens`.
pub const DEFAULT_COMPLETION_RESERVE: u64 = 1024;
/// An unsettled reservation returns to its budget after this long (a replica died
/// mid-request); settling later still counts the real use.
pub const RESERVATION_TTL_MS: i64 = 15 * 60 * 1000;
/// Budget counters outlive their period by a day, so late settlements still land.
const COUNTER_GRACE_MS: i64 = 24 * 3600 * 1000;

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

#[derive(Debug, Default)]
struct Policies {
    global: Option<Arc<Budget>>,
    tenants: HashMap<String, Arc<Budget>>,
    keys: HashMap<String, Arc<Budget>>,
}

/// Which counter a line is, for turning a refusal into figures.
#[derive(Debug, Clone, Copy)]
struct LineRef {
    budget: usize,
    kind: Kind,
    window: Window,
}

/// The budget engine of one gateway process.
#[derive(Debug)]
pub struct Budgets {
    store: Option<Store>,
    shared: Option<Shared>,
    local: Local,
    policies: RwLock<Arc<Policies>>,
    clock: Arc<dyn Clock>,
    prefix: String,
    redis: crate::kv::Health,
}

/// The backend a reservation was made on (settled on the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Shared,
    Local,
}

impl Budgets {
    /// An engine over `store` (budget definitions and recorded spend) and, if given, Redis.
    pub fn new(
        store: Option<Store>,
        shared: Option<Shared>,
        clock: Arc<dyn Clock>,
        prefix: &str,
    ) -> Self {
        Self {
            store,
            shared,
            local: Local::default(),
            policies: RwLock::new(Arc::new(Policies::default())),
            clock,
            prefix: prefix.to_owned(),
            redis: crate::kv::Health::new(
                "budgets fall back to this replica's own counters",
                "budget counters are shared again",
            ),
        }
    }

    /// Counts Redis failures in `c` (a metric).
    pub fn count_redis_errors_in(&mut self, c: prometheus_client::metrics::counter::Counter) {
        self.redis.count_errors_in(c);
    }

    /// The clock, Unix ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// How many budgets are defined.
    pub fn count(&self) -> usize {
        let p = self.policies.read().unwrap_or_else(|e| e.into_inner());
        usize::from(p.global.is_some()) + p.tenants.len() + p.keys.len()
    }

    /// Whether Redis holds the live counters.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Replaces the budget definitions.
    pub fn set_budgets(&self, list: Vec<Budget>) {
        let mut p = Policies::default();
        for b in list {
            let b = Arc::new(b);
            match &b.scope {
                Scope::Global => p.global = Some(b.clone()),
                Scope::Tenant(t) => {
                    p.tenants.insert(t.clone(), b.clone());
                }
                Scope::Key(k) => {
                    p.keys.insert(k.clone(), b.clone());
                }
            }
        }
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    }

    /// Reloads the definitions from the database.
    pub async fn reload(&self) -> Result<(), crate::store::StoreError> {
        if let Some(store) = &self.store {
            self.set_budgets(store.list_budgets().await?);
        }
        Ok(())
    }

    /// Reloads the definitions every [`REFRESH`] until the process ends.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(b) = me.upgrade() else { return };
                if let Err(e) = b.reload().await {
                    warn!(error = %e, "cannot reload budgets; keeping the last ones");
                }
            }
        });
    }

    /// The budgets covering `caller`: global, its tenant's, its key's.
    pub fn covering(&self, caller: &Caller) -> Vec<Arc<Budget>> {
        let p = self
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out = Vec::new();
        out.extend(p.global.clone());
        if let Caller::Key(k) = caller {
            out.extend(p.tenants.get(&k.tenant).cloned());
            out.extend(p.keys.get(&k.id).cloned());
        }
        out
    }

    fn counter_key(&self, b: &Budget, w: &Window) -> String {
        format!(
            "{}budget:{}:{}:{}:{}",
            self.prefix,
            b.scope.kind(),
            b.scope.subject(),
            b.period.name(),
            w.start_ms
        )
    }

    fn lines(&self, budgets: &[Arc<Budget>], now: i64) -> (Vec<Line>, Vec<LineRef>) {
        let mut lines = Vec::new();
        let mut refs = Vec::new();
        for (i, b) in budgets.iter().enumerate() {
            if b.limit_usd.is_some() || b.limit_tokens.is_some() {
                let w = b.period.window(now);
                lines.push(Line {
                    key: self.counter_key(b, &w),
                    kind: Kind::Budget,
                    limit_a: b.limit_usd.map(crate::config::budget::to_nano),
                    limit_b: b.limit_tokens.map(|t| t as i64),
                    ttl_ms: w.end_ms + COUNTER_GRACE_MS - now,
                });
                refs.push(LineRef {
                    budget: i,
                    kind: Kind::Budget,
                    window: w,
                });
            }
            if b.requests_per_minute.is_some() || b.tokens_per_minute.is_some() {
                let start = now - now.rem_euclid(60_000);
                let w = Window {
                    start_ms: start,
                    end_ms: start + 60_000,
                };
                lines.push(Line {
                    key: format!(
                        "{}rate:{}:{}:{}",
                        self.prefix,
                        b.scope.kind(),
                        b.scope.subject(),
                        start
                    ),
                    kind: Kind::Rate,
                    limit_a: b.requests_per_minute.map(|v| v as i64),
                    limit_b: b.tokens_per_minute.map(|v| v as i64),
                    ttl_ms: w.end_ms + 60_000 - now,
                });
                refs.push(LineRef {
                    budget: i,
                    kind: Kind::Rate,
                    window: w,
                });
            }
        }
        (lines, refs)
    }

    /// The period's recorded spend of each line in `need` (zero if the database fails:
    /// the request is served, and the log says the counter may start low).
    async fn seeds(
        &self,
        budgets: &[Arc<Budget>],
        refs: &[LineRef],
        need: &[usize],
    ) -> HashMap<usize, (i64, i64)> {
        let mut out = HashMap::new();
        for &i in need {
            let Some(r) = refs.get(i) else { continue };
            let seed = match &self.store {
                Some(s) => s
                    .spend(&budgets[r.budget].scope, r.window.start_ms, r.window.end_ms)
                    .await
                    .unwrap_or_else(|e| {
                        error!(error = %e, "cannot read recorded spend to start a budget counter; starting it at zero");
                        (0, 0)
                    }),
                None => (0, 0),
            };
            out.insert(i, seed);
        }
        out
    }

    async fn try_reserve(
        &self,
        backend: Backend,
        lines: &[Line],
        ask: &Ask,
    ) -> Result<Reserved, counters::CounterError> {
        match (backend, &self.shared) {
            (Backend::Shared, Some(s)) => s.reserve(lines, ask).await,
            _ => Ok(self.local.reserve(lines, ask)),
        }
    }

    fn redis_ok(&self) {
        if self.redis.ok() {
            // The fallback counters are stale from now on; a later outage seeds anew.
            self.local.clear();
        }
    }

    /// Reserves `est` on every budget and rate covering the request, or refuses.
    pub async fn reserve(
        self: &Arc<Self>,
        budgets: Vec<Arc<Budget>>,
        est: Amount,
    ) -> Result<Reservation, Refusal> {
        let now = self.clock.now_ms();
        let (lines, refs) = self.lines(&budgets, now);
        let est = Amount::bounded(est.nano, est.tokens.max(0) as u64);
        let mut ask = Ask {
            id: uuid::Uuid::new_v4().to_string(),
            a: est.nano,
            b: est.tokens,
            now_ms: now,
            expires_at_ms: now + RESERVATION_TTL_MS,
            seeds: HashMap::new(),
        };
        let mut backend = if self.shared.is_some() {
            Backend::Shared
        } else {
            Backend::Local
        };
        let mut tries = 0;
        let levels = loop {
            tries += 1;
            let outcome = match self.try_reserve(backend, &lines, &ask).await {
                Ok(o) => {
                    if backend == Backend::Shared {
                        self.redis_ok();
                    }
                    o
                }
                Err(e) => {
                    self.redis.failed(&e);
                    backend = Backend::Local;
                    self.local.reserve(&lines, &ask)
                }
            };
            match outcome {
                Reserved::Admitted(levels) => break levels,
                Reserved::NeedSeed(need) if tries < 4 => {
                    let seeds = self.seeds(&budgets, &refs, &need).await;
                    ask.seeds.extend(seeds);
                }
                Reserved::NeedSeed(_) => break Vec::new(),
                Reserved::Refused { line, on_a, level } => {
                    return Err(self.refusal(&budgets, &refs[line], on_a, &level, &est, now));
                }
            }
        };
        Ok(Reservation {
            owner: self.clone(),
            id: ask.id,
            lines,
            refs,
            budgets,
            est,
            levels,
            backend,
            done: false,
        })
    }

    fn refusal(
        &self,
        budgets: &[Arc<Budget>],
        r: &LineRef,
        on_a: bool,
        lv: &Level,
        est: &Amount,
        now: i64,
    ) -> Refusal {
        let b = budgets[r.budget].clone();
        let (limit, limit_value, used, reserved, asked) = match (r.kind, on_a) {
            (Kind::Budget, true) => (
                LimitKind::Usd,
                b.limit_usd.unwrap_or(0.0),
                from_nano(lv.used_a),
                from_nano(lv.reserved_a),
                from_nano(est.nano),
            ),
            (Kind::Budget, false) => (
                LimitKind::Tokens,
                b.limit_tokens.unwrap_or(0) as f64,
                lv.used_b as f64,
                lv.reserved_b as f64,
                est.tokens as f64,
            ),
            (Kind::Rate, true) => (
                LimitKind::RequestsPerMinute,
                b.requests_per_minute.unwrap_or(0) as f64,
                lv.used_a as f64,
                0.0,
                1.0,
            ),
            (Kind::Rate, false) => (
                LimitKind::TokensPerMinute,
                b.tokens_per_minute.unwrap_or(0) as f64,
                lv.used_b as f64,
                0.0,
                est.tokens as f64,
            ),
        };
        Refusal {
            budget: b,
            limit,
            limit_value,
            used,
            reserved,
            asked,
            resets_at_ms: r.window.end_ms,
            now_ms: now,
        }
    }

    fn settle_now(
        self: &Arc<Self>,
        backend: Backend,
        lines: Vec<Line>,
        id: String,
        est_tokens: i64,
        actual: Amount,
    ) {
        let (Backend::Shared, Some(shared)) = (backend, self.shared.clone()) else {
            self.local
                .settle(&lines, &id, est_tokens, (actual.nano, actual.tokens));
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            // One retry: a settlement lost to a Redis blip leaves the use uncounted in Redis
            // until the next period (the database still has it).
            for attempt in 0..2 {
                match shared
                    .settle(&lines, &id, est_tokens, (actual.nano, actual.tokens))
                    .await
                {
                    Ok(()) => return,
                    Err(e) if attempt == 0 => {
                        me.redis.failed(&e);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        me.redis.failed(&e);
                        error!(error = %e, "cannot settle a budget reservation in redis; it expires on its own");
                    }
                }
            }
        });
    }

    /// Each covering budget's figures in its current window.
    pub async fn status(&self, budgets: &[Arc<Budget>]) -> Vec<BudgetStatus> {
        let now = self.clock.now_ms();
        let (lines, refs) = self.lines(budgets, now);
        let levels = match &self.shared {
            Some(s) => match s.levels(&lines).await {
                Ok(l) => l,
                Err(e) => {
                    self.redis.failed(&e);
                    self.local.levels(&lines)
                }
            },
            None => self.local.levels(&lines),
        };
        let mut out = Vec::new();
        for (i, b) in budgets.iter().enumerate() {
            let w = b.period.window(now);
            let line = refs
                .iter()
                .position(|r| r.budget == i && r.kind == Kind::Budget);
            let level = match line.map(|l| (l, levels.get(l).copied().flatten())) {
                Some((_, Some(lv))) => lv,
                Some((l, None)) => {
                    let seeds = self.seeds(budgets, &refs, &[l]).await;
                    let (a, b) = seeds.get(&l).copied().unwrap_or_default();
                    Level {
                        used_a: a,
                        used_b: b,
                        ..Level::default()
                    }
                }
                None => Level::default(),
            };
            let left_a = b
                .limit_usd
                .map(|l| (l - from_nano(level.used_a + level.reserved_a)).max(0.0));
            let left_b = b
                .limit_tokens
                .map(|l| (l as i64 - level.used_b - level.reserved_b).max(0));
            out.push(BudgetStatus {
                budget: (**b).clone(),
                period_start: rfc3339(w.start_ms),
                resets_at: rfc3339(w.end_ms),
                used_usd: from_nano(level.used_a),
                reserved_usd: from_nano(level.reserved_a),
                remaining_usd: left_a,
                used_tokens: level.used_b,
                reserved_tokens: level.reserved_b,
                remaining_tokens: left_b,
            });
        }
        out
    }
}

/// A request's hold on its budgets: settle it with the real figures, or drop it to release.
#[derive(Debug)]
pub struct Reservation {
    owner: Arc<Budgets>,
    id: String,
    lines: Vec<Line>,
    refs: Vec<LineRef>,
    budgets: Vec<Arc<Budget>>,
    est: Amount,
    levels: Vec<Level>,
    backend: Backend,
    done: bool,
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
