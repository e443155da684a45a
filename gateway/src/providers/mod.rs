//! Upstream providers, one module per wire protocol. Each turns an OpenAI-shaped request into
//! its protocol, calls the upstream over a pooled connection, and hands back OpenAI-shaped
//! JSON or chunks.

pub mod anthropic;
pub mod limiter;
pub mod ollama;
pub mod openai;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use llm_gateway_crds::Protocol;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::api::error::{from_transport, ApiError, Failure, TimeoutKind};
use crate::breaker::{Breaker, BreakerConfig};
use crate::config::{ProviderSettings, Secret};
use crate::models::info::ModelInfo;
use crate::openai::{ChatRequest, Usage};

/// Longest upstream error body read before it is cut (errors are small; a huge one is a fault).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A configured upstream with its connection pool.
#[derive(Debug)]
pub struct Provider {
    /// Unique name.
    pub name: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Base URL without a trailing slash.
    pub base_url: String,
    api_key: Option<Secret>,
    headers: HeaderMap,
    client: reqwest::Client,
    timeout: Duration,
    /// `first_token_timeout_secs`, when configured for the whole provider.
    pub first_token_timeout: Option<Duration>,
    anthropic_version: String,
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
    Stream(mpsc::Receiver<StreamItem>),
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
    Error(ApiError),
    /// The upstream finished the stream properly.
    End,
}

/// The parts of a validated chat request a provider needs.
pub struct ChatCall<'a> {
    /// The typed view.
    pub req: &'a ChatRequest,
    /// The raw JSON body, forwarded as-is to OpenAI-protocol upstreams.
    pub raw: Map<String, Value>,
    /// The upstream model name.
    pub model: &'a str,
    /// What the catalog knows of the model.
    pub info: Option<&'a ModelInfo>,
}

impl Provider {
    /// Builds the provider and its HTTP client from validated settings.
    pub fn new(s: &ProviderSettings) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(s.connect_timeout)
            .read_timeout(s.read_idle_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("llm-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            name: s.name.clone(),
            protocol: s.protocol,
            base_url: s.base_url.as_str().trim_end_matches('/').to_owned(),
            api_key: s.api_key.clone(),
            headers: s.headers.clone(),
            client,
            timeout: s.timeout,
            first_token_timeout: s.first_token_timeout,
            anthropic_version: s.anthropic_version.clone(),
            default_max_tokens: s.default_max_tokens,
            breaker: Arc::new(Breaker::new(s.breaker, Instant::now())),
            breaker_config: s.breaker,
            limiter: {
                let l = limiter::Limiter::new(s.max_concurrency);
                l.start_ticker();
                l
            },
            unlisted_deadlines: Arc::default(),
            queue_timeout: s.queue_timeout,
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

    /// A concurrency slot, waiting at most the queue timeout (or `limit`, if sooner);
    /// returns how long it waited.
    pub async fn acquire(&self, limit: Duration) -> Result<(limiter::Permit, Duration), ApiError> {
        let start = Instant::now();
        match self.limiter.acquire(self.queue_timeout.min(limit)).await {
            Ok(permit) => Ok((permit, start.elapsed())),
            Err(why) => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
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
                .with_code("provider_busy")
                .with_failure(Failure::Busy);
                e.retry_after = Some("1".into());
                Err(e)
            }
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
    pub async fn chat(&self, call: ChatCall<'_>) -> Result<ChatResponse, ApiError> {
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
    ) -> Option<Result<(Bytes, Option<Usage>), ApiError>> {
        match self.protocol {
            Protocol::Openai | Protocol::Ollama => Some(openai::embeddings(self, raw, model).await),
            Protocol::Anthropic => None,
        }
    }

    /// A POST to `url` with the provider's auth and headers.
    fn post(&self, url: &str) -> reqwest::RequestBuilder {
        let mut rb = self.client.post(url).headers(self.headers.clone());
        if let Some(key) = &self.api_key {
            rb = match self.protocol {
                Protocol::Anthropic => rb.header("x-api-key", key.expose()),
                _ => rb.bearer_auth(key.expose()),
            };
        }
        rb
    }

    /// Sends a request, mapping transport failures and upstream error statuses to [`ApiError`].
    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        stream: bool,
    ) -> Result<reqwest::Response, ApiError> {
        let rb = if stream { rb } else { rb.timeout(self.timeout) };
        let resp = rb
            .send()
            .await
            .map_err(|e| from_transport(&self.name, e, TimeoutKind::Total))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.upstream_error(resp).await)
    }

    /// Reads an upstream error response into an OpenAI error with the same status.
    async fn upstream_error(&self, resp: reqwest::Response) -> ApiError {
        let status = resp.status();
        let header = |k: &str| {
            resp.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        // `retry-after-ms` (OpenAI) is more precise than `Retry-After` when both are sent.
        let retry_after = header("retry-after-ms")
            .and_then(|ms| ms.trim().parse::<f64>().ok())
            .map(|ms| format!("{}", (ms / 1000.0).ceil().max(0.0) as u64))
            .or_else(|| header("retry-after"));
        let body = read_capped(resp, MAX_ERROR_BODY).await;
        let mut err = match self.protocol {
            Protocol::Anthropic => anthropic::error_from_body(status, &body),
            _ => openai::error_from_body(status, &body),
        };
        err.message = format!("provider {}: {}", self.name, err.message);
        err.retry_after = retry_after;
        let code = status.as_u16();
        if code == 408 || code == 429 || status.is_server_error() {
            err.failure = Some(Failure::Status(code));
        }
        err
    }
}

/// Reads at most `cap` bytes of a response body, as text.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> String {
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

/// An error for an upstream status whose body could not be understood.
fn opaque_error(status: StatusCode, body: &str) -> ApiError {
    let snippet: String = body.chars().take(300).collect();
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
    ApiError::new(
        status,
        kind,
        format!(
            "upstream returned HTTP {}: {}",
            status.as_u16(),
            snippet.trim()
        ),
    )
}

/// Channel depth between an upstream reader task and the client writer: small, so a slow
/// client slows the upstream read instead of buffering without bound.
const STREAM_BUFFER: usize = 16;

/// A channel for a translated stream.
fn stream_channel() -> (mpsc::Sender<StreamItem>, mpsc::Receiver<StreamItem>) {
    mpsc::channel(STREAM_BUFFER)
}

/// Hands an item to the client side; false when the client is gone or has not read for the
/// idle timeout (then the upstream connection is dropped rather than held forever).
async fn forward(tx: &mpsc::Sender<StreamItem>, item: StreamItem, idle: Duration) -> bool {
    tx.send_timeout(item, idle).await.is_ok()
}

/// An error for a stream that failed while being read.
fn stream_read_error(provider: &str, e: impl std::fmt::Display, timed_out: bool) -> ApiError {
    if timed_out {
        ApiError::gateway_timeout(format!("provider {provider} went silent mid-stream"))
            .with_failure(Failure::Timeout(TimeoutKind::Idle))
    } else {
        ApiError::bad_gateway(format!("provider {provider} stream failed: {e}"))
            .with_failure(Failure::StreamCut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_that_stops_reading_releases_the_upstream() {
        let (tx, mut rx) = mpsc::channel(1);
        let chunk = || StreamItem::End;
        assert!(
            forward(&tx, chunk(), Duration::from_millis(50)).await,
            "room in the buffer"
        );
        let t = Instant::now();
        assert!(
            !forward(&tx, chunk(), Duration::from_millis(50)).await,
            "full and unread: give up"
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        rx.recv().await;
        assert!(
            forward(&tx, chunk(), Duration::from_millis(50)).await,
            "read again: go on"
        );
        drop(rx);
        assert!(
            !forward(&tx, chunk(), Duration::from_secs(5)).await,
            "client gone: stop at once"
        );
    }
}
