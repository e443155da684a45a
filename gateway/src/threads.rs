//! Which request-serving thread the caller runs on, so that what a thread uses per request
//! (an upstream client's pooled connections) stays on that thread, and how late the serving
//! threads run (the adaptive limiter must not blame a provider for the gateway's own
//! shortage of CPU).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often each serving thread measures its own lateness.
const LAG_PROBE_EVERY: Duration = Duration::from_millis(100);

/// The serving threads' count, and each one's latest lateness in microseconds.
static THREADS: OnceLock<Box<[AtomicU64]>> = OnceLock::new();

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Declares how many serving threads keep resources of their own (once, before providers
/// are built; later calls are ignored).
pub fn set_count(n: usize) {
    let _ = THREADS.set((0..n.max(1)).map(|_| AtomicU64::new(0)).collect());
}

/// How many per-thread resources to keep: one per serving thread and one for every other
/// thread (startup, background tasks), or a single one when requests share one runtime.
pub fn slots() -> usize {
    THREADS.get().map_or(1, |t| t.len() + 1)
}

/// The calling thread's slot among [`slots`]: its serving-thread index, else the last.
pub fn slot() -> usize {
    INDEX.with(Cell::get).unwrap_or(slots() - 1)
}

/// Marks the calling thread as serving thread `i`.
pub fn enter(i: usize) {
    INDEX.with(|c| c.set(Some(i)));
}

/// Measures, for as long as it runs, how late serving thread `i` wakes up for a timer: a
/// thread short of CPU wakes late.
pub async fn watch_lag(i: usize) {
    let mut every = tokio::time::interval(LAG_PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = every.tick().await.into_std();
        let late = Instant::now().saturating_duration_since(due);
        if let Some(slot) = THREADS.get().and_then(|t| t.get(i)) {
            slot.store(
                u64::try_from(late.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }
}

/// The largest latest lateness of the serving threads (zero when there are none).
pub fn lag() -> Duration {
    THREADS.get().map_or(Duration::ZERO, |t| {
        Duration::from_micros(
            t.iter()
                .map(|l| l.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
        )
    })
}
