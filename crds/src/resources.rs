//! The Kubernetes resources (group `llmgateway.io`, version `v1alpha1`, namespaced):
//! [`ProviderPool`], [`LLMRoute`] and [`BudgetPolicy`]. The operator compiles them into one
//! [`crate::GatewayConfig`] for every gateway pod.
//!
//! Everything a schema can say is in the schema (enums, ranges, patterns, required fields).
//! Cross-field rules are written as CEL `x-kubernetes-validations` for clusters that have CEL
//! (1.25+) and are also checked by the operator, which reports them as `Accepted=False`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AllOpen, Capability, ModelKind, Strategy};

/// The API group.
pub const GROUP: &str = "llmgateway.io";
/// The API version.
pub const VERSION: &str = "v1alpha1";

/// A reference to one key of a Secret in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Which vendor (or protocol) a provider is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderType {
    /// OpenAI (catalog, default base URL).
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Groq (OpenAI protocol).
    Groq,
    /// Together AI (OpenAI protocol).
    Together,
    /// Ollama; its pulled models are discovered.
    Ollama,
    /// Any other OpenAI-compatible server (vLLM, LM Studio, ...): `baseUrl` required.
    OpenaiCompatible,
}

/// One model of a provider: overrides or adds to the built-in catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolModel {
    /// The provider's name for it.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// `chat` (default) or `embedding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ModelKind>,
    /// USD per million input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub input_usd_per_mtok: Option<f64>,
    /// USD per million output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub output_usd_per_mtok: Option<f64>,
    /// Context window, tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub context_window: Option<u32>,
    /// Largest completion, tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_output_tokens: Option<u32>,
    /// What it can do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Capability>>,
    /// Quality prior in [0, 1] (routing uses measured quality where there is some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub quality: Option<f64>,
    /// Latency prior, milliseconds (until latency is measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub latency_ms: Option<f64>,
    /// Tags routes can select on (`code`, `reasoning`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Circuit breaker thresholds (defaults in the README's Resilience section).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BreakerSpec {
    /// Consecutive failures that open it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub consecutive_failures: Option<u32>,
    /// Failure ratio over the window that opens it, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub failure_ratio: Option<f64>,
    /// First open period, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub base_backoff_seconds: Option<f64>,
    /// Longest open period, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_backoff_seconds: Option<f64>,
}

/// Timeouts, seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// Connecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub connect_seconds: Option<f64>,
    /// Waiting for the first token (learned per model below this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub first_token_seconds: Option<f64>,
    /// Silence between two reads of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub read_idle_seconds: Option<f64>,
    /// The whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub total_seconds: Option<f64>,
}

/// One provider of a pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'openai-compatible' || has(self.baseUrl)",
     "message": "an openai-compatible provider needs baseUrl"}
]))]
pub struct PoolProvider {
    /// Its name (a DNS label); clients reach its models as `name/model`. Providers of a
    /// pool outside the operator's namespace are named `namespace.name`.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// Vendor or protocol.
    #[serde(rename = "type")]
    pub provider_type: ProviderType,
    /// Base URL (default: the vendor's; required for `openai-compatible`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub base_url: Option<String>,
    /// The API key, from a Secret in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Extra request headers (no credentials: those belong in the Secret).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Models: override catalog entries or add models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<PoolModel>,
    /// Serve the built-in catalog's models of this vendor (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_catalog: Option<bool>,
    /// Circuit breaker thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerSpec>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    /// Ceiling of the adaptive concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrency: Option<u32>,
}

/// Upstream providers and their models.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "llmgateway.io",
    version = "v1alpha1",
    kind = "ProviderPool",
    namespaced,
    status = "ProviderPoolStatus",
    shortname = "llmpool",
    printcolumn = r#"{"name":"Providers","type":"integer","jsonPath":".status.providers"}"#,
    printcolumn = r#"{"name":"Models","type":"integer","jsonPath":".status.modelsEnabled"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderPoolSpec {
    /// The providers (names unique within the pool).
    #[schemars(length(min = 1, max = 64))]
    pub providers: Vec<PoolProvider>,
}

/// What the operator made of a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderPoolStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid) and `Ready` (live on every gateway).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Providers compiled.
    #[serde(default)]
    pub providers: u32,
    /// Models enabled (configured or from the catalog).
    #[serde(default)]
    pub models_enabled: u32,
    /// Providers whose Secret (or key in it) is missing, as `provider: secret/key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_secrets: Vec<String>,
}

/// Which pools a virtual model draws from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CandidatesSpec {
    /// Pools by name (in this namespace or the operator's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    /// Pools by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_selector: Option<LabelSelector>,
    /// Only these models (bare or `provider/model`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Only models with one of these tags (`local`, `tools`, `vision`, `json`, `code`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Fixed score weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightsSpec {
    /// Cost.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub cost: f64,
    /// Quality.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub quality: f64,
    /// Latency.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub latency: f64,
}

/// Cache settings of a virtual model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteCacheSpec {
    /// Cache its answers (the gateway's cache must be on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Cosine similarity for a rephrased prompt to hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub similarity_threshold: Option<f64>,
    /// How long answers are kept, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub ttl_seconds: Option<f64>,
}

/// Hedging: exactly one of a delay or a quantile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.afterSeconds) != has(self.afterQuantile)",
     "message": "set exactly one of afterSeconds or afterQuantile"}
]))]
pub struct HedgeSpec {
    /// After this many seconds without an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub after_seconds: Option<f64>,
    /// Once slower than this quantile of the first candidate's own times, in (0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub after_quantile: Option<f64>,
}

/// One virtual model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualModelSpec {
    /// The name clients send as `model` (`auto`, `fast`, `cheap`, `quality` replace the
    /// built-ins).
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"),
        length(min = 1, max = 128)
    )]
    pub name: String,
    /// What it optimises for.
    pub strategy: Strategy,
    /// Fixed weights instead of the strategy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<WeightsSpec>,
    /// Which models it may use (default: every chat model of the pools the route sees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<CandidatesSpec>,
    /// A local candidate wins at this fraction of the best score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub local_preference: Option<f64>,
    /// Cache settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<RouteCacheSpec>,
    /// Hedged requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgeSpec>,
}

/// Failover settings of a route (the operator's namespace's route sets the gateway's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailoverSpec {
    /// Attempts per request, the first included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: Option<u32>,
    /// The deadline for a response to start, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub deadline_seconds: Option<f64>,
    /// With every breaker open: `reject` or `try-soonest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_all_open: Option<AllOpen>,
}

/// Virtual models and how they route.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "llmgateway.io",
    version = "v1alpha1",
    kind = "LLMRoute",
    plural = "llmroutes",
    namespaced,
    status = "LLMRouteStatus",
    shortname = "llmroute",
    printcolumn = r#"{"name":"Models","type":"string","jsonPath":".status.virtualModels"}"#,
    printcolumn = r#"{"name":"Gateways","type":"string","jsonPath":".status.gateways"}"#,
    printcolumn = r#"{"name":"Config","type":"string","jsonPath":".status.configVersion"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LLMRouteSpec {
    /// The virtual models (names unique within the route).
    #[schemars(length(min = 1, max = 64))]
    pub virtual_models: Vec<VirtualModelSpec>,
    /// Failover (honoured on a route in the operator's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSpec>,
}

/// What the operator made of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LLMRouteStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` and `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Its virtual models that are live, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_models: Option<String>,
    /// Gateways running the current configuration, e.g. `3/3 in sync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<String>,
    /// The configuration version that includes this route's current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,
}

/// Whom a budget covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SubjectKind {
    /// A tenant of virtual keys.
    Tenant,
    /// One virtual key, by id.
    Key,
    /// Every caller from a namespace (sidecars there, service-account tokens from it).
    Namespace,
    /// Callers with one service account, `namespace/name` (or `name` in this namespace).
    ServiceAccount,
}

/// One subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// What it is.
    pub kind: SubjectKind,
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The window a budget's limits cover (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PeriodSpec {
    /// Calendar month.
    #[default]
    Month,
    /// ISO week (from Monday).
    Week,
    /// Day.
    Day,
}

/// At the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnLimitSpec {
    /// 429.
    #[default]
    Reject,
    /// Route virtual models to cheaper or local models that still fit.
    Downgrade,
}

/// Spend and rate limits for some callers.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "llmgateway.io",
    version = "v1alpha1",
    kind = "BudgetPolicy",
    namespaced,
    status = "BudgetPolicyStatus",
    shortname = "llmbudget",
    printcolumn = r#"{"name":"Spent USD","type":"number","jsonPath":".status.spentUsd"}"#,
    printcolumn = r#"{"name":"Limit USD","type":"number","jsonPath":".spec.limitUsd"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.limitUsd) || has(self.limitTokens) || has(self.requestsPerMinute) || has(self.tokensPerMinute)",
     "message": "set at least one of limitUsd, limitTokens, requestsPerMinute, tokensPerMinute"}
]))]
pub struct BudgetPolicySpec {
    /// Whom it covers (each subject gets its own budget with these limits).
    #[schemars(length(min = 1, max = 100))]
    pub subjects: Vec<Subject>,
    /// The window of the USD and token limits.
    #[serde(default)]
    pub period: PeriodSpec,
    /// USD per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub limit_usd: Option<f64>,
    /// Tokens per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub limit_tokens: Option<u64>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub tokens_per_minute: Option<u64>,
    /// At the USD limit.
    #[serde(default)]
    pub on_limit: OnLimitSpec,
}

/// A subject's figures this period, read from a gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectSpend {
    /// The subject, `kind/name`.
    pub subject: String,
    /// Settled spend, USD.
    pub spent_usd: f64,
    /// Held by requests in flight, USD.
    pub reserved_usd: f64,
    /// Left, USD (when a USD limit is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_usd: Option<f64>,
    /// Settled tokens.
    pub spent_tokens: i64,
    /// Left, tokens (when a token limit is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_tokens: Option<i64>,
}

/// What the operator made of a budget policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetPolicyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` and `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Total settled spend of its subjects this period, USD.
    #[serde(default)]
    pub spent_usd: f64,
    /// Per subject.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<SubjectSpend>,
    /// When the figures were read, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}
