//! Who is calling: virtual keys in `Authorization: Bearer <key>`.
//!
//! Authentication is required when a database is configured explicitly (`--database-url`)
//! or the gateway listens beyond loopback; then a missing, unknown or revoked key gets 401.
//! Otherwise (the embedded quick start on loopback) anonymous calls are allowed, and only
//! bearer tokens that look like virtual keys (`sk-lgw-…`) are checked — SDKs insist on
//! sending some key, and `api_key="x"` must keep working there.
//!
//! Lookups are cached for `KEY_CACHE_TTL`: a revoked key stops working on every replica
//! within that delay.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::store::keys::{hash_key, KeyRecord, KEY_PREFIX};
use crate::store::Store;

/// How long a key lookup is trusted (and so the longest a revocation takes to apply).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// The authenticated caller, in each request's extensions.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// No key (quick start on loopback).
    Anonymous,
    /// A valid virtual key.
    Key(KeyRecord),
}

impl Caller {
    /// The caller's tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Key(k) => Some(&k.tenant),
        }
    }
}

/// Key checking with a small cache.
#[derive(Debug)]
pub struct Auth {
    store: Option<Store>,
    required: bool,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Option<KeyRecord>, Instant)>>,
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", msg)
        .with_code("invalid_api_key")
}

impl Auth {
    /// No store, nothing required: every call is anonymous.
    pub fn open() -> Self {
        Self::new(None, false, KEY_CACHE_TTL)
    }

    /// Keys from `store`; `required` makes anonymous calls 401.
    pub fn new(store: Option<Store>, required: bool, ttl: Duration) -> Self {
        Self {
            store,
            required,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The store, if any.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Checks the request's bearer token.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, ApiError> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let token = match token {
            Some(t) if self.required || t.starts_with(KEY_PREFIX) => t,
            _ if !self.required => return Ok(Caller::Anonymous),
            _ => {
                return Err(unauthorized(
                    "Missing API key: send a virtual key as `Authorization: Bearer sk-lgw-…` (create one with `llm-gateway keys create`).",
                ))
            }
        };
        let hash = hash_key(token);
        let (cached, stale) = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&hash) {
                Some((r, at)) if at.elapsed() < self.ttl => (Some(r.clone()), None),
                Some((r, _)) => (None, Some(r.clone())),
                None => (None, None),
            }
        };
        let found = match cached {
            Some(r) => r,
            None => {
                let Some(store) = &self.store else {
                    return Err(unauthorized(
                        "Invalid API key: this gateway has no key store.",
                    ));
                };
                let r = match store.find_key(&hash).await {
                    Ok(r) => r,
                    // The database is down: keys seen before keep working on their last
                    // known state (a revocation then waits for the database), so an outage
                    // does not stop the traffic; unknown keys cannot be checked.
                    Err(e) => match stale {
                        Some(r) => {
                            tracing::warn!(error = %e, "key lookup failed; using the last known state of this key");
                            return match r {
                                Some(k) if k.revoked_at.is_none() => Ok(Caller::Key(k)),
                                Some(_) => Err(unauthorized("This API key has been revoked.")),
                                None => Err(unauthorized("Invalid API key.")),
                            };
                        }
                        None => {
                            tracing::error!(error = %e, "key lookup failed");
                            return Err(ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "service_unavailable",
                                "The key store is unavailable; retry shortly.",
                            ));
                        }
                    },
                };
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() > 100_000 {
                    cache.clear();
                }
                cache.insert(hash, (r.clone(), Instant::now()));
                r
            }
        };
        match found {
            Some(k) if k.revoked_at.is_none() => Ok(Caller::Key(k)),
            Some(_) => Err(unauthorized("This API key has been revoked.")),
            None => Err(unauthorized("Invalid API key.")),
        }
    }
}

/// Middleware for the `/v1` routes: authenticates and puts the [`Caller`] in the request.
pub async fn middleware(State(gw): State<AppState>, mut req: Request, next: Next) -> Response {
    match gw.auth.authenticate(req.headers()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}
