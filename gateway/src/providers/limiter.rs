//! Adaptive concurrency per provider.
//!
//! A fixed cap either sheds healthy load (256 ten-second streams fill it) or lets a struggling
//! provider pile up requests. This limit follows the provider's own signals instead, in the
//! manner of the gradient limiters of adaptive-concurrency libraries. Every [`WINDOW`] it
//! looks at the answers that started in that time:
//!
//! - their mean time to first content (less the prompt allowance) is compared with the
//!   provider's no-load time — the lowest such window mean in the last [`BASELINE_BUCKET`]×2
//!   (a mean, because single answers vary widely with prompts and output). Within
//!   `max(2 × no-load, no-load + 500 ms)` the provider is healthy and, if at least half of the
//!   limit is in use, the limit grows: it doubles while starting (slow start, until the first
//!   sign of congestion, and again after [`RESTART_AFTER`] without one), else by √limit.
//!   Beyond it the limit moves toward `limit × healthy / mean + √limit` (the gradient, at most
//!   halving per window), which settles where latency stays near the healthy bound;
//! - a 429, 5xx, timeout or refused connection cuts the limit by [`BACKOFF`] at once (at most
//!   once per [`BACKOFF_SPACING`]).
//!
//! Requests over the limit wait in a bounded queue (at most [`QUEUE_PER_SLOT`] × the limit
//! or [`MIN_QUEUE`], and the provider's queue timeout); the limit, in-flight count and queue
//! are metrics.
//!
//! Latency is an inference, overload signals are the provider's own word, so they weigh
//! differently: a limit only latency has lowered paces requests (they queue) but does not
//! refuse one that has nowhere else to go after the short queue timeout — it keeps waiting for
//! a slot until its own deadline — unless the provider gave an overload signal in the last
//! [`HARD_MEMORY`]. Otherwise a gateway short of CPU, which makes every answer look slow,
//! would shed the healthy load it exists to carry; and a provider that really slows down with
//! load still never sees more than its limit.
//!
//! No maintained crate does this for async Rust with a queue timeout and an external latency
//! signal (tower's limit is fixed), so it is here: a semaphore whose permits track the limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limit a provider starts with.
pub const INITIAL: usize = 64;
/// The limit never drops below this.
pub const MIN: usize = 4;
/// Ceiling when the configuration sets none.
pub const DEFAULT_MAX: usize = 10_000;
/// Multiplicative decrease on an overload signal.
pub const BACKOFF: f64 = 0.8;
/// Overload signals closer together than this count once (one burst of 429s is one signal).
pub const BACKOFF_SPACING: Duration = Duration::from_millis(250);
/// The no-load time is the lowest seen in the current and the previous bucket of this length.
pub const BASELINE_BUCKET: Duration = Duration::from_secs(300);
/// Latency samples are judged together, once per window.
pub const WINDOW: Duration = Duration::from_millis(200);
/// Slow start again after this long without congestion.
pub const RESTART_AFTER: Duration = Duration::from_secs(30);
/// Waiting requests allowed per slot of the limit...
pub const QUEUE_PER_SLOT: usize = 4;
/// ...and at least this many (a provider slowed to a few slots still queues a burst; the
/// memory of waiting bodies is bounded separately).
pub const MIN_QUEUE: usize = 10_000;
/// For this long after an overload signal, a full limit refuses after the queue timeout.
pub const HARD_MEMORY: Duration = Duration::from_secs(30);
/// Latency up to this multiple of the no-load time is healthy...
const TOLERANCE: f64 = 2.0;
/// ...and so is any latency within this of it: LLM times to first token vary by hundreds of
/// milliseconds with prompts and with the gateway's own load; congestion costs seconds.
const SLACK: Duration = Duration::from_millis(500);
/// A scheduler this late means the gateway, not the provider, is the bottleneck.
const SELF_LAG: Duration = Duration::from_millis(10);
/// Weight of a window's verdict in the limit (the rest is the old limit).
const SMOOTHING: f64 = 0.3;

#[derive(Debug)]
struct State {
    limit: f64,
    /// Permits the semaphore holds in total (in use + free) minus those owed.
    applied: usize,
    /// Permits to retire as they come back (the limit fell below what is in use).
    owed: usize,
    baseline_now: Option<Duration>,
    baseline_prev: Option<Duration>,
    bucket_started: Instant,
    last_backoff: Option<Instant>,
    /// The last sign of congestion (slow start until the first, and long after the last).
    last_congestion: Option<Instant>,
    window_started: Instant,
    /// Answers in this window, and the sum of the times of those that measured one.
    window_answers: u32,
    window_timed: u32,
    window_sum: Duration,
    /// The most this process's own scheduler ran late during the window (see `tick`).
    window_lag: Duration,
}

/// The adaptive limit of one provider.
#[derive(Debug)]
pub struct Limiter {
    sem: Arc<Semaphore>,
    state: Mutex<State>,
    max: usize,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The queue is full.
    QueueFull,
    /// The queue timeout passed.
    Timeout,
}

/// A slot; returned (or retired, if the limit fell) when dropped.
#[derive(Debug)]
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    owner: Arc<Limiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.owner.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(p) = self.permit.take() else { return };
        let mut st = self.owner.lock();
        if st.owed > 0 {
            st.owed -= 1;
            p.forget();
        }
    }
}

impl Limiter {
    /// A limiter with `ceiling` as its largest limit (default [`DEFAULT_MAX`]).
    pub fn new(ceiling: Option<usize>) -> Arc<Self> {
        let max = ceiling.unwrap_or(DEFAULT_MAX).max(1);
        let start = INITIAL.min(max);
        Arc::new(Self {
            sem: Arc::new(Semaphore::new(start)),
            state: Mutex::new(State {
                limit: start as f64,
                applied: start,
                owed: 0,
                baseline_now: None,
                baseline_prev: None,
                bucket_started: Instant::now(),
                last_backoff: None,
                last_congestion: None,
                window_started: Instant::now(),
                window_answers: 0,
                window_timed: 0,
                window_sum: Duration::ZERO,
                window_lag: Duration::ZERO,
            }),
            max,
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().applied
    }

    /// Requests holding a slot.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests waiting for one.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// A slot, waiting at most `timeout`. A `last_resort` request (no other candidate can
    /// take it) that is still waiting then keeps waiting until `deadline` if only latency has
    /// lowered the limit (see the module docs).
    pub async fn acquire(
        self: &Arc<Self>,
        timeout: Duration,
        last_resort: Option<Duration>,
    ) -> Result<Permit, Busy> {
        let started = Instant::now();
        let permit = match self.sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let cap = (self.limit() * QUEUE_PER_SLOT).max(MIN_QUEUE);
                if self.queued.fetch_add(1, Ordering::Relaxed) >= cap {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    return Err(Busy::QueueFull);
                }
                let mut got = tokio::time::timeout(timeout, self.sem.clone().acquire_owned()).await;
                if let (Err(_), Some(deadline)) = (&got, last_resort) {
                    if self.only_latency_limits(Instant::now()) {
                        let left = deadline.saturating_sub(started.elapsed());
                        got = tokio::time::timeout(left, self.sem.clone().acquire_owned()).await;
                    }
                }
                self.queued.fetch_sub(1, Ordering::Relaxed);
                match got {
                    Ok(Ok(p)) => p,
                    _ => return Err(Busy::Timeout),
                }
            }
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            permit: Some(permit),
            owner: self.clone(),
        })
    }

    /// Whether the limit is latency's inference alone: below the configured ceiling (which
    /// is the operator's word), with no overload signal lately.
    fn only_latency_limits(&self, now: Instant) -> bool {
        let st = self.lock();
        st.applied < self.max
            && st
                .last_backoff
                .is_none_or(|t| now.saturating_duration_since(t) >= HARD_MEMORY)
    }

    /// An answer started after `took` (its time to first content, prompt allowance
    /// removed); `None` when only success is known.
    pub fn on_success(&self, took: Option<Duration>, now: Instant) {
        let mut st = self.lock();
        st.window_answers += 1;
        if let Some(t) = took {
            st.window_timed += 1;
            st.window_sum += t;
        }
        self.close_window(&mut st, now);
    }

    /// Judges the window if it is over, answers or not: long streams hold their slots
    /// without new answers, and waiting requests must still be able to raise the limit.
    /// `lag` is how late this tick ran: a gateway short of CPU makes every answer look slow,
    /// and that is not the provider's doing.
    pub fn tick(&self, now: Instant, lag: Duration) {
        let mut st = self.lock();
        st.window_lag = st.window_lag.max(lag);
        self.close_window(&mut st, now);
    }

    /// Keeps calling [`Limiter::tick`] every [`WINDOW`] while the limiter lives.
    pub fn start_ticker(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::downgrade(self);
        rt.spawn(async move {
            let mut every = tokio::time::interval(WINDOW);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let due = every.tick().await.into_std();
                let Some(l) = me.upgrade() else { return };
                let now = Instant::now();
                // This ticker may run where no request is served: the serving threads'
                // own lateness counts too.
                let lag = now
                    .saturating_duration_since(due)
                    .max(crate::threads::lag());
                l.tick(now, lag);
            }
        });
    }

    fn close_window(&self, st: &mut State, now: Instant) {
        if now.saturating_duration_since(st.window_started) < WINDOW {
            return;
        }
        let gradient = match st.window_timed {
            0 => 1.0,
            // The gateway itself was short of CPU: slow answers say nothing of the provider.
            _ if st.window_lag >= SELF_LAG => 1.0,
            n => {
                // Single answers vary widely (prompts, output); a window's mean does not.
                let mean = st.window_sum / n;
                let base = st.observe_baseline(mean, now);
                let healthy = base.mul_f64(TOLERANCE).max(base + SLACK);
                (healthy.as_secs_f64() / mean.as_secs_f64().max(1e-6)).clamp(0.5, 1.0)
            }
        };
        let answers = st.window_answers;
        st.window_started = now;
        st.window_answers = 0;
        st.window_timed = 0;
        st.window_sum = Duration::ZERO;
        st.window_lag = Duration::ZERO;
        let l = st.limit;
        let busy = self.in_flight() * 2 >= st.applied;
        let next = if gradient < 1.0 {
            st.last_congestion = Some(now);
            l * (1.0 - SMOOTHING) + (l * gradient + l.sqrt()) * SMOOTHING
        } else if !busy || (answers == 0 && self.queued() == 0) {
            // A limit that is not being used says nothing about the provider.
            return;
        } else if st
            .last_congestion
            .is_none_or(|c| now.saturating_duration_since(c) >= RESTART_AFTER)
        {
            l * 2.0
        } else {
            l + l.sqrt() * SMOOTHING
        };
        self.apply(st, next);
    }

    /// The provider said it is overloaded (429, 5xx) or did not answer in time.
    pub fn on_overload(&self, now: Instant) {
        let mut st = self.lock();
        st.last_congestion = Some(now);
        if st
            .last_backoff
            .is_some_and(|t| now.saturating_duration_since(t) < BACKOFF_SPACING)
        {
            return;
        }
        st.last_backoff = Some(now);
        let next = st.limit * BACKOFF;
        self.apply(&mut st, next);
    }

    /// Whether the limit is at its floor (then even a few requests are refused: a quota,
    /// not load).
    pub fn at_floor(&self) -> bool {
        self.lock().applied <= MIN.min(self.max)
    }

    fn apply(&self, st: &mut State, limit: f64) {
        st.limit = limit.clamp(MIN.min(self.max) as f64, self.max as f64);
        let want = st.limit.floor() as usize;
        if want > st.applied {
            let mut add = want - st.applied;
            // Cancel debts first: those permits are still out and will simply stay.
            let settle = add.min(st.owed);
            st.owed -= settle;
            add -= settle;
            self.sem.add_permits(add);
        } else if want < st.applied {
            let mut drop = st.applied - want;
            drop -= self.sem.forget_permits(drop);
            st.owed += drop;
        }
        st.applied = want;
    }
}

impl State {
    /// Feeds the no-load estimate and returns it.
    fn observe_baseline(&mut self, t: Duration, now: Instant) -> Duration {
        if now.saturating_duration_since(self.bucket_started) >= BASELINE_BUCKET {
            self.baseline_prev = self.baseline_now.take();
            self.bucket_started = now;
        }
        self.baseline_now = Some(self.baseline_now.map_or(t, |b| b.min(t)));
        match (self.baseline_now, self.baseline_prev) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            _ => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[tokio::test]
    async fn a_healthy_busy_provider_grows_its_limit_quickly() {
        let l = Limiter::new(None);
        let mut now = Instant::now();
        let mut held = Vec::new();
        let mut windows = 0;
        while held.len() < 2000 {
            // Admit what the limit allows; each new stream reports its first token...
            while let Ok(p) = l.acquire(ms(1), None).await {
                held.push(p);
                l.on_success(Some(ms(20)), now);
            }
            // ...some of them in the next window, which judges the last one.
            now += WINDOW;
            l.on_success(Some(ms(20)), now);
            windows += 1;
            assert!(
                windows < 10,
                "slow start doubles each window: {}",
                l.limit()
            );
        }
        assert_eq!(l.in_flight(), held.len());
    }

    #[tokio::test]
    async fn an_idle_limit_does_not_grow() {
        let l = Limiter::new(None);
        let mut now = Instant::now();
        for _ in 0..1000 {
            let _p = l.acquire(ms(1), None).await.unwrap();
            now += WINDOW;
            l.on_success(Some(ms(20)), now);
        }
        assert_eq!(l.limit(), INITIAL);
    }

    #[tokio::test]
    async fn slow_answers_and_overload_shrink_it_and_slots_retire_as_they_return() {
        let l = Limiter::new(Some(100));
        let mut now = Instant::now();
        let mut held = Vec::new();
        for _ in 0..INITIAL {
            held.push(l.acquire(ms(1), None).await.unwrap());
        }
        now += WINDOW;
        l.on_success(Some(ms(10)), now); // a window at no load: the baseline
        for _ in 0..30 {
            now += WINDOW;
            l.on_success(Some(ms(2000)), now);
        }
        let shrunk = l.limit();
        assert!(shrunk < INITIAL / 2, "{shrunk}");
        assert!(
            l.acquire(ms(1), None).await.is_err(),
            "over the limit: wait"
        );
        // Returning slots retires the debt before any new one is given.
        held.truncate(shrunk);
        assert!(l.acquire(ms(1), None).await.is_err());
        held.truncate(shrunk - 1);
        assert!(l.acquire(ms(1), None).await.is_ok());

        let l = Limiter::new(None);
        let before = l.limit();
        l.on_overload(now);
        l.on_overload(now + ms(10));
        assert_eq!(
            l.limit(),
            ((before as f64) * BACKOFF) as usize,
            "one burst, one cut"
        );
        for i in 0..50 {
            l.on_overload(now + BACKOFF_SPACING * (i + 2));
        }
        assert_eq!(l.limit(), MIN);
        assert!(l.at_floor());
    }

    #[tokio::test]
    async fn latency_that_grows_with_load_settles_the_limit() {
        // The provider's time to first token: 40 ms per request in flight.
        let l = Limiter::new(None);
        let mut now = Instant::now();
        let mut seen = Vec::new();
        now += WINDOW;
        l.on_success(Some(ms(1)), now); // a first window at no load
        for _ in 0..400 {
            let in_use = l.limit();
            let _held: Vec<_> = (0..in_use)
                .map(|_| l.sem.clone().try_acquire_owned())
                .collect();
            l.in_flight.store(in_use, Ordering::Relaxed);
            now += WINDOW;
            l.on_success(Some(ms(40 * in_use as u64)), now);
            l.in_flight.store(0, Ordering::Relaxed);
            seen.push(l.limit());
        }
        let tail = &seen[300..];
        let (lo, hi) = (*tail.iter().min().unwrap(), *tail.iter().max().unwrap());
        // Healthy up to 501 ms (no-load 1 ms + 500 ms slack): about 13 in flight.
        assert!(
            lo >= 8 && hi <= 30,
            "settled between {lo} and {hi}: {tail:?}"
        );
    }

    #[tokio::test]
    async fn a_last_resort_waits_past_the_queue_timeout_for_a_latency_limit_only() {
        let l = Limiter::new(None);
        let held: Vec<_> = (0..INITIAL)
            .map(|_| l.sem.clone().try_acquire_owned().unwrap())
            .collect();
        assert_eq!(l.acquire(ms(5), None).await.unwrap_err(), Busy::Timeout);
        // A slot freed after the queue timeout but before the request's deadline.
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(ms(5), Some(ms(2000))).await.map(|_| ()) })
        };
        tokio::time::sleep(ms(50)).await;
        let mut held = held;
        held.pop();
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // Never past its deadline, and after an overload signal only the queue timeout.
        held.push(l.sem.clone().try_acquire_owned().unwrap());
        assert_eq!(
            l.acquire(ms(5), Some(ms(30))).await.unwrap_err(),
            Busy::Timeout
        );
        l.on_overload(Instant::now());
        let t = Instant::now();
        assert_eq!(
            l.acquire(ms(5), Some(ms(2000))).await.unwrap_err(),
            Busy::Timeout
        );
        assert!(t.elapsed() < ms(1000));
    }

    #[tokio::test]
    async fn the_queue_is_bounded() {
        let l = Limiter::new(Some(1));
        let _held = l.acquire(ms(1), None).await.unwrap();
        let waiting: Vec<_> = (0..MIN_QUEUE)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(
                    async move { l.acquire(Duration::from_secs(5), None).await.map(|_| ()) },
                )
            })
            .collect();
        while l.queued() < MIN_QUEUE {
            tokio::task::yield_now().await;
        }
        assert_eq!(l.acquire(ms(100), None).await.unwrap_err(), Busy::QueueFull);
        for w in waiting {
            w.abort();
        }
    }
}
