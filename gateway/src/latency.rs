//! Live latency estimates per model: an EWMA of time to first token and of total time, seeded
//! by the catalog prior, with a slowdown that decays.
//!
//! Why the decay: a model that got slow stops being chosen, so it stops being measured, and
//! its bad estimate would stick forever. Each estimate also tracks a *healthy level* that
//! follows improvements quickly and slowdowns slowly; without new samples, the estimate
//! returns toward that level with time constant τ (`routing.latency_decay_secs`, 30 s by
//! default). A recovered provider then wins again and its next samples confirm it; one that is
//! still slow gets a single probe request per τ or so and drops out again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Weight of a new sample in the EWMA once warmed up.
const ALPHA: f64 = 0.3;
/// How fast the healthy level follows a faster sample, and a slower one.
const HEALTHY_DOWN: f64 = 0.5;
const HEALTHY_UP: f64 = 0.02;

#[derive(Debug, Clone, Copy)]
struct Ewma {
    value: f64,
    healthy: f64,
    samples: u32,
    last: Option<Instant>,
}

impl Ewma {
    fn new(prior: f64) -> Self {
        Self {
            value: prior,
            healthy: prior,
            samples: 0,
            last: None,
        }
    }

    fn observe(&mut self, x: f64, now: Instant, tau: Duration) {
        let current = self.read(now, tau);
        self.samples += 1;
        // The prior stands in until the first sample; then a running mean of the samples until
        // the EWMA weight takes over (bias-corrected EWMA).
        let a = (1.0 / self.samples as f64).max(ALPHA);
        self.value = current + a * (x - current);
        if self.samples == 1 {
            self.healthy = x;
        } else {
            let h = if x < self.healthy {
                HEALTHY_DOWN
            } else {
                HEALTHY_UP
            };
            self.healthy += h * (x - self.healthy);
        }
        self.last = Some(now);
    }

    fn read(&self, now: Instant, tau: Duration) -> f64 {
        let Some(last) = self.last else {
            return self.value;
        };
        if self.value <= self.healthy || tau.is_zero() {
            return self.value;
        }
        let w = (-(now.saturating_duration_since(last).as_secs_f64()) / tau.as_secs_f64()).exp();
        self.healthy + (self.value - self.healthy) * w
    }
}

/// Latency estimates of one model.
#[derive(Debug)]
pub struct LatencyStats {
    inner: Mutex<(Ewma, Ewma)>,
}

/// A point-in-time copy of the estimates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySnapshot {
    /// Time to first token, ms.
    pub ttft_ms: f64,
    /// Total time, ms.
    pub total_ms: f64,
    /// Samples seen.
    pub samples: u32,
}

/// Total-time prior as a multiple of the time-to-first-token prior.
pub const TOTAL_PRIOR_FACTOR: f64 = 3.0;

impl LatencyStats {
    /// Seeded with the time-to-first-token prior (total time prior: 3× that).
    pub fn new(ttft_prior_ms: f64) -> Self {
        Self {
            inner: Mutex::new((
                Ewma::new(ttft_prior_ms),
                Ewma::new(ttft_prior_ms * TOTAL_PRIOR_FACTOR),
            )),
        }
    }

    /// Records a finished request: total time, and time to first token for streams.
    pub fn observe(&self, ttft: Option<Duration>, total: Duration, now: Instant, tau: Duration) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = ttft {
            g.0.observe(t.as_secs_f64() * 1000.0, now, tau);
        }
        g.1.observe(total.as_secs_f64() * 1000.0, now, tau);
    }

    /// Current estimates.
    pub fn snapshot(&self, now: Instant, tau: Duration) -> LatencySnapshot {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        LatencySnapshot {
            ttft_ms: g.0.read(now, tau),
            total_ms: g.1.read(now, tau),
            samples: g.1.samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);
    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn prior_until_samples_then_measurements() {
        let s = LatencyStats::new(400.0);
        let t0 = Instant::now();
        assert_eq!(s.snapshot(t0, TAU).ttft_ms, 400.0);
        assert_eq!(s.snapshot(t0, TAU).total_ms, 1200.0);
        for _ in 0..10 {
            s.observe(Some(ms(50)), ms(100), t0, TAU);
        }
        let snap = s.snapshot(t0, TAU);
        assert!((snap.ttft_ms - 50.0).abs() < 5.0, "{snap:?}");
        assert!((snap.total_ms - 100.0).abs() < 15.0, "{snap:?}");
        assert_eq!(snap.samples, 10);
    }

    #[test]
    fn a_slowdown_shows_at_once_and_decays_back_to_the_healthy_level() {
        let s = LatencyStats::new(100.0);
        let t0 = Instant::now();
        for _ in 0..10 {
            s.observe(Some(ms(20)), ms(40), t0, TAU);
        }
        let healthy = s.snapshot(t0, TAU).ttft_ms;
        s.observe(Some(ms(2000)), ms(2000), t0, TAU);
        let slow = s.snapshot(t0, TAU).ttft_ms;
        assert!(
            slow > 10.0 * healthy,
            "one slow sample moves the estimate: {healthy} -> {slow}"
        );
        let later = |secs| s.snapshot(t0 + Duration::from_secs(secs), TAU).ttft_ms;
        assert!(
            later(10) < slow && later(10) > later(30),
            "decays monotonically"
        );
        assert!(
            later(100) < healthy * 3.0,
            "back near the healthy level: {} vs {healthy}",
            later(100)
        );
    }

    #[test]
    fn no_decay_below_the_healthy_level() {
        let s = LatencyStats::new(100.0);
        let t0 = Instant::now();
        s.observe(Some(ms(10)), ms(10), t0, TAU);
        let v = s.snapshot(t0, TAU).ttft_ms;
        assert_eq!(s.snapshot(t0 + Duration::from_secs(60), TAU).ttft_ms, v);
    }
}
