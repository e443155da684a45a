//! Live budget counters: reserve before the call, settle after. Two backends with one
//! semantics: Redis (shared by every replica; each operation is one atomic Lua script) and
//! in-process (the embedded mode, and the fallback while Redis is unreachable).
//!
//! A budget counter holds settled use (`used`) and in-flight reservations (`reserved`), in
//! nano-dollars (`a`) and tokens (`b`). A request is admitted only if `used + reserved +
//! estimate` stays within every limit, so concurrent requests cannot all pass on the same
//! remaining amount. Reservations expire (a crashed replica's in-flight requests are
//! returned to the budget), and settling twice is harmless.
//!
//! A rate counter is a per-minute bucket: requests (`a`) and tokens (`b`), charged at
//! admission and corrected at settlement.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::Script;

/// What a counter measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A budget over a period: nano-dollars and tokens, with reservations.
    Budget,
    /// A per-minute rate: requests and tokens.
    Rate,
}

/// One counter a request is checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Counter name (includes the window, so a new period starts a new counter).
    pub key: String,
    /// Budget or rate.
    pub kind: Kind,
    /// Limit on `a` (nano-USD or requests).
    pub limit_a: Option<i64>,
    /// Limit on `b` (tokens).
    pub limit_b: Option<i64>,
    /// How long after the request's clock reading the counter may be forgotten, ms.
    /// Relative on purpose: Redis judges expiries against its own clock, which need not
    /// agree with this process's (skew, or an injected clock in tests).
    pub ttl_ms: i64,
}

/// A counter's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Level {
    /// Settled nano-USD (budgets) or requests (rates).
    pub used_a: i64,
    /// Reserved nano-USD (budgets).
    pub reserved_a: i64,
    /// Settled tokens.
    pub used_b: i64,
    /// Reserved tokens (budgets).
    pub reserved_b: i64,
}

/// A request's reservation: how much, until when.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Unique per request.
    pub id: String,
    /// Estimated nano-USD.
    pub a: i64,
    /// Estimated tokens.
    pub b: i64,
    /// The clock, Unix ms.
    pub now_ms: i64,
    /// When an unsettled reservation is returned to the budget, Unix ms.
    pub expires_at_ms: i64,
    /// For budget counters not yet known to the backend: their use so far (from the
    /// database), by line index.
    pub seeds: HashMap<usize, (i64, i64)>,
}

/// The outcome of a reservation attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Reserved {
    /// Admitted; each line's figures including this reservation.
    Admitted(Vec<Level>),
    /// Line `line` would exceed its limit on `a` (`on_a`) or `b`; its figures before.
    Refused {
        /// Index into the lines.
        line: usize,
        /// Which limit: `a` (USD or requests) if true, else `b` (tokens).
        on_a: bool,
        /// The line's figures.
        level: Level,
    },
    /// These budget lines are new to the backend: retry with their seeds.
    NeedSeed(Vec<usize>),
}

/// Why a counter operation failed.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct CounterError(#[from] redis::RedisError);

/// In-process counters.
#[derive(Debug, Default)]
pub struct Local {
    counters: Mutex<LocalMap>,
}

#[derive(Debug, Default)]
struct LocalMap {
    map: HashMap<String, LocalCounter>,
    swept_at_ms: i64,
}

#[derive(Debug, Default)]
struct LocalCounter {
    level: Level,
    seeded: bool,
    expires_at_ms: i64,
    /// Open reservations: id → (a, b).
    open: HashMap<String, (i64, i64)>,
}

fn refusal(l: &Line, lv: &Level, a: i64, b: i64) -> Option<bool> {
    match l.kind {
        Kind::Budget => {
            if l.limit_a
                .is_some_and(|lim| a > 0 && lv.used_a + lv.reserved_a + a > lim)
            {
                return Some(true);
            }
            if l.limit_b
                .is_some_and(|lim| b > 0 && lv.used_b + lv.reserved_b + b > lim)
            {
                return Some(false);
            }
        }
        Kind::Rate => {
            if l.limit_a.is_some_and(|lim| lv.used_a + 1 > lim) {
                return Some(true);
            }
            if l.limit_b.is_some_and(|lim| b > 0 && lv.used_b + b > lim) {
                return Some(false);
            }
        }
    }
    None
}

impl Local {
    /// Reserves `ask` on every line, or on none.
    pub fn reserve(&self, lines: &[Line], ask: &Ask) -> Reserved {
        let mut guard = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        // Expired counters (past minutes, past periods) go once a minute, not per request.
        if ask.now_ms - guard.swept_at_ms > 60_000 {
            guard.swept_at_ms = ask.now_ms;
            guard.map.retain(|_, c| c.expires_at_ms > ask.now_ms);
        }
        let map = &mut guard.map;
        let mut need = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let c = map.entry(l.key.clone()).or_default();
            c.expires_at_ms = ask.now_ms.saturating_add(l.ttl_ms);
            if l.kind == Kind::Budget && !c.seeded {
                match ask.seeds.get(&i) {
                    Some(&(a, b)) => {
                        c.level.used_a += a;
                        c.level.used_b += b;
                        c.seeded = true;
                    }
                    None => need.push(i),
                }
            }
        }
        if !need.is_empty() {
            return Reserved::NeedSeed(need);
        }
        for (i, l) in lines.iter().enumerate() {
            let lv = map[&l.key].level;
            if let Some(on_a) = refusal(l, &lv, ask.a, ask.b) {
                return Reserved::Refused {
                    line: i,
                    on_a,
                    level: lv,
                };
            }
        }
        let mut out = Vec::with_capacity(lines.len());
        for l in lines {
            let c = map.get_mut(&l.key).expect("created above");
            match l.kind {
                Kind::Budget => {
                    c.level.reserved_a += ask.a;
                    c.level.reserved_b += ask.b;
                    c.open.insert(ask.id.clone(), (ask.a, ask.b));
                }
                Kind::Rate => {
                    c.level.used_a += 1;
                    c.level.used_b += ask.b;
                }
            }
            out.push(c.level);
        }
        Reserved::Admitted(out)
    }

    /// Settles reservation `id`: its estimate leaves `reserved`, `actual` joins `used`.
    pub fn settle(&self, lines: &[Line], id: &str, estimate_b: i64, actual: (i64, i64)) {
        let mut guard = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let map = &mut guard.map;
        for l in lines {
            let Some(c) = map.get_mut(&l.key) else {
                continue;
            };
            match l.kind {
                Kind::Budget => {
                    if let Some((a, b)) = c.open.remove(id) {
                        c.level.reserved_a -= a;
                        c.level.reserved_b -= b;
                    }
                    if c.seeded {
                        c.level.used_a += actual.0;
                        c.level.used_b += actual.1;
                    }
                }
                Kind::Rate => c.level.used_b += actual.1 - estimate_b,
            }
        }
    }

    /// Forgets every counter.
    pub fn clear(&self) {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .clear();
    }

    /// Current figures; `None` for budget counters not seeded yet.
    pub fn levels(&self, lines: &[Line]) -> Vec<Option<Level>> {
        let guard = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let map = &guard.map;
        lines
            .iter()
            .map(|l| match map.get(&l.key) {
                Some(c) if c.seeded || l.kind == Kind::Rate => Some(c.level),
                None if l.kind == Kind::Rate => Some(Level::default()),
                _ => None,
            })
            .collect()
    }
}

/// One settlement Redis has not counted: its reservation id, when it was settled (Unix ms),
/// the budget counters it concerns and its amounts.
#[derive(Debug, Clone)]
pub struct Unsynced {
    /// The reservation id (a settlement counts once).
    pub id: String,
    /// When it was settled.
    pub at_ms: i64,
    /// The budget counters' keys.
    pub keys: Vec<String>,
    /// Nano-USD.
    pub a: i64,
    /// Tokens.
    pub b: i64,
}

/// Counters in Redis, shared by every replica.
#[derive(Clone)]
pub struct Shared {
    conn: crate::kv::Conn,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared(redis)")
    }
}

// Amounts are passed and stored as decimal strings and applied with HINCRBY, so Lua's
// doubles never format them (Lua 5.1 prints 1e15 as "1e+15", which HINCRBY rejects);
// comparisons in doubles are exact below 2^53 nano-dollars (9 million USD).
const RESERVE: &str = r"
local now, id, rexp, ea, eb = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local function neg(x) if x == '0' then return '0' elseif string.sub(x, 1, 1) == '-' then return string.sub(x, 2) else return '-' .. x end end
local nea, neb = tonumber(ea), tonumber(eb)
local n = #KEYS
local need = {}
local function arg(i, j) return ARGV[5 + (i - 1) * 6 + j] end
for i = 1, n do
  local k = KEYS[i]
  if arg(i, 1) == 'b' then
    if redis.call('HEXISTS', k, 's') == 0 then
      if arg(i, 5) ~= '' then
        redis.call('HSET', k, 's', '1', 'ua', arg(i, 5), 'ub', arg(i, 6), 'ra', '0', 'rb', '0', 'st', ARGV[1])
        redis.call('PEXPIRE', k, arg(i, 4))
      else
        need[#need + 1] = i - 1
      end
    end
    local old = redis.call('ZRANGEBYSCORE', k .. ':z', '-inf', now)
    for _, rid in ipairs(old) do
      local amt = redis.call('HGET', k .. ':m', rid)
      if amt then
        local a, b = string.match(amt, '^(%-?%d+):(%-?%d+)$')
        redis.call('HINCRBY', k, 'ra', neg(a))
        redis.call('HINCRBY', k, 'rb', neg(b))
        redis.call('HDEL', k .. ':m', rid)
      end
    end
    if #old > 0 then redis.call('ZREMRANGEBYSCORE', k .. ':z', '-inf', now) end
  end
end
if #need > 0 then
  local out = {2}
  for _, i in ipairs(need) do out[#out + 1] = i end
  return out
end
local levels = {}
for i = 1, n do
  local h = redis.call('HMGET', KEYS[i], 'ua', 'ra', 'ub', 'rb')
  local ua, ra, ub, rb = tonumber(h[1] or '0'), tonumber(h[2] or '0'), tonumber(h[3] or '0'), tonumber(h[4] or '0')
  local la, lb = arg(i, 2), arg(i, 3)
  local on = 0
  if arg(i, 1) == 'b' then
    if la ~= '' and nea > 0 and ua + ra + nea > tonumber(la) then on = 1
    elseif lb ~= '' and neb > 0 and ub + rb + neb > tonumber(lb) then on = 2 end
  else
    if la ~= '' and ua + 1 > tonumber(la) then on = 1
    elseif lb ~= '' and neb > 0 and ub + neb > tonumber(lb) then on = 2 end
  end
  if on > 0 then return {0, i - 1, on, ua, ra, ub, rb} end
  levels[i] = {ua, ra, ub, rb}
end
local out = {1}
for i = 1, n do
  local k, lv = KEYS[i], levels[i]
  if arg(i, 1) == 'b' then
    redis.call('HINCRBY', k, 'ra', ea)
    redis.call('HINCRBY', k, 'rb', eb)
    redis.call('HSET', k .. ':m', id, ea .. ':' .. eb)
    redis.call('ZADD', k .. ':z', rexp, id)
    redis.call('PEXPIRE', k .. ':m', arg(i, 4))
    redis.call('PEXPIRE', k .. ':z', arg(i, 4))
    lv[2], lv[4] = lv[2] + nea, lv[4] + neb
  else
    redis.call('HINCRBY', k, 'ua', '1')
    redis.call('HINCRBY', k, 'ub', eb)
    redis.call('PEXPIRE', k, arg(i, 4))
    lv[1], lv[3] = lv[1] + 1, lv[3] + neb
  end
  for _, v in ipairs(lv) do out[#out + 1] = v end
end
return out
";

// A settlement counts once however often it is sent (a retry after a timeout may repeat one
// Redis did run): ids settled in the last hour are kept in `k:d`.
const SETTLE: &str = r"
local id, aa, ab, db, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local function neg(x) if x == '0' then return '0' elseif string.sub(x, 1, 1) == '-' then return string.sub(x, 2) else return '-' .. x end end
for i = 1, #KEYS do
  local k = KEYS[i]
  if ARGV[5 + i] == 'b' then
    if redis.call('ZSCORE', k .. ':d', id) == false then
      local amt = redis.call('HGET', k .. ':m', id)
      if amt then
        local a, b = string.match(amt, '^(%-?%d+):(%-?%d+)$')
        redis.call('HINCRBY', k, 'ra', neg(a))
        redis.call('HINCRBY', k, 'rb', neg(b))
        redis.call('HDEL', k .. ':m', id)
        redis.call('ZREM', k .. ':z', id)
      end
      if redis.call('HEXISTS', k, 's') == 1 then
        redis.call('HINCRBY', k, 'ua', aa)
        redis.call('HINCRBY', k, 'ub', ab)
        redis.call('ZADD', k .. ':d', now, id)
        redis.call('ZREMRANGEBYSCORE', k .. ':d', '-inf', now - 3600000)
        local ttl = redis.call('PTTL', k)
        if ttl > 0 then redis.call('PEXPIRE', k .. ':d', ttl) end
      end
    end
  elseif redis.call('EXISTS', k) == 1 then
    redis.call('HINCRBY', k, 'ub', db)
  end
end
return 1
";

// Spend a replica settled while it could not reach Redis (on its own counters, or a
// settlement Redis did not confirm): per key, a count, then (id, settled at, a, b) each.
// Added to a counter Redis held before that spend: one seeded later (after a Redis restart,
// say) read it from the database already. An id counted before (its settlement did run)
// is not counted again.
const ADD_USED: &str = r"
local now, p = tonumber(ARGV[1]), 2
for i = 1, #KEYS do
  local k = KEYS[i]
  local n = tonumber(ARGV[p])
  p = p + 1
  local held = redis.call('HEXISTS', k, 's') == 1
  local st = tonumber(redis.call('HGET', k, 'st') or '0')
  for _ = 1, n do
    local id, at, a, b = ARGV[p], tonumber(ARGV[p + 1]), ARGV[p + 2], ARGV[p + 3]
    p = p + 4
    if held and st <= at and redis.call('ZSCORE', k .. ':d', id) == false then
      redis.call('HINCRBY', k, 'ua', a)
      redis.call('HINCRBY', k, 'ub', b)
      redis.call('ZADD', k .. ':d', now, id)
    end
  end
  if held then
    local ttl = redis.call('PTTL', k)
    if ttl > 0 then redis.call('PEXPIRE', k .. ':d', ttl) end
  end
end
return 1
";

static ADD_USED_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(ADD_USED));
static RESERVE_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(RESERVE));
static SETTLE_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(SETTLE));

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl Shared {
    /// Connects; fails if Redis does not answer within a few seconds.
    pub async fn connect(url: &str) -> Result<Self, CounterError> {
        let conn = crate::kv::connect(url).await?;
        Ok(Self { conn })
    }

    /// Reserves `ask` on every line, or on none, atomically across replicas.
    pub async fn reserve(&self, lines: &[Line], ask: &Ask) -> Result<Reserved, CounterError> {
        let mut inv = RESERVE_SCRIPT.prepare_invoke();
        inv.arg(ask.now_ms)
            .arg(&ask.id)
            .arg(ask.expires_at_ms)
            .arg(ask.a)
            .arg(ask.b);
        for (i, l) in lines.iter().enumerate() {
            let seed = ask.seeds.get(&i);
            inv.key(&l.key)
                .arg(if l.kind == Kind::Budget { "b" } else { "r" })
                .arg(opt(l.limit_a))
                .arg(opt(l.limit_b))
                .arg(l.ttl_ms.max(1))
                .arg(opt(seed.map(|s| s.0)))
                .arg(opt(seed.map(|s| s.1)));
        }
        let v: Vec<i64> = inv
            .invoke_async(&mut self.conn.get().await?)
            .await
            .inspect_err(|e| self.conn.on_error(e))?;
        let bad = || {
            CounterError(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected reply from the reserve script",
            )))
        };
        match v.first() {
            Some(1) if v.len() == 1 + 4 * lines.len() => Ok(Reserved::Admitted(
                v[1..]
                    .chunks(4)
                    .map(|c| Level {
                        used_a: c[0],
                        reserved_a: c[1],
                        used_b: c[2],
                        reserved_b: c[3],
                    })
                    .collect(),
            )),
            Some(0) if v.len() == 7 => Ok(Reserved::Refused {
                line: v[1] as usize,
                on_a: v[2] == 1,
                level: Level {
                    used_a: v[3],
                    reserved_a: v[4],
                    used_b: v[5],
                    reserved_b: v[6],
                },
            }),
            Some(2) => Ok(Reserved::NeedSeed(
                v[1..].iter().map(|&i| i as usize).collect(),
            )),
            _ => Err(bad()),
        }
    }

    /// Settles reservation `id` (see [`Local::settle`]).
    pub async fn settle(
        &self,
        lines: &[Line],
        id: &str,
        estimate_b: i64,
        actual: (i64, i64),
        now_ms: i64,
    ) -> Result<(), CounterError> {
        let mut inv = SETTLE_SCRIPT.prepare_invoke();
        inv.arg(id)
            .arg(actual.0)
            .arg(actual.1)
            .arg(actual.1 - estimate_b)
            .arg(now_ms);
        for l in lines {
            inv.key(&l.key)
                .arg(if l.kind == Kind::Budget { "b" } else { "r" });
        }
        let _: i64 = inv
            .invoke_async(&mut self.conn.get().await?)
            .await
            .inspect_err(|e| self.conn.on_error(e))?;
        Ok(())
    }

    /// Adds spend settled while Redis was out of reach to the counters it concerns (see the
    /// script: each settlement once, and only where the counter predates it).
    pub async fn add_used(&self, spend: &[Unsynced], now_ms: i64) -> Result<(), CounterError> {
        if spend.is_empty() {
            return Ok(());
        }
        let mut by_key: HashMap<&str, Vec<&Unsynced>> = HashMap::new();
        for u in spend {
            for k in &u.keys {
                by_key.entry(k).or_default().push(u);
            }
        }
        let mut inv = ADD_USED_SCRIPT.prepare_invoke();
        inv.arg(now_ms);
        for (key, list) in &by_key {
            inv.key(*key).arg(list.len());
            for u in list {
                inv.arg(&u.id).arg(u.at_ms).arg(u.a).arg(u.b);
            }
        }
        let _: i64 = inv
            .invoke_async(&mut self.conn.get().await?)
            .await
            .inspect_err(|e| self.conn.on_error(e))?;
        Ok(())
    }

    /// Current figures; `None` for budget counters Redis does not hold yet.
    pub async fn levels(&self, lines: &[Line]) -> Result<Vec<Option<Level>>, CounterError> {
        let mut pipe = redis::pipe();
        for l in lines {
            pipe.cmd("HMGET")
                .arg(&l.key)
                .arg("s")
                .arg("ua")
                .arg("ra")
                .arg("ub")
                .arg("rb");
        }
        let rows: Vec<Vec<Option<i64>>> = pipe
            .query_async(&mut self.conn.get().await?)
            .await
            .inspect_err(|e| self.conn.on_error(e))?;
        Ok(lines
            .iter()
            .zip(rows)
            .map(|(l, r)| {
                let get = |i: usize| r.get(i).copied().flatten().unwrap_or(0);
                let level = Level {
                    used_a: get(1),
                    reserved_a: get(2),
                    used_b: get(3),
                    reserved_b: get(4),
                };
                match l.kind {
                    Kind::Budget if r.first().copied().flatten().is_none() => None,
                    _ => Some(level),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(key: &str, usd: Option<i64>, tokens: Option<i64>) -> Line {
        Line {
            key: key.into(),
            kind: Kind::Budget,
            limit_a: usd,
            limit_b: tokens,
            ttl_ms: i64::MAX,
        }
    }

    fn ask(id: &str, a: i64, b: i64) -> Ask {
        Ask {
            id: id.into(),
            a,
            b,
            now_ms: 0,
            expires_at_ms: 1000,
            seeds: HashMap::new(),
        }
    }

    #[test]
    fn reservations_hold_the_budget_until_settled() {
        let c = Local::default();
        let lines = [budget("k", Some(100), None)];
        assert_eq!(
            c.reserve(&lines, &ask("1", 60, 0)),
            Reserved::NeedSeed(vec![0])
        );
        let mut first = ask("1", 60, 0);
        first.seeds.insert(0, (10, 0));
        assert!(matches!(c.reserve(&lines, &first), Reserved::Admitted(_)));
        // 10 used + 60 reserved + 60 asked > 100.
        assert!(matches!(
            c.reserve(&lines, &ask("2", 60, 0)),
            Reserved::Refused {
                line: 0,
                on_a: true,
                ..
            }
        ));
        // The first request cost only 20: 30 used, room for 60 more.
        c.settle(&lines, "1", 0, (20, 0));
        c.settle(&lines, "1", 0, (20, 0)); // a second settle changes nothing but use
        assert_eq!(c.levels(&lines)[0].unwrap().reserved_a, 0);
        assert!(matches!(
            c.reserve(&lines, &ask("3", 30, 0)),
            Reserved::Admitted(_)
        ));
    }

    #[test]
    fn a_free_request_passes_a_spent_usd_budget_but_not_a_token_cap() {
        let c = Local::default();
        let lines = [budget("k", Some(0), Some(100))];
        let mut a = ask("1", 0, 50);
        a.seeds.insert(0, (5, 0));
        assert!(matches!(c.reserve(&lines, &a), Reserved::Admitted(_)));
        assert!(matches!(
            c.reserve(&lines, &ask("2", 0, 60)),
            Reserved::Refused { on_a: false, .. }
        ));
    }

    #[test]
    fn rates_count_requests_and_correct_tokens() {
        let c = Local::default();
        let lines = [Line {
            key: "r".into(),
            kind: Kind::Rate,
            limit_a: Some(2),
            limit_b: Some(100),
            ttl_ms: i64::MAX,
        }];
        assert!(matches!(
            c.reserve(&lines, &ask("1", 0, 80)),
            Reserved::Admitted(_)
        ));
        c.settle(&lines, "1", 80, (0, 10));
        assert!(matches!(
            c.reserve(&lines, &ask("2", 0, 80)),
            Reserved::Admitted(_)
        ));
        assert!(matches!(
            c.reserve(&lines, &ask("3", 0, 1)),
            Reserved::Refused { on_a: true, .. }
        ));
    }
}
