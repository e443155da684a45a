//! Errors, classified by who is at fault. Every module returns these; none picks an HTTP
//! status. The one table from fault class to status is [`Kind::status`]; `api::error` turns
//! an error into OpenAI's error JSON.

use std::time::Duration;

/// What went wrong (boxed: errors are rare, and a small `Result` keeps the success path
/// cheap).
#[derive(Debug, Clone)]
pub struct Error(Box<Detail>);

/// The parts of an [`Error`]; read through `Deref`, set through the builder methods.
#[derive(Debug, Clone)]
pub struct Detail {
    /// Who is at fault, and how.
    pub kind: Kind,
    /// For a person: what happened and what to do.
    pub message: String,
    /// For a program: a stable code (`model_not_found`, `budget_exceeded`, ...).
    pub code: Option<String>,
    /// The request field at fault.
    pub param: Option<String>,
    /// When to try again.
    pub retry_after: Option<Duration>,
    /// For upstream attempts: how the attempt failed (failover and breakers act on it).
    pub failure: Option<Failure>,
    /// Extra machine-readable fields (a budget's figures).
    pub details: Option<(&'static str, serde_json::Value)>,
}

/// Fault classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed, or asks for something no model here can do.
    InvalidRequest,
    /// Its body is larger than allowed.
    TooLarge,
    /// Its body is not JSON.
    UnsupportedMediaType,
    /// No valid credentials.
    Unauthenticated,
    /// Valid credentials, but not for this.
    Forbidden,
    /// No such model or endpoint.
    NotFound,
    /// The endpoint does not take this method.
    MethodNotAllowed,
    /// The client stopped reading.
    ClientTooSlow,
    /// A budget of the caller is spent.
    BudgetExceeded,
    /// A rate or concurrency limit of the caller.
    RateLimited,
    /// The gateway is at one of its own limits.
    Busy,
    /// No candidate model can serve right now (breakers open, budgets).
    NoCandidate,
    /// Something the gateway depends on (the database) is unavailable.
    Unavailable,
    /// The upstream answered with an error of its own: its status and OpenAI error type.
    Upstream {
        /// The upstream's HTTP status.
        status: u16,
        /// Its error type (`invalid_request_error`, `overloaded_error`, ...).
        kind: String,
    },
    /// The upstream could not be reached or answered nonsense.
    BadGateway,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// A configuration the gateway cannot use.
    Config,
}

impl Kind {
    /// The HTTP status this fault class answers with: the one place statuses are decided.
    pub fn status(&self) -> u16 {
        match self {
            Kind::InvalidRequest => 400,
            Kind::Unauthenticated => 401,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::MethodNotAllowed => 405,
            Kind::ClientTooSlow => 408,
            Kind::TooLarge => 413,
            Kind::UnsupportedMediaType => 415,
            Kind::Config => 422,
            Kind::BudgetExceeded | Kind::RateLimited => 429,
            Kind::BadGateway => 502,
            Kind::Busy | Kind::NoCandidate | Kind::Unavailable => 503,
            Kind::UpstreamTimeout => 504,
            Kind::Upstream { status, .. } => *status,
        }
    }

    /// OpenAI's error `type` for this class.
    pub fn openai_type(&self) -> &str {
        match self {
            Kind::Forbidden => "permission_error",
            Kind::BudgetExceeded => "insufficient_quota",
            Kind::RateLimited => "rate_limit_exceeded",
            Kind::Busy | Kind::NoCandidate | Kind::Unavailable => "service_unavailable",
            Kind::BadGateway | Kind::UpstreamTimeout => "upstream_error",
            Kind::Upstream { kind, .. } => kind,
            _ => "invalid_request_error",
        }
    }
}

/// Why an upstream attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Could not connect.
    Connect,
    /// Took too long.
    Timeout(TimeoutKind),
    /// Answered 408, 429, 5xx (or refused the gateway's credentials).
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
    /// Waiting for the first content of a stream (or a whole non-streaming answer).
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

impl Error {
    /// An error of `kind` saying `message`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self(Box::new(Detail {
            kind,
            message: message.into(),
            code: None,
            param: None,
            retry_after: None,
            failure: None,
            details: None,
        }))
    }

    /// A bad request field (`param` empty for the whole request).
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let mut e = Self::new(Kind::InvalidRequest, message);
        e.0.param = (!param.is_empty()).then_some(param);
        e
    }

    /// The upstream could not be reached or answered nonsense (`bad_gateway`).
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(Kind::BadGateway, message).with_code("bad_gateway")
    }

    /// The upstream did not answer in time (`upstream_timeout`).
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(Kind::UpstreamTimeout, message).with_code("upstream_timeout")
    }

    /// The upstream's own error, with its status and error type.
    pub fn upstream(status: u16, kind: &str, message: impl Into<String>) -> Self {
        Self::new(
            Kind::Upstream {
                status,
                kind: kind.to_owned(),
            },
            message,
        )
    }

    /// The gateway is at a limit of its own; try again in a second.
    pub fn busy(code: &str, message: impl Into<String>) -> Self {
        Self::new(Kind::Busy, message)
            .with_code(code)
            .with_retry_after(Duration::from_secs(1))
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: &str) -> Self {
        self.0.code = Some(code.to_owned());
        self
    }

    /// Sets the field at fault.
    pub fn with_param(mut self, param: &str) -> Self {
        self.0.param = Some(param.to_owned());
        self
    }

    /// Says when to try again.
    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.0.retry_after = Some(d);
        self
    }

    /// Keeps (or drops) a retry time from elsewhere.
    pub fn with_retry_after_opt(mut self, d: Option<Duration>) -> Self {
        self.0.retry_after = d;
        self
    }

    /// Marks the error as an upstream attempt's failure of this kind.
    pub fn with_failure(mut self, f: Failure) -> Self {
        self.0.failure = Some(f);
        self
    }

    /// Marks it as a failure of kind `f` unless it already says how it failed.
    pub fn or_failure(mut self, f: Failure) -> Self {
        self.0.failure.get_or_insert(f);
        self
    }

    /// Adds machine-readable fields under `name` in the error object.
    pub fn with_details(mut self, name: &'static str, v: serde_json::Value) -> Self {
        self.0.details = Some((name, v));
        self
    }

    /// The same error with its message rewritten (a prefix, a suffix).
    pub fn map_message(mut self, f: impl FnOnce(&str) -> String) -> Self {
        self.0.message = f(&self.0.message);
        self
    }

    /// The HTTP status it answers with.
    pub fn status(&self) -> u16 {
        self.0.kind.status()
    }
}

impl std::ops::Deref for Error {
    type Target = Detail;
    fn deref(&self) -> &Detail {
        &self.0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status(),
            self.kind.openai_type(),
            self.message
        )
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_one_status_and_type() {
        let cases = [
            (Kind::InvalidRequest, 400, "invalid_request_error"),
            (Kind::Unauthenticated, 401, "invalid_request_error"),
            (Kind::Forbidden, 403, "permission_error"),
            (Kind::NotFound, 404, "invalid_request_error"),
            (Kind::BudgetExceeded, 429, "insufficient_quota"),
            (Kind::RateLimited, 429, "rate_limit_exceeded"),
            (Kind::NoCandidate, 503, "service_unavailable"),
            (Kind::BadGateway, 502, "upstream_error"),
            (Kind::UpstreamTimeout, 504, "upstream_error"),
            (
                Kind::Upstream {
                    status: 529,
                    kind: "overloaded_error".into(),
                },
                529,
                "overloaded_error",
            ),
        ];
        for (k, status, t) in cases {
            assert_eq!(k.status(), status, "{k:?}");
            assert_eq!(k.openai_type(), t, "{k:?}");
        }
    }
}
