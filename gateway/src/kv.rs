//! Connections to Redis, shared by the budget counters and the cache: one place for the
//! timeouts that keep a slow or absent Redis from stalling requests.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};

/// A client (for subscriptions) and a reconnecting connection to `url`; fails if Redis does
/// not answer within 2 s. Each command then waits at most 500 ms.
pub async fn connect(url: &str) -> RedisResult<(Client, ConnectionManager)> {
    let client = Client::open(url)?;
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    let conn = ConnectionManager::new_with_config(client.clone(), cfg).await?;
    Ok((client, conn))
}

/// Whether Redis answers, as seen by one user of it: failures counted in a metric, each
/// transition logged once (not once per failed request).
#[derive(Debug, Clone)]
pub struct Health {
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    errors: prometheus_client::metrics::counter::Counter,
    /// What happens while Redis is down, for the log line.
    meanwhile: &'static str,
    /// What resumes when it is back.
    resumed: &'static str,
}

impl Health {
    /// A tracker whose log lines say `meanwhile` (on failure) and `resumed` (on recovery).
    pub fn new(meanwhile: &'static str, resumed: &'static str) -> Self {
        Self {
            down: Default::default(),
            errors: Default::default(),
            meanwhile,
            resumed,
        }
    }

    /// Counts failures in `c` (a metric).
    pub fn count_errors_in(&mut self, c: prometheus_client::metrics::counter::Counter) {
        self.errors = c;
    }

    /// Notes a success; true if Redis was down until now.
    pub fn ok(&self) -> bool {
        let was_down = self.down.swap(false, std::sync::atomic::Ordering::Relaxed);
        if was_down {
            tracing::info!("redis is back: {}", self.resumed);
        }
        was_down
    }

    /// Notes a failure.
    pub fn failed(&self, e: &dyn std::fmt::Display) {
        self.errors.inc();
        if !self.down.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %e, "redis unreachable: {}", self.meanwhile);
        }
    }
}
