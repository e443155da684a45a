//! Usage-record retention: with `--ledger-retention-days N`, records older than N days are
//! deleted at start and every minute after, in small chunks, so that the ledger (the embedded
//! SQLite file above all) stops growing without bound. Every minute rather than every hour:
//! at 5,000 requests/s an hour's expired records are 18 million, a burst of deleting, where
//! a minute's are a steady trickle; a run that finds nothing is one index lookup. Off by
//! default: deleting billing history is the operator's decision, not an upgrade's.

use std::time::Duration;

use tracing::{info, warn};

use crate::store::{Store, StoreError};

/// The shortest retention accepted: budgets seed a period's spend from the ledger, and the
/// longest period (a UTC month) spans up to 31 days.
pub const MIN_DAYS: u16 = 32;

/// Records deleted per statement.
pub const CHUNK: u32 = 5_000;

const EVERY: Duration = Duration::from_secs(60);

/// The shortest pause between chunks. Each pause is at least three times as long as the
/// chunk took, so deleting holds SQLite's one write lock (and the ledger's lower-priority
/// thread) at most a quarter of the time and the ledger's inserts and the key and budget
/// writes get it in between: a chunk of old random ids dirties a page per record and can
/// take a while.
const PAUSE: Duration = Duration::from_millis(20);

const DAY_MS: i64 = 86_400_000;

/// How long usage records are kept: a number of days, at least [`MIN_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    days: u16,
}

impl Retention {
    /// `0` keeps every record (`None`); otherwise at least [`MIN_DAYS`] days.
    pub fn from_days(days: u16) -> Result<Option<Retention>, String> {
        match days {
            0 => Ok(None),
            d if d < MIN_DAYS => Err(format!(
                "{d} days is too short: use 0 (keep every record) or at least {MIN_DAYS} days, \
                 since budgets seed a month's spend from the usage ledger"
            )),
            d => Ok(Some(Retention { days: d })),
        }
    }

    /// The oldest time (Unix ms) a record may have at `now_ms` and still be kept.
    pub fn cutoff_ms(self, now_ms: i64) -> i64 {
        now_ms - i64::from(self.days) * DAY_MS
    }
}

/// Deletes records older than `before_ms`, oldest first, `chunk` (at least 1) at a time,
/// pausing between chunks; returns how many were deleted.
pub async fn prune(store: &Store, before_ms: i64, chunk: u32) -> Result<u64, StoreError> {
    let chunk = chunk.max(1);
    let mut total = 0;
    loop {
        let started = std::time::Instant::now();
        let n = store.prune_usage(before_ms, chunk).await?;
        total += n;
        if n < u64::from(chunk) {
            return Ok(total);
        }
        tokio::time::sleep((started.elapsed() * 3).max(PAUSE)).await;
    }
}

/// Prunes now and every minute after, for as long as the runtime runs. A failure (the
/// database down) is logged and tried again a minute later; records are only ever deleted by
/// age.
pub fn spawn(store: Store, keep: Retention) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let before = keep.cutoff_ms(crate::clock::unix_ms());
            match prune(&store, before, CHUNK).await {
                Ok(0) => {}
                Ok(n) => info!(
                    records = n,
                    days = keep.days,
                    "usage ledger: deleted records past the retention period"
                ),
                Err(e) => warn!(error = %e, "usage ledger: could not delete old records"),
            }
            tokio::time::sleep(EVERY).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_keeps_everything_and_short_periods_are_refused() {
        assert_eq!(Retention::from_days(0), Ok(None));
        let e = Retention::from_days(31).unwrap_err();
        assert!(e.contains("at least 32"), "{e}");
        let r = Retention::from_days(32).unwrap().unwrap();
        assert_eq!(r.cutoff_ms(100 * DAY_MS), 68 * DAY_MS);
    }
}
