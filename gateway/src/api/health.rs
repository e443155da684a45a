//! `/healthz` (the process runs), `/readyz` (it can serve), `/metrics`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, StatusCode};
use serde_json::json;

use super::AppState;

/// Liveness.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: false while shutting down or with no provider enabled.
pub async fn readyz(State(gw): State<AppState>) -> Response {
    if !gw.ready.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response();
    }
    let cfg = gw.config();
    if cfg.registry.providers().is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "no providers enabled"})),
        )
            .into_response();
    }
    Json(json!({"status": "ready", "providers": cfg.registry.providers().len()})).into_response()
}

/// Prometheus / OpenMetrics exposition.
pub async fn metrics(State(gw): State<AppState>) -> Response {
    if let Some(engine) = &gw.budgets {
        let all = engine.all();
        gw.metrics.budgets(&engine.status(&all).await);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics_text(),
    )
        .into_response()
}
