//! The HTTP API: OpenAI-compatible endpoints, health, metrics.

pub mod admin;
pub mod authn;
pub mod body;
pub mod cache_hit;
pub mod chat;
pub mod config;
pub mod embeddings;
pub mod error;
pub mod headers;
pub mod health;
pub mod models;
pub mod origin;
pub mod respond;
pub mod responses;
pub mod route;
pub mod serve;
pub mod sse;
pub mod usage;

use axum::routing::{get, post};
use axum::Router;

use crate::error::{Error, Kind};
pub use crate::state::AppState;

/// `/metrics` (and the probes) alone, for a metrics listener of its own.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .with_state(state)
}

/// All routes; `/metrics` too unless it has a listener of its own.
pub fn router(state: AppState, with_metrics: bool) -> Router {
    // Authentication is the first step of every model endpoint.
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/responses", post(responses::handle))
        .route(
            "/v1/responses/{*rest}",
            axum::routing::any(responses::not_stored),
        )
        .route("/v1/embeddings", post(embeddings::handle))
        .route("/v1/route", post(route::handle))
        .route("/v1/budget", get(usage::mine))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::get))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            v1_front,
        ));

    let base = if with_metrics {
        Router::new().route("/metrics", get(health::metrics))
    } else {
        Router::new()
    };
    // Every admin route sits behind the one token check.
    let admin = Router::new()
        .route("/admin/config", get(config::get).put(config::put))
        .route("/admin/breakers", get(admin::breakers))
        .route("/admin/keys", post(admin::create_key).get(admin::list_keys))
        .route("/admin/keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/admin/budgets", get(usage::list).put(usage::put))
        .route(
            "/admin/budgets/{*scope}",
            axum::routing::delete(usage::delete),
        )
        .route("/admin/usage", get(usage::report))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    let app = base
        .merge(v1)
        .merge(admin)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    // CORS wraps the whole router, so preflights are answered before any routing.
    match origin::cors(&state.fixed.cors_allowed_origins) {
        Some(cors) => {
            Router::new().fallback_service(tower::ServiceBuilder::new().layer(cors).service(app))
        }
        None => app,
    }
}

/// In front of every `/v1` route, in this order: the server span (covering the rest), the
/// origin check, authentication. One middleware, not three: each axum layer costs a boxed
/// clone of the service behind it and a boxed future on every request.
async fn v1_front(
    axum::extract::State(gw): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    crate::telemetry::traces::server_span(req, |req| async move {
        if let Err(e) = origin::verdict(&gw, &req) {
            return e.into_response();
        }
        match authn::authenticate(&gw, req).await {
            Ok(req) => next.run(req).await,
            Err(resp) => resp,
        }
    })
    .await
}

async fn not_found(uri: http::Uri) -> Error {
    Error::new(Kind::NotFound,
        format!(
            "Unknown endpoint {}. This gateway serves /v1/chat/completions, /v1/responses, /v1/embeddings and /v1/models.",
            uri.path()
        ),
    )
    .with_code("unknown_url")
}

async fn method_not_allowed(method: http::Method, uri: http::Uri) -> Error {
    Error::new(
        Kind::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .with_code("method_not_allowed")
}

/// The client's `x-request-id` if it sent a sane one, else the trace id when traces are on
/// and the trace starts here (so the ledger, the log line and the trace share one id; a
/// client's own trace spans many requests), else a new UUID.
pub fn request_id(headers: &http::HeaderMap) -> String {
    let own_trace = || {
        (!headers.contains_key("traceparent"))
            .then(crate::telemetry::traces::current_trace_id)
            .flatten()
    };
    headers
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .or_else(own_trace)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}
