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

use crate::error::{Error, Kind};
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
    /// A Kubernetes workload, as `namespace/serviceaccount`: a sidecar's own pod, or a
    /// caller that showed its service-account token.
    Workload(String),
}

impl Caller {
    /// The caller's tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Key(k) => Some(&k.tenant),
            Caller::Workload(t) => Some(t),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case, as
/// RFC 9110 has it).
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Excludes the models the caller may not use: those its key's `allowed_models` leaves out,
/// and those of providers reserved for other clients (a namespace's own ProviderPool).
pub struct AllowedModels<'a> {
    key: Option<&'a KeyRecord>,
    tenant: Option<&'a str>,
}

impl<'a> AllowedModels<'a> {
    /// The filter of `caller`.
    pub fn of(caller: &'a Caller) -> Self {
        Self {
            key: match caller {
                Caller::Key(k) if k.allowed_models.is_some() => Some(k),
                _ => None,
            },
            tenant: caller.tenant(),
        }
    }

    /// Whether the caller may use a provider reserved for `clients` (tenants or namespaces).
    fn may_use(&self, clients: Option<&[String]>) -> bool {
        clients.is_none_or(|c| {
            self.tenant.is_some_and(|t| {
                c.iter()
                    .any(|c| crate::config::budget::Scope::covers_tenant_of_namespace(c, t))
            })
        })
    }

    /// 403 unless the caller may use `model` of `provider` (404 for a provider reserved for
    /// other clients: it is none of this caller's business that it exists).
    pub fn check_target(
        &self,
        provider: &crate::providers::Provider,
        model: &str,
    ) -> Result<(), Error> {
        if !self.may_use(provider.clients.as_deref()) {
            return Err(Error::new(
                Kind::NotFound,
                format!("The model `{}/{model}` does not exist.", provider.name),
            )
            .with_code("model_not_found"));
        }
        if let Some(why) = &provider.key_withheld {
            return Err(provider.withheld(why));
        }
        match self.key {
            Some(k) if !k.allows(&provider.name, model) => Err(Error::new(
                Kind::Forbidden,
                format!("This key may not use `{}/{model}`; the models it may use are set by its allowed_models.", provider.name),
            )
            .with_code("model_not_allowed")),
            _ => Ok(()),
        }
    }
}

impl crate::router::CandidateFilter for AllowedModels<'_> {
    fn check(&self, e: &crate::models::registry::Entry) -> Option<crate::router::Exclusion> {
        if !self.may_use(e.provider.clients.as_deref()) {
            return Some(crate::router::Exclusion::NotAllowed {
                detail: "reserved for other clients",
            });
        }
        if e.provider.key_withheld.is_some() {
            return Some(crate::router::Exclusion::NotAllowed {
                detail: "withheld from this gateway by the operator (a call naming one says why)",
            });
        }
        let k = self.key?;
        (!k.allows(&e.provider.name, &e.info.name)).then_some(
            crate::router::Exclusion::NotAllowed {
                detail: "not among this key's allowed models",
            },
        )
    }
}

/// Key checking with bounded caches: keys seen, unknown keys, and failures per client.
#[derive(Debug)]
pub struct Auth {
    store: Option<Store>,
    required: bool,
    ttl: Duration,
    /// Keys found in the store, by hash (also their last known state if the store fails).
    known: Mutex<lru::LruCache<String, (KeyRecord, Instant)>>,
    /// Hashes the store did not know: answered without asking it again for `ttl`, and kept
    /// apart so that a flood of garbage cannot push real keys out of `known`.
    unknown: Mutex<lru::LruCache<String, Instant>>,
    /// Failed lookups per client address in the current window.
    failures: Mutex<HashMap<std::net::IpAddr, (Instant, u32)>>,
    /// Sidecar mode: calls from loopback are the pod's own workload (`namespace/sa`).
    local_workload: Option<String>,
    /// Service-account tokens checked with the API server, when on.
    reviewer: Option<crate::workload::TokenReviewer>,
}

impl Default for Auth {
    fn default() -> Self {
        Self::open()
    }
}

/// Keys remembered at most.
const KNOWN_KEYS: usize = 100_000;
/// Unknown key hashes remembered at most.
const UNKNOWN_KEYS: usize = 10_000;
/// Failed key lookups one client address may cause per [`FAILURE_WINDOW`]; beyond that its
/// invalid keys get 429 without a database query.
pub const FAILURES_PER_WINDOW: u32 = 20;
/// See [`FAILURES_PER_WINDOW`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);

fn unauthorized(msg: &str) -> Error {
    Error::new(Kind::Unauthenticated, msg).with_code("invalid_api_key")
}

fn lru<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<lru::LruCache<K, V>> {
    Mutex::new(lru::LruCache::new(
        std::num::NonZeroUsize::new(n).unwrap_or(std::num::NonZeroUsize::MIN),
    ))
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
            known: lru(KNOWN_KEYS),
            unknown: lru(UNKNOWN_KEYS),
            failures: Mutex::new(HashMap::new()),
            local_workload: None,
            reviewer: None,
        }
    }

    /// Sidecar mode: a call from loopback is the workload `identity` (`namespace/sa`), the
    /// pod the gateway runs in; calls from elsewhere authenticate as usual.
    pub fn with_local_workload(mut self, identity: String) -> Self {
        self.local_workload = Some(identity);
        self
    }

    /// Accepts Kubernetes service-account tokens, checked with `reviewer`, as the tenant
    /// `namespace/serviceaccount`.
    pub fn with_token_reviewer(mut self, reviewer: crate::workload::TokenReviewer) -> Self {
        self.reviewer = Some(reviewer);
        self
    }

    /// Whether every call needs a key (else the loopback quick start: keys optional).
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// The store, if any.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Counts a failed lookup of `peer`; true while it is within its allowance.
    fn note_failure(&self, peer: Option<std::net::IpAddr>) {
        let Some(ip) = peer else { return };
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() > 10_000 {
            f.retain(|_, (at, _)| at.elapsed() < FAILURE_WINDOW);
        }
        let e = f.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= FAILURE_WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    fn over_failure_limit(&self, peer: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = peer else { return false };
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.get(&ip)
            .is_some_and(|(at, n)| at.elapsed() < FAILURE_WINDOW && *n >= FAILURES_PER_WINDOW)
    }

    /// Sidecar mode: the pod's own workload when the connection is loopback at both ends (an
    /// app container calling 127.0.0.1). A connection to the pod's IP never is, even from a
    /// loopback source (a mesh proxy's inbound 127.0.0.6, say): those authenticate as usual.
    pub fn local_caller(
        &self,
        peer: Option<std::net::IpAddr>,
        local: Option<std::net::IpAddr>,
    ) -> Option<Caller> {
        let id = self.local_workload.as_ref()?;
        (peer?.is_loopback() && local?.is_loopback()).then(|| Caller::Workload(id.clone()))
    }

    /// Checks the request's bearer token; `peer` is the client's address, when known.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Caller, Error> {
        let token = bearer(headers).map(str::trim).filter(|t| !t.is_empty());
        if let (Some(r), Some(t)) = (&self.reviewer, token) {
            if crate::workload::looks_like_jwt(t) {
                // A token found valid recently passes whatever its address has done: behind
                // a shared ingress or NAT that address is every client's.
                if let Some(tenant) = r.known_tenant(t) {
                    return Ok(Caller::Workload(tenant));
                }
                // Each unknown token costs a TokenReview: the same per-address failure limit
                // as for keys keeps a flood of made-up tokens off the API server. A token
                // found valid before is reviewed again whatever the address's count (as a
                // key seen before is looked up again).
                if !r.seen_valid(t) && self.over_failure_limit(peer) {
                    self.note_failure(peer);
                    return Err(Error::new(
                        Kind::RateLimited,
                        "Too many requests with invalid credentials from this address; retry later.",
                    )
                    .with_code("too_many_invalid_keys")
                    .with_retry_after(FAILURE_WINDOW));
                }
                let tenant = r.tenant(t).await;
                if tenant
                    .as_ref()
                    .is_err_and(|e| e.kind == Kind::Unauthenticated)
                {
                    self.note_failure(peer);
                }
                return tenant.map(Caller::Workload);
            }
        }
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
        let (fresh, stale) = {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            match known.get(&hash) {
                Some((r, at)) if at.elapsed() < self.ttl => (Some(r.clone()), None),
                Some((r, _)) => (None, Some(r.clone())),
                None => (None, None),
            }
        };
        let found = match fresh {
            Some(r) => r,
            None => {
                let recently_unknown = {
                    let mut u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
                    u.get(&hash).is_some_and(|at| at.elapsed() < self.ttl)
                };
                if stale.is_none() && (recently_unknown || self.over_failure_limit(peer)) {
                    self.note_failure(peer);
                    if !recently_unknown {
                        return Err(Error::new(
                            Kind::RateLimited,
                            "Too many requests with invalid API keys from this address; retry later with a valid key.",
                        )
                        .with_code("too_many_invalid_keys")
                        .with_retry_after(FAILURE_WINDOW));
                    }
                    return Err(unauthorized("Invalid API key."));
                }
                let Some(store) = &self.store else {
                    return Err(unauthorized(
                        "Invalid API key: this gateway has no key store.",
                    ));
                };
                match store.find_key(&hash).await {
                    Ok(Some(r)) => {
                        self.known
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .put(hash, (r.clone(), Instant::now()));
                        r
                    }
                    Ok(None) => {
                        self.unknown
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .put(hash, Instant::now());
                        self.note_failure(peer);
                        return Err(unauthorized("Invalid API key."));
                    }
                    // The database is down: keys seen before keep working on their last
                    // known state (a revocation then waits for the database), so an outage
                    // does not stop the traffic; unknown keys cannot be checked.
                    Err(e) => match stale {
                        Some(r) => {
                            tracing::warn!(error = %e, "key lookup failed; using the last known state of this key");
                            r
                        }
                        None => {
                            tracing::error!(error = %e, "key lookup failed");
                            return Err(Error::new(
                                Kind::Unavailable,
                                "The key store is unavailable; retry shortly.",
                            ));
                        }
                    },
                }
            }
        };
        if found.revoked_at.is_some() {
            self.note_failure(peer);
            return Err(unauthorized("This API key has been revoked."));
        }
        Ok(Caller::Key(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(super::bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(super::bearer(&h("bearer abc")), Some("abc"));
        assert_eq!(super::bearer(&h("BEARER abc")), Some("abc"));
        assert_eq!(super::bearer(&h("Basic abc")), None);
        assert_eq!(super::bearer(&h("Bearerabc")), None);
        assert_eq!(super::bearer(&http::HeaderMap::new()), None);
    }

    fn bearer(key: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        h
    }

    /// Security review, low 13: a flood of unknown keys neither pushes known keys out of
    /// the cache (which carries them through a database outage) nor costs a database query
    /// per repetition.
    #[tokio::test]
    async fn garbage_keys_cost_one_lookup_each_and_never_evict_known_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/k.db", dir.path().display()))
            .await
            .unwrap();
        let (_, good) = store.create_key("t", "").await.unwrap();
        // Lookups trusted for 2 s: long enough for the repeat below on a loaded machine.
        let auth = Auth::new(Some(store.clone()), true, Duration::from_secs(2));
        assert!(auth.authenticate(&bearer(&good), None).await.is_ok());
        // More distinct garbage keys than the unknown-key cache holds, from many addresses
        // (so the per-address limit does not cut the flood short).
        for i in 0..(UNKNOWN_KEYS + 500) {
            let ip = std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let e = auth
                .authenticate(&bearer(&format!("{KEY_PREFIX}garbage-{i}")), Some(ip))
                .await
                .unwrap_err();
            assert_eq!(e.kind, Kind::Unauthenticated);
        }
        // A garbage key is looked up once; then the database goes away: the same key
        // again is refused from memory (a query would fail with 503), and the known key
        // still works on its last state.
        let junk = format!("{KEY_PREFIX}garbage-again");
        let ip = std::net::IpAddr::from([192, 0, 2, 1]);
        assert!(auth.authenticate(&bearer(&junk), Some(ip)).await.is_err());
        match &store {
            Store::Sqlite(p) => p.close().await,
            Store::Postgres(p) => p.close().await,
        }
        let e = auth
            .authenticate(&bearer(&junk), Some(ip))
            .await
            .unwrap_err();
        assert_eq!(e.kind, Kind::Unauthenticated, "{}", e.message);
        // Past the known key's trust: it is looked up, the lookup fails, its last state holds.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(auth.authenticate(&bearer(&good), None).await.is_ok());
    }

    #[test]
    fn only_loopback_to_loopback_is_the_sidecars_own_workload() {
        let auth = Auth::new(None, true, KEY_CACHE_TTL).with_local_workload("team-a/app".into());
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let mesh: std::net::IpAddr = "127.0.0.6".parse().unwrap();
        let pod: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        assert!(
            matches!(auth.local_caller(Some(lo), Some(lo)), Some(Caller::Workload(w)) if w == "team-a/app")
        );
        assert!(
            auth.local_caller(Some(mesh), Some(pod)).is_none(),
            "a mesh proxy to the pod IP"
        );
        assert!(auth.local_caller(Some(pod), Some(pod)).is_none());
        assert!(auth.local_caller(Some(lo), None).is_none());
        assert!(Auth::new(None, true, KEY_CACHE_TTL)
            .local_caller(Some(lo), Some(lo))
            .is_none());
    }
}
