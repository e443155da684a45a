//! Validated resilience settings: a breaker's thresholds and backoff.

use std::time::Duration;

/// Breaker thresholds and backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure ratio over the window that opens it...
    pub failure_ratio: f64,
    /// ...once the window holds at least this many requests.
    pub min_requests: u32,
    /// Length of the sliding window.
    pub window: Duration,
    /// First open period.
    pub base_backoff: Duration,
    /// Longest open period.
    pub max_backoff: Duration,
    /// Probes let through per second while half-open.
    pub half_open_probes: u32,
    /// Probe successes that close it.
    pub close_after: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(30),
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            half_open_probes: 1,
            close_after: 2,
        }
    }
}
