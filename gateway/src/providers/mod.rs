//! Upstream providers, one module per wire protocol. Each turns an OpenAI-shaped request into
//! its protocol, calls the upstream over a pooled connection, and hands back OpenAI-shaped
//! JSON or chunks.

pub mod anthropic;
pub mod event_stream;
pub mod learned;
pub mod limiter;
pub mod ollama;
pub mod openai;
pub mod tls;
pub mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use llm_gateway_crds::Protocol;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::breaker::{Breaker, BreakerConfig};
use crate::config::model::ModelInfo;
use crate::config::{ProviderSettings, Secret};
use crate::error::{Error, Failure, TimeoutKind};
use crate::wire::{ChatRequest, Usage};

/// Longest upstream error body read before it is cut (errors are small; a huge one is a fault).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A configured upstream with its connection pool.
#[derive(Debug)]
pub struct Provider {
    /// Unique name (shared: every request's metrics are labelled with it).
    pub name: std::sync::Arc<str>,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Base URL without a trailing slash.
    pub base_url: String,
    /// Where chat requests go, parsed once when the config is applied rather than per request.
    chat_url: http::Uri,
    auth: Auth,
    key_pending: Option<String>,
    /// Why the operator gives this gateway no key for it, when it does not.
    pub key_withheld: Option<String>,
    /// Only these tenants or namespaces may use it (`None`: everyone).
    pub clients: Option<Vec<String>>,
    headers: HeaderMap,
    clients_by_thread: learned::Clients,
    timeout: Duration,
    /// `first_token_timeout_secs`, when configured for the whole provider.
    pub first_token_timeout: Option<Duration>,
    anthropic_version: HeaderValue,
    default_max_tokens: u32,
    /// The provider-wide circuit breaker.
    pub breaker: Arc<Breaker>,
    /// Thresholds for this provider's model breakers.
    pub breaker_config: BreakerConfig,
    /// The adaptive concurrency limit.
    pub limiter: Arc<limiter::Limiter>,
    /// Learned deadlines of models the catalog does not list (provider-qualified names).
    pub unlisted_deadlines: Arc<crate::deadline::Deadlines>,
    queue_timeout: Duration,
    client_idle_timeout: Duration,
    max_response_bytes: usize,
}

/// The API key's header, built once per config rather than per request.
#[derive(Debug)]
enum Auth {
    /// No key configured (a local Ollama, a server without authentication).
    None,
    /// `x-api-key` (Anthropic) or `authorization: Bearer` (the rest), marked sensitive.
    Header(header::HeaderName, HeaderValue),
    /// The key has characters an HTTP header cannot carry (a control character from a
    /// Secret's file): each request is refused, saying so, while the rest of the config works.
    Unsendable,
}

impl Auth {
    fn new(protocol: Protocol, key: Option<&Secret>) -> Self {
        let Some(key) = key else { return Self::None };
        let (name, value) = match protocol {
            Protocol::Anthropic => (
                header::HeaderName::from_static("x-api-key"),
                HeaderValue::from_str(key.expose()),
            ),
            _ => (
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", key.expose())),
            ),
        };
        match value {
            Ok(mut v) => {
                v.set_sensitive(true);
                Self::Header(name, v)
            }
            Err(_) => Self::Unsendable,
        }
    }
}

/// Default longest wait for a client that does not read a stream.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a chat call returned.
pub enum ChatResponse {
    /// A complete OpenAI `chat.completion` body.
    Json {
        /// The body, as sent to the client.
        body: Bytes,
        /// Usage, when the upstream reported it.
        usage: Option<Usage>,
    },
    /// OpenAI `chat.completion.chunk`s as they arrive.
    Stream(StreamRx),
}

/// One item of a translated stream.
#[derive(Debug)]
pub enum StreamItem {
    /// A chunk's JSON.
    Chunk {
        /// The JSON text after `data: `.
        data: Bytes,
        /// Usage carried by this chunk.
        usage: Option<Usage>,
        /// The chunk only carries usage (`choices: []`): forwarded only if the client asked.
        usage_only: bool,
        /// Bytes of content or tool-call arguments it carries (0 for the role preamble or an
        /// empty delta): the first non-empty chunk marks the time to first token, and the sum
        /// estimates completion tokens when the provider reports no usage.
        content: usize,
    },
    /// The upstream failed mid-stream.
    Error(Error),
    /// The upstream finished the stream properly.
    End,
}

/// The parts of a validated chat request a provider needs.
pub struct ChatCall<'a> {
    /// The typed view.
    pub req: &'a ChatRequest,
    /// The raw JSON body, forwarded as-is to OpenAI-protocol upstreams (borrowed: every
    /// attempt and hedge sends the same parsed body without copying it).
    pub raw: &'a Map<String, Value>,
    /// The upstream model name.
    pub model: &'a str,
    /// What the catalog knows of the model.
    pub info: Option<&'a ModelInfo>,
}

impl Provider {
    /// Builds the provider from validated settings, with what `learned` knows of it (its
    /// breaker, limit and deadlines, and its HTTP client if the connection settings are the
    /// same).
    pub fn new(s: &ProviderSettings, learned: &learned::Learned) -> anyhow::Result<Self> {
        let state = learned.provider(&s.name, s.breaker, s.max_concurrency);
        let base_url = s.base_url.as_str().trim_end_matches('/').to_owned();
        let chat_url = match s.protocol {
            Protocol::Anthropic => format!("{base_url}/v1/messages"),
            p => format!("{}/chat/completions", openai::root(p, &base_url)),
        };
        let chat_url: http::Uri = chat_url
            .parse()
            .map_err(|e| anyhow::anyhow!("provider {}: chat URL {chat_url}: {e}", s.name))?;
        let settings = transport::Settings {
            connect: s.connect_timeout,
            read_idle: s.read_idle_timeout,
        };
        // The environment's proxy settings are part of the key: they decide the transport.
        let client_key = format!(
            "{settings:?}|{}",
            transport::Client::through_reqwest(&chat_url)
        );
        let clients_by_thread = learned.client(&s.name, client_key, || {
            transport::Client::new(&chat_url, settings)
        })?;
        let auth = Auth::new(s.protocol, s.api_key.as_ref());
        Ok(Self {
            name: s.name.as_str().into(),
            protocol: s.protocol,
            chat_url,
            auth,
            base_url,
            key_pending: s.key_pending.clone(),
            // The operator writes it; a hand-written one could hold anything key-shaped.
            key_withheld: s.key_withheld.as_deref().map(redact),
            clients: s.clients.clone(),
            headers: s.headers.clone(),
            clients_by_thread,
            timeout: s.timeout,
            first_token_timeout: s.first_token_timeout,
            anthropic_version: s.anthropic_version.clone(),
            default_max_tokens: s.default_max_tokens,
            breaker: state.breaker,
            breaker_config: s.breaker,
            limiter: state.limiter,
            unlisted_deadlines: state.unlisted_deadlines,
            queue_timeout: s.queue_timeout,
            max_response_bytes: s.max_response_bytes,
            client_idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
        })
    }

    /// Sets how long a stream waits for a client that does not read.
    pub fn with_client_idle_timeout(mut self, d: Duration) -> Self {
        self.client_idle_timeout = d;
        self
    }

    /// The whole-request timeout.
    pub fn total_timeout(&self) -> Duration {
        self.timeout
    }

    /// A concurrency slot, waiting at most the queue timeout (or `limit`, if sooner); a
    /// `last_resort` request may wait up to `limit` (see [`limiter::Limiter::acquire`]).
    /// Returns how long it waited.
    pub async fn acquire(
        &self,
        limit: Duration,
        last_resort: bool,
    ) -> Result<(limiter::Permit, Duration), Error> {
        let start = Instant::now();
        match self
            .limiter
            .acquire(self.queue_timeout.min(limit), last_resort.then_some(limit))
            .await
        {
            Ok(permit) => Ok((permit, start.elapsed())),
            Err(why) => Err(Error::busy(
                "provider_busy",
                format!(
                    "provider {} is at this gateway's concurrency limit ({}, {})",
                    self.name,
                    self.limiter.limit(),
                    match why {
                        limiter::Busy::QueueFull => "its queue is full",
                        limiter::Busy::Timeout => "no slot freed in time",
                    }
                ),
            )
            .with_failure(Failure::Busy)),
        }
    }

    /// The configured first-content wait of `model` (see [`crate::deadline::configured`]).
    pub fn first_token_bounds(&self, model: Option<&ModelInfo>) -> crate::deadline::Bounds {
        let slow =
            self.is_local() || model.is_some_and(|m| m.tags.iter().any(|t| t == "reasoning"));
        crate::deadline::Bounds {
            configured: crate::deadline::configured(
                model.and_then(|m| m.first_token_timeout),
                self.first_token_timeout,
                slow,
            ),
            total: self.timeout,
        }
    }

    /// Whether models of this provider run locally (and cost nothing).
    pub fn is_local(&self) -> bool {
        self.protocol == Protocol::Ollama
    }

    /// Chat completion, streamed or not.
    pub async fn chat(&self, call: ChatCall<'_>) -> Result<ChatResponse, Error> {
        self.key_ready()?;
        match self.protocol {
            Protocol::Openai | Protocol::Ollama => openai::chat(self, call).await,
            Protocol::Anthropic => anthropic::chat(self, call).await,
        }
    }

    /// Embeddings; `None` when the protocol has no embeddings endpoint.
    pub async fn embeddings(
        &self,
        raw: Map<String, Value>,
        model: &str,
    ) -> Option<Result<(Bytes, Option<Usage>), Error>> {
        if let Err(e) = self.key_ready() {
            return Some(Err(e));
        }
        match self.protocol {
            Protocol::Openai | Protocol::Ollama => Some(openai::embeddings(self, raw, model).await),
            Protocol::Anthropic => None,
        }
    }

    /// Refuses at once while the operator has not pushed this provider's key: the provider
    /// is unavailable (failover moves on), not at fault (its breaker does not hear of it).
    fn key_ready(&self) -> Result<(), Error> {
        if let Some(why) = &self.key_withheld {
            return Err(self.withheld(why));
        }
        match &self.key_pending {
            None => Ok(()),
            Some(secret) => Err(Error::new(
                crate::error::Kind::Unavailable,
                format!(
                    "provider {} is waiting for its API key (Secret {secret}) from the operator",
                    self.name
                ),
            )
            .with_code("credentials_pending")
            .with_failure(Failure::Busy)),
        }
    }

    /// The refusal of a provider whose key this gateway is not given: not its fault, and
    /// failover moves on.
    pub fn withheld(&self, why: &str) -> Error {
        Error::new(
            crate::error::Kind::Forbidden,
            format!(
                "provider {} is not available to this gateway: {why}",
                self.name
            ),
        )
        .with_code("provider_withheld")
        .with_failure(Failure::Busy)
    }

    /// A JSON POST of `body` to `url` with the provider's auth and headers.
    fn post(
        &self,
        url: http::Uri,
        body: impl serde::Serialize,
    ) -> Result<http::Request<Bytes>, Error> {
        let body = serde_json::to_vec(&body).map_err(|e| {
            Error::invalid(
                "messages",
                format!("the request cannot be sent as JSON: {e}"),
            )
        })?;
        let mut headers = self.headers.clone();
        // The attempt's trace context, so the provider's spans join the request's trace.
        crate::trace_context::inject(&mut headers);
        // As reqwest did: a configured header of the same name wins, and `accept: */*`.
        headers
            .entry(header::CONTENT_TYPE)
            .or_insert(HeaderValue::from_static("application/json"));
        headers
            .entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        headers
            .entry(header::USER_AGENT)
            .or_insert(HeaderValue::from_static(concat!(
                "llm-gateway/",
                env!("CARGO_PKG_VERSION")
            )));
        match &self.auth {
            Auth::None => {}
            Auth::Header(name, value) => {
                headers.insert(name, value.clone());
            }
            Auth::Unsendable => {
                return Err(Error::new(
                    crate::error::Kind::Unavailable,
                    format!(
                        "provider {}: its API key has characters an HTTP header cannot carry",
                        self.name
                    ),
                )
                .with_code("credentials_invalid")
                .with_failure(Failure::Busy))
            }
        }
        let mut req = http::Request::new(Bytes::from(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = url;
        *req.headers_mut() = headers;
        Ok(req)
    }

    /// A POST of a chat request to this provider's chat endpoint.
    fn post_chat(&self, body: impl serde::Serialize) -> Result<http::Request<Bytes>, Error> {
        self.post(self.chat_url.clone(), body)
    }

    /// Sends a request, mapping transport failures and upstream error statuses to [`Error`].
    async fn send(
        &self,
        req: http::Request<Bytes>,
        stream: bool,
    ) -> Result<transport::Response, Error> {
        let client = &self.clients_by_thread[crate::threads::slot() % self.clients_by_thread.len()];
        let resp = client
            .send(req, (!stream).then_some(self.timeout))
            .await
            .map_err(|e| from_transport(&self.name, e, TimeoutKind::Total))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.upstream_error(resp).await)
    }

    /// Reads an upstream error response into an OpenAI error with the same status.
    async fn upstream_error(&self, resp: transport::Response) -> Error {
        let status = resp.status();
        let header = |k: &str| {
            resp.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        // `retry-after-ms` (OpenAI) is more precise than `Retry-After` when both are sent;
        // `Retry-After` is seconds or an HTTP date.
        let retry_after = header("retry-after-ms")
            .and_then(|ms| ms.trim().parse::<f64>().ok())
            .map(|ms| ms / 1000.0)
            .or_else(|| header("retry-after").and_then(|s| retry_after_secs(&s)))
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e7)
            .map(Duration::from_secs_f64);
        let body = read_capped(resp, MAX_ERROR_BODY).await;
        let code = status.as_u16();
        if status.is_redirection() {
            // Not followed: a redirect would re-send the key and the prompt elsewhere.
            return Error::bad_gateway(format!(
                "provider {} answered with a redirect (HTTP {code}), which this gateway does not follow; check its base_url",
                self.name
            ))
            .with_failure(Failure::Malformed);
        }
        let mut err = match self.protocol {
            Protocol::Anthropic => anthropic::error_from_body(status, &body),
            _ => openai::error_from_body(status, &body),
        };
        let message = redact(&err.message);
        if code == 401 || code == 403 {
            // The gateway's own credentials were refused: not the client's fault, and its
            // key is not theirs to hear about.
            return Error::bad_gateway(format!(
                "provider {} refused this gateway's credentials (HTTP {code}): {message}",
                self.name
            ))
            .with_code("upstream_auth_failed")
            .with_failure(Failure::Status(code))
            .with_retry_after_opt(retry_after);
        }
        let name = &self.name;
        err = err
            .map_message(|_| format!("provider {name}: {message}"))
            .with_retry_after_opt(retry_after);
        if code == 408 || code == 429 || status.is_server_error() {
            err = err.with_failure(Failure::Status(code));
        }
        err
    }
}

/// A `Retry-After` value in seconds: a number of seconds, or an HTTP date (a date already
/// past is 0).
fn retry_after_secs(value: &str) -> Option<f64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return Some(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .map_or(0.0, |d| d.as_secs_f64()),
    )
}

pub use crate::config::DEFAULT_MAX_RESPONSE_BYTES;

/// A failure reading an upstream body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The transport failed.
    #[error("{0}")]
    Transport(#[from] transport::TransportError),
    /// The body passed the provider's `max_response_bytes`.
    #[error("the answer is larger than this gateway reads from it (max_response_bytes)")]
    TooLarge,
}

impl BodyError {
    /// Whether a read timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, BodyError::Transport(e) if e.is_timeout())
    }
}

impl Provider {
    /// A whole non-streaming body, at most `max_response_bytes`.
    async fn read_body(&self, mut resp: transport::Response) -> Result<Bytes, Error> {
        let mut buf = bytes::BytesMut::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if buf.len() + c.len() > self.max_response_bytes {
                        return Err(Error::bad_gateway(format!(
                            "provider {}: {}",
                            self.name,
                            BodyError::TooLarge
                        ))
                        .with_failure(Failure::Malformed));
                    }
                    buf.extend_from_slice(&c);
                }
                Ok(None) => return Ok(buf.freeze()),
                Err(e) => return Err(from_transport(&self.name, e, TimeoutKind::Total)),
            }
        }
    }
}

/// A stream's bytes, ending in an error once they pass `cap` (an event that never ends
/// would otherwise grow the parser's buffer without bound).
fn capped(
    resp: transport::Response,
    cap: usize,
) -> impl futures::Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    use futures::StreamExt;
    resp.into_stream().scan(0usize, move |seen, chunk| {
        let item = match chunk {
            Ok(c) => {
                *seen += c.len();
                if *seen > cap {
                    Some(Err(BodyError::TooLarge))
                } else {
                    Some(Ok(c))
                }
            }
            Err(e) => Some(Err(BodyError::Transport(e))),
        };
        futures::future::ready(item)
    })
}

/// Reads at most `cap` bytes of a response body, as text.
async fn read_capped(mut resp: transport::Response, cap: usize) -> String {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.extend_from_slice(&chunk);
        if buf.len() >= cap {
            buf.truncate(cap);
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// An error for an upstream status whose body could not be understood: the status only.
/// The body (an HTML error page, a proxy's message naming internal hosts) goes to the log,
/// not to the client.
fn opaque_error(status: StatusCode, body: &str) -> Error {
    let snippet: String = body.chars().take(300).collect();
    tracing::warn!(status = status.as_u16(), body = %redact(snippet.trim()), "upstream error body is not the protocol's error JSON");
    let status = if status.is_client_error() || status.is_server_error() {
        status
    } else {
        StatusCode::BAD_GATEWAY
    };
    let kind = if status.is_server_error() {
        "upstream_error"
    } else {
        "invalid_request_error"
    };
    Error::upstream(
        status.as_u16(),
        kind,
        format!(
            "upstream returned HTTP {} without an error message the gateway understands",
            status.as_u16()
        ),
    )
}

/// Maps a transport failure to 502/504 (its messages carry no URL); `timeout` says which
/// timeout a timeout error was.
pub fn from_transport(
    provider: &str,
    err: transport::TransportError,
    timeout: TimeoutKind,
) -> Error {
    if err.is_connect() && err.is_timeout() {
        Error::gateway_timeout(format!(
            "provider {provider} did not accept a connection in time"
        ))
        .with_failure(Failure::Timeout(TimeoutKind::Connect))
    } else if err.is_timeout() {
        Error::gateway_timeout(format!("provider {provider} did not answer in time"))
            .with_failure(Failure::Timeout(timeout))
    } else if err.is_connect() {
        Error::bad_gateway(format!("provider {provider} is unreachable"))
            .with_failure(Failure::Connect)
    } else {
        Error::bad_gateway(format!("provider {provider} failed: {err}"))
            .with_failure(Failure::StreamCut)
    }
}

/// Longest upstream error message passed on.
const MAX_ERROR_MESSAGE: usize = 1000;

/// A provider's error message as the client may see it: key-like tokens and IP addresses
/// removed (a provider may quote a masked key, a proxy an internal address), and bounded.
pub fn redact(message: &str) -> String {
    let looks_secret = |w: &str| {
        let w = w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '*');
        let lower = w.to_ascii_lowercase();
        ["sk-", "sk_", "gsk_", "xai-", "tgp_", "key-", "bearer"]
            .iter()
            .any(|p| lower.starts_with(p) && w.len() > p.len() + 3)
            || w.contains("***")
            || (w.len() >= 24
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && w.chars().any(|c| c.is_ascii_digit())
                && w.chars().any(|c| c.is_ascii_alphabetic()))
    };
    let looks_ip = |w: &str| {
        let w = w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '.' && c != ':');
        let host = w.split(':').next().unwrap_or(w);
        host.parse::<std::net::Ipv4Addr>().is_ok()
            || (w.contains("::") && w.parse::<std::net::Ipv6Addr>().is_ok())
    };
    let mut out = String::with_capacity(message.len().min(MAX_ERROR_MESSAGE));
    for (i, w) in message.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if looks_secret(w) || looks_ip(w) {
            out.push_str("[redacted]");
        } else {
            out.push_str(w);
        }
        if out.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.push('…');
            break;
        }
    }
    out
}

/// Channel depth between an upstream reader task and the client writer: small, so a slow
/// client slows the upstream read instead of buffering without bound.
const STREAM_BUFFER: usize = 16;

/// The reading end of a translated stream.
#[derive(Debug)]
pub struct StreamRx {
    rx: mpsc::Receiver<StreamItem>,
    client_stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl StreamRx {
    /// The next item; `None` once the upstream side is gone.
    pub async fn recv(&mut self) -> Option<StreamItem> {
        self.rx.recv().await
    }

    /// An item that is already here, without waiting: `Some(None)` once the upstream side is
    /// gone, `None` when nothing has arrived yet. Polled rather than `try_recv`, which parks
    /// the thread while a sender on another thread is half-way through a send.
    pub async fn ready(&mut self) -> Option<Option<StreamItem>> {
        std::future::poll_fn(|cx| match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(item) => std::task::Poll::Ready(Some(item)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }

    /// Whether the stream ended because the client stopped reading (not the provider's
    /// fault: it must not count against its breaker).
    pub fn client_stalled(&self) -> bool {
        self.client_stalled
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The writing end, held by the task reading the upstream.
#[derive(Debug)]
pub struct StreamTx {
    tx: mpsc::Sender<StreamItem>,
    client_stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl StreamTx {
    /// Hands an item to the client side; false when the client is gone or has not read for
    /// the idle timeout (then the upstream connection is dropped rather than held forever,
    /// and the stream is marked as ended by the client).
    pub async fn forward(&self, item: StreamItem, idle: Duration) -> bool {
        match self.tx.send_timeout(item, idle).await {
            Ok(()) => true,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                self.client_stalled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                false
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
        }
    }
}

/// A channel for a translated stream.
fn stream_channel() -> (StreamTx, StreamRx) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    (
        StreamTx {
            tx,
            client_stalled: flag.clone(),
        },
        StreamRx {
            rx,
            client_stalled: flag,
        },
    )
}

/// An error for a stream that failed while being read.
fn stream_read_error(provider: &str, e: event_stream::StreamError) -> Error {
    match e {
        e if e.is_timeout() => {
            Error::gateway_timeout(format!("provider {provider} went silent mid-stream"))
                .with_failure(Failure::Timeout(TimeoutKind::Idle))
        }
        // Bytes that are not text are the upstream breaking the protocol, not the connection.
        event_stream::StreamError::Utf8(e) => Error::bad_gateway(format!(
            "provider {provider} sent an invalid stream chunk: {e}"
        ))
        .with_failure(Failure::Malformed),
        e => Error::bad_gateway(format!("provider {provider} stream failed: {e}"))
            .with_failure(Failure::StreamCut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        assert_eq!(retry_after_secs(" 120 "), Some(120.0));
        assert_eq!(retry_after_secs("1.5"), Some(1.5));
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(60);
        let secs = retry_after_secs(&httpdate::fmt_http_date(in_a_minute)).unwrap();
        // The date has whole seconds: 59 to 60 seconds from now.
        assert!((58.0..=60.0).contains(&secs), "{secs}");
        assert_eq!(
            retry_after_secs("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(0.0),
            "a past date: now"
        );
        assert_eq!(retry_after_secs("soon"), None);
    }

    #[test]
    fn a_stream_event_that_is_not_utf8_is_malformed_not_cut() {
        let bad = String::from_utf8(vec![b'{', 0xff]).unwrap_err();
        let e = stream_read_error("openai", event_stream::StreamError::Utf8(bad));
        assert_eq!(e.failure, Some(Failure::Malformed));
        assert!(e.message.contains("invalid stream chunk"), "{}", e.message);
    }

    #[test]
    fn error_messages_lose_keys_and_addresses() {
        let cases = [
            (
                "Incorrect API key provided: sk-proj-abc***************wxyz. You can find your API key at https://platform.openai.com.",
                "Incorrect API key provided: [redacted] You can find your API key at https://platform.openai.com.",
            ),
            ("upstream connect error to 10.12.0.7:8443", "upstream connect error to [redacted]"),
            ("token gsk_8f3b2a1c9d8e7f6a5b4c3d2e1f0 rejected", "token [redacted] rejected"),
            ("The model `gpt-9` does not exist", "The model `gpt-9` does not exist"),
        ];
        for (msg, want) in cases {
            assert_eq!(redact(msg), want);
        }
        assert!(redact(&"x ".repeat(5000)).len() <= MAX_ERROR_MESSAGE + 4);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_releases_the_upstream() {
        let (tx, mut rx) = stream_channel();
        let chunk = || StreamItem::End;
        let idle = Duration::from_millis(50);
        for _ in 0..STREAM_BUFFER {
            assert!(tx.forward(chunk(), idle).await, "room in the buffer");
        }
        let t = Instant::now();
        assert!(!tx.forward(chunk(), idle).await, "full and unread: give up");
        assert!(t.elapsed() >= idle);
        assert!(
            rx.client_stalled(),
            "the client's doing, not the provider's"
        );
        rx.recv().await;
        assert!(tx.forward(chunk(), idle).await, "read again: go on");
        drop(rx);
        assert!(
            !tx.forward(chunk(), Duration::from_secs(5)).await,
            "client gone: stop at once"
        );
    }
}
