//! Admin endpoints, behind `Authorization: Bearer <admin token>` (`server.admin_token` or
//! `LLM_GATEWAY_ADMIN_TOKEN`). Without a configured token they answer 403 and say how to
//! turn them on.

use std::time::Instant;

use axum::extract::State;
use axum::Json;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::error::{Error, Kind};

/// The one check in front of every admin route: the admin bearer token, compared in
/// constant time against the current configuration's.
pub async fn require_token(
    State(gw): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match authorize(&gw, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            if e.code.as_deref() == Some("invalid_admin_token") {
                // Someone holding the admin port without the token: logged (the first, then
                // every hundredth, so a flood cannot flood the log) and counted.
                let n = gw.metrics.admin_auth_failed();
                if n == 1 || n % 100 == 0 {
                    let peer = super::serve::peer(req.extensions());
                    tracing::warn!(
                        peer = ?peer,
                        path = %req.uri().path(),
                        refused_so_far = n,
                        "admin call refused: missing or wrong admin token (see llm_gateway_admin_auth_failures_total)"
                    );
                }
            }
            axum::response::IntoResponse::into_response(e)
        }
    }
}

fn authorize(gw: &AppState, headers: &HeaderMap) -> Result<(), Error> {
    let cfg = gw.config();
    let Some(token) = &cfg.admin_token else {
        return Err(Error::new(Kind::Forbidden,
            "The admin API is off: set LLM_GATEWAY_ADMIN_TOKEN (or server.admin_token) to turn it on.",
        )
        .with_code("admin_disabled"));
    };
    let given = crate::auth::bearer(headers).unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        Ok(())
    } else {
        Err(Error::new(
            Kind::Unauthenticated,
            "Missing or wrong admin token (Authorization: Bearer <token>).",
        )
        .with_code("invalid_admin_token"))
    }
}

/// `GET /admin/breakers`: every breaker with its state and next retry time.
pub async fn breakers(State(gw): State<AppState>) -> Result<Json<Value>, Error> {
    let now = Instant::now();
    let cfg = gw.config();
    let mut out = Vec::new();
    for p in cfg.registry.providers() {
        out.push(json!({"provider": p.name, "model": null, "status": p.breaker.status(now)}));
    }
    for e in cfg.registry.entries() {
        out.push(json!({"provider": e.provider.name, "model": e.info.name, "status": e.breaker.status(now)}));
    }
    Ok(Json(json!({"breakers": out})))
}

/// The administration service over this gateway's key store.
pub(crate) fn admin(gw: &AppState) -> Result<crate::admin::Admin, Error> {
    gw.auth
        .store()
        .cloned()
        .map(crate::admin::Admin::new)
        .ok_or_else(|| {
            Error::new(Kind::Unavailable, "This gateway runs without a database.")
                .with_code("no_database")
        })
}

/// An administration error as the API's: the field for a bad request, a 503 (and a log line
/// with the cause) for the database.
pub(crate) fn admin_error(e: crate::admin::AdminError) -> Error {
    match e {
        crate::admin::AdminError::Invalid(e) => e,
        crate::admin::AdminError::Store(e) => {
            tracing::error!(error = %e, "admin database call failed");
            Error::new(
                Kind::Unavailable,
                "The database is unavailable; retry shortly.",
            )
        }
    }
}

/// `POST /admin/keys` with `{"tenant", "name", "allowed_models"}`: creates a key and returns
/// it, once.
pub async fn create_key(
    State(gw): State<AppState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), Error> {
    // A misspelt `allowed_models` must not create a key that may use every model.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewKey {
        tenant: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        allowed_models: Option<Vec<String>>,
    }
    let (_, req): (_, NewKey) = super::body::parse(&body)?;
    let (rec, key) = admin(&gw)?
        .create_key(&req.tenant, &req.name, req.allowed_models)
        .await
        .map_err(admin_error)?;
    let mut v = serde_json::to_value(&rec).unwrap_or_default();
    v["key"] = json!(key);
    Ok((StatusCode::CREATED, Json(v)))
}

/// `GET /admin/keys`: every key (never the keys themselves).
pub async fn list_keys(State(gw): State<AppState>) -> Result<Json<Value>, Error> {
    let keys = admin(&gw)?.list_keys().await.map_err(admin_error)?;
    Ok(Json(json!({"keys": keys})))
}

/// `DELETE /admin/keys/{id}`: revokes a key.
pub async fn revoke_key(
    State(gw): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, Error> {
    if admin(&gw)?.revoke_key(&id).await.map_err(admin_error)? {
        Ok(Json(json!({"id": id, "revoked": true})))
    } else {
        Err(
            Error::new(Kind::NotFound, format!("No active key with id `{id}`."))
                .with_code("key_not_found"),
        )
    }
}
