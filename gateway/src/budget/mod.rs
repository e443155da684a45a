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
mod engine;
mod figures;
mod reservation;

pub use engine::Budgets;
pub use figures::{Amount, BudgetStatus, LimitKind, Refusal, Remaining};
pub use reservation::Reservation;

use std::time::Duration;

pub use crate::config::budget::MAX_AMOUNT;

/// How often budget definitions are reloaded: the longest a change takes on every replica.
pub const REFRESH: Duration = Duration::from_secs(5);
/// Completion tokens reserved for a request without `max_tokens`.
pub const DEFAULT_COMPLETION_RESERVE: u64 = 1024;
/// Most completion tokens one choice reserves on a model whose maximum output and context
/// window are unknown (a model the catalog does not list).
pub const UNKNOWN_MODEL_OUTPUT_RESERVE: u64 = 32_768;
/// Most completion tokens one request reserves, all its choices together: no request can
/// hold a budget's whole remainder with an impossible `max_tokens` × `n`. (Its real use is
/// charged in full when it settles.)
pub const MAX_COMPLETION_RESERVE: u64 = 262_144;
/// An unsettled reservation returns to its budget after this long (a replica died
/// mid-request); settling later still counts the real use.
pub const RESERVATION_TTL_MS: i64 = 15 * 60 * 1000;
/// Budget counters outlive their period by a day, so late settlements still land.
const COUNTER_GRACE_MS: i64 = 24 * 3600 * 1000;
