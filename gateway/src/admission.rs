//! Admission, before a request's body is read: a global concurrency slot, a slot of the
//! caller's tenant, and room for its body in the buffered-bytes budget. So one tenant cannot
//! take every slot, and many large bodies cannot exhaust memory before any limit applies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, HeaderMap};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Kind};
use crate::telemetry::metrics::Metrics;

/// Buffered body bytes are counted in units of this many bytes (a semaphore counts `u32`s).
const UNIT: usize = 1024;
/// A body is held in about this many forms while its request is prepared (the bytes, the
/// JSON tree, the typed view, the request sent upstream): the budget counts them all.
pub const FORMS: usize = 4;

/// A tenant's requests in progress.
#[derive(Debug, Default)]
struct Tenants {
    in_progress: HashMap<String, usize>,
}

/// The admission limits of one gateway.
#[derive(Debug)]
pub struct Admission {
    global: Arc<Semaphore>,
    tenants: Arc<Mutex<Tenants>>,
    per_tenant: usize,
    body_units: Arc<Semaphore>,
    max_body_bytes: usize,
    queue_timeout: Duration,
}

/// What an admitted request holds: its slots (until its response is done) and its body's
/// room (until it has been sent upstream).
#[derive(Debug)]
pub struct Admitted {
    /// The global and tenant slots, for the life of the response (streams included).
    pub slots: Slots,
    /// The body's share of the buffered-bytes budget.
    pub body: OwnedSemaphorePermit,
}

/// A request's concurrency slots.
#[derive(Debug)]
pub struct Slots {
    _global: OwnedSemaphorePermit,
    tenant: Option<(String, Arc<Mutex<Tenants>>)>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        let Some((t, tenants)) = self.tenant.take() else {
            return;
        };
        let mut g = tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = g.in_progress.get_mut(&t) {
            *n -= 1;
            if *n == 0 {
                g.in_progress.remove(&t);
            }
        }
    }
}

impl Admission {
    /// Limits: `global` requests at once, `per_tenant` per tenant, `buffered_bytes` of bodies.
    pub fn new(
        global: usize,
        per_tenant: usize,
        buffered_bytes: usize,
        max_body_bytes: usize,
        queue_timeout: Duration,
    ) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global)),
            tenants: Arc::default(),
            per_tenant,
            body_units: Arc::new(Semaphore::new(units(
                buffered_bytes.max(max_body_bytes.saturating_mul(FORMS)),
            ))),
            max_body_bytes,
            queue_timeout,
        }
    }

    /// Admits a request of `tenant` (none for the keyless quick start) whose headers are
    /// `headers`: 429 over the tenant's limit, 503 when the gateway stays full past the queue
    /// timeout.
    pub async fn admit(
        &self,
        tenant: Option<&str>,
        headers: &HeaderMap,
        metrics: &Metrics,
    ) -> Result<Admitted, Error> {
        let started = Instant::now();
        let tenant_slot = match tenant {
            Some(t) => Some(self.tenant_slot(t)?),
            None => None,
        };
        let global = tokio::time::timeout(self.queue_timeout, self.global.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| busy("This gateway is at its concurrency limit; retry shortly."))?;
        metrics.queue_wait(
            &crate::telemetry::metrics::global(),
            started.elapsed().as_secs_f64(),
        );
        let slots = Slots {
            _global: global,
            tenant: tenant_slot,
        };
        // A declared length is trusted up to the limit (the reader enforces it); chunked
        // bodies are assumed as large as allowed.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(self.max_body_bytes)
            .min(self.max_body_bytes);
        let left = self.queue_timeout.saturating_sub(started.elapsed());
        let body = tokio::time::timeout(
            left,
            self.body_units
                .clone()
                .acquire_many_owned(units(declared.saturating_mul(FORMS)) as u32),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            busy("This gateway is buffering as many request bodies as it may; retry shortly.")
        })?;
        Ok(Admitted { slots, body })
    }

    fn tenant_slot(&self, t: &str) -> Result<(String, Arc<Mutex<Tenants>>), Error> {
        let mut g = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let n = g.in_progress.entry(t.to_owned()).or_default();
        if *n >= self.per_tenant {
            return Err(Error::new(
                Kind::RateLimited,
                format!(
                    "Tenant `{t}` has {} requests in progress, its limit on this gateway; retry when one finishes.",
                    self.per_tenant
                ),
            )
            .with_code("concurrency_limit_exceeded")
            .with_retry_after(Duration::from_secs(1)));
        }
        *n += 1;
        Ok((t.to_owned(), self.tenants.clone()))
    }
}

fn units(bytes: usize) -> usize {
    bytes
        .div_ceil(UNIT)
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize))
}

fn busy(msg: &str) -> Error {
    Error::busy("gateway_busy", msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(len: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, len.into());
        h
    }

    #[tokio::test]
    async fn a_tenant_cannot_take_every_slot() {
        let a = Admission::new(8, 2, 1 << 20, 1 << 20, Duration::from_millis(50));
        let m = Metrics::default();
        let x1 = a.admit(Some("t"), &headers(10), &m).await.unwrap();
        let _x2 = a.admit(Some("t"), &headers(10), &m).await.unwrap();
        let e = a.admit(Some("t"), &headers(10), &m).await.unwrap_err();
        assert_eq!(e.kind, Kind::RateLimited);
        assert!(
            a.admit(Some("u"), &headers(10), &m).await.is_ok(),
            "another tenant"
        );
        assert!(
            a.admit(None, &headers(10), &m).await.is_ok(),
            "the keyless quick start"
        );
        drop(x1);
        assert!(
            a.admit(Some("t"), &headers(10), &m).await.is_ok(),
            "a slot came back"
        );
    }

    #[tokio::test]
    async fn bodies_wait_for_room_in_the_buffer_budget() {
        let a = Admission::new(
            64,
            64,
            (3 * FORMS) << 20,
            1 << 20,
            Duration::from_millis(50),
        );
        let m = Metrics::default();
        let h = headers(1 << 20);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(a.admit(None, &h, &m).await.unwrap());
        }
        let e = a.admit(None, &headers(1 << 20), &m).await.unwrap_err();
        assert_eq!(e.kind, Kind::Busy);
        // Without a length, the largest allowed body is assumed.
        drop(held);
        assert!(a.admit(None, &HeaderMap::new(), &m).await.is_ok());
    }
}
