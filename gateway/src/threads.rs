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

/// How long a lateness counts: longer than a limiter's window (200 ms), so every window
/// that overlaps a late tick sees it.
const LAG_REMEMBERED: Duration = Duration::from_millis(500);

/// One serving thread's largest recent lateness, and when it was seen (ms since [`EPOCH`]).
#[derive(Default)]
struct Lateness {
    micros: AtomicU64,
    at_ms: AtomicU64,
}

/// The serving threads' lateness, one per thread (its length is their count).
static THREADS: OnceLock<Box<[Lateness]>> = OnceLock::new();

/// The reference instant of [`Lateness::at_ms`].
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ms() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn remembered(at_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(at_ms) <= LAG_REMEMBERED.as_millis() as u64
}

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Declares how many serving threads keep resources of their own (once, before providers
/// are built; later calls are ignored).
pub fn set_count(n: usize) {
    let _ = THREADS.set((0..n.max(1)).map(|_| Lateness::default()).collect());
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
/// thread short of CPU wakes late. The largest lateness of the last [`LAG_REMEMBERED`] is
/// kept, so a reader that comes by less often than the probe still sees it.
pub async fn watch_lag(i: usize) {
    let mut every = tokio::time::interval(LAG_PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = every.tick().await.into_std();
        let late = u64::try_from(Instant::now().saturating_duration_since(due).as_micros())
            .unwrap_or(u64::MAX);
        let Some(slot) = THREADS.get().and_then(|t| t.get(i)) else {
            continue;
        };
        let now = now_ms();
        let kept = remembered(slot.at_ms.load(Ordering::Relaxed), now)
            .then(|| slot.micros.load(Ordering::Relaxed));
        // Only this thread writes its slot.
        if kept.is_none_or(|k| late >= k) {
            slot.micros.store(late, Ordering::Relaxed);
            slot.at_ms.store(now, Ordering::Relaxed);
        }
    }
}

/// The largest lateness any serving thread saw in the last [`LAG_REMEMBERED`] (zero when
/// there are none).
pub fn lag() -> Duration {
    let now = now_ms();
    THREADS.get().map_or(Duration::ZERO, |t| {
        Duration::from_micros(
            t.iter()
                .filter(|l| remembered(l.at_ms.load(Ordering::Relaxed), now))
                .map(|l| l.micros.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A late tick is remembered for a while, then forgotten.
    #[test]
    fn lateness_is_kept_for_a_while() {
        let now = 10_000;
        assert!(remembered(now - 100, now));
        assert!(remembered(now - 500, now));
        assert!(!remembered(now - 501, now));
        assert!(remembered(now + 5, now), "a write racing the read counts");
    }
}
