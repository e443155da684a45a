//! Results of `llm-gateway bench`, and the measured quality routing reads from them.

use serde::Serialize;
use sqlx::{QueryBuilder, Row};

use super::{Store, StoreError};

/// How one model did on one task in one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// The run (shared by every row of one `bench` invocation).
    pub run_id: String,
    /// When the run started, Unix milliseconds (the same for every row of the run).
    pub at_ms: i64,
    /// The provider's name.
    pub provider: String,
    /// The upstream model.
    pub model: String,
    /// The task's id.
    pub task: String,
    /// Knowledge, code, summarization, reasoning or instruction_following.
    pub category: String,
    /// The complexity tier the task stands for (`simple` … `reasoning`).
    pub tier: String,
    /// Grade in [0, 1].
    pub score: f64,
    /// Whole answer, ms.
    pub latency_ms: i64,
    /// Time to first content, ms.
    pub ttft_ms: Option<i64>,
    /// Prompt tokens (as reported, else estimated).
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// USD, when the price is known.
    pub cost_usd: Option<f64>,
    /// Why there is no answer to grade (the score is then 0 and routing ignores the row).
    pub error: Option<String>,
}

/// A model's mean score for one tier in its latest run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierScore {
    /// The provider's name.
    pub provider: String,
    /// The upstream model.
    pub model: String,
    /// The tier.
    pub tier: String,
    /// Mean score of the tier's tasks that got an answer.
    pub quality: f64,
}

macro_rules! push_result {
    ($b:expr, $r:expr) => {{
        let r = $r;
        $b.push_bind(r.run_id.clone())
            .push_bind(r.at_ms)
            .push_bind(r.provider.clone())
            .push_bind(r.model.clone())
            .push_bind(r.task.clone())
            .push_bind(r.category.clone())
            .push_bind(r.tier.clone())
            .push_bind(r.score)
            .push_bind(r.latency_ms)
            .push_bind(r.ttft_ms)
            .push_bind(r.prompt_tokens)
            .push_bind(r.completion_tokens)
            .push_bind(r.cost_usd)
            .push_bind(r.error.clone());
    }};
}

const INSERT: &str = "INSERT INTO bench_results (run_id, at_ms, provider, model, task, category, tier, score, latency_ms, ttft_ms, prompt_tokens, completion_tokens, cost_usd, error) ";

/// Per model and tier, its latest run that measured the tier: an older run says nothing once
/// the tier was measured again, and a run of a few tasks leaves the other tiers as they were.
/// Rows with an error measured nothing.
const MEASURED: &str = "SELECT b.provider, b.model, b.tier, AVG(b.score) AS quality FROM bench_results b \
    JOIN (SELECT provider, model, tier, MAX(at_ms) AS at_ms FROM bench_results WHERE error IS NULL \
    GROUP BY provider, model, tier) l \
    ON b.provider = l.provider AND b.model = l.model AND b.tier = l.tier AND b.at_ms = l.at_ms \
    WHERE b.error IS NULL GROUP BY b.provider, b.model, b.tier ORDER BY b.provider, b.model, b.tier";

const RESULTS: &str = "SELECT run_id, at_ms, provider, model, task, category, tier, score, latency_ms, ttft_ms, prompt_tokens, completion_tokens, cost_usd, error FROM bench_results WHERE run_id = ";

impl Store {
    /// Stores a run's results in one transaction (whole or not at all), in statements of
    /// 1,000 rows (bind-parameter limits: SQLite 32,766, PostgreSQL 65,535; 14 per row).
    pub async fn insert_bench_results(&self, rows: &[BenchResult]) -> Result<(), StoreError> {
        match self {
            Store::Postgres(p) => {
                let mut tx = p.begin().await?;
                for chunk in rows.chunks(1000) {
                    let mut q: QueryBuilder<sqlx::Postgres> = QueryBuilder::new(INSERT);
                    q.push_values(chunk, |mut b, r| push_result!(b, r));
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Store::Sqlite(p) => {
                let mut tx = p.begin().await?;
                for chunk in rows.chunks(1000) {
                    let mut q: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(INSERT);
                    q.push_values(chunk, |mut b, r| push_result!(b, r));
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The rows of run `run_id`, by provider, model and task.
    pub async fn bench_results(&self, run_id: &str) -> Result<Vec<BenchResult>, StoreError> {
        macro_rules! read {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|r| {
                        Ok(BenchResult {
                            run_id: r.try_get("run_id")?,
                            at_ms: r.try_get("at_ms")?,
                            provider: r.try_get("provider")?,
                            model: r.try_get("model")?,
                            task: r.try_get("task")?,
                            category: r.try_get("category")?,
                            tier: r.try_get("tier")?,
                            score: r.try_get("score")?,
                            latency_ms: r.try_get("latency_ms")?,
                            ttft_ms: r.try_get("ttft_ms")?,
                            prompt_tokens: r.try_get("prompt_tokens")?,
                            completion_tokens: r.try_get("completion_tokens")?,
                            cost_usd: r.try_get("cost_usd")?,
                            error: r.try_get("error")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            };
        }
        const ORDER: &str = " ORDER BY provider, model, task";
        Ok(match self {
            Store::Postgres(p) => {
                let mut q: QueryBuilder<sqlx::Postgres> = QueryBuilder::new(RESULTS);
                q.push_bind(run_id).push(ORDER);
                read!(q.build().fetch_all(p).await?)
            }
            Store::Sqlite(p) => {
                let mut q: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(RESULTS);
                q.push_bind(run_id).push(ORDER);
                read!(q.build().fetch_all(p).await?)
            }
        })
    }

    /// Every model's mean score per tier in its latest run.
    pub async fn measured_quality(&self) -> Result<Vec<TierScore>, StoreError> {
        macro_rules! read {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|r| {
                        Ok(TierScore {
                            provider: r.try_get("provider")?,
                            model: r.try_get("model")?,
                            tier: r.try_get("tier")?,
                            quality: r.try_get("quality")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            };
        }
        Ok(match self {
            Store::Postgres(p) => read!(sqlx::query(MEASURED).fetch_all(p).await?),
            Store::Sqlite(p) => read!(sqlx::query(MEASURED).fetch_all(p).await?),
        })
    }
}
