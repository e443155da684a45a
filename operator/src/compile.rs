//! Resources in, one `GatewayConfig` out — a pure function, so every rule below has a
//! table-driven test.
//!
//! **Precedence.** The operator's own namespace holds the cluster's defaults: its
//! `ProviderPool`s serve everyone, its `LLMRoute`s define virtual models for every caller,
//! its `BudgetPolicy`s may name any subject. A resource in another namespace applies to that
//! namespace's callers (tenants `ns` and `ns/...`: its sidecars, its service accounts): its
//! pools' providers (named `ns.name`) are reserved for them, its routes' virtual models win
//! over the cluster's of the same name for them, its budget policies may only name subjects
//! inside it.
//!
//! **Conflicts** are reported on every resource involved, never resolved silently: two
//! providers of the same final name, two routes of one scope defining one virtual model, two
//! policies covering one subject — none of the clashing definitions is compiled (the rest of
//! each resource is).
//!
//! **Secrets.** A provider's key comes from its Secret; the pushed configuration carries it
//! inline, the public one (the ConfigMap) only `{pushed: namespace/secret/key}`. A missing
//! Secret or key leaves the provider in the configuration without a key (gateways answer
//! `credentials_pending` for it and fail over) and makes its pool `Ready=False`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::ResourceExt;
use llm_gateway_crds::resources::{
    BudgetPolicy, CandidatesSpec, LLMRoute, PoolProvider, ProviderPool, ProviderType, SubjectKind,
};
use llm_gateway_crds::{
    BreakerConfig, BudgetConfig, CandidateSelector, FailoverConfig, GatewayConfig, HedgeConfig,
    ModelConfig, Protocol, ProviderConfig, RouteCacheConfig, SecretSource, VirtualModelConfig,
    Weights,
};

/// The kinds the operator compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `ProviderPool`.
    Pool,
    /// `LLMRoute`.
    Route,
    /// `BudgetPolicy`.
    Policy,
}

impl Kind {
    /// The resource kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pool => "ProviderPool",
            Kind::Route => "LLMRoute",
            Kind::Policy => "BudgetPolicy",
        }
    }
}

/// One resource, by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Key {
    /// `Kind namespace/name`.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind.name(), self.namespace, self.name)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What the compiler found wrong with a resource (its `Accepted` or `Ready` condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A `CamelCase` reason.
    pub reason: &'static str,
    /// What to do about it.
    pub message: String,
}

/// What became of one resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// The resource's generation compiled.
    pub generation: Option<i64>,
    /// Why (parts of) it were not accepted; empty: all accepted.
    pub refused: Vec<Problem>,
    /// What keeps it from working although accepted (a missing Secret).
    pub degraded: Vec<Problem>,
    /// Providers it contributed (pools).
    pub providers: u32,
    /// Their names as compiled (pools).
    pub provider_names: Vec<String>,
    /// Models it configures itself (pools; the gateways report what they enable, catalog
    /// and discovery included).
    pub models: u32,
    /// Providers whose Secret or key is missing, `provider: secret/key`.
    pub missing_secrets: Vec<String>,
    /// Virtual models it defines that are compiled (routes).
    pub virtual_models: Vec<String>,
    /// Subjects it covers that are compiled, `kind/name` (policies).
    pub subjects: Vec<String>,
    /// While `generation` is refused by the gateways: the earlier generation compiled in
    /// its place, which keeps serving (set by the runtime, not the compile).
    pub serving: Option<i64>,
}

/// What a Secret lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretValue {
    /// The key's value.
    Found(String),
    /// No such Secret.
    NoSecret,
    /// The Secret has no such key.
    NoKey,
}

/// Everything a compile reads.
pub struct Inputs<'a> {
    /// The operator's namespace: its resources are the cluster's defaults.
    pub operator_namespace: &'a str,
    /// Every `ProviderPool`.
    pub pools: &'a [Arc<ProviderPool>],
    /// Every `LLMRoute`.
    pub routes: &'a [Arc<LLMRoute>],
    /// Every `BudgetPolicy`.
    pub policies: &'a [Arc<BudgetPolicy>],
    /// Reads `namespace/secret` key `key`.
    pub secret: &'a dyn Fn(&str, &str, &str) -> SecretValue,
    /// Resources a gateway refused at this generation (their message): left out until they
    /// change.
    pub refused_by_gateway: &'a BTreeMap<Key, (Option<i64>, String)>,
    /// What the compiled document starts from (server and cache settings from the chart).
    pub base: &'a GatewayConfig,
}

/// The compiled configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// What gateways are sent: API keys inline.
    pub config: GatewayConfig,
    /// The same without secrets (keys as `{pushed: ...}`): the ConfigMap's.
    pub public: GatewayConfig,
    /// Per resource.
    pub verdicts: BTreeMap<Key, Verdict>,
    /// Which resource each `providers[i]`, `routing.virtual_models[j]` and `budgets[k]`
    /// came from, so that a gateway's refusal (which names a field path) finds its resource.
    pub origins: Origins,
}

impl Compiled {
    /// What the gateways of `namespace` are sent: the keys of providers reserved for other
    /// namespaces stay references (those providers answer only their own clients, and a
    /// namespace's pods must not hold another team's keys), and the cluster pools' keys are
    /// withheld (with `cluster_keys`' reason) from a namespace not given them. The operator's
    /// own namespace (the shared gateway) gets every key.
    pub fn for_namespace(
        &self,
        namespace: &str,
        operator_namespace: &str,
        cluster_keys: ClusterKeys<'_>,
    ) -> GatewayConfig {
        let mut c = self.config.clone();
        if namespace == operator_namespace {
            return c;
        }
        for (p, public) in c.providers.iter_mut().zip(&self.public.providers) {
            match &p.clients {
                Some(cl) if !cl.iter().any(|x| x == namespace) => {
                    p.api_key = public.api_key.clone();
                }
                // Withheld whether the key is here or still missing (then it would read
                // `credentials_pending`, as if it were coming).
                None if matches!(
                    p.api_key,
                    Some(SecretSource::Value(_) | SecretSource::Pushed(_))
                ) =>
                {
                    if let ClusterKeys::Withheld(why) = cluster_keys {
                        p.api_key = Some(SecretSource::Withheld(why.to_owned()));
                    }
                }
                _ => {}
            }
        }
        c
    }
}

/// Whether a namespace's gateways get the keys of the cluster's pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKeys<'a> {
    /// They do.
    Given,
    /// They do not, for this reason (the gateways answer it to callers).
    Withheld(&'a str),
}

/// Where each compiled entry came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origins {
    /// By index of `providers`.
    pub providers: Vec<Key>,
    /// By index of `routing.virtual_models`.
    pub virtual_models: Vec<Key>,
    /// By index of `budgets`.
    pub budgets: Vec<Key>,
}

impl Origins {
    /// The resource a gateway's error at `path` (e.g. `providers[3].base_url`) is about.
    pub fn resource_of(&self, path: &str) -> Option<&Key> {
        let index = |prefix: &str| -> Option<usize> {
            path.strip_prefix(prefix)?.split(']').next()?.parse().ok()
        };
        if let Some(i) = index("providers[") {
            return self.providers.get(i);
        }
        if let Some(i) = index("routing.virtual_models[") {
            return self.virtual_models.get(i);
        }
        if let Some(i) = index("budgets[") {
            return self.budgets.get(i);
        }
        None
    }
}

fn key_of<K: kube::Resource<DynamicType = ()>>(kind: Kind, r: &K) -> Key {
    Key {
        kind,
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
    }
}

/// Compiles the resources (see the module docs).
pub fn compile(inp: &Inputs<'_>) -> Compiled {
    let mut verdicts: BTreeMap<Key, Verdict> = BTreeMap::new();
    let mut out = Compiled {
        config: inp.base.clone(),
        public: inp.base.clone(),
        verdicts: BTreeMap::new(),
        origins: Origins::default(),
    };
    let cluster = |ns: &str| ns == inp.operator_namespace;
    // Deterministic order: the cluster's resources first, then by namespace and name.
    let order = |k: &Key| (!cluster(&k.namespace), k.namespace.clone(), k.name.clone());

    // 1. Pools. Provider names first, to find clashes across pools.
    let mut pools: Vec<(&Arc<ProviderPool>, Key)> = inp
        .pools
        .iter()
        .map(|p| (p, key_of(Kind::Pool, &**p)))
        .collect();
    pools.sort_by_key(|(_, k)| order(k));
    let final_name = |ns: &str, p: &PoolProvider| {
        if cluster(ns) {
            p.name.clone()
        } else {
            format!("{ns}.{}", p.name)
        }
    };
    let mut owners: BTreeMap<String, Vec<Key>> = BTreeMap::new();
    for (pool, key) in &pools {
        let mut seen = BTreeSet::new();
        for p in &pool.spec.providers {
            if seen.insert(p.name.clone()) {
                owners
                    .entry(final_name(&key.namespace, p))
                    .or_default()
                    .push(key.clone());
            }
        }
    }
    // Providers each pool contributes, by final name (for routes' candidates).
    let mut pool_providers: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    for (pool, key) in &pools {
        let v = verdicts.entry(key.clone()).or_default();
        v.generation = pool.metadata.generation;
        if let Some((_, msg)) = inp
            .refused_by_gateway
            .get(key)
            .filter(|(g, _)| *g == v.generation)
        {
            v.refused.push(Problem {
                reason: "RejectedByGateway",
                message: msg.clone(),
            });
            continue;
        }
        let mut names = BTreeSet::new();
        for p in &pool.spec.providers {
            if !names.insert(p.name.clone()) {
                v.refused.push(Problem {
                    reason: "DuplicateProvider",
                    message: format!("provider `{}` appears twice in this pool", p.name),
                });
                continue;
            }
            let name = final_name(&key.namespace, p);
            if let Some(others) = owners.get(&name).filter(|o| o.len() > 1) {
                let others: Vec<String> = others
                    .iter()
                    .filter(|o| *o != key)
                    .map(Key::describe)
                    .collect();
                v.refused.push(Problem {
                    reason: "Conflict",
                    message: format!(
                        "provider `{name}` is also defined by {}; rename one of them",
                        others.join(", ")
                    ),
                });
                continue;
            }
            if p.provider_type == ProviderType::OpenaiCompatible && p.base_url.is_none() {
                v.refused.push(Problem {
                    reason: "MissingBaseUrl",
                    message: format!(
                        "provider `{}` is openai-compatible: set its baseUrl",
                        p.name
                    ),
                });
                continue;
            }
            let (secret, public) = match &p.api_key_secret_ref {
                None => (None, None),
                Some(r) => {
                    let reference = format!("{}/{}/{}", key.namespace, r.name, r.key);
                    let pushed = Some(SecretSource::Pushed(reference.clone()));
                    match (inp.secret)(&key.namespace, &r.name, &r.key) {
                        SecretValue::Found(value) => (Some(SecretSource::Value(value)), pushed),
                        missing => {
                            let (reason, message) = if missing == SecretValue::NoSecret {
                                (
                                    "SecretNotFound",
                                    format!(
                                        "secret {}/{} not found (provider `{}`); create it with the API key under \"{}\"",
                                        key.namespace, r.name, p.name, r.key
                                    ),
                                )
                            } else {
                                (
                                    "SecretKeyNotFound",
                                    format!(
                                        "secret {}/{} has no key \"{}\" (provider `{}`)",
                                        key.namespace, r.name, r.key, p.name
                                    ),
                                )
                            };
                            v.degraded.push(Problem { reason, message });
                            v.missing_secrets
                                .push(format!("{}: {}/{}", p.name, r.name, r.key));
                            (pushed.clone(), pushed)
                        }
                    }
                }
            };
            let mut provider = provider_config(p, &name);
            if !cluster(&key.namespace) {
                provider.clients = Some(vec![key.namespace.clone()]);
            }
            v.providers += 1;
            v.models += p.models.len() as u32;
            v.provider_names.push(name.clone());
            let mut with_secret = provider.clone();
            with_secret.api_key = secret;
            provider.api_key = public;
            out.config.providers.push(with_secret);
            out.public.providers.push(provider);
            out.origins.providers.push(key.clone());
            pool_providers.entry(key.clone()).or_default().push(name);
        }
    }

    // 2. Routes. A virtual model name is defined once per scope (the cluster, or one
    //    namespace); clashes are refused on every route involved.
    let mut routes: Vec<(&Arc<LLMRoute>, Key)> = inp
        .routes
        .iter()
        .map(|r| (r, key_of(Kind::Route, &**r)))
        .collect();
    routes.sort_by_key(|(_, k)| order(k));
    let mut definers: BTreeMap<(String, String), Vec<Key>> = BTreeMap::new();
    for (route, key) in &routes {
        let mut seen = BTreeSet::new();
        for vm in &route.spec.virtual_models {
            if seen.insert(vm.name.clone()) {
                definers
                    .entry((key.namespace.clone(), vm.name.clone()))
                    .or_default()
                    .push(key.clone());
            }
        }
    }
    let mut failover_from: Option<Key> = None;
    for (route, key) in &routes {
        let v = verdicts.entry(key.clone()).or_default();
        v.generation = route.metadata.generation;
        if let Some((_, msg)) = inp
            .refused_by_gateway
            .get(key)
            .filter(|(g, _)| *g == v.generation)
        {
            v.refused.push(Problem {
                reason: "RejectedByGateway",
                message: msg.clone(),
            });
            continue;
        }
        // The pools this route sees: the cluster's and its own namespace's.
        let visible: Vec<&(&Arc<ProviderPool>, Key)> = pools
            .iter()
            .filter(|(_, k)| cluster(&k.namespace) || k.namespace == key.namespace)
            .collect();
        let mut names = BTreeSet::new();
        for vm in &route.spec.virtual_models {
            if !names.insert(vm.name.clone()) {
                v.refused.push(Problem {
                    reason: "DuplicateVirtualModel",
                    message: format!("virtual model `{}` appears twice in this route", vm.name),
                });
                continue;
            }
            if let Some(others) = definers
                .get(&(key.namespace.clone(), vm.name.clone()))
                .filter(|d| d.len() > 1)
            {
                let others: Vec<String> = others
                    .iter()
                    .filter(|o| *o != key)
                    .map(Key::describe)
                    .collect();
                v.refused.push(Problem {
                    reason: "Conflict",
                    message: format!(
                        "virtual model `{}` is also defined by {} for the same clients; keep one definition",
                        vm.name,
                        others.join(", ")
                    ),
                });
                continue;
            }
            let candidates = match &vm.candidates {
                None if cluster(&key.namespace) => None,
                // A namespace's route may reach only the providers it can see.
                None => Some(CandidateSelector {
                    providers: visible
                        .iter()
                        .flat_map(|(_, k)| pool_providers.get(k).cloned().unwrap_or_default())
                        .collect(),
                    ..Default::default()
                }),
                Some(c) => match candidates(c, &visible, &pool_providers) {
                    Ok(sel) => Some(sel),
                    Err(p) => {
                        v.refused.push(p);
                        continue;
                    }
                },
            };
            if candidates
                .as_ref()
                .is_some_and(|c| c.providers.is_empty() && c.models.is_empty() && c.tags.is_empty())
            {
                v.refused.push(Problem {
                    reason: "NoCandidates",
                    message: format!(
                        "virtual model `{}` selects no provider: its pools have none compiled",
                        vm.name
                    ),
                });
                continue;
            }
            out.origins.virtual_models.push(key.clone());
            v.virtual_models.push(vm.name.clone());
            let compiled = VirtualModelConfig {
                name: vm.name.clone(),
                strategy: vm.strategy,
                weights: vm.weights.map(|w| Weights {
                    cost: w.cost,
                    quality: w.quality,
                    latency: w.latency,
                }),
                candidates,
                local_preference: vm.local_preference,
                classify: None,
                cache: vm.cache.as_ref().map(|c| RouteCacheConfig {
                    enabled: c.enabled,
                    similarity_threshold: c.similarity_threshold,
                    ttl_secs: c.ttl_seconds,
                }),
                clients: (!cluster(&key.namespace)).then(|| vec![key.namespace.clone()]),
                hedge: vm.hedge.as_ref().map(|h| HedgeConfig {
                    after_secs: h.after_seconds,
                    after_quantile: h.after_quantile,
                }),
            };
            out.config.routing.virtual_models.push(compiled.clone());
            out.public.routing.virtual_models.push(compiled);
        }
        if let (Some(f), true) = (&route.spec.failover, cluster(&key.namespace)) {
            match &failover_from {
                Some(first) => v.refused.push(Problem {
                    reason: "Conflict",
                    message: format!(
                        "failover is already set by {first}; set it on one route of the namespace"
                    ),
                }),
                None => {
                    failover_from = Some(key.clone());
                    let fc = FailoverConfig {
                        max_attempts: f.max_attempts,
                        deadline_secs: f.deadline_seconds,
                        when_all_open: f.when_all_open,
                    };
                    out.config.routing.failover = Some(fc.clone());
                    out.public.routing.failover = Some(fc);
                }
            }
        }
    }

    // 3. Budget policies: one budget per subject and limits; a subject two policies cover is
    //    refused on both.
    let mut policies: Vec<(&Arc<BudgetPolicy>, Key)> = inp
        .policies
        .iter()
        .map(|p| (p, key_of(Kind::Policy, &**p)))
        .collect();
    policies.sort_by_key(|(_, k)| order(k));
    let scopes_of = |p: &BudgetPolicy, ns: &str| -> Vec<Result<(String, String), Problem>> {
        p.spec
            .subjects
            .iter()
            .map(|s| subject_scope(s.kind, &s.name, ns, cluster(ns)))
            .collect()
    };
    let mut claimed: BTreeMap<(String, String), Vec<Key>> = BTreeMap::new();
    for (p, key) in &policies {
        for (scope, subject) in scopes_of(p, &key.namespace).into_iter().flatten() {
            claimed
                .entry((scope, subject))
                .or_default()
                .push(key.clone());
        }
    }
    for (p, key) in &policies {
        let v = verdicts.entry(key.clone()).or_default();
        v.generation = p.metadata.generation;
        if let Some((_, msg)) = inp
            .refused_by_gateway
            .get(key)
            .filter(|(g, _)| *g == v.generation)
        {
            v.refused.push(Problem {
                reason: "RejectedByGateway",
                message: msg.clone(),
            });
            continue;
        }
        let s = &p.spec;
        if s.limit_usd.is_none()
            && s.limit_tokens.is_none()
            && s.requests_per_minute.is_none()
            && s.tokens_per_minute.is_none()
        {
            v.refused.push(Problem {
                reason: "NoLimits",
                message:
                    "set at least one of limitUsd, limitTokens, requestsPerMinute, tokensPerMinute"
                        .into(),
            });
            continue;
        }
        for scope in scopes_of(p, &key.namespace) {
            let (scope, subject) = match scope {
                Ok(x) => x,
                Err(problem) => {
                    v.refused.push(problem);
                    continue;
                }
            };
            let who = format!("{scope}/{subject}");
            if let Some(others) = claimed
                .get(&(scope.clone(), subject.clone()))
                .filter(|c| c.len() > 1)
            {
                let others: Vec<String> = others
                    .iter()
                    .filter(|o| *o != key)
                    .map(Key::describe)
                    .collect();
                v.refused.push(Problem {
                    reason: "Conflict",
                    message: format!(
                        "{who} is also covered by {}; keep one policy per subject",
                        others.join(", ")
                    ),
                });
                continue;
            }
            v.subjects.push(who);
            out.origins.budgets.push(key.clone());
            let b = BudgetConfig {
                scope,
                subject,
                period: Some(
                    match s.period {
                        llm_gateway_crds::resources::PeriodSpec::Month => "month",
                        llm_gateway_crds::resources::PeriodSpec::Week => "week",
                        llm_gateway_crds::resources::PeriodSpec::Day => "day",
                    }
                    .to_owned(),
                ),
                limit_usd: s.limit_usd,
                limit_tokens: s.limit_tokens,
                requests_per_minute: s.requests_per_minute,
                tokens_per_minute: s.tokens_per_minute,
                on_limit: Some(
                    match s.on_limit {
                        llm_gateway_crds::resources::OnLimitSpec::Reject => "reject",
                        llm_gateway_crds::resources::OnLimitSpec::Downgrade => "downgrade",
                    }
                    .to_owned(),
                ),
                source: Some(key.describe()),
            };
            out.config.budgets.push(b.clone());
            out.public.budgets.push(b);
        }
    }
    out.verdicts = verdicts;
    out
}

/// The gateway budget scope of a subject, or why a policy may not name it.
fn subject_scope(
    kind: SubjectKind,
    name: &str,
    ns: &str,
    cluster: bool,
) -> Result<(String, String), Problem> {
    let outside = |what: &str| {
        Problem {
        reason: "SubjectOutsideNamespace",
        message: format!(
            "{what} is outside namespace {ns}; a policy there may only cover its own callers (put it in the operator's namespace to cover others)"
        ),
    }
    };
    let inside = |t: &str| t == ns || t.starts_with(&format!("{ns}/"));
    // A namespace or service account that cannot exist would be a budget that never binds,
    // shown Ready: said instead.
    let invalid = |what: &str, bad: &str| {
        Problem {
        reason: "InvalidSubject",
        message: format!(
            "{what} `{bad}` is not a valid Kubernetes name (lower-case letters, digits and '-', starting and ending with a letter or digit)"
        ),
    }
    };
    match kind {
        SubjectKind::Namespace if !dns_label(name) => return Err(invalid("namespace", name)),
        SubjectKind::ServiceAccount => {
            for part in name.split('/') {
                if !dns_label(part) && !dns_subdomain(part) {
                    return Err(invalid("service account", name));
                }
            }
            if name.split('/').count() > 2 {
                return Err(invalid("service account", name));
            }
        }
        _ => {}
    }
    match kind {
        SubjectKind::Tenant if cluster || inside(name) => Ok(("tenant".into(), name.into())),
        SubjectKind::Tenant => Err(outside(&format!("tenant `{name}`"))),
        SubjectKind::Key if cluster => Ok(("key".into(), name.into())),
        SubjectKind::Key => Err(outside(&format!("key `{name}`"))),
        SubjectKind::Namespace if cluster || name == ns => Ok(("namespace".into(), name.into())),
        SubjectKind::Namespace => Err(outside(&format!("namespace `{name}`"))),
        SubjectKind::ServiceAccount => {
            let full = if name.contains('/') {
                name.to_owned()
            } else {
                format!("{ns}/{name}")
            };
            if cluster || inside(&full) {
                Ok(("tenant".into(), full))
            } else {
                Err(outside(&format!("service account `{full}`")))
            }
        }
    }
}

/// An RFC 1123 label: a namespace's name.
fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// An RFC 1123 subdomain: a service account's name.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// A route's candidates: the providers of the pools it names or selects (among those it
/// can see), plus models and tags.
fn candidates(
    c: &CandidatesSpec,
    visible: &[&(&Arc<ProviderPool>, Key)],
    pool_providers: &BTreeMap<Key, Vec<String>>,
) -> Result<CandidateSelector, Problem> {
    let mut providers = Vec::new();
    for name in &c.pools {
        let Some((_, k)) = visible.iter().find(|(_, k)| k.name == *name) else {
            return Err(Problem {
                reason: "PoolNotFound",
                message: format!("no ProviderPool `{name}` in this namespace or the operator's"),
            });
        };
        providers.extend(pool_providers.get(k).cloned().unwrap_or_default());
    }
    if let Some(sel) = &c.pool_selector {
        // An unknown operator selects nothing: said, rather than "no candidates".
        if let Some(e) = sel
            .match_expressions
            .iter()
            .flatten()
            .find(|e| !["In", "NotIn", "Exists", "DoesNotExist"].contains(&e.operator.as_str()))
        {
            return Err(Problem {
                reason: "InvalidSelector",
                message: format!(
                    "poolSelector operator `{}` (key `{}`) is not In, NotIn, Exists or DoesNotExist",
                    e.operator, e.key
                ),
            });
        }
        for (pool, k) in visible {
            if selects(sel, pool.labels()) {
                providers.extend(pool_providers.get(k).cloned().unwrap_or_default());
            }
        }
    }
    providers.sort();
    providers.dedup();
    Ok(CandidateSelector {
        providers,
        models: c.models.clone(),
        tags: c.tags.clone(),
    })
}

/// Whether a label selector selects `labels` (matchLabels and the four operators).
fn selects(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// A pool's provider as the gateway's `providers` entry (without its key).
fn provider_config(p: &PoolProvider, name: &str) -> ProviderConfig {
    let (protocol, catalog, discover) = match p.provider_type {
        ProviderType::Openai => (Protocol::Openai, Some("openai"), None),
        ProviderType::Anthropic => (Protocol::Anthropic, Some("anthropic"), None),
        ProviderType::Groq => (Protocol::Openai, Some("groq"), None),
        ProviderType::Together => (Protocol::Openai, Some("together"), None),
        ProviderType::Ollama => (Protocol::Ollama, Some("ollama"), Some(true)),
        ProviderType::OpenaiCompatible => (Protocol::Openai, None, None),
    };
    let catalog = match (p.use_catalog, catalog) {
        (Some(false), _) | (_, None) => "none",
        (_, Some(c)) => c,
    };
    ProviderConfig {
        name: name.to_owned(),
        protocol: Some(protocol),
        base_url: p.base_url.clone(),
        catalog: Some(catalog.to_owned()),
        discover_models: discover,
        headers: p.headers.clone(),
        models: p
            .models
            .iter()
            .map(|m| ModelConfig {
                name: m.name.clone(),
                kind: m.kind,
                input_usd_per_mtok: m.input_usd_per_mtok,
                output_usd_per_mtok: m.output_usd_per_mtok,
                context_window: m.context_window,
                max_output_tokens: m.max_output_tokens,
                capabilities: m.capabilities.clone(),
                quality: m.quality,
                latency_ms: m.latency_ms,
                tags: (!m.tags.is_empty()).then(|| m.tags.clone()),
                first_token_timeout_secs: None,
            })
            .collect(),
        connect_timeout_secs: p.timeouts.as_ref().and_then(|t| t.connect_seconds),
        timeout_secs: p.timeouts.as_ref().and_then(|t| t.total_seconds),
        read_idle_timeout_secs: p.timeouts.as_ref().and_then(|t| t.read_idle_seconds),
        first_token_timeout_secs: p.timeouts.as_ref().and_then(|t| t.first_token_seconds),
        max_concurrency: p.max_concurrency,
        breaker: p.breaker.as_ref().map(|b| BreakerConfig {
            consecutive_failures: b.consecutive_failures,
            failure_ratio: b.failure_ratio,
            base_backoff_secs: b.base_backoff_seconds,
            max_backoff_secs: b.max_backoff_seconds,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OPS: &str = "llm-gateway";

    fn pool(ns: &str, name: &str, spec: serde_json::Value) -> Arc<ProviderPool> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "llmgateway.io/v1alpha1", "kind": "ProviderPool",
                "metadata": {"name": name, "namespace": ns, "generation": 1,
                             "labels": {"tier": name}},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn route(ns: &str, name: &str, spec: serde_json::Value) -> Arc<LLMRoute> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "llmgateway.io/v1alpha1", "kind": "LLMRoute",
                "metadata": {"name": name, "namespace": ns, "generation": 1},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Arc<BudgetPolicy> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "llmgateway.io/v1alpha1", "kind": "BudgetPolicy",
                "metadata": {"name": name, "namespace": ns, "generation": 3},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn openai(secret: &str) -> serde_json::Value {
        json!({"providers": [{"name": "openai", "type": "openai",
            "apiKeySecretRef": {"name": secret, "key": "api-key"}}]})
    }

    /// Secrets: `openai` in any namespace holds `api-key`; `nokey` exists without it.
    fn secrets(_ns: &str, name: &str, key: &str) -> SecretValue {
        match (name, key) {
            ("openai", "api-key") => SecretValue::Found("sk-from-the-secret".into()),
            ("nokey", _) => SecretValue::NoKey,
            _ => SecretValue::NoSecret,
        }
    }

    fn run(
        pools: &[Arc<ProviderPool>],
        routes: &[Arc<LLMRoute>],
        policies: &[Arc<BudgetPolicy>],
    ) -> Compiled {
        run_refused(pools, routes, policies, &BTreeMap::new())
    }

    fn run_refused(
        pools: &[Arc<ProviderPool>],
        routes: &[Arc<LLMRoute>],
        policies: &[Arc<BudgetPolicy>],
        refused: &BTreeMap<Key, (Option<i64>, String)>,
    ) -> Compiled {
        compile(&Inputs {
            operator_namespace: OPS,
            pools,
            routes,
            policies,
            secret: &secrets,
            refused_by_gateway: refused,
            base: &GatewayConfig::default(),
        })
    }

    fn key(kind: Kind, ns: &str, name: &str) -> Key {
        Key {
            kind,
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn reasons(c: &Compiled, k: &Key) -> Vec<&'static str> {
        let v = &c.verdicts[k];
        v.refused
            .iter()
            .chain(&v.degraded)
            .map(|p| p.reason)
            .collect()
    }

    #[test]
    fn cluster_and_namespace_resources_compile_with_their_precedence() {
        let c = run(
            &[
                pool(OPS, "main", openai("openai")),
                pool("team-a", "own", openai("openai")),
            ],
            &[
                route(
                    OPS,
                    "defaults",
                    json!({"virtualModels": [{"name": "smart", "strategy": "quality"}]}),
                ),
                route(
                    "team-a",
                    "mine",
                    json!({"virtualModels": [{"name": "smart", "strategy": "cost"}]}),
                ),
            ],
            &[],
        );
        let names: Vec<_> = c.config.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["openai", "team-a.openai"]);
        assert_eq!(c.config.providers[0].clients, None);
        assert_eq!(c.config.providers[1].clients, Some(vec!["team-a".into()]));
        let vms = &c.config.routing.virtual_models;
        assert_eq!(
            (vms[0].name.as_str(), vms[0].clients.clone()),
            ("smart", None)
        );
        assert_eq!(vms[1].clients, Some(vec!["team-a".to_owned()]));
        // A namespace's route without candidates sees the cluster's providers and its own.
        assert_eq!(
            vms[1].candidates.as_ref().unwrap().providers,
            ["openai", "team-a.openai"]
        );
        assert!(c
            .verdicts
            .values()
            .all(|v| v.refused.is_empty() && v.degraded.is_empty()));
        assert_eq!(
            c.verdicts[&key(Kind::Route, "team-a", "mine")].virtual_models,
            ["smart"]
        );
    }

    #[test]
    fn keys_are_inline_only_in_the_pushed_config() {
        let c = run(&[pool(OPS, "main", openai("openai"))], &[], &[]);
        assert_eq!(
            c.config.providers[0].api_key,
            Some(SecretSource::Value("sk-from-the-secret".into()))
        );
        assert_eq!(
            c.public.providers[0].api_key,
            Some(SecretSource::Pushed(format!("{OPS}/openai/api-key")))
        );
        let public = serde_json::to_string(&c.public).unwrap();
        assert!(!public.contains("sk-from-the-secret"));
    }

    #[test]
    fn a_namespace_is_sent_the_cluster_keys_and_its_own_never_another_teams() {
        let c = run(
            &[
                pool(OPS, "main", openai("openai")),
                pool("team-a", "own", openai("openai")),
                pool("team-b", "own", openai("openai")),
            ],
            &[],
            &[],
        );
        let key = |cfg: &GatewayConfig, name: &str| {
            cfg.providers
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.api_key.clone())
        };
        let inline = Some(SecretSource::Value("sk-from-the-secret".into()));
        let a = c.for_namespace("team-a", OPS, ClusterKeys::Given);
        assert_eq!(key(&a, "openai"), inline);
        assert_eq!(key(&a, "team-a.openai"), inline);
        assert_eq!(
            key(&a, "team-b.openai"),
            Some(SecretSource::Pushed("team-b/openai/api-key".into()))
        );
        // A namespace not given the cluster's keys keeps its own pool's.
        let why = "namespace team-a is not labelled";
        let b = c.for_namespace("team-a", OPS, ClusterKeys::Withheld(why));
        assert_eq!(key(&b, "openai"), Some(SecretSource::Withheld(why.into())));
        assert_eq!(key(&b, "team-a.openai"), inline);
        assert_eq!(
            key(&b, "team-b.openai"),
            Some(SecretSource::Pushed("team-b/openai/api-key".into()))
        );
        // A cluster pool whose Secret is missing is withheld too, not "pending".
        let pending = run(&[pool(OPS, "main", openai("missing"))], &[], &[]);
        assert_eq!(
            key(
                &pending.for_namespace("team-a", OPS, ClusterKeys::Withheld(why)),
                "openai"
            ),
            Some(SecretSource::Withheld(why.into()))
        );
        // The shared gateway, in the operator's namespace, serves everyone: every key.
        for keys in [ClusterKeys::Given, ClusterKeys::Withheld(why)] {
            let shared = c.for_namespace(OPS, OPS, keys);
            assert_eq!(key(&shared, "team-b.openai"), inline);
            assert_eq!(key(&shared, "openai"), inline);
        }
    }

    #[test]
    fn every_rejection_reason() {
        let compat = json!({"providers": [{"name": "vllm", "type": "openai-compatible"}]});
        let dup =
            json!({"providers": [{"name": "a", "type": "groq"}, {"name": "a", "type": "groq"}]});
        let cases: Vec<(Compiled, Key, &str)> = vec![
            (
                run(&[pool(OPS, "p", openai("missing"))], &[], &[]),
                key(Kind::Pool, OPS, "p"),
                "SecretNotFound",
            ),
            (
                run(&[pool(OPS, "p", openai("nokey"))], &[], &[]),
                key(Kind::Pool, OPS, "p"),
                "SecretKeyNotFound",
            ),
            (
                run(&[pool(OPS, "p", compat)], &[], &[]),
                key(Kind::Pool, OPS, "p"),
                "MissingBaseUrl",
            ),
            (
                run(&[pool(OPS, "p", dup)], &[], &[]),
                key(Kind::Pool, OPS, "p"),
                "DuplicateProvider",
            ),
            (
                run(
                    &[
                        pool(OPS, "a", openai("openai")),
                        pool(OPS, "b", openai("openai")),
                    ],
                    &[],
                    &[],
                ),
                key(Kind::Pool, OPS, "b"),
                "Conflict",
            ),
            (
                run(
                    &[],
                    &[route(
                        OPS,
                        "r",
                        json!({"virtualModels": [{"name": "x", "strategy": "cost",
                        "candidates": {"pools": ["nowhere"]}}]}),
                    )],
                    &[],
                ),
                key(Kind::Route, OPS, "r"),
                "PoolNotFound",
            ),
            (
                run(
                    &[],
                    &[
                        route(
                            OPS,
                            "r1",
                            json!({"virtualModels": [{"name": "x", "strategy": "cost"}]}),
                        ),
                        route(
                            OPS,
                            "r2",
                            json!({"virtualModels": [{"name": "x", "strategy": "quality"}]}),
                        ),
                    ],
                    &[],
                ),
                key(Kind::Route, OPS, "r1"),
                "Conflict",
            ),
            (
                run(
                    &[],
                    &[route(
                        OPS,
                        "r",
                        json!({"virtualModels": [
                        {"name": "x", "strategy": "cost"}, {"name": "x", "strategy": "cost"}]}),
                    )],
                    &[],
                ),
                key(Kind::Route, OPS, "r"),
                "DuplicateVirtualModel",
            ),
            (
                run(
                    &[],
                    &[],
                    &[policy(
                        "team-a",
                        "b",
                        json!({"subjects": [{"kind": "namespace", "name": "team-b"}], "limitUsd": 5}),
                    )],
                ),
                key(Kind::Policy, "team-a", "b"),
                "SubjectOutsideNamespace",
            ),
            (
                run(
                    &[],
                    &[],
                    &[policy(
                        OPS,
                        "bad-name",
                        json!({"subjects": [{"kind": "namespace", "name": "Team_A!!"}], "limitUsd": 5}),
                    )],
                ),
                key(Kind::Policy, OPS, "bad-name"),
                "InvalidSubject",
            ),
            (
                run(
                    &[],
                    &[route(
                        OPS,
                        "sel",
                        json!({"virtualModels": [{"name": "s", "strategy": "cost",
                            "candidates": {"poolSelector": {"matchExpressions": [
                                {"key": "tier", "operator": "Inn", "values": ["a"]}]}}}]}),
                    )],
                    &[],
                ),
                key(Kind::Route, OPS, "sel"),
                "InvalidSelector",
            ),
            (
                run(
                    &[],
                    &[],
                    &[policy(
                        OPS,
                        "b",
                        json!({"subjects": [{"kind": "tenant", "name": "t"}]}),
                    )],
                ),
                key(Kind::Policy, OPS, "b"),
                "NoLimits",
            ),
            (
                run(
                    &[],
                    &[],
                    &[
                        policy(
                            OPS,
                            "b1",
                            json!({"subjects": [{"kind": "tenant", "name": "t"}], "limitUsd": 1}),
                        ),
                        policy(
                            OPS,
                            "b2",
                            json!({"subjects": [{"kind": "tenant", "name": "t"}], "limitUsd": 2}),
                        ),
                    ],
                ),
                key(Kind::Policy, OPS, "b2"),
                "Conflict",
            ),
        ];
        for (c, k, want) in cases {
            assert!(reasons(&c, &k).contains(&want), "{k}: {:?}", c.verdicts[&k]);
            let v = &c.verdicts[&k];
            assert!(
                v.refused
                    .iter()
                    .chain(&v.degraded)
                    .all(|p| !p.message.is_empty()),
                "{k}: every problem says what to do"
            );
        }
    }

    #[test]
    fn clashing_definitions_are_left_out_and_the_rest_compiles() {
        let c = run(
            &[
                pool(OPS, "a", openai("openai")),
                pool(OPS, "b", openai("openai")),
            ],
            &[
                route(
                    OPS,
                    "r1",
                    json!({"virtualModels": [{"name": "x", "strategy": "cost"}, {"name": "y", "strategy": "cost"}]}),
                ),
                route(
                    OPS,
                    "r2",
                    json!({"virtualModels": [{"name": "x", "strategy": "quality"}]}),
                ),
            ],
            &[],
        );
        assert!(c.config.providers.is_empty(), "neither `openai` wins");
        let names: Vec<_> = c
            .config
            .routing
            .virtual_models
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["y"]);
    }

    #[test]
    fn a_missing_secret_keeps_the_provider_waiting_for_its_key() {
        let c = run(&[pool("team-a", "p", openai("missing"))], &[], &[]);
        let p = &c.config.providers[0];
        assert_eq!(
            p.api_key,
            Some(SecretSource::Pushed("team-a/missing/api-key".into()))
        );
        let v = &c.verdicts[&key(Kind::Pool, "team-a", "p")];
        assert_eq!(v.missing_secrets, ["openai: missing/api-key"]);
        assert_eq!(
            v.degraded[0].message,
            "secret team-a/missing not found (provider `openai`); create it with the API key under \"api-key\""
        );
    }

    #[test]
    fn budget_subjects_become_scopes() {
        let c = run(
            &[],
            &[],
            &[
                policy(
                    "team-a",
                    "own",
                    json!({"subjects": [
                    {"kind": "namespace", "name": "team-a"},
                    {"kind": "serviceAccount", "name": "app"},
                    {"kind": "tenant", "name": "team-a/batch"}], "limitTokens": 1000, "onLimit": "downgrade"}),
                ),
                policy(
                    OPS,
                    "all",
                    json!({"subjects": [{"kind": "key", "name": "k-1"}], "limitUsd": 10, "period": "week"}),
                ),
            ],
        );
        let got: Vec<_> = c
            .config
            .budgets
            .iter()
            .map(|b| (b.scope.as_str(), b.subject.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("key", "k-1"),
                ("namespace", "team-a"),
                ("tenant", "team-a/app"),
                ("tenant", "team-a/batch")
            ]
        );
        assert_eq!(c.config.budgets[0].period.as_deref(), Some("week"));
        assert_eq!(c.config.budgets[1].on_limit.as_deref(), Some("downgrade"));
        assert_eq!(
            c.config.budgets[1].source.as_deref(),
            Some("BudgetPolicy team-a/own")
        );
    }

    #[test]
    fn a_resource_a_gateway_refused_is_left_out_until_it_changes() {
        let r = route(
            OPS,
            "r",
            json!({"virtualModels": [{"name": "x", "strategy": "cost"}]}),
        );
        let k = key(Kind::Route, OPS, "r");
        let refused = BTreeMap::from([(k.clone(), (Some(1), "bad weights".to_owned()))]);
        let c = run_refused(&[], &[r], &[], &refused);
        assert!(c.config.routing.virtual_models.is_empty());
        assert_eq!(c.verdicts[&k].refused[0].reason, "RejectedByGateway");
        let newer = route(
            OPS,
            "r",
            json!({"virtualModels": [{"name": "x", "strategy": "cost"}]}),
        );
        let mut newer = (*newer).clone();
        newer.metadata.generation = Some(2);
        let c = run_refused(&[], &[Arc::new(newer)], &[], &refused);
        assert_eq!(c.config.routing.virtual_models.len(), 1);
    }

    #[test]
    fn a_gateways_field_path_finds_its_resource() {
        let c = run(
            &[pool(OPS, "main", openai("openai"))],
            &[route(
                OPS,
                "r",
                json!({"virtualModels": [{"name": "x", "strategy": "cost"}]}),
            )],
            &[policy(
                OPS,
                "b",
                json!({"subjects": [{"kind": "tenant", "name": "t"}], "limitUsd": 1}),
            )],
        );
        assert_eq!(
            c.origins.resource_of("providers[0].base_url"),
            Some(&key(Kind::Pool, OPS, "main"))
        );
        assert_eq!(
            c.origins
                .resource_of("routing.virtual_models[0].weights.cost"),
            Some(&key(Kind::Route, OPS, "r"))
        );
        assert_eq!(
            c.origins.resource_of("budgets[0].limit_usd"),
            Some(&key(Kind::Policy, OPS, "b"))
        );
        assert_eq!(c.origins.resource_of("server.listen"), None);
    }

    #[test]
    fn pool_selectors_pick_pools_by_label() {
        let c = run(
            &[
                pool(
                    OPS,
                    "fast",
                    json!({"providers": [{"name": "groq", "type": "groq"}]}),
                ),
                pool(OPS, "big", openai("openai")),
            ],
            &[route(
                OPS,
                "r",
                json!({"virtualModels": [{"name": "x", "strategy": "cost",
                "candidates": {"poolSelector": {"matchLabels": {"tier": "fast"}}}}]}),
            )],
            &[],
        );
        assert_eq!(
            c.config.routing.virtual_models[0]
                .candidates
                .as_ref()
                .unwrap()
                .providers,
            ["groq"]
        );
    }
}
