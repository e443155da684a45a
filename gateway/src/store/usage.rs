//! Usage records: one per request, inserted in batches; `ON CONFLICT (id) DO NOTHING` makes
//! replaying a spool idempotent.

use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Row};

use super::{Store, StoreError};

/// What one request used and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Gateway-generated, unique.
    pub id: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The request id (the client's, or generated).
    pub request_id: String,
    /// The virtual key, if any.
    pub key_id: Option<String>,
    /// Its tenant.
    pub tenant: Option<String>,
    /// `chat` or `embeddings`.
    pub endpoint: String,
    /// The virtual model asked for, if any.
    pub virtual_model: Option<String>,
    /// The provider that answered (or was last tried).
    pub provider: Option<String>,
    /// The upstream model.
    pub model: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Cost in USD, when the price is known.
    pub cost_usd: Option<f64>,
    /// The tokens (and so the cost) are a tokenizer estimate: the provider reported none.
    #[serde(default)]
    pub usage_estimated: bool,
    /// Total time, ms.
    pub latency_ms: i64,
    /// Time to first token, ms (streams).
    pub ttft_ms: Option<i64>,
    /// Cache outcome, once there is a cache.
    pub cache: Option<String>,
    /// HTTP status (499: the client went away).
    pub status: i32,
    /// Upstream attempts.
    pub attempts: i32,
}

macro_rules! push_record {
    ($b:expr, $r:expr) => {{
        let r = $r;
        $b.push_bind(r.id.clone())
            .push_bind(r.at_ms)
            .push_bind(r.request_id.clone())
            .push_bind(r.key_id.clone())
            .push_bind(r.tenant.clone())
            .push_bind(r.endpoint.clone())
            .push_bind(r.virtual_model.clone())
            .push_bind(r.provider.clone())
            .push_bind(r.model.clone())
            .push_bind(r.prompt_tokens)
            .push_bind(r.completion_tokens)
            .push_bind(r.cost_usd)
            .push_bind(r.usage_estimated)
            .push_bind(r.latency_ms)
            .push_bind(r.ttft_ms)
            .push_bind(r.cache.clone())
            .push_bind(r.status)
            .push_bind(r.attempts);
    }};
}

const INSERT: &str = "INSERT INTO usage_records (id, at_ms, request_id, key_id, tenant, endpoint, virtual_model, provider, model, prompt_tokens, completion_tokens, cost_usd, usage_estimated, latency_ms, ttft_ms, cache, status, attempts) ";
const CONFLICT: &str = " ON CONFLICT (id) DO NOTHING";

/// The largest statement, in records: 18 binds each stays under SQLite's 32,766 and
/// PostgreSQL's 65,535 bind parameters.
const MOST: usize = 256;

/// `records` cut into runs whose lengths are powers of two, largest first (13 = 8 + 4 + 1).
/// Every statement then has one of nine shapes, which stay prepared in each connection's
/// statement cache; a statement per batch length would be prepared afresh for nearly every
/// batch, since the ledger's batch length follows the traffic.
fn runs<T>(mut records: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if records.is_empty() {
            return None;
        }
        let n = records.len().min(MOST);
        let take = 1 << n.ilog2();
        let (run, rest) = records.split_at(take);
        records = rest;
        Some(run)
    })
}

/// Records per transaction: a spool replayed after a long outage may hold millions, and one
/// transaction for all of them would hold SQLite's write lock throughout and lose all progress
/// to any error; each part committed on its own keeps what is done (inserts skip stored ids).
const PER_TRANSACTION: usize = 16 * MOST;

impl Store {
    /// Inserts records, in transactions of up to [`PER_TRANSACTION`]; ones already stored
    /// (same id) are skipped.
    pub async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        macro_rules! insert {
            ($db:ty, $pool:expr) => {{
                let statement = |run: &[UsageRecord]| {
                    let mut q: QueryBuilder<$db> = QueryBuilder::new(INSERT);
                    q.push_values(run, |mut b, r| push_record!(b, r));
                    q.push(CONFLICT);
                    q
                };
                for part in records.chunks(PER_TRANSACTION) {
                    if part.len() <= MOST && part.len().is_power_of_two() {
                        // One statement: its own transaction, without BEGIN and COMMIT round trips.
                        statement(part).build().execute($pool).await?;
                        continue;
                    }
                    let mut tx = $pool.begin().await?;
                    for run in runs(part) {
                        statement(run).build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                }
            }};
        }
        match self {
            Store::Postgres(p) => insert!(sqlx::Postgres, p),
            Store::Sqlite(p) => insert!(sqlx::Sqlite, p),
        }
        Ok(())
    }

    /// Deletes up to `at_most` records older than `before_ms` (Unix ms), oldest first;
    /// returns how many. Bounded, so that each call is a short transaction: SQLite's one
    /// writer, and PostgreSQL's row locks, are held only briefly between inserts. On
    /// PostgreSQL, rows another replica is deleting are skipped, not waited for: replicas
    /// pruning at once share the work instead of queueing (or deadlocking) on each other.
    pub async fn prune_usage(&self, before_ms: i64, at_most: u32) -> Result<u64, StoreError> {
        Ok(match self {
            Store::Postgres(p) => sqlx::query(
                "DELETE FROM usage_records WHERE id IN \
                 (SELECT id FROM usage_records WHERE at_ms < $1 ORDER BY at_ms LIMIT $2 \
                 FOR UPDATE SKIP LOCKED)",
            )
            .bind(before_ms)
            .bind(i64::from(at_most))
            .execute(p)
            .await?
            .rows_affected(),
            Store::Sqlite(p) => sqlx::query(
                "DELETE FROM usage_records WHERE rowid IN \
                 (SELECT rowid FROM usage_records WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)",
            )
            .bind(before_ms)
            .bind(i64::from(at_most))
            .execute(p)
            .await?
            .rows_affected(),
        })
    }

    /// Every record, oldest first (for tests and exports).
    pub async fn usage_records(&self) -> Result<Vec<UsageRecord>, StoreError> {
        const SQL: &str = "SELECT id, at_ms, request_id, key_id, tenant, endpoint, virtual_model, provider, model, prompt_tokens, completion_tokens, cost_usd, usage_estimated, latency_ms, ttft_ms, cache, status, attempts FROM usage_records ORDER BY at_ms, id";
        macro_rules! read {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|r| {
                        Ok(UsageRecord {
                            id: r.try_get("id")?,
                            at_ms: r.try_get("at_ms")?,
                            request_id: r.try_get("request_id")?,
                            key_id: r.try_get("key_id")?,
                            tenant: r.try_get("tenant")?,
                            endpoint: r.try_get("endpoint")?,
                            virtual_model: r.try_get("virtual_model")?,
                            provider: r.try_get("provider")?,
                            model: r.try_get("model")?,
                            prompt_tokens: r.try_get("prompt_tokens")?,
                            completion_tokens: r.try_get("completion_tokens")?,
                            cost_usd: r.try_get("cost_usd")?,
                            usage_estimated: r.try_get("usage_estimated")?,
                            latency_ms: r.try_get("latency_ms")?,
                            ttft_ms: r.try_get("ttft_ms")?,
                            cache: r.try_get("cache")?,
                            status: r.try_get("status")?,
                            attempts: r.try_get("attempts")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            };
        }
        Ok(match self {
            Store::Postgres(p) => read!(sqlx::query(SQL).fetch_all(p).await?),
            Store::Sqlite(p) => read!(sqlx::query(SQL).fetch_all(p).await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_power_of_two_runs_largest_first_in_order() {
        let records: Vec<usize> = (0..1_100).collect();
        for n in 0..=records.len() {
            let lens: Vec<usize> = runs(&records[..n]).map(<[_]>::len).collect();
            // Full runs of MOST, then the binary digits of the remainder, largest first.
            let full = lens.iter().take_while(|l| **l == MOST).count();
            assert_eq!(full, n / MOST, "{n}: {lens:?}");
            let rest = &lens[full..];
            assert!(rest.iter().all(|l| l.is_power_of_two()), "{n}: {lens:?}");
            assert!(rest.windows(2).all(|w| w[0] > w[1]), "{n}: {lens:?}");
            assert_eq!(rest.iter().sum::<usize>(), n % MOST, "{n}: {lens:?}");
            assert_eq!(
                runs(&records[..n]).collect::<Vec<_>>().concat(),
                records[..n]
            );
        }
        assert_eq!(
            runs(&records[..13]).map(<[_]>::len).collect::<Vec<_>>(),
            [8, 4, 1]
        );
        assert_eq!(
            runs(&records[..600]).map(<[_]>::len).collect::<Vec<_>>(),
            [256, 256, 64, 16, 8]
        );
    }
}
