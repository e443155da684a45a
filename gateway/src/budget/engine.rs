//! The budget engine of one gateway process: which budgets cover a caller, reserving on
//! their counters (Redis or in process, seeded from the database), settling, reloading
//! definitions.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{error, warn};

use super::counters::{Ask, Kind, Level, Line, Local, Reserved, Shared, Unsynced};
use super::figures::{Amount, BudgetStatus, LimitKind, Refusal};
use super::reservation::Reservation;
use super::{COUNTER_GRACE_MS, REFRESH, RESERVATION_TTL_MS};
use crate::auth::Caller;
use crate::clock::Clock;
use crate::config::budget::{from_nano, rfc3339, Budget, Scope, Window};
use crate::store::Store;

#[derive(Debug, Default)]
struct Policies {
    global: Option<Arc<Budget>>,
    tenants: HashMap<String, Arc<Budget>>,
    keys: HashMap<String, Arc<Budget>>,
    namespaces: HashMap<String, Arc<Budget>>,
}

impl Policies {
    fn insert(&mut self, b: Arc<Budget>) {
        match &b.scope {
            Scope::Global => self.global = Some(b.clone()),
            Scope::Tenant(t) => {
                self.tenants.insert(t.clone(), b.clone());
            }
            Scope::Key(k) => {
                self.keys.insert(k.clone(), b.clone());
            }
            Scope::Namespace(n) => {
                self.namespaces.insert(n.clone(), b.clone());
            }
        }
    }
}

/// Which counter a line is, for turning a refusal into figures.
#[derive(Debug, Clone, Copy)]
pub(super) struct LineRef {
    pub(super) budget: usize,
    pub(super) kind: Kind,
    pub(super) window: Window,
}

/// Settlements kept for Redis while it is out of reach, at most (see `Budgets::unsynced`).
const UNSYNCED_MAX: usize = 100_000;

/// The budget engine of one gateway process.
#[derive(Debug)]
pub struct Budgets {
    store: Option<Store>,
    shared: Option<Shared>,
    local: Local,
    policies: RwLock<Arc<Policies>>,
    /// The database's budgets as last read, and the configuration's declared ones: the
    /// policies in force are both (declared winning a scope both name).
    stored: RwLock<Arc<Vec<Budget>>>,
    declared: RwLock<Arc<Vec<Arc<Budget>>>>,
    clock: Arc<dyn Clock>,
    prefix: String,
    redis: crate::kv::Health,
    /// Budget spend settled while Redis could not be reached (on this replica's own
    /// counters, or a settlement Redis refused), by counter: added to Redis's counters once
    /// it answers, so an outage loses no spend and the shared counters resume at the truth.
    unsynced: std::sync::Mutex<Vec<Unsynced>>,
    /// Whether `unsynced` holds anything (read on every request without the lock).
    has_unsynced: std::sync::atomic::AtomicBool,
}

/// The backend a reservation was made on (settled on the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
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
            stored: RwLock::default(),
            declared: RwLock::default(),
            clock,
            prefix: prefix.to_owned(),
            redis: crate::kv::Health::new(
                "budgets fall back to this replica's own counters",
                "budget counters are shared again",
            ),
            unsynced: Default::default(),
            has_unsynced: Default::default(),
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
        usize::from(p.global.is_some()) + p.tenants.len() + p.keys.len() + p.namespaces.len()
    }

    /// Whether Redis holds the live counters.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Replaces the budget definitions from the database; the configuration's declared
    /// budgets stay, and win over a stored budget of the same scope (logged).
    pub fn set_budgets(&self, list: Vec<Budget>) {
        let declared = self
            .declared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut p = Policies::default();
        for b in list {
            if let Some(d) = declared.iter().find(|d| d.scope == b.scope) {
                warn!(
                    scope = %b.scope.describe(),
                    declared_by = d.declared_by.as_deref().unwrap_or("the configuration"),
                    "a stored budget has the scope of a declared one; the declared one applies"
                );
                continue;
            }
            p.insert(Arc::new(b));
        }
        for d in declared.iter() {
            p.insert(d.clone());
        }
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    }

    /// Replaces the budgets the configuration declares (each new configuration does); the
    /// stored ones are kept.
    pub fn set_declared(&self, list: Vec<Budget>) {
        let list: Vec<Arc<Budget>> = list.into_iter().map(Arc::new).collect();
        *self.declared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
        let stored = self
            .stored
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.set_budgets(stored.as_ref().clone());
    }

    /// The declared budget of `scope`, if the configuration declares one.
    pub fn declared(&self, scope: &Scope) -> Option<Arc<Budget>> {
        self.declared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|d| d.scope == *scope)
            .cloned()
    }

    /// Every budget in force: stored and declared.
    pub fn all(&self) -> Vec<Arc<Budget>> {
        let p = self
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        p.global
            .iter()
            .chain(p.tenants.values())
            .chain(p.keys.values())
            .chain(p.namespaces.values())
            .cloned()
            .collect()
    }

    /// Reloads the definitions from the database.
    pub async fn reload(&self) -> Result<(), crate::store::StoreError> {
        if let Some(store) = &self.store {
            let list = store.list_budgets().await?;
            *self.stored.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list.clone());
            self.set_budgets(list);
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

    /// The budgets covering `caller`: global, its tenant's, its namespace's (tenants
    /// `ns` and `ns/...`), its key's.
    pub fn covering(&self, caller: &Caller) -> Vec<Arc<Budget>> {
        let p = self
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out = Vec::new();
        out.extend(p.global.clone());
        if let Some(tenant) = caller.tenant() {
            out.extend(p.tenants.get(tenant).cloned());
            if !p.namespaces.is_empty() {
                let ns = tenant.split('/').next().unwrap_or(tenant);
                out.extend(
                    p.namespaces
                        .get(ns)
                        .filter(|b| Scope::covers_tenant_of_namespace(b.scope.subject(), tenant))
                        .cloned(),
                );
            }
        }
        if let Caller::Key(k) = caller {
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
    ) -> Result<Reserved, super::counters::CounterError> {
        match (backend, &self.shared) {
            (Backend::Shared, Some(s)) => s.reserve(lines, ask).await,
            _ => Ok(self.local.reserve(lines, ask)),
        }
    }

    fn redis_ok(self: &Arc<Self>) {
        if self.redis.ok() {
            // The fallback counters are stale from now on; a later outage seeds anew.
            self.local.clear();
            let me = self.clone();
            tokio::spawn(async move { me.sync_spend().await });
        }
    }

    /// Notes a settlement Redis has not counted (see `unsynced`). At most [`UNSYNCED_MAX`]
    /// are kept: past that, the oldest are dropped (the database still has them; a counter
    /// seeded from it after the outage counts them).
    fn keep_unsynced(&self, lines: &[Line], id: &str, actual: Amount) {
        let keys: Vec<String> = lines
            .iter()
            .filter(|l| l.kind == Kind::Budget)
            .map(|l| l.key.clone())
            .collect();
        if keys.is_empty() || (actual.nano == 0 && actual.tokens == 0) {
            return;
        }
        let mut u = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
        if u.len() >= UNSYNCED_MAX {
            let drop = u.len() + 1 - UNSYNCED_MAX;
            u.drain(..drop);
            warn!("more budget settlements waiting for redis than are kept; the oldest are left to the database");
        }
        u.push(Unsynced {
            id: id.to_owned(),
            at_ms: self.clock.now_ms(),
            keys,
            a: actual.nano,
            b: actual.tokens,
        });
        self.has_unsynced
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Adds the settlements Redis missed to its counters; kept for the next try if that
    /// fails (a try that did run counts nothing twice: see `Shared::add_used`).
    async fn sync_spend(&self) {
        let Some(shared) = &self.shared else { return };
        let spend: Vec<Unsynced> = {
            let mut u = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
            self.has_unsynced
                .store(false, std::sync::atomic::Ordering::Relaxed);
            std::mem::take(&mut *u)
        };
        if spend.is_empty() {
            return;
        }
        if let Err(e) = shared.add_used(&spend, self.clock.now_ms()).await {
            self.redis.failed(&e);
            let mut u = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
            let later = std::mem::take(&mut *u);
            *u = spend;
            u.extend(later);
            self.has_unsynced
                .store(true, std::sync::atomic::Ordering::Relaxed);
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
        // Spend Redis missed goes in before anything is reserved against its counters.
        if self.has_unsynced.load(std::sync::atomic::Ordering::Relaxed) && !self.redis.is_down() {
            self.sync_spend().await;
        }
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

    pub(super) fn settle_now(
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
            if self.shared.is_some() {
                self.keep_unsynced(&lines, &id, actual);
            }
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            // One retry: a settlement lost to a Redis blip leaves the use uncounted in Redis
            // until the next period (the database still has it).
            for attempt in 0..2 {
                let now = me.clock.now_ms();
                match shared
                    .settle(&lines, &id, est_tokens, (actual.nano, actual.tokens), now)
                    .await
                {
                    Ok(()) => return,
                    Err(e) if attempt == 0 => {
                        me.redis.failed(&e);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        me.redis.failed(&e);
                        warn!(error = %e, "cannot settle a budget reservation in redis: its estimate is released when it expires, and its cost is added once redis answers");
                        me.keep_unsynced(&lines, &id, actual);
                    }
                }
            }
        });
    }

    /// Each covering budget's figures in its current window.
    pub async fn status(&self, budgets: &[Arc<Budget>]) -> Vec<BudgetStatus> {
        if self.has_unsynced.load(std::sync::atomic::Ordering::Relaxed) {
            self.sync_spend().await;
        }
        let now = self.clock.now_ms();
        let (lines, refs) = self.lines(budgets, now);
        let levels = match &self.shared {
            Some(s) => match s.levels(&lines).await {
                Ok(l) => {
                    if self.redis.ok() {
                        self.local.clear();
                    }
                    l
                }
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
