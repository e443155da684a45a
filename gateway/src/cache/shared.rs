//! Sharing cache entries between replicas through Redis.
//!
//! Every stored entry is written to Redis (`{prefix}cache:e:{exact key}`, JSON, expiring
//! with the entry) and announced on the channel `{prefix}cache:new`. Every replica listens
//! and adds announced entries to its own in-process index, so a new entry is found by every
//! replica within the announcement's delivery time (milliseconds on a LAN). At start, and
//! after a lost subscription is re-established, a replica loads every entry Redis holds. The
//! nearest-neighbour search itself always runs in process.
//!
//! Redis unreachable: entries are still stored and served in process (they stay correct
//! until their TTL), nothing is shared until Redis answers again; a log line and
//! `llm_gateway_cache_redis_errors_total` say so.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::{Answer, Cache, Key};

/// An entry as stored in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    /// Hex of the scope key.
    pub scope: String,
    /// The last user message (its guard signature is recomputed from it).
    pub text: Option<String>,
    /// Its embedding.
    pub vector: Option<Vec<f32>>,
    /// The answer.
    pub answer: Answer,
    /// Unix ms.
    pub expires_at_ms: i64,
}

/// The Redis side of the cache.
#[derive(Clone)]
pub struct Shared {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    health: crate::kv::Health,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cache::Shared(redis)")
    }
}

/// Hex of a key.
pub fn hex(k: &Key) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key from hex.
pub fn unhex(s: &str) -> Option<Key> {
    if s.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

impl Shared {
    /// Connects to Redis at `url`.
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<Self> {
        let (client, conn) = crate::kv::connect(url).await?;
        Ok(Self {
            client,
            conn,
            prefix: prefix.to_owned(),
            health: crate::kv::Health::new(
                "cache entries stay in this replica until it is back",
                "cache entries are shared again",
            ),
        })
    }

    /// Counts Redis failures in `c` (a metric).
    pub fn count_errors_in(&mut self, c: prometheus_client::metrics::counter::Counter) {
        self.health.count_errors_in(c);
    }

    fn channel(&self) -> String {
        format!("{}cache:new", self.prefix)
    }

    fn entry_key(&self, k: &str) -> String {
        format!("{}cache:e:{k}", self.prefix)
    }

    fn note<T>(&self, r: &redis::RedisResult<T>) {
        match r {
            Ok(_) => {
                self.health.ok();
            }
            Err(e) => self.health.failed(e),
        }
    }

    /// Writes an entry and announces it (in the background).
    pub fn put(&self, key: &Key, stored: Stored) {
        let me = self.clone();
        let key = hex(key);
        tokio::spawn(async move {
            let ttl = (stored.expires_at_ms - crate::openai::unix_ms()).max(1);
            let Ok(json) = serde_json::to_string(&stored) else {
                return;
            };
            let mut conn = me.conn.clone();
            let r: redis::RedisResult<()> = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(me.entry_key(&key))
                .arg(json)
                .arg("PX")
                .arg(ttl)
                .ignore()
                .cmd("PUBLISH")
                .arg(me.channel())
                .arg(&key)
                .ignore()
                .query_async(&mut conn)
                .await;
            me.note(&r);
        });
    }

    async fn get(&self, key: &str) -> redis::RedisResult<Option<Stored>> {
        let mut conn = self.conn.clone();
        let v: Option<String> = redis::cmd("GET")
            .arg(self.entry_key(key))
            .query_async(&mut conn)
            .await?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Loads every entry Redis holds into `cache`; returns how many.
    pub async fn load_all(&self, cache: &Cache) -> redis::RedisResult<usize> {
        let mut conn = self.conn.clone();
        let pattern = self.entry_key("*");
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            for k in keys {
                let hexkey = k.rsplit(':').next().unwrap_or_default().to_owned();
                if let (Some(key), Some(s)) = (unhex(&hexkey), self.get(&hexkey).await?) {
                    cache.insert_stored(key, s);
                    n += 1;
                }
            }
            if next == 0 {
                return Ok(n);
            }
            cursor = next;
        }
    }

    /// Listens for announced entries until the process ends, re-subscribing (and reloading
    /// everything) after a lost connection.
    pub fn spawn_listener(&self, cache: Arc<Cache>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                match me.client.get_async_pubsub().await {
                    Ok(mut ps) => {
                        if ps.subscribe(me.channel()).await.is_ok() {
                            // Entries announced while unsubscribed are read from Redis.
                            let loaded = me.load_all(&cache).await;
                            me.note(&loaded);
                            if let Ok(n) = loaded {
                                if first || n > 0 {
                                    tracing::info!(entries = n, "cache entries loaded from redis");
                                }
                            }
                            first = false;
                            let mut stream = ps.into_on_message();
                            while let Some(msg) = stream.next().await {
                                let Ok(key) = msg.get_payload::<String>() else {
                                    continue;
                                };
                                let Some(k) = unhex(&key) else { continue };
                                if cache.contains(&k) {
                                    continue;
                                }
                                match me.get(&key).await {
                                    Ok(Some(s)) => cache.insert_stored(k, s),
                                    Ok(None) => {}
                                    Err(e) => me.health.failed(&e),
                                }
                            }
                        }
                    }
                    Err(e) => me.health.failed(&e),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}
