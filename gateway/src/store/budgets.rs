//! Stored budgets, the spend that seeds their counters, and the usage report.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};
use crate::config::budget::{Budget, OnLimit, Period, Scope};

/// The selected columns, as a literal for `concat!` (sqlx takes only literal SQL).
macro_rules! columns {
    () => {
        "scope, subject, period, limit_usd, limit_tokens, requests_per_minute, tokens_per_minute, on_limit"
    };
}

macro_rules! read_budget {
    ($r:expr) => {{
        let r = $r;
        let scope: String = r.try_get("scope")?;
        let subject: String = r.try_get("subject")?;
        let period: String = r.try_get("period")?;
        let on_limit: String = r.try_get("on_limit")?;
        let n = |c: &str| -> Result<Option<u64>, sqlx::Error> {
            Ok(r.try_get::<Option<i64>, _>(c)?.map(|v| v.max(0) as u64))
        };
        // Rows this version cannot read (written by a newer one) are skipped, not fatal.
        Scope::from_parts(&scope, &subject).map(|scope| {
            Ok::<_, sqlx::Error>(Budget {
                scope,
                period: Period::parse(&period).unwrap_or_default(),
                limit_usd: r.try_get("limit_usd")?,
                limit_tokens: n("limit_tokens")?,
                requests_per_minute: n("requests_per_minute")?,
                tokens_per_minute: n("tokens_per_minute")?,
                on_limit: if on_limit == "downgrade" {
                    OnLimit::Downgrade
                } else {
                    OnLimit::Reject
                },
                declared_by: None,
            })
        })
    }};
}

/// One row of the usage report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Tenant (empty for anonymous calls).
    pub tenant: String,
    /// Key id (empty for anonymous calls).
    pub key_id: String,
    /// Upstream model (empty when none was reached).
    pub model: String,
    /// Requests.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Spend, USD.
    pub cost_usd: f64,
    /// Requests whose usage was estimated.
    pub estimated: i64,
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| v.min(i64::MAX as u64) as i64)
}

impl Store {
    /// Every budget.
    pub async fn list_budgets(&self) -> Result<Vec<Budget>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM budgets ORDER BY scope, subject"
        );
        let mut out = Vec::new();
        match self {
            Store::Postgres(p) => {
                for r in sqlx::query(SQL).fetch_all(p).await? {
                    if let Some(b) = read_budget!(&r) {
                        out.push(b?);
                    }
                }
            }
            Store::Sqlite(p) => {
                for r in sqlx::query(SQL).fetch_all(p).await? {
                    if let Some(b) = read_budget!(&r) {
                        out.push(b?);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Creates or replaces the budget of `b.scope`.
    pub async fn put_budget(&self, b: &Budget) -> Result<(), StoreError> {
        let now = crate::clock::unix_now() as i64;
        macro_rules! bind {
            ($q:expr) => {
                $q.bind(b.scope.kind())
                    .bind(b.scope.subject())
                    .bind(b.period.name())
                    .bind(b.limit_usd)
                    .bind(opt_i64(b.limit_tokens))
                    .bind(opt_i64(b.requests_per_minute))
                    .bind(opt_i64(b.tokens_per_minute))
                    .bind(b.on_limit.name())
                    .bind(now)
            };
        }
        const UPSERT: &str = " ON CONFLICT (scope, subject) DO UPDATE SET period = excluded.period, limit_usd = excluded.limit_usd, limit_tokens = excluded.limit_tokens, requests_per_minute = excluded.requests_per_minute, tokens_per_minute = excluded.tokens_per_minute, on_limit = excluded.on_limit, updated_at = excluded.updated_at";
        match self {
            Store::Postgres(p) => {
                bind!(sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO budgets ({}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9){UPSERT}", columns!()))))
                    .execute(p)
                    .await?;
            }
            Store::Sqlite(p) => {
                bind!(sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO budgets ({}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?){UPSERT}", columns!()))))
                    .execute(p)
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes the budget of `scope`; false if there was none.
    pub async fn delete_budget(&self, scope: &Scope) -> Result<bool, StoreError> {
        let n = match self {
            Store::Postgres(p) => {
                sqlx::query("DELETE FROM budgets WHERE scope = $1 AND subject = $2")
                    .bind(scope.kind())
                    .bind(scope.subject())
                    .execute(p)
                    .await?
                    .rows_affected()
            }
            Store::Sqlite(p) => sqlx::query("DELETE FROM budgets WHERE scope = ? AND subject = ?")
                .bind(scope.kind())
                .bind(scope.subject())
                .execute(p)
                .await?
                .rows_affected(),
        };
        Ok(n == 1)
    }

    /// Recorded spend of `scope` in `[from_ms, to_ms)`: nano-USD and tokens.
    pub async fn spend(
        &self,
        scope: &Scope,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<(i64, i64), StoreError> {
        // Summed in SQL as floats then converted once: per-row rounding would drift.
        macro_rules! sum {
            ($where:literal) => {
                concat!(
                    "SELECT COALESCE(SUM(cost_usd), 0.0) AS usd, CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS tokens FROM usage_records WHERE ",
                    $where
                )
            };
        }
        // The time window binds as ?1/?2 ($1/$2), the tenant or key as ?3 ($3).
        let subject = match scope {
            Scope::Global => None,
            Scope::Tenant(s) | Scope::Key(s) | Scope::Namespace(s) => Some(s.as_str()),
        };
        macro_rules! run {
            ($pool:expr, $sql:expr) => {{
                let mut q = sqlx::query($sql).bind(from_ms).bind(to_ms);
                if let Some(s) = subject {
                    q = q.bind(s);
                }
                let r = q.fetch_one($pool).await?;
                (r.try_get("usd")?, r.try_get("tokens")?)
            }};
        }
        let (usd, tokens): (f64, i64) = match (self, scope) {
            (Store::Postgres(p), Scope::Global) => run!(p, sum!("at_ms >= $1 AND at_ms < $2")),
            (Store::Postgres(p), Scope::Tenant(_)) => {
                run!(p, sum!("tenant = $3 AND at_ms >= $1 AND at_ms < $2"))
            }
            (Store::Postgres(p), Scope::Key(_)) => {
                run!(p, sum!("key_id = $3 AND at_ms >= $1 AND at_ms < $2"))
            }
            (Store::Sqlite(p), Scope::Global) => run!(p, sum!("at_ms >= ?1 AND at_ms < ?2")),
            (Store::Sqlite(p), Scope::Tenant(_)) => {
                run!(p, sum!("tenant = ?3 AND at_ms >= ?1 AND at_ms < ?2"))
            }
            (Store::Sqlite(p), Scope::Key(_)) => {
                run!(p, sum!("key_id = ?3 AND at_ms >= ?1 AND at_ms < ?2"))
            }
            // A namespace's tenants: the namespace itself and `namespace/...`.
            (Store::Postgres(p), Scope::Namespace(_)) => run!(
                p,
                sum!("(tenant = $3 OR left(tenant, length($3) + 1) = $3 || '/') AND at_ms >= $1 AND at_ms < $2")
            ),
            (Store::Sqlite(p), Scope::Namespace(_)) => run!(
                p,
                sum!("(tenant = ?3 OR substr(tenant, 1, length(?3) + 1) = ?3 || '/') AND at_ms >= ?1 AND at_ms < ?2")
            ),
        };
        Ok((crate::config::budget::to_nano(usd), tokens))
    }

    /// Spend per UTC day, tenant, key and model in `[from_ms, to_ms)`, optionally of one
    /// tenant or key.
    pub async fn usage_report(
        &self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<&str>,
        key_id: Option<&str>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        macro_rules! report {
            ($day:literal, $p:literal) => {
                concat!(
                    "SELECT ",
                    $day,
                    " AS day, COALESCE(tenant, '') AS tenant, COALESCE(key_id, '') AS key_id, COALESCE(model, '') AS model, COUNT(*) AS requests, CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, COALESCE(SUM(cost_usd), 0.0) AS cost_usd, CAST(SUM(CASE WHEN usage_estimated THEN 1 ELSE 0 END) AS BIGINT) AS estimated FROM usage_records WHERE at_ms >= ",
                    $p, "1 AND at_ms < ", $p, "2 AND (CAST(", $p, "3 AS TEXT) IS NULL OR tenant = ", $p, "3) AND (CAST(", $p, "4 AS TEXT) IS NULL OR key_id = ", $p, "4) GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
                )
            };
        }
        macro_rules! rows {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|r| {
                        Ok(UsageRow {
                            day: r.try_get("day")?,
                            tenant: r.try_get("tenant")?,
                            key_id: r.try_get("key_id")?,
                            model: r.try_get("model")?,
                            requests: r.try_get("requests")?,
                            prompt_tokens: r.try_get("prompt_tokens")?,
                            completion_tokens: r.try_get("completion_tokens")?,
                            cost_usd: r.try_get("cost_usd")?,
                            estimated: r.try_get("estimated")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            };
        }
        Ok(match self {
            Store::Postgres(p) => rows!(
                sqlx::query(report!(
                    "to_char(to_timestamp(at_ms / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
                    "$"
                ))
                .bind(from_ms)
                .bind(to_ms)
                .bind(tenant)
                .bind(key_id)
                .fetch_all(p)
                .await?
            ),
            Store::Sqlite(p) => rows!(
                sqlx::query(report!(
                    "strftime('%Y-%m-%d', at_ms / 1000, 'unixepoch')",
                    "?"
                ))
                .bind(from_ms)
                .bind(to_ms)
                .bind(tenant)
                .bind(key_id)
                .fetch_all(p)
                .await?
            ),
        })
    }
}
