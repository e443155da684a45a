//! Connections to Redis, shared by the budget counters and the cache: one place for the
//! timeouts that keep a slow or absent Redis from stalling requests.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};

/// How often a connection that could not be made is tried again (requests meanwhile use
/// their fallbacks at once instead of each waiting for a connect timeout).
const RETRY_CONNECT: Duration = Duration::from_secs(5);
/// How long a new connection is not blamed for errors (those of commands its predecessor
/// carried: each waits at most the 500 ms response timeout).
const REPLACED_GRACE: Duration = Duration::from_secs(1);

/// A reconnecting connection to Redis that may not exist yet: Redis down when the gateway
/// starts must not stop it (a pod restarting during an outage would crash-loop), so the
/// first connection is made when Redis first answers, tried at most every 5 s, in the
/// background on the runtime that started it (a request never waits for the connect, which
/// a Redis that drops packets would make it do for the whole connect timeout).
#[derive(Clone)]
pub struct Conn {
    client: Client,
    made: std::sync::Arc<arc_swap::ArcSwapOption<ConnectionManager>>,
    next_try: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
    /// When the current connection was made (see [`Conn::on_error`]).
    made_at: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
    /// Where later connects run and the connection's own task lives: the runtime of what
    /// all serving threads share, not the serving thread that happened to ask.
    home: tokio::runtime::Handle,
}

impl Conn {
    /// The client it connects with (for subscriptions, which need their own connection).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The connection; if it has not been made, an error at once (and a connect started in
    /// the background if a try is due).
    pub async fn get(&self) -> RedisResult<ConnectionManager> {
        if let Some(c) = self.made.load_full() {
            return Ok((*c).clone());
        }
        if self.try_due() {
            let me = self.clone();
            self.home.spawn(async move {
                if let Err(e) = me.make().await {
                    tracing::debug!(error = %e, "Redis still does not answer");
                }
            });
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "Redis has not answered yet; trying again shortly",
        )))
    }

    /// Notes a command's error: when it says the connection is dead or silent, the
    /// connection is dropped and a new one made in the background at the next use. The
    /// manager replaces a connection the peer closed, but not one that stopped answering
    /// (a node gone, packets dropped): every command would wait out its timeout on it
    /// until the kernel gave up, minutes later. Requests use their fallbacks meanwhile.
    pub fn on_error(&self, e: &redis::RedisError) {
        let dead = e.is_timeout()
            || e.is_connection_dropped()
            || e.is_io_error()
            || e.is_connection_refusal();
        // Commands sent on the connection just replaced time out over the next half second:
        // they do not condemn its successor.
        let young = self
            .made_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < REPLACED_GRACE;
        if dead && !young && self.made.swap(None).is_some() {
            *self.next_try.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
            tracing::debug!(error = %e, "redis connection dropped; a new one is made in the background");
        }
    }

    /// Whether a connect may be tried now (then the next is due in [`RETRY_CONNECT`]).
    fn try_due(&self) -> bool {
        let mut next = self.next_try.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if now < *next {
            return false;
        }
        *next = now + RETRY_CONNECT;
        true
    }

    async fn make(&self) -> RedisResult<ConnectionManager> {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let c = ConnectionManager::new_with_config(self.client.clone(), cfg).await?;
        *self.made_at.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        self.made.store(Some(std::sync::Arc::new(c.clone())));
        Ok(c)
    }
}

/// A reconnecting connection to `url`, tried once now. Only a bad URL is an error: if Redis
/// does not answer within 2 s, that is logged and the connection is made later (see
/// [`Conn`]). Each command then waits at most 500 ms.
pub async fn connect(url: &str) -> RedisResult<Conn> {
    let conn = Conn {
        client: Client::open(url)?,
        made: Default::default(),
        next_try: std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
        made_at: std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
        home: tokio::runtime::Handle::current(),
    };
    conn.try_due();
    if let Err(e) = conn.make().await {
        tracing::warn!(error = %e, "Redis does not answer at start; serving without it and connecting when it does");
    }
    Ok(conn)
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

    /// Whether the last use failed.
    pub fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes a failure.
    pub fn failed(&self, e: &dyn std::fmt::Display) {
        self.errors.inc();
        if !self.down.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %e, "redis unreachable: {}", self.meanwhile);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// A connection not made yet answers at once, even when a connect is due, and the
    /// connect made in the background is used once it succeeds.
    #[tokio::test]
    async fn a_request_never_waits_for_the_connect() {
        let url = std::env::var("LLM_GATEWAY_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        // As after a failed connect at start, with the next try due now.
        let conn = Conn {
            client: Client::open(url.as_str()).unwrap(),
            made: Default::default(),
            next_try: std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
            made_at: std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
            home: tokio::runtime::Handle::current(),
        };
        let first = conn.get().now_or_never();
        assert!(matches!(first, Some(Err(_))), "answered without waiting");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut c = loop {
            if let Ok(c) = conn.get().await {
                break c;
            }
            assert!(std::time::Instant::now() < deadline, "never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
        assert_eq!(pong, "PONG");
        // Only one connect was due: the next waits RETRY_CONNECT.
        assert!(!conn.try_due());
    }
}
