//! Kubernetes workloads as callers, without virtual keys: a pod's projected service-account
//! token, checked with a `TokenReview` against the API server, makes the caller the tenant
//! `namespace/serviceaccount` (so `BudgetPolicy` subjects of those kinds apply). Reviews are
//! cached briefly, by the token's hash; a token is never logged or kept in clear.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Kind};

/// How long a review's answer is trusted (a revoked or expired token stops working after
/// at most this long).
pub const REVIEW_TTL: Duration = Duration::from_secs(60);
/// The audience callers' projected tokens are for, by default.
pub const AUDIENCE: &str = "llm-gateway";
/// Valid tokens remembered at most.
const CACHE: usize = 10_000;
/// Refused tokens remembered at most.
const REFUSED: usize = 1_000;

/// Where the API server is and how the gateway proves itself to it.
#[derive(Debug, Clone)]
pub struct ApiServer {
    /// `https://host:port`.
    pub url: String,
    /// The API server's CA certificate (PEM).
    pub ca_file: PathBuf,
    /// The gateway's own service-account token (re-read: it is rotated).
    pub token_file: PathBuf,
    /// The audience callers' tokens must be for (never the API server's own: a token the
    /// gateway accepts must not be one that works against the cluster).
    pub audience: String,
}

impl ApiServer {
    /// The in-cluster defaults (`KUBERNETES_SERVICE_HOST`/`_PORT`, the mounted service account).
    pub fn in_cluster() -> Option<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let dir = PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount");
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Some(Self {
            url: format!("https://{host}:{port}"),
            ca_file: dir.join("ca.crt"),
            token_file: dir.join("token"),
            audience: AUDIENCE.into(),
        })
    }
}

/// Checks service-account tokens with `TokenReview`s.
#[derive(Debug)]
pub struct TokenReviewer {
    api: ApiServer,
    http: reqwest::Client,
    /// Valid tokens' tenants.
    cache: Mutex<lru::LruCache<String, (String, Instant)>>,
    /// Refused tokens, apart, so a flood of made-up ones cannot push valid ones out.
    refused: Mutex<lru::LruCache<String, Instant>>,
}

/// Whether `token` looks like a JWT (a service-account token), not a virtual key.
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

impl TokenReviewer {
    /// A reviewer for `api`; fails if its CA cannot be read.
    pub fn new(api: ApiServer) -> Result<Self, String> {
        let ca = std::fs::read(&api.ca_file).map_err(|e| {
            format!(
                "cannot read the API server's CA {}: {e}",
                api.ca_file.display()
            )
        })?;
        let cert = reqwest::Certificate::from_pem(&ca)
            .map_err(|e| format!("{} is not a PEM certificate: {e}", api.ca_file.display()))?;
        let http = reqwest::Client::builder()
            .add_root_certificate(cert)
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            api,
            http,
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            refused: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(REFUSED).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// The tenant of a token (by its hash) found valid within the last review period.
    fn reviewed(&self, hash: &str) -> Option<String> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .filter(|(_, at)| at.elapsed() < REVIEW_TTL)
            .map(|(t, _)| t.clone())
    }

    /// The tenant of `token` if it was found valid within the last review period, without
    /// asking the API server.
    pub fn known_tenant(&self, token: &str) -> Option<String> {
        self.reviewed(&crate::store::keys::hash_key(token))
    }

    /// Whether `token` was found valid at its last review, however long ago (it is reviewed
    /// again before it is used; one found invalid then is forgotten).
    pub fn seen_valid(&self, token: &str) -> bool {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&crate::store::keys::hash_key(token))
    }

    /// The tenant (`namespace/serviceaccount`) of a valid service-account token; 401 for
    /// any other token; 503 if the API server cannot be asked.
    pub async fn tenant(&self, token: &str) -> Result<String, Error> {
        let hash = crate::store::keys::hash_key(token);
        let cached = self.reviewed(&hash);
        let refused = || {
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&hash)
                .is_some_and(|at| at.elapsed() < REVIEW_TTL)
        };
        let tenant = match cached {
            Some(t) => Some(t),
            None if refused() => None,
            None => {
                let t = self.review(token).await?;
                match &t {
                    Some(t) => {
                        self.cache
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .put(hash, (t.clone(), Instant::now()));
                    }
                    None => {
                        self.cache
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .pop(&hash);
                        self.refused
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .put(hash, Instant::now());
                    }
                }
                t
            }
        };
        tenant.ok_or_else(|| {
            Error::new(
                Kind::Unauthenticated,
                "This service-account token is not valid (expired, revoked, or for another cluster).",
            )
            .with_code("invalid_api_key")
        })
    }

    async fn review(&self, token: &str) -> Result<Option<String>, Error> {
        let unavailable = |why: String| {
            tracing::warn!(error = %why, "TokenReview failed");
            Error::new(
                Kind::Unavailable,
                "Service-account tokens cannot be checked right now; retry shortly.",
            )
        };
        let own = std::fs::read_to_string(&self.api.token_file).map_err(|e| {
            unavailable(format!(
                "cannot read {}: {e}",
                self.api.token_file.display()
            ))
        })?;
        let r = self
            .http
            .post(format!(
                "{}/apis/authentication.k8s.io/v1/tokenreviews",
                self.api.url
            ))
            .bearer_auth(own.trim())
            .json(&json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self.api.audience]},
            }))
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !r.status().is_success() {
            return Err(unavailable(format!(
                "the API server answered {}",
                r.status()
            )));
        }
        let v: Value = r.json().await.map_err(|e| unavailable(e.to_string()))?;
        let for_us = v["status"]["audiences"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == self.api.audience.as_str()));
        Ok(tenant_of(&v).filter(|_| for_us))
    }
}

/// The tenant a TokenReview's answer names: `namespace/serviceaccount` for an authenticated
/// service account, nothing otherwise (a user or an unauthenticated token).
pub fn tenant_of(review: &Value) -> Option<String> {
    if review["status"]["authenticated"] != true {
        return None;
    }
    let user = review["status"]["user"]["username"].as_str()?;
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then(|| format!("{ns}/{sa}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_authenticated_service_accounts_are_tenants() {
        let ok = json!({"status": {"authenticated": true,
            "user": {"username": "system:serviceaccount:team-a:app"}}});
        assert_eq!(tenant_of(&ok).as_deref(), Some("team-a/app"));
        let user = json!({"status": {"authenticated": true, "user": {"username": "alice"}}});
        assert_eq!(tenant_of(&user), None);
        let no = json!({"status": {"authenticated": false}});
        assert_eq!(tenant_of(&no), None);
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt("sk-lgw-abc"));
    }
}
