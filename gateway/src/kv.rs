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
