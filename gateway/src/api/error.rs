//! Errors as OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

/// An error returned to the client in OpenAI's format (boxed: errors are rare, and a small
/// `Result` keeps the success path cheap).
#[derive(Debug, Clone)]
pub struct ApiError(Box<ErrorDetail>);

/// The fields of an [`ApiError`].
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`, `api_error`, ...).
    pub kind: String,
    /// Machine-readable code.
    pub code: Option<String>,
    /// The request field at fault.
    pub param: Option<String>,
    /// `Retry-After` in seconds, passed on from upstream.
    pub retry_after: Option<String>,
    /// Set when an upstream attempt failed in a way that counts against the provider and may
    /// be retried on another candidate.
    pub failure: Option<Failure>,
    /// Extra machine-readable fields inside the error object (a budget's figures).
    pub details: Option<(&'static str, serde_json::Value)>,
}

/// Why an upstream attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Could not connect.
    Connect,
    /// Took too long.
    Timeout(TimeoutKind),
    /// Answered 408, 429 or 5xx.
    Status(u16),
    /// Answered something that is not the protocol.
    Malformed,
    /// A stream ended before it was complete.
    StreamCut,
    /// This gateway's concurrency limit for the provider was full (not the provider's fault).
    Busy,
    /// Its circuit breaker is open.
    BreakerOpen,
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Connecting.
    Connect,
    /// Waiting for the first content of a stream.
    FirstToken,
    /// Silence between two reads.
    Idle,
    /// The whole request.
    Total,
}

impl Failure {
    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout(TimeoutKind::Connect) => "timeout_connect",
            Failure::Timeout(TimeoutKind::FirstToken) => "timeout_first_token",
            Failure::Timeout(TimeoutKind::Idle) => "timeout_idle",
            Failure::Timeout(TimeoutKind::Total) => "timeout_total",
            Failure::Status(429) => "status_429",
            Failure::Status(s) if s >= 500 => "status_5xx",
            Failure::Status(_) => "status_other",
            Failure::Malformed => "malformed",
            Failure::StreamCut => "stream_cut",
            Failure::Busy => "busy",
            Failure::BreakerOpen => "breaker_open",
        }
    }

    /// Whether it counts against the provider's circuit breaker.
    pub fn counts_against_provider(self) -> bool {
        !matches!(self, Failure::Busy | Failure::BreakerOpen)
    }
}

impl ApiError {
    /// An error with the given status, type and message.
    pub fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorDetail {
            status,
            message: message.into(),
            kind: kind.to_owned(),
            code: None,
            param: None,
            retry_after: None,
            failure: None,
            details: None,
        }))
    }

    /// 400 for a bad request field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = (!param.is_empty()).then_some(param);
        e
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// Marks the error as an upstream failure of this kind.
    pub fn with_failure(mut self, f: Failure) -> Self {
        self.failure = Some(f);
        self
    }

    /// The `Retry-After` value as a duration.
    pub fn retry_after_duration(&self) -> Option<std::time::Duration> {
        let s = self.retry_after.as_deref()?.trim();
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(std::time::Duration::from_secs_f64)
    }

    /// 502 when the upstream could not be reached or answered nonsense.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", message).with_code("bad_gateway")
    }

    /// 504 when the upstream did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "upstream_error", message)
            .with_code("upstream_timeout")
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut err = json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        });
        if let (Some((name, v)), Some(obj)) = (&self.details, err.as_object_mut()) {
            obj.insert((*name).to_owned(), v.clone());
        }
        json!({ "error": err })
    }
}

impl std::ops::Deref for ApiError {
    type Target = ErrorDetail;
    fn deref(&self) -> &ErrorDetail {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ErrorDetail {
        &mut self.0
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(v) = self
            .retry_after
            .as_deref()
            .and_then(|r| HeaderValue::from_str(r).ok())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Maps a reqwest failure to 502/504 without leaking URLs with credentials; `timeout` says
/// which timeout a timeout error was (reqwest does not).
pub fn from_transport(provider: &str, err: reqwest::Error, timeout: TimeoutKind) -> ApiError {
    if err.is_connect() && err.is_timeout() {
        ApiError::gateway_timeout(format!(
            "provider {provider} did not accept a connection in time"
        ))
        .with_failure(Failure::Timeout(TimeoutKind::Connect))
    } else if err.is_timeout() {
        ApiError::gateway_timeout(format!("provider {provider} did not answer in time"))
            .with_failure(Failure::Timeout(timeout))
    } else if err.is_connect() {
        ApiError::bad_gateway(format!("provider {provider} is unreachable"))
            .with_failure(Failure::Connect)
    } else {
        ApiError::bad_gateway(format!("provider {provider} failed: {}", err.without_url()))
            .with_failure(Failure::StreamCut)
    }
}
