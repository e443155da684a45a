//! Admin endpoints, behind `Authorization: Bearer <admin token>` (`server.admin_token` or
//! `LLM_GATEWAY_ADMIN_TOKEN`). Without a configured token they answer 403 and say how to
//! turn them on.

use std::time::Instant;

use axum::extract::State;
use axum::Json;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// Checks the admin bearer token in constant time.
pub fn authorize(gw: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &gw.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
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
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "Missing or wrong admin token (Authorization: Bearer <token>).",
        )
        .with_code("invalid_admin_token"))
    }
}

/// `GET /admin/breakers`: every breaker with its state and next retry time.
pub async fn breakers(
    State(gw): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
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
