//! Sharing cache entries between replicas through Redis.
//!
//! Every stored entry is written to Redis (`{prefix}cache:e:{exact key}`, JSON, expiring
//! with the entry) and announced on the channel `{prefix}cache:new`. Every replica listens
//! and adds announced entries to its own in-process index, so a new entry is found by every
//! replica within the announcement's delivery time (milliseconds on a LAN). At start, and
//! after a lost subscription is re-established, a replica loads every entry Redis holds. The
//! nearest-neighbour search itself always runs in process.
//!
//! Redis holds at most `cache.redis_max_bytes` of entries for all replicas together: one
//! script writes an entry only if it fits, counting each entry's bytes until it expires
//! (expiries are relative, judged by the gateways' clocks, never Redis's). An entry that
//! does not fit stays in the replica that made it. Entries above `cache.max_entry_bytes` are
//! never cached at all.
//!
//! Redis unreachable: entries are still stored and served in process (they stay correct
//! until their TTL), nothing is shared until Redis answers again; a log line and
//! `llm_gateway_cache_redis_errors_total` say so.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
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
    conn: crate::kv::Conn,
    prefix: String,
    max_bytes: usize,
    health: crate::kv::Health,
}

// Writes an entry if the byte budget allows; expired entries' bytes are released first.
// KEYS: entry, index (zset: entry → expiry), sizes (hash: entry → bytes), total (counter).
// ARGV: json, ttl ms, now ms, budget, channel, announced key. Returns 1 if written.
const PUT: &str = r"
local ttl, now, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local size = string.len(ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, k in ipairs(old) do
  local s = redis.call('HGET', KEYS[3], k)
  if s then
    redis.call('DECRBY', KEYS[4], s)
    redis.call('HDEL', KEYS[3], k)
  end
end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
local prev = tonumber(redis.call('HGET', KEYS[3], KEYS[1]) or '0')
local total = tonumber(redis.call('GET', KEYS[4]) or '0') - prev
if total + size > budget then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
redis.call('INCRBY', KEYS[4], size - prev)
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
";

static PUT_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(PUT));

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
    /// Connects to Redis at `url`; the replicas keep at most `max_bytes` of entries there.
    pub async fn connect(url: &str, prefix: &str, max_bytes: usize) -> redis::RedisResult<Self> {
        let conn = crate::kv::connect(url).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            max_bytes,
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
            Err(e) => {
                self.conn.on_error(e);
                self.health.failed(e)
            }
        }
    }

    /// Writes an entry and announces it (in the background), if Redis's byte budget allows.
    pub fn put(&self, key: &Key, stored: Stored) {
        let me = self.clone();
        let key = hex(key);
        tokio::spawn(async move {
            let now = crate::clock::unix_ms();
            let ttl = (stored.expires_at_ms - now).max(1);
            let Ok(json) = serde_json::to_string(&stored) else {
                return;
            };
            let mut conn = match me.conn.get().await {
                Ok(c) => c,
                Err(e) => return me.note::<i64>(&Err(e)),
            };
            let r: redis::RedisResult<i64> = PUT_SCRIPT
                .key(me.entry_key(&key))
                .key(format!("{}cache:index", me.prefix))
                .key(format!("{}cache:sizes", me.prefix))
                .key(format!("{}cache:bytes", me.prefix))
                .arg(json)
                .arg(ttl)
                .arg(now)
                .arg(me.max_bytes)
                .arg(me.channel())
                .arg(&key)
                .invoke_async(&mut conn)
                .await;
            if matches!(r, Ok(0)) {
                tracing::debug!("redis cache budget full: entry kept in this replica only");
            }
            me.note(&r);
        });
    }

    /// Bytes of entries Redis holds for all replicas (as the budget counts them).
    pub async fn bytes(&self) -> redis::RedisResult<i64> {
        let mut conn = self.conn.get().await?;
        let v: Option<i64> = redis::cmd("GET")
            .arg(format!("{}cache:bytes", self.prefix))
            .query_async(&mut conn)
            .await
            .inspect_err(|e| self.conn.on_error(e))?;
        Ok(v.unwrap_or(0))
    }

    async fn get(&self, key: &str) -> redis::RedisResult<Option<Stored>> {
        let mut conn = self.conn.get().await?;
        let v: Option<String> = redis::cmd("GET")
            .arg(self.entry_key(key))
            .query_async(&mut conn)
            .await
            .inspect_err(|e| self.conn.on_error(e))?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Loads every entry Redis holds that `cache` lacks; returns how many. An entry that
    /// cannot be read is skipped (the load goes on) and makes the result an error, so that
    /// the caller tries again.
    pub async fn load_all(&self, cache: &Cache) -> redis::RedisResult<usize> {
        let mut conn = self.conn.get().await?;
        let pattern = self.entry_key("*");
        let mut cursor: u64 = 0;
        let mut n = 0;
        let mut unread = None;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .inspect_err(|e| self.conn.on_error(e))?;
            for k in keys {
                let hexkey = k.rsplit(':').next().unwrap_or_default().to_owned();
                let Some(key) = unhex(&hexkey) else { continue };
                if cache.contains(&key) {
                    continue;
                }
                match self.get(&hexkey).await {
                    Ok(Some(s)) => {
                        cache.insert_stored(key, s);
                        n += 1;
                    }
                    Ok(None) => {}
                    Err(e) => unread = Some(e),
                }
            }
            if next == 0 {
                return unread.map_or(Ok(n), Err);
            }
            cursor = next;
        }
    }

    /// Listens for announced entries until the process ends, re-subscribing (and reloading
    /// everything) after a lost connection. A load that fails is tried again (1 s, doubling
    /// to 30 s) while announced entries keep arriving.
    pub fn spawn_listener(&self, cache: Arc<Cache>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                match me.conn.client().get_async_pubsub().await {
                    Ok(mut ps) => {
                        if ps.subscribe(me.channel()).await.is_ok() {
                            let mut stream = ps.into_on_message();
                            // Entries announced while unsubscribed are read from Redis; until
                            // that has worked, when to try again.
                            let mut load_at = Some(tokio::time::Instant::now());
                            let mut backoff = Duration::from_secs(1);
                            loop {
                                if let Some(at) =
                                    load_at.filter(|at| *at <= tokio::time::Instant::now())
                                {
                                    let loaded = me.load_all(&cache).await;
                                    me.note(&loaded);
                                    match loaded {
                                        Ok(n) => {
                                            if first || n > 0 {
                                                tracing::info!(
                                                    entries = n,
                                                    "cache entries loaded from redis"
                                                );
                                            }
                                            first = false;
                                            load_at = None;
                                        }
                                        Err(_) => {
                                            load_at =
                                                Some(at.max(tokio::time::Instant::now()) + backoff);
                                            backoff = (backoff * 2).min(Duration::from_secs(30));
                                        }
                                    }
                                }
                                let msg = match load_at {
                                    None => stream.next().await,
                                    Some(at) => {
                                        match tokio::time::timeout_at(at, stream.next()).await {
                                            Ok(m) => m,
                                            Err(_) => continue,
                                        }
                                    }
                                };
                                let Some(msg) = msg else { break };
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
