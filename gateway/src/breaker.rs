//! Circuit breakers, one per provider and one per model.
//!
//! closed → open when failures pass a threshold (N consecutive failures, or a failure ratio
//! over a sliding window once it holds enough requests) → half-open when the backoff ends,
//! letting at most `half_open_probes` requests per second through → closed after enough
//! probe successes, or open again with a longer backoff. Probes are bounded by time rather
//! than counted in flight, so a probe whose client went away cannot wedge the breaker. Backoff doubles with each consecutive opening, with ±20%
//! jitter, up to a cap; a `Retry-After` from the provider is the open time instead, and a
//! rate limit's `Retry-After` ends closed, not half-open (the provider said when it resets).
//!
//! Every method takes `now`, so the state machine is tested with a controlled clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::config::resilience::BreakerConfig;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Traffic flows.
    Closed,
    /// Traffic is refused until the backoff ends.
    Open,
    /// A few probes test whether the upstream recovered.
    HalfOpen,
}

impl State {
    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

/// Whether a request may go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go.
    Allowed,
    /// Half-open: go as a probe (report its outcome).
    Probe,
    /// Open (or probes exhausted) until this time.
    Rejected {
        /// When the next attempt is allowed.
        until: Instant,
    },
}

/// What a finished request tells the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered properly.
    Success,
    /// The upstream failed (connect error, timeout, 5xx, 429, malformed answer); with the
    /// provider's `Retry-After`, if any.
    Failure {
        /// Minimum open time asked by the provider.
        retry_after: Option<Duration>,
    },
    /// The upstream refused for a rate limit and said when it resets: open for that long,
    /// then closed again, with no probing (the provider announced the end; probes at one
    /// per second would refuse the traffic it is ready to take).
    RateLimited {
        /// When the limit resets, from now.
        retry_after: Duration,
    },
}

#[derive(Debug)]
struct Inner {
    state: State,
    open_until: Instant,
    consecutive: u32,
    window: VecDeque<(Instant, bool)>,
    failures_in_window: u32,
    openings: u32,
    probe_window: Instant,
    probes_in_window: u32,
    probe_successes: u32,
    /// The current opening ends closed rather than half-open (see [`Outcome::RateLimited`]).
    closes_when_over: bool,
}

/// The period over which `half_open_probes` applies.
const PROBE_PERIOD: Duration = Duration::from_secs(1);

/// A transition, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// From.
    pub from: State,
    /// To.
    pub to: State,
}

/// One breaker.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

/// A breaker's state for the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Status {
    /// Current state.
    pub state: State,
    /// Seconds until traffic is tried again (open only).
    pub retry_in_secs: Option<f64>,
    /// Consecutive failures so far.
    pub consecutive_failures: u32,
    /// Failure ratio over the window.
    pub window_failure_ratio: f64,
    /// Requests in the window.
    pub window_requests: usize,
}

impl Breaker {
    /// A closed breaker.
    /// Its thresholds.
    pub fn config(&self) -> BreakerConfig {
        self.cfg
    }

    /// A closed breaker with thresholds `cfg`.
    pub fn new(cfg: BreakerConfig, now: Instant) -> Self {
        Self {
            cfg,
            inner: Mutex::new(Inner {
                state: State::Closed,
                open_until: now,
                consecutive: 0,
                window: VecDeque::new(),
                failures_in_window: 0,
                openings: 0,
                probe_window: now,
                probes_in_window: 0,
                probe_successes: 0,
                closes_when_over: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request may go now. An open breaker whose backoff ended turns half-open.
    pub fn admit(&self, now: Instant) -> (Admission, Option<Transition>) {
        let mut g = self.lock();
        match g.state {
            State::Closed => (Admission::Allowed, None),
            State::Open if now < g.open_until => (
                Admission::Rejected {
                    until: g.open_until,
                },
                None,
            ),
            State::Open if g.closes_when_over => {
                g.state = State::Closed;
                g.consecutive = 0;
                // A rate limit's opening says nothing of failures: the next failure's backoff
                // starts from the base again.
                g.openings = 0;
                g.window.clear();
                g.failures_in_window = 0;
                (
                    Admission::Allowed,
                    Some(Transition {
                        from: State::Open,
                        to: State::Closed,
                    }),
                )
            }
            State::Open => {
                g.state = State::HalfOpen;
                g.probe_window = now;
                g.probes_in_window = 1;
                g.probe_successes = 0;
                (
                    Admission::Probe,
                    Some(Transition {
                        from: State::Open,
                        to: State::HalfOpen,
                    }),
                )
            }
            State::HalfOpen => {
                if now >= g.probe_window + PROBE_PERIOD {
                    g.probe_window = now;
                    g.probes_in_window = 0;
                }
                if g.probes_in_window < self.cfg.half_open_probes {
                    g.probes_in_window += 1;
                    (Admission::Probe, None)
                } else {
                    (
                        Admission::Rejected {
                            until: g.probe_window + PROBE_PERIOD,
                        },
                        None,
                    )
                }
            }
        }
    }

    /// Whether a request could go now, without taking a probe slot (for routing filters).
    pub fn would_admit(&self, now: Instant) -> Result<(), Instant> {
        let g = self.lock();
        match g.state {
            State::Closed => Ok(()),
            State::Open if now < g.open_until => Err(g.open_until),
            State::Open => Ok(()),
            State::HalfOpen
                if now >= g.probe_window + PROBE_PERIOD
                    || g.probes_in_window < self.cfg.half_open_probes =>
            {
                Ok(())
            }
            State::HalfOpen => Err(g.probe_window + PROBE_PERIOD),
        }
    }

    /// Records an outcome; `jitter` in [0, 1) spreads backoffs of many gateways apart.
    pub fn record(&self, now: Instant, outcome: Outcome, jitter: f64) -> Option<Transition> {
        let mut g = self.lock();
        let failed = !matches!(outcome, Outcome::Success);
        // Sliding window.
        g.window.push_back((now, failed));
        if failed {
            g.failures_in_window += 1;
        }
        while let Some(&(t, f)) = g.window.front() {
            if now.saturating_duration_since(t) <= self.cfg.window && g.window.len() <= 10_000 {
                break;
            }
            g.window.pop_front();
            if f {
                g.failures_in_window -= 1;
            }
        }
        let (retry_after, announced) = match outcome {
            Outcome::Failure { retry_after } => (retry_after, false),
            // Past `max_backoff` the breaker opens for less than the provider asked: it
            // probes at the end rather than let all traffic into a limit still in force.
            Outcome::RateLimited { retry_after } => {
                (Some(retry_after), retry_after <= self.cfg.max_backoff)
            }
            Outcome::Success => (None, false),
        };
        match (g.state, failed) {
            (State::Closed, false) => {
                g.consecutive = 0;
                g.openings = 0;
                None
            }
            (State::Closed, true) => {
                g.consecutive += 1;
                let n = g.window.len() as u32;
                let ratio_trip = n >= self.cfg.min_requests
                    && g.failures_in_window as f64 / n as f64 >= self.cfg.failure_ratio;
                if g.consecutive >= self.cfg.consecutive_failures
                    || ratio_trip
                    || retry_after.is_some()
                {
                    let tr = self.open(&mut g, now, retry_after, jitter, State::Closed);
                    g.closes_when_over = announced;
                    Some(tr)
                } else {
                    None
                }
            }
            (State::HalfOpen, false) => {
                g.probe_successes += 1;
                if g.probe_successes >= self.cfg.close_after {
                    g.state = State::Closed;
                    g.consecutive = 0;
                    g.openings = 0;
                    g.window.clear();
                    g.failures_in_window = 0;
                    Some(Transition {
                        from: State::HalfOpen,
                        to: State::Closed,
                    })
                } else {
                    None
                }
            }
            (State::HalfOpen, true) => {
                let tr = self.open(&mut g, now, retry_after, jitter, State::HalfOpen);
                g.closes_when_over = announced;
                Some(tr)
            }
            // A request admitted before the breaker opened: its outcome changes nothing.
            (State::Open, _) => None,
        }
    }

    fn open(
        &self,
        g: &mut Inner,
        now: Instant,
        retry_after: Option<Duration>,
        jitter: f64,
        from: State,
    ) -> Transition {
        let exp = self.cfg.base_backoff.as_secs_f64() * 2f64.powi(g.openings.min(30) as i32);
        let jittered = exp * (0.8 + 0.4 * jitter.clamp(0.0, 1.0));
        let backoff = Duration::from_secs_f64(jittered.min(self.cfg.max_backoff.as_secs_f64()));
        // The provider said when to come back: that, not a guess, is the open time.
        let backoff = retry_after.map_or(backoff, |r| r.min(self.cfg.max_backoff));
        g.openings += 1;
        g.state = State::Open;
        g.open_until = now + backoff;
        g.probes_in_window = 0;
        g.probe_successes = 0;
        Transition {
            from,
            to: State::Open,
        }
    }

    /// Current state for the admin API and metrics. An open breaker whose backoff has ended
    /// reads half-open: the next request is let through as a probe (the state itself moves
    /// only then, and a breaker no traffic reaches would otherwise read open forever).
    pub fn status(&self, now: Instant) -> Status {
        let g = self.lock();
        let n = g.window.len();
        let backing_off = g.state == State::Open && now < g.open_until;
        Status {
            state: match g.state {
                State::Open if !backing_off && g.closes_when_over => State::Closed,
                State::Open if !backing_off => State::HalfOpen,
                s => s,
            },
            retry_in_secs: backing_off
                .then(|| g.open_until.saturating_duration_since(now).as_secs_f64()),
            consecutive_failures: g.consecutive,
            window_failure_ratio: if n == 0 {
                0.0
            } else {
                g.failures_in_window as f64 / n as f64
            },
            window_requests: n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            base_backoff: Duration::from_secs(4),
            max_backoff: Duration::from_secs(60),
            half_open_probes: 1,
            close_after: 2,
        }
    }
    const FAIL: Outcome = Outcome::Failure { retry_after: None };
    const OK: Outcome = Outcome::Success;
    const MID: f64 = 0.5; // jitter factor 1.0

    #[test]
    fn opens_after_consecutive_failures_and_not_before() {
        let t = Instant::now();
        let b = Breaker::new(cfg(), t);
        assert_eq!(b.record(t, FAIL, MID), None);
        assert_eq!(b.record(t, FAIL, MID), None);
        assert_eq!(b.admit(t).0, Admission::Allowed);
        let tr = b.record(t, FAIL, MID).unwrap();
        assert_eq!((tr.from, tr.to), (State::Closed, State::Open));
        assert_eq!(
            b.admit(t).0,
            Admission::Rejected {
                until: t + Duration::from_secs(4)
            }
        );
        // A success in between resets the count.
        let b = Breaker::new(cfg(), t);
        b.record(t, FAIL, MID);
        b.record(t, FAIL, MID);
        b.record(t, OK, MID);
        b.record(t, FAIL, MID);
        assert_eq!(b.status(t).state, State::Closed);
    }

    #[test]
    fn opens_on_failure_ratio_once_the_window_is_full_enough() {
        let t = Instant::now();
        let b = Breaker::new(cfg(), t);
        // Alternate: never 3 in a row, but 50% failures.
        for i in 0..9 {
            b.record(t, if i % 2 == 0 { FAIL } else { OK }, MID);
        }
        assert_eq!(
            b.status(t).state,
            State::Closed,
            "9 requests: below min_requests"
        );
        b.record(t, OK, MID);
        let tr = b.record(t, FAIL, MID);
        assert_eq!(tr.map(|x| x.to), Some(State::Open), "6 of 11 failed");
        // Old failures leave the window.
        let b = Breaker::new(cfg(), t);
        for i in 0..10 {
            b.record(t, if i % 2 == 0 { FAIL } else { OK }, MID);
        }
        let later = t + Duration::from_secs(11);
        for _ in 0..9 {
            b.record(later, OK, MID);
        }
        assert_eq!(b.record(later, FAIL, MID), None, "the old failures expired");
    }

    #[test]
    fn half_open_probes_then_closes_or_reopens_with_longer_backoff() {
        let t = Instant::now();
        let b = Breaker::new(cfg(), t);
        for _ in 0..3 {
            b.record(t, FAIL, MID);
        }
        let t1 = t + Duration::from_secs(4);
        let (a, tr) = b.admit(t1);
        assert_eq!(a, Admission::Probe);
        assert_eq!(tr.unwrap().to, State::HalfOpen);
        assert_eq!(
            b.admit(t1).0,
            Admission::Rejected {
                until: t1 + PROBE_PERIOD
            },
            "one probe per second"
        );
        // Probe fails: open again, twice as long.
        assert_eq!(b.record(t1, FAIL, MID).unwrap().to, State::Open);
        assert_eq!(
            b.admit(t1 + Duration::from_secs(7)).0,
            Admission::Rejected {
                until: t1 + Duration::from_secs(8)
            }
        );
        let t2 = t1 + Duration::from_secs(8);
        assert_eq!(b.admit(t2).0, Admission::Probe);
        assert_eq!(b.record(t2, OK, MID), None, "one success is not enough");
        // A probe that never reports (its client went away) does not block the next period.
        let t2 = t2 + PROBE_PERIOD;
        assert_eq!(b.admit(t2).0, Admission::Probe);
        let t2 = t2 + PROBE_PERIOD;
        assert_eq!(b.admit(t2).0, Admission::Probe);
        assert_eq!(b.record(t2, OK, MID).unwrap().to, State::Closed);
        assert_eq!(b.admit(t2).0, Admission::Allowed);
        // After closing, the backoff starts over.
        for _ in 0..3 {
            b.record(t2, FAIL, MID);
        }
        assert_eq!(
            b.admit(t2).0,
            Admission::Rejected {
                until: t2 + Duration::from_secs(4)
            }
        );
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let t = Instant::now();
        let b = Breaker::new(cfg(), t);
        let mut now = t;
        for _ in 0..10 {
            for _ in 0..3 {
                b.record(now, FAIL, MID);
            }
            let until = match b.admit(now).0 {
                Admission::Rejected { until } => until,
                a => panic!("{a:?}"),
            };
            assert!(until - now <= Duration::from_secs(60));
            now = until;
            assert_eq!(b.admit(now).0, Admission::Probe);
        }
        let lo = Breaker::new(cfg(), t);
        let hi = Breaker::new(cfg(), t);
        for _ in 0..3 {
            lo.record(t, FAIL, 0.0);
            hi.record(t, FAIL, 0.999);
        }
        let until = |b: &Breaker| match b.admit(t).0 {
            Admission::Rejected { until } => until - t,
            a => panic!("{a:?}"),
        };
        assert_eq!(until(&lo), Duration::from_secs_f64(3.2));
        assert!(
            until(&hi) > Duration::from_secs_f64(4.79)
                && until(&hi) <= Duration::from_secs_f64(4.8)
        );
    }

    #[test]
    fn retry_after_opens_at_once_for_that_long() {
        let t = Instant::now();
        let b = Breaker::new(cfg(), t);
        let tr = b.record(
            t,
            Outcome::Failure {
                retry_after: Some(Duration::from_secs(20)),
            },
            MID,
        );
        assert_eq!(tr.unwrap().to, State::Open);
        assert_eq!(
            b.admit(t + Duration::from_secs(19)).0,
            Admission::Rejected {
                until: t + Duration::from_secs(20)
            }
        );
        assert_eq!(b.admit(t + Duration::from_secs(20)).0, Admission::Probe);
        assert!(
            b.status(t).retry_in_secs.is_none(),
            "half-open has no retry time"
        );
        // Shorter than the backoff: the provider's word still wins.
        let b = Breaker::new(cfg(), t);
        let short = Outcome::Failure {
            retry_after: Some(Duration::from_millis(500)),
        };
        b.record(t, short, MID);
        assert_eq!(
            b.admit(t + Duration::from_millis(499)).0,
            Admission::Rejected {
                until: t + Duration::from_millis(500)
            }
        );
        assert_eq!(b.admit(t + Duration::from_millis(500)).0, Admission::Probe);
    }

    #[test]
    fn a_rate_limit_with_its_reset_time_ends_closed_not_half_open() {
        let t = Instant::now();
        let b = Breaker::new(cfg(), t);
        let limited = Outcome::RateLimited {
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(b.record(t, limited, MID).unwrap().to, State::Open);
        let during = t + Duration::from_millis(999);
        assert!(matches!(b.admit(during).0, Admission::Rejected { .. }));
        let after = t + Duration::from_secs(1);
        assert_eq!(
            b.status(after).state,
            State::Closed,
            "reads closed once over"
        );
        let (a, tr) = b.admit(after);
        assert_eq!(
            (a, tr.map(|t| t.to)),
            (Admission::Allowed, Some(State::Closed))
        );
        // Every request goes, not one probe per second.
        for _ in 0..10 {
            assert_eq!(b.admit(after).0, Admission::Allowed);
        }
        // A reset later than max_backoff (a daily quota): opened for max_backoff, then
        // probed, not thrown open to a limit still in force.
        let b2 = Breaker::new(cfg(), t);
        let long = Outcome::RateLimited {
            retry_after: cfg().max_backoff + Duration::from_secs(3600),
        };
        b2.record(t, long, MID);
        assert_eq!(b2.admit(t + cfg().max_backoff).0, Admission::Probe);
        // Another limit opens it again at once; a plain failure's opening still probes.
        b.record(after, limited, MID);
        assert!(matches!(b.admit(after).0, Admission::Rejected { .. }));
        let b = Breaker::new(cfg(), t);
        let unavailable = Outcome::Failure {
            retry_after: Some(Duration::from_secs(1)),
        };
        b.record(t, unavailable, MID);
        assert_eq!(b.admit(t + Duration::from_secs(1)).0, Admission::Probe);
    }

    #[test]
    fn would_admit_does_not_take_probe_slots() {
        let t = Instant::now();
        let b = Breaker::new(cfg(), t);
        for _ in 0..3 {
            b.record(t, FAIL, MID);
        }
        assert_eq!(b.would_admit(t), Err(t + Duration::from_secs(4)));
        let t1 = t + Duration::from_secs(4);
        assert_eq!(b.would_admit(t1), Ok(()));
        assert_eq!(b.would_admit(t1), Ok(()));
        assert_eq!(b.admit(t1).0, Admission::Probe);
    }

    #[test]
    fn an_open_breaker_past_its_backoff_reads_half_open_before_any_request() {
        let t = Instant::now();
        let b = Breaker::new(cfg(), t);
        let asked = Outcome::Failure {
            retry_after: Some(Duration::from_secs(20)),
        };
        b.record(t, asked, MID);
        let during = b.status(t + Duration::from_secs(19));
        assert_eq!(during.state, State::Open);
        assert_eq!(during.retry_in_secs, Some(1.0));
        let after = b.status(t + Duration::from_secs(21));
        assert_eq!(after.state, State::HalfOpen, "no request has come yet");
        assert_eq!(after.retry_in_secs, None);
        assert_eq!(after.state.gauge(), 1);
    }
}
