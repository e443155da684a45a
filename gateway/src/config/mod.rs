//! Configuration: read a `GatewayConfig` (from a YAML file or from the environment), validate
//! it once into typed [`Settings`], which is all the rest of the gateway ever sees.

pub mod budget;
mod env;
mod file;
pub mod model;
pub mod resilience;
pub mod routing;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderMap;
use llm_gateway_crds::{GatewayConfig, Protocol};
use url::Url;

use crate::config::model::ModelInfo;
use routing::VirtualSpec;

pub use env::from_env;
pub use file::{load_file, load_replacement, parse, parse_json, parse_replacement};
pub use validate::{validate, validate_as};

/// Default largest request body: 10 MiB (room for a few inline images).
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Default largest upstream answer read: a non-streaming body, or all of a stream.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Default listen address: loopback only, since the quick start has no authentication.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `max_tokens` sent to Anthropic when the client gives none.
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u32 = 4096;

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address from the file, if it set one.
    pub listen: Option<SocketAddr>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Requests served at once.
    pub max_concurrency: usize,
    /// Longest wait for a global slot.
    pub queue_timeout: Duration,
    /// Drain time on SIGTERM.
    pub drain_timeout: Duration,
    /// Longest a stream waits for a client that does not read.
    pub client_idle_timeout: Duration,
    /// Admin endpoints' bearer token; `None` turns them off.
    pub admin_token: Option<Secret>,
    /// Longest wait for a request's headers (and on an idle kept-alive connection).
    pub header_read_timeout: Duration,
    /// Open client connections at most.
    pub max_connections: usize,
    /// Requests in progress per tenant at most.
    pub max_concurrency_per_tenant: usize,
    /// Request body bytes buffered at once.
    pub max_buffered_body_bytes: usize,
    /// Separate address for `/metrics`, if set.
    pub metrics_listen: Option<SocketAddr>,
    /// CORS origins allowed (`*` for any).
    pub cors_allowed_origins: Vec<String>,
    /// Providers in order of preference.
    pub providers: Vec<ProviderSettings>,
    /// Virtual models and latency tracking.
    pub routing: RoutingSettings,
    /// The response cache.
    pub cache: CacheSettings,
    /// Budgets declared with the configuration.
    pub budgets: Vec<budget::Budget>,
}

/// The default cosine threshold (`cache.similarity_threshold`): the candidate filter for
/// all-MiniLM-L6-v2, chosen with the cache's verifier by `e2e/cache/train_verifier.py` for
/// the most true hits at no more than 1% false hits on every evaluated source.
pub const DEFAULT_SIMILARITY_THRESHOLD: f32 = 0.85;

/// Validated cache settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// On at all.
    pub enabled: bool,
    /// Semantic matching wanted.
    pub semantic: bool,
    /// Default similarity threshold.
    pub threshold: f32,
    /// Default TTL.
    pub ttl: Duration,
    /// Most entries in process.
    pub max_entries: usize,
    /// Most bytes of entries in process.
    pub max_bytes: usize,
    /// Largest entry cached.
    pub max_entry_bytes: usize,
    /// Most bytes of entries in Redis, all replicas together.
    pub redis_max_bytes: usize,
    /// Requests above this temperature bypass the cache.
    pub max_temperature: f64,
    /// Tool-call answers are cached.
    pub cache_tool_calls: bool,
    /// Embedding model folder, if configured.
    pub embedding_model: Option<std::path::PathBuf>,
    /// A provider's embeddings model (`provider/model`) to use instead of the local model.
    pub embedding_provider: Option<String>,
    /// A verifier weights file to use instead of the built-in one.
    pub verifier_weights: Option<std::path::PathBuf>,
    /// Per-virtual-model overrides.
    pub routes: std::collections::HashMap<String, RouteCache>,
}

/// One virtual model's cache settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteCache {
    /// On for this virtual model.
    pub enabled: bool,
    /// Its similarity threshold.
    pub threshold: f32,
    /// Its TTL.
    pub ttl: Duration,
}

/// Validated routing settings.
#[derive(Debug, Clone)]
pub struct RoutingSettings {
    /// Virtual models: the built-ins, replaced or extended by config.
    pub virtuals: Vec<VirtualSpec>,
    /// Decay constant of measured latency slowdowns.
    pub latency_decay: Duration,
    /// Failover along the ranking.
    pub failover: FailoverSettings,
}

/// Validated failover settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailoverSettings {
    /// Upstream attempts per request, first included.
    pub max_attempts: u32,
    /// Time budget of all attempts until a response starts.
    pub deadline: Duration,
    /// What to do when every candidate's breaker is open.
    pub when_all_open: llm_gateway_crds::AllOpen,
}

/// Variable holding the admin token when the config names none.
pub const ADMIN_TOKEN_ENV: &str = "LLM_GATEWAY_ADMIN_TOKEN";

/// Default `routing.latency_decay_secs`.
pub const DEFAULT_LATENCY_DECAY_SECS: f64 = 30.0;

/// One validated provider.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Unique name, prefix of qualified model names.
    pub name: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Base URL without a trailing slash.
    pub base_url: Url,
    /// The key, read from its source.
    pub api_key: Option<Secret>,
    /// The key is held by the operator and not here yet (`namespace/secret/key`): calls
    /// answer 503 `credentials_pending` until a push brings it.
    pub key_pending: Option<String>,
    /// The operator holds the key and does not give it to this gateway (why): the provider
    /// refuses every call (403) and routing passes it over.
    pub key_withheld: Option<String>,
    /// Only these tenants or namespaces may use it (`None`: everyone).
    pub clients: Option<Vec<String>>,
    /// Extra headers sent upstream.
    pub headers: HeaderMap,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout of non-streaming calls.
    pub timeout: Duration,
    /// Longest silence between two reads.
    pub read_idle_timeout: Duration,
    /// `first_token_timeout_secs` when set (else a default by model kind, see
    /// [`crate::deadline::configured`]).
    pub first_token_timeout: Option<Duration>,
    /// Ceiling of the adaptive concurrency limit, when set.
    pub max_concurrency: Option<usize>,
    /// Largest answer read from this provider.
    pub max_response_bytes: usize,
    /// Longest wait for a slot of this provider.
    pub queue_timeout: Duration,
    /// Breaker thresholds.
    pub breaker: resilience::BreakerConfig,
    /// Anthropic's `anthropic-version` header.
    pub anthropic_version: http::HeaderValue,
    /// Anthropic's `max_tokens` default.
    pub default_max_tokens: u32,
    /// Ask the provider for its models at start.
    pub discover_models: bool,
    /// Dropped quietly when discovery finds nothing there (the quick start's Ollama probe).
    pub optional: bool,
    /// Models, catalog and config merged.
    pub models: Vec<ModelInfo>,
}

/// Where a configuration document comes from; it decides what the document may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocSource<'a> {
    /// A file (named in errors): secrets by `env` or `file` only.
    File(&'a str),
    /// The quick start's environment: an unreachable Ollama is skipped, not an error.
    Environment,
    /// Pushed to `PUT /admin/config` (authenticated): secrets may be inline `value`s.
    Pushed,
}

impl DocSource<'_> {
    /// How errors name it.
    pub fn name(&self) -> &str {
        match self {
            DocSource::File(f) => f,
            DocSource::Environment => "environment",
            DocSource::Pushed => "pushed config",
        }
    }
}

/// The quick start's configuration: providers from the standard environment variables.
pub fn quick_start(
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<(GatewayConfig, Settings), ConfigError> {
    let doc = from_env(getenv);
    let s = validate_as(&doc, DocSource::Environment, getenv)?;
    Ok((doc, s))
}

/// A secret value whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(v: impl Into<String>) -> Self {
        Self(v.into())
    }
    /// The value, for the one place that sends it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A configuration problem: where (file and field path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `environment`.
    pub source: String,
    /// Field path such as `providers[1].base_url`; empty for the whole document.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at a field path.
    pub fn at(source: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source: source.to_owned(),
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(
                f,
                "invalid configuration in {}: {}",
                self.source, self.message
            )
        } else {
            write!(
                f,
                "invalid configuration in {}: {}: {}",
                self.source, self.path, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}
