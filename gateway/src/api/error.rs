//! Errors as OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`, with the
//! status of the error's fault class and `Retry-After` when it says when to come back.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

pub use crate::error::{Error, Failure, Kind, TimeoutKind};

/// The JSON body of `e`.
pub fn body(e: &Error) -> serde_json::Value {
    let mut err = json!({
        "message": e.message,
        "type": e.kind.openai_type(),
        "param": e.param,
        "code": e.code,
    });
    if let (Some((name, v)), Some(obj)) = (&e.details, err.as_object_mut()) {
        obj.insert((*name).to_owned(), v.clone());
    }
    json!({ "error": err })
}

/// The HTTP status of `e`.
pub fn status(e: &Error) -> StatusCode {
    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY)
}

/// `Retry-After` in whole seconds, rounded up.
pub fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil() as u64
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut resp = (status(&self), axum::Json(body(&self))).into_response();
        if let Some(v) = self
            .retry_after
            .and_then(|r| HeaderValue::from_str(&retry_after_secs(r).to_string()).ok())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
