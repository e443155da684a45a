//! Routing: a virtual model name (`auto`, `fast`, `cheap`, `quality`, or one from config)
//! becomes a ranked list of concrete models for this request.
//!
//! For each request: classify its complexity (tier), build the candidates (chat models of the
//! virtual model's selection that fit the context window and have the capabilities the
//! request needs, minus any removed by filters such as circuit breakers or budgets), score
//! them ([`score`]), apply local-first, and keep the whole ranking: the first entry serves the
//! request, the rest are the fallback order. Explicit model names bypass scoring.

pub mod classifier;
pub mod fit;
pub mod score;
pub mod strong_need;
pub mod tokens;

use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_gateway_crds::{CandidateSelector, ModelKind, Strategy, Weights};
use serde::Serialize;

use crate::config::model::ModelInfo;
pub use crate::config::routing::{builtin_virtuals, default_local_preference, Hedge, VirtualSpec};
use crate::error::{Error, Kind};
use crate::models::registry::{Entry, Registry, Target};
use crate::wire::ChatRequest;
use classifier::{Classification, Tier};
use score::{Inputs, Scored};

pub use fit::{DEFAULT_OUTPUT_RESERVE, UNKNOWN_CONTEXT};

/// Default weights by strategy and tier. Balanced leans toward quality as prompts get harder.
pub fn default_weights(s: Strategy, tier: Tier) -> Weights {
    let w = |cost, quality, latency| Weights {
        cost,
        quality,
        latency,
    };
    match (s, tier) {
        (Strategy::Balanced, Tier::Simple) => w(0.5, 0.3, 0.2),
        (Strategy::Balanced, Tier::Moderate) => w(0.35, 0.45, 0.2),
        (Strategy::Balanced, Tier::Complex) => w(0.25, 0.6, 0.15),
        (Strategy::Balanced, Tier::Reasoning) => w(0.15, 0.75, 0.1),
        (Strategy::Cost, _) => w(1.0, 0.0, 0.0),
        (Strategy::Quality, _) => w(0.0, 1.0, 0.0),
        (Strategy::Latency, _) => w(0.0, 0.0, 1.0),
    }
}

/// Quality of a model for a tier, from its prior: differences shrink on easy prompts (any model
/// greets well) and grow on hard ones. `difficulty` per tier: simple 0.35, moderate 0.7,
/// complex 1.0 (0.85 for `code` models), reasoning 1.25 (1.0 for `reasoning` models).
pub fn tier_quality(m: &ModelInfo, tier: Tier) -> f64 {
    let has = |t: &str| m.tags.iter().any(|x| x == t);
    let difficulty = match tier {
        Tier::Simple => 0.35,
        Tier::Moderate => 0.7,
        Tier::Complex if has("code") => 0.85,
        Tier::Complex => 1.0,
        Tier::Reasoning if has("reasoning") => 1.0,
        Tier::Reasoning => 1.25,
    };
    (1.0 - (1.0 - m.quality) * difficulty).clamp(0.0, 1.0)
}

/// Why a model was not a candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Exclusion {
    /// The request has tools; the model has no (known) tool support.
    NoTools,
    /// The request has images; the model has no (known) vision support.
    NoVision,
    /// The request asks for JSON; the model has no (known) JSON mode.
    NoJson,
    /// An embedding model, asked for a chat completion.
    Embedding,
    /// The request needs something only the OpenAI protocol carries; the provider speaks
    /// Anthropic's.
    #[serde(rename = "openai_only")]
    OpenAiOnly {
        /// What (`n > 1`, `logprobs`, `audio or file parts`).
        feature: &'static str,
    },
    /// The provider's own API refuses (or ignores) something the request asks, though its
    /// protocol has it (Groq's `n > 1` and `logprobs`, Ollama's `n`, OpenAI's reasoning
    /// models' `logprobs`).
    #[serde(rename = "unsupported_by_provider")]
    ProviderLacks {
        /// What (`n > 1`, `logprobs`).
        feature: &'static str,
    },
    /// Prompt plus completion reserve exceed the context window.
    Context {
        /// Tokens needed.
        needed: usize,
        /// The model's window.
        window: u32,
    },
    /// The request asks for more output tokens than the model can write.
    OutputLimit {
        /// `max_tokens` (or `max_completion_tokens`) asked.
        requested: u32,
        /// The model's most.
        max: u32,
    },
    /// The caller may not use it (its key's allow-list, a provider reserved for others).
    NotAllowed {
        /// Which of the two.
        detail: &'static str,
    },
    /// Removed by a filter (circuit breaker, budget), with its explanation.
    Unavailable {
        /// Why.
        detail: String,
        /// When it may be available again, in seconds.
        retry_after_secs: Option<u64>,
    },
}

impl Exclusion {
    /// Whether the request itself (not the gateway's state) rules the model out.
    fn is_client_caused(&self) -> bool {
        !matches!(self, Exclusion::Unavailable { .. })
    }
}

/// Removes candidates for reasons outside the request: breaker state, the caller's budget.
pub trait CandidateFilter: Send + Sync {
    /// `Some` excludes the model.
    fn check(&self, entry: &Entry) -> Option<Exclusion>;
}

/// Several filters: the first exclusion wins.
pub struct AllOf<'a>(pub &'a [&'a dyn CandidateFilter]);

impl CandidateFilter for AllOf<'_> {
    fn check(&self, e: &Entry) -> Option<Exclusion> {
        self.0.iter().find_map(|f| f.check(e))
    }
}

/// Excludes models whose provider's or own circuit breaker is open.
pub struct BreakerFilter {
    now: Instant,
}

impl BreakerFilter {
    /// A filter evaluated at the current time.
    pub fn now() -> Self {
        Self {
            now: Instant::now(),
        }
    }
}

impl CandidateFilter for BreakerFilter {
    fn check(&self, e: &Entry) -> Option<Exclusion> {
        let until = e
            .provider
            .breaker
            .would_admit(self.now)
            .err()
            .or_else(|| e.breaker.would_admit(self.now).err())?;
        let secs = until
            .saturating_duration_since(self.now)
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64;
        Some(Exclusion::Unavailable {
            detail: format!("circuit breaker open, retried in {secs}s"),
            retry_after_secs: Some(secs),
        })
    }
}

/// One ranked candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    /// `provider/model`.
    pub model: String,
    /// Registry index.
    #[serde(skip)]
    pub entry: usize,
    /// Score and parts.
    #[serde(flatten)]
    pub scored: Scored,
    /// Price (mean of input and output, USD/Mtok) used.
    pub price: f64,
    /// Tier quality used.
    pub tier_quality: f64,
    /// Where it came from.
    pub quality_source: QualitySource,
    /// Latency estimate used, ms.
    pub latency_ms: f64,
    /// Runs locally.
    pub local: bool,
}

/// Where a candidate's tier quality came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QualitySource {
    /// The models' latest `llm-gateway bench` runs, for this tier (every candidate has one).
    Measured,
    /// The catalog's (or config's) prior, scaled by the tier's difficulty (some candidate
    /// has no measurement for the tier).
    Prior,
}

/// An excluded model.
#[derive(Debug, Clone, Serialize)]
pub struct Excluded {
    /// `provider/model`.
    pub model: String,
    /// Why.
    #[serde(flatten)]
    pub why: Exclusion,
}

/// A routing decision with everything that explains it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// The virtual model asked for.
    pub virtual_model: String,
    /// Its strategy.
    pub strategy: Strategy,
    /// The prompt's tier.
    pub tier: Tier,
    /// The classifier's output, if it ran.
    pub classification: Option<Classification>,
    /// Weights used (normalised).
    pub weights: Weights,
    /// How much the classification's `strong_need` scaled the quality weight (1/10–10×), if
    /// it ran and the route has no fixed weights.
    pub quality_factor: Option<f64>,
    /// Candidates with a `bench` measurement for the tier: measured quality ranks only when
    /// that is all of them.
    pub measured_candidates: usize,
    /// Prompt tokens (upper bound, or counted when the bound was too close to a window).
    pub prompt_tokens: usize,
    /// Whether `prompt_tokens` was counted with the tokenizer.
    pub prompt_tokens_counted: bool,
    /// Candidates, best first: the first serves, the rest are the fallback order.
    pub ranking: Vec<Ranked>,
    /// Models that were not candidates, and why.
    pub excluded: Vec<Excluded>,
    /// Whether local-first moved a local model to the front.
    pub local_first: bool,
    /// Time the decision took, microseconds.
    pub decision_us: f64,
    /// Time the classifier took, microseconds.
    pub classifier_us: f64,
    /// The virtual model's hedging, if on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedge: Option<Hedge>,
}

impl Decision {
    /// The `x-llm-gateway-route` header value.
    pub fn header(&self) -> String {
        let mut s = format!(
            "virtual={}; strategy={}; tier={}",
            self.virtual_model,
            strategy_name(self.strategy),
            self.tier.as_str()
        );
        if let Some(best) = self.ranking.first() {
            s += &format!("; chosen={}; score={:.3}", best.model, best.scored.score);
        }
        if let Some(r) = self.ranking.get(1) {
            s += &format!(
                "; runner_up={}; runner_up_score={:.3}",
                r.model, r.scored.score
            );
        }
        if self.local_first {
            s += "; local_first=true";
        }
        s
    }
}

/// A strategy's name.
pub fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Balanced => "balanced",
        Strategy::Cost => "cost",
        Strategy::Quality => "quality",
        Strategy::Latency => "latency",
    }
}

/// Where a request goes, and why.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The first choice.
    pub target: Target,
    /// For virtual models: the full decision (fallbacks included).
    pub decision: Option<Arc<Decision>>,
}

/// A virtual model with its candidate pool resolved against the registry.
#[derive(Debug)]
struct Route {
    spec: VirtualSpec,
    pool: Vec<usize>,
}

/// The router: virtual models and their pools.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    decay: Duration,
}

/// Whether an entry matches a selector (any list).
fn selected(sel: &CandidateSelector, e: &Entry, registry: &Registry) -> bool {
    let i = &e.info;
    sel.providers.iter().any(|p| **p == *e.provider.name)
        || sel.models.iter().any(|m| {
            registry
                .resolve(m)
                .is_ok_and(|t| t.provider.name == e.provider.name && *t.model == *i.name)
        })
        || sel.tags.iter().any(|t| match t.as_str() {
            "local" => e.provider.is_local(),
            "tools" => i.capabilities.is_some_and(|c| c.tools),
            "vision" => i.capabilities.is_some_and(|c| c.vision),
            "json" => i.capabilities.is_some_and(|c| c.json),
            other => i.tags.iter().any(|x| x == other),
        })
}

impl Router {
    /// Resolves each virtual model's pool.
    pub fn new(specs: &[VirtualSpec], registry: &Registry, decay: Duration) -> Self {
        let routes = specs
            .iter()
            .map(|spec| Route {
                pool: registry
                    .entries()
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.info.kind == ModelKind::Chat)
                    .filter(|(_, e)| {
                        spec.selector
                            .as_ref()
                            .is_none_or(|s| selected(s, e, registry))
                    })
                    .map(|(i, _)| i)
                    .collect(),
                spec: spec.clone(),
            })
            .collect();
        Self { routes, decay }
    }

    /// The latency decay constant.
    pub fn decay(&self) -> Duration {
        self.decay
    }

    /// Virtual models with their pool sizes.
    pub fn virtuals(&self) -> impl Iterator<Item = (&VirtualSpec, usize)> {
        self.routes.iter().map(|r| (&r.spec, r.pool.len()))
    }

    /// The definition of virtual model `name` that `tenant` sees: one for its own tenant or
    /// namespace, else the one for everyone.
    fn find(&self, name: &str, tenant: Option<&str>) -> Option<&Route> {
        let mut general = None;
        for r in self.routes.iter().filter(|r| r.spec.name == name) {
            match (&r.spec.clients, tenant) {
                (None, _) => general = general.or(Some(r)),
                (Some(clients), Some(t)) if clients.iter().any(|c| client_matches(c, t)) => {
                    return Some(r)
                }
                _ => {}
            }
        }
        general
    }

    /// Routes a request of `tenant`: virtual names are scored, explicit names resolved and
    /// checked.
    pub fn route(
        &self,
        registry: &Registry,
        req: &ChatRequest,
        tenant: Option<&str>,
        raw_tools: Option<&serde_json::Value>,
        filters: &[&dyn CandidateFilter],
    ) -> Result<Routed, Error> {
        let Some(route) = self.find(&req.model, tenant) else {
            let target = registry.resolve(&req.model)?;
            check_explicit(&target, req, raw_tools)?;
            return Ok(Routed {
                target,
                decision: None,
            });
        };
        let decision = self.decide(route, registry, req, raw_tools, filters)?;
        let best = &registry.entries()[decision.ranking[0].entry];
        let target = registry.target_of(best, Some(route.spec.name.clone()));
        Ok(Routed {
            target,
            decision: Some(Arc::new(decision)),
        })
    }

    fn decide(
        &self,
        route: &Route,
        registry: &Registry,
        req: &ChatRequest,
        raw_tools: Option<&serde_json::Value>,
        filters: &[&dyn CandidateFilter],
    ) -> Result<Decision, Error> {
        let started = Instant::now();
        let spec = &route.spec;
        let (classification, classifier_us) = if spec.classify {
            let t = Instant::now();
            let c = classifier::classify(req);
            (Some(c), t.elapsed().as_secs_f64() * 1e6)
        } else {
            (None, 0.0)
        };
        let tier = classification.as_ref().map_or(Tier::Moderate, |c| c.tier);
        let entries = registry.entries();
        if route.pool.is_empty() {
            return Err(Error::new(
                Kind::NoCandidate,
                format!(
                    "Virtual model `{}` has no enabled chat model to route to.",
                    spec.name
                ),
            )
            .with_code("no_candidates"));
        }

        // Context: a free upper bound first; count tokens only if it is too close to the
        // smallest window (ranking treats an unknown window as UNKNOWN_CONTEXT).
        let needs = fit::Needs::of(req, true);
        let window = |e: &Entry| e.info.context_window.unwrap_or(UNKNOWN_CONTEXT);
        let smallest = route
            .pool
            .iter()
            .map(|&i| window(&entries[i]))
            .min()
            .unwrap_or(0) as usize;
        let (needed, counted) = fit::needed(req, raw_tools, &needs, smallest);
        let prompt_tokens = needed - needs.reserve;

        let mut excluded = Vec::new();
        let mut pool = Vec::with_capacity(route.pool.len());
        for &i in &route.pool {
            let e = &entries[i];
            let why = if let Some(x) = fit::capability(&e.info, &needs) {
                Some(x)
            } else if let Some(x) = fit::protocol(e.provider.protocol, &needs) {
                Some(x)
            } else if let Some(x) = fit::provider_api(&e.provider, &e.info, &needs) {
                Some(x)
            } else if needed > window(e) as usize {
                Some(Exclusion::Context {
                    needed,
                    window: window(e),
                })
            } else if let Some(x) = fit::output(&e.info, &needs) {
                Some(x)
            } else {
                filters.iter().find_map(|f| f.check(e))
            };
            match why {
                Some(why) => excluded.push(Excluded {
                    model: e.qualified_name(),
                    why,
                }),
                None => pool.push(i),
            }
        }
        if pool.is_empty() {
            return Err(no_candidate_error(&spec.name, &excluded));
        }

        let now = Instant::now();
        let stream = req.is_stream();
        // A measurement and a catalog prior are not on one scale: measured quality ranks only
        // when every candidate has it for this tier (`bench` measures every enabled model by
        // default), else every candidate uses its prior.
        let measured: Vec<Option<f64>> = pool
            .iter()
            .map(|&i| entries[i].measured.get(tier as usize))
            .collect();
        let measured_candidates = measured.iter().flatten().count();
        let use_measured = measured_candidates == pool.len();
        let inputs: Vec<Inputs> = pool
            .iter()
            .zip(&measured)
            .map(|(&i, m)| {
                let e = &entries[i];
                let lat = e.latency.snapshot(now, self.decay);
                Inputs {
                    price: e.info.price.map_or(f64::MAX / 4.0, |p| p.blended()),
                    quality: m
                        .filter(|_| use_measured)
                        .unwrap_or_else(|| tier_quality(&e.info, tier)),
                    latency_ms: if stream { lat.ttft_ms } else { lat.total_ms },
                    local: e.provider.is_local(),
                }
            })
            .collect();
        let mut weights = spec
            .weights
            .unwrap_or_else(|| default_weights(spec.strategy, tier));
        // The rules pick the tier; the learned estimate of whether a weak model would fall
        // short moves the quality weight within it. Only the strategy's own weights move: a
        // route with fixed weights keeps them.
        let quality_factor = classification
            .as_ref()
            .filter(|_| spec.weights.is_none())
            .map(|c| strong_need::quality_factor(c.strong_need));
        weights.quality *= quality_factor.unwrap_or(1.0);
        let weights = score::normalised(weights);
        let mut ranked = score::rank(&inputs, weights);
        let local_first = score::prefer_local(&mut ranked, &inputs, spec.local_preference);
        let ranking = ranked
            .into_iter()
            .map(|s| {
                let i = pool[s.idx];
                let inp = inputs[s.idx];
                Ranked {
                    model: entries[i].qualified_name(),
                    entry: i,
                    scored: s,
                    price: inp.price,
                    tier_quality: inp.quality,
                    quality_source: if use_measured {
                        QualitySource::Measured
                    } else {
                        QualitySource::Prior
                    },
                    latency_ms: inp.latency_ms,
                    local: inp.local,
                }
            })
            .collect();
        Ok(Decision {
            virtual_model: spec.name.clone(),
            strategy: spec.strategy,
            tier,
            classification,
            weights,
            quality_factor,
            measured_candidates,
            prompt_tokens,
            prompt_tokens_counted: counted,
            ranking,
            excluded,
            local_first,
            decision_us: started.elapsed().as_secs_f64() * 1e6,
            classifier_us,
            hedge: spec.hedge,
        })
    }
}

/// Whether a route's client `c` (a tenant, or a namespace) covers `tenant`.
fn client_matches(c: &str, tenant: &str) -> bool {
    crate::config::budget::Scope::covers_tenant_of_namespace(c, tenant)
}

/// Explains why no model could serve: 400 if the request rules them all out, else 503.
fn no_candidate_error(name: &str, excluded: &[Excluded]) -> Error {
    let count = |f: &dyn Fn(&Exclusion) -> bool| excluded.iter().filter(|x| f(&x.why)).count();
    let mut reasons = Vec::new();
    let n = count(&|w| *w == Exclusion::NoTools);
    if n > 0 {
        reasons.push(format!("{n} lack tool support"));
    }
    let n = count(&|w| *w == Exclusion::NoVision);
    if n > 0 {
        reasons.push(format!("{n} lack image input"));
    }
    let n = count(&|w| *w == Exclusion::NoJson);
    if n > 0 {
        reasons.push(format!("{n} lack JSON output"));
    }
    if let Some(feature) = excluded.iter().find_map(|x| match x.why {
        Exclusion::OpenAiOnly { feature } => Some(feature),
        _ => None,
    }) {
        let n = count(&|w| matches!(w, Exclusion::OpenAiOnly { .. }));
        reasons.push(format!("{n} speak Anthropic's API, which has no {feature}"));
    }
    if let Some(feature) = excluded.iter().find_map(|x| match x.why {
        Exclusion::ProviderLacks { feature } => Some(feature),
        _ => None,
    }) {
        let n = count(&|w| matches!(w, Exclusion::ProviderLacks { .. }));
        reasons.push(format!(
            "{n} are served by APIs that refuse or ignore {feature}"
        ));
    }
    if let Some((requested, max)) = excluded.iter().find_map(|x| match x.why {
        Exclusion::OutputLimit { requested, max } => Some((requested, max)),
        _ => None,
    }) {
        let n = count(&|w| matches!(w, Exclusion::OutputLimit { .. }));
        reasons.push(format!(
            "{n} write fewer than the {requested} output tokens asked (e.g. at most {max})"
        ));
    }
    let mut not_allowed: Vec<(&str, usize)> = Vec::new();
    for x in excluded {
        if let Exclusion::NotAllowed { detail } = x.why {
            match not_allowed.iter_mut().find(|(d, _)| *d == detail) {
                Some(g) => g.1 += 1,
                None => not_allowed.push((detail, 1)),
            }
        }
    }
    for (detail, n) in not_allowed {
        reasons.push(format!("{n} {detail}"));
    }
    if let Some(needed) = excluded.iter().find_map(|x| match x.why {
        Exclusion::Context { needed, .. } => Some(needed),
        _ => None,
    }) {
        let n = count(&|w| matches!(w, Exclusion::Context { .. }));
        reasons.push(format!("{n} have context windows smaller than the {needed} tokens needed (prompt plus max_tokens)"));
    }
    // Unavailable models, grouped by provider and reason: "groq: 6 models (circuit breaker
    // open, retried in 17s)".
    let mut groups: Vec<(&str, &str, usize)> = Vec::new();
    for x in excluded {
        if let Exclusion::Unavailable { detail, .. } = &x.why {
            let provider = x.model.split('/').next().unwrap_or_default();
            match groups
                .iter_mut()
                .find(|(p, d, _)| *p == provider && *d == detail.as_str())
            {
                Some(g) => g.2 += 1,
                None => groups.push((provider, detail.as_str(), 1)),
            }
        }
    }
    for (provider, detail, n) in groups {
        let models = if n == 1 {
            "1 model".to_owned()
        } else {
            format!("{n} models")
        };
        reasons.push(format!("{provider}: {models} unavailable ({detail})"));
    }
    let msg = format!(
        "No model behind virtual model `{name}` can serve this request: {}.",
        reasons.join("; ")
    );
    if excluded.iter().all(|x| x.why.is_client_caused()) {
        // Permanent for this caller, never worth a retry: 403 if its allow-list (or the
        // providers' reservations) alone is why; with other reasons the request can change.
        if excluded
            .iter()
            .all(|x| matches!(x.why, Exclusion::NotAllowed { .. }))
        {
            return Error::new(Kind::Forbidden, msg).with_code("model_not_allowed");
        }
        return Error::invalid("model", msg).with_code("no_suitable_model");
    }
    let retry = excluded
        .iter()
        .filter_map(|x| match x.why {
            Exclusion::Unavailable {
                retry_after_secs, ..
            } => retry_after_secs,
            _ => None,
        })
        .min()
        .map(std::time::Duration::from_secs);
    Error::new(Kind::NoCandidate, msg)
        .with_code("no_candidates")
        .with_retry_after_opt(retry)
}

/// An explicitly named model whose context window the prompt exceeds gets OpenAI's 400
/// Refuses an explicitly named model that cannot serve the request (see [`fit::check`]),
/// before an upstream call is spent on it.
fn check_explicit(
    t: &Target,
    req: &ChatRequest,
    raw_tools: Option<&serde_json::Value>,
) -> Result<(), Error> {
    let Some(info) = &t.info else { return Ok(()) };
    let Some(why) = fit::check(info, req, raw_tools, &fit::Needs::of(req, false)) else {
        return Ok(());
    };
    let unsupported = |param: &str, what: &str| {
        Error::invalid(
            param,
            format!(
                "Model `{}/{}` does not support {what}.",
                t.provider.name, t.model
            ),
        )
        .with_code("unsupported_capability")
    };
    Err(match why {
        Exclusion::Embedding => Error::invalid(
            "model",
            format!(
                "`{}` is an embedding model; send it to /v1/embeddings.",
                t.model
            ),
        ),
        Exclusion::NoVision => unsupported("messages", "image input"),
        Exclusion::NoTools => unsupported("tools", "tools (function calling)"),
        Exclusion::NoJson => unsupported("response_format", "JSON response formats"),
        Exclusion::OpenAiOnly { feature } | Exclusion::ProviderLacks { feature } => {
            unsupported("model", feature)
        }
        Exclusion::OutputLimit { requested, max } => Error::invalid(
            "max_tokens",
            format!("max_tokens is too large: {requested}. This model supports at most {max} completion tokens."),
        ),
        Exclusion::NotAllowed { detail } => Error::new(Kind::Forbidden, detail)
            .with_code("model_not_allowed"),
        Exclusion::Context { needed, window } => Error::invalid(
            "messages",
            format!(
                "This model's maximum context length is {window} tokens. However, your messages and max_tokens need about {needed} tokens. Shorten the messages or choose a model with a larger context window."
            ),
        )
        .with_code("context_length_exceeded"),
        Exclusion::Unavailable { detail, .. } => Error::new(Kind::Unavailable, detail),
    })
}
