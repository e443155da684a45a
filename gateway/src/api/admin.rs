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

/// Checks the admin bearer token in constant time.
pub fn authorize(gw: &AppState, headers: &HeaderMap) -> Result<(), Error> {
    let Some(token) = &gw.admin_token else {
        return Err(Error::new(Kind::Forbidden,
            "The admin API is off: set LLM_GATEWAY_ADMIN_TOKEN (or server.admin_token) to turn it on.",
        )
        .with_code("admin_disabled"));
    };
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
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
pub async fn breakers(
    State(gw): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    authorize(&gw, &headers)?;
    let now = Instant::now();
    let mut out = Vec::new();
    for p in gw.registry.providers() {
        out.push(json!({"provider": p.name, "model": null, "status": p.breaker.status(now)}));
    }
    for e in gw.registry.entries() {
        out.push(json!({"provider": e.provider.name, "model": e.info.name, "status": e.breaker.status(now)}));
    }
    Ok(Json(json!({"breakers": out})))
}

pub(crate) fn store(gw: &AppState) -> Result<&crate::store::Store, Error> {
    gw.auth.store().ok_or_else(|| {
        Error::new(Kind::Unavailable, "This gateway runs without a database.")
            .with_code("no_database")
    })
}

pub(crate) fn db_error(e: crate::store::StoreError) -> Error {
    tracing::error!(error = %e, "admin database call failed");
    Error::new(
        Kind::Unavailable,
        "The database is unavailable; retry shortly.",
    )
}

/// `POST /admin/keys` with `{"tenant", "name"}`: creates a key and returns it, once.
pub async fn create_key(
    State(gw): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), Error> {
    authorize(&gw, &headers)?;
    #[derive(serde::Deserialize)]
    struct NewKey {
        tenant: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        allowed_models: Option<Vec<String>>,
    }
    let (_, req): (_, NewKey) = super::body::parse(&body)?;
    if req.tenant.trim().is_empty() || req.tenant.len() > 128 {
        return Err(Error::invalid(
            "tenant",
            "`tenant` must be 1 to 128 characters.",
        ));
    }
    if req.name.len() > 128 {
        return Err(Error::invalid(
            "name",
            "`name` must be at most 128 characters.",
        ));
    }
    if let Some(list) = &req.allowed_models {
        if list.is_empty() || list.len() > 256 || list.iter().any(|m| m.trim().is_empty()) {
            return Err(Error::invalid(
                "allowed_models",
                "`allowed_models` must list 1 to 256 non-empty model patterns (`provider/model`, a model name, `provider/*`), or be omitted for every model.",
            ));
        }
    }
    let (rec, key) = store(&gw)?
        .create_key_with(req.tenant.trim(), req.name.trim(), req.allowed_models)
        .await
        .map_err(db_error)?;
    let mut v = serde_json::to_value(&rec).unwrap_or_default();
    v["key"] = json!(key);
    Ok((StatusCode::CREATED, Json(v)))
}

/// `GET /admin/keys`: every key (never the keys themselves).
pub async fn list_keys(
    State(gw): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    authorize(&gw, &headers)?;
    let keys = store(&gw)?.list_keys().await.map_err(db_error)?;
    Ok(Json(json!({"keys": keys})))
}

/// `DELETE /admin/keys/{id}`: revokes a key.
pub async fn revoke_key(
    State(gw): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, Error> {
    authorize(&gw, &headers)?;
    if store(&gw)?.revoke_key(&id).await.map_err(db_error)? {
        Ok(Json(json!({"id": id, "revoked": true})))
    } else {
        Err(
            Error::new(Kind::NotFound, format!("No active key with id `{id}`."))
                .with_code("key_not_found"),
        )
    }
}
