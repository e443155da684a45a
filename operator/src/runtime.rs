//! The operator at work: on any change (a resource, a referenced Secret, a gateway pod) it
//! compiles, stores the result without secrets in a ConfigMap, pushes it with the keys to
//! every gateway pod that does not run it yet, and writes each resource's status.
//!
//! One sync runs at a time. A gateway that refuses a push names the field at fault; the
//! resource it came from is left out (reported `RejectedByGateway`) until it changes, and the
//! rest is pushed again at once, so one bad resource never holds the others back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use llm_gateway_crds::resources::{
    BudgetPolicy, BudgetPolicyStatus, LLMRoute, LLMRouteStatus, ProviderPool, ProviderPoolStatus,
    SubjectSpend,
};
use llm_gateway_crds::GatewayConfig;
use ring::digest::{digest, SHA256};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::compile::{self, ClusterKeys, Compiled, Key, Kind, SecretValue, Verdict};
use crate::gateways::{self, PushError, Target};
use crate::metrics::Metrics;

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "llm-gateway-operator";
/// The ConfigMap key of the compiled configuration.
pub const CONFIG_KEY: &str = "gateway.yaml";
/// Annotation: the version the ConfigMap holds.
pub const VERSION_ANNOTATION: &str = "llmgateway.io/version";
/// Annotation: the content hash of that version (secrets included, hashed).
pub const HASH_ANNOTATION: &str = "llmgateway.io/config-hash";

/// What the operator was started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Its namespace: the cluster's defaults live there, and its ConfigMap and Secret.
    pub namespace: String,
    /// The ConfigMap holding the compiled configuration.
    pub config_map: String,
    /// The Secret holding the gateways' admin token (created if missing).
    pub admin_secret: String,
    /// What every compiled configuration starts from (server and cache settings).
    pub base: GatewayConfig,
    /// This replica's name (events, leases).
    pub identity: String,
    /// The gateway image sidecars are injected with: outside this namespace, only a
    /// `llm-gateway` container of this image, as the webhook makes it, is pushed to (a
    /// push carries the cluster pools' keys).
    pub sidecar_image: String,
    /// The label selector of the namespaces whose gateways get the cluster pools' keys;
    /// `None`: every namespace.
    pub cluster_keys: Option<String>,
}

/// Per gateway pod: the version it runs, and when to try again after a failure.
#[derive(Debug, Clone, Default)]
struct PodState {
    version: Option<String>,
    /// Whether that push carried the cluster pools' keys (a namespace labelled or unlabelled
    /// since is pushed again, without a new version for every other gateway).
    keys_given: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// What the status writers read: the last compile and how the gateways stand.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The last compile.
    pub compiled: Option<Arc<Compiled>>,
    /// Its version.
    pub version: String,
    /// Ready gateway pods running it.
    pub in_sync: usize,
    /// Ready gateway pods.
    pub total: usize,
    /// The pods not running it, `namespace/name`, each with its last push error if any.
    pub lagging: Vec<String>,
    /// The last figures of the declared budgets, read from a gateway.
    pub budgets: Vec<Value>,
    /// Models a gateway enabled per provider (catalog and discovery included).
    pub models: HashMap<String, u32>,
    /// Namespaces with ready gateways that the cluster pools' keys are withheld from, sorted.
    pub withheld_from: Vec<String>,
}

/// Whether `e` is the API server's 404 (a namespace that no longer exists).
fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<kube::Error>()
        .is_some_and(|k| matches!(k, kube::Error::Api(r) if r.code == 404))
}

/// A resource as the gateways last accepted it.
#[derive(Debug, Clone)]
enum Good {
    Pool(Arc<ProviderPool>),
    Route(Arc<LLMRoute>),
    Policy(Arc<BudgetPolicy>),
}

/// A resource compiled from its last accepted generation: (key, the refused generation,
/// the gateways' message).
type Substituted = (Key, Option<i64>, String);

/// A kind whose last accepted generation is remembered (and kept in a ConfigMap across
/// restarts).
trait Remembered:
    Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned + Sized
{
    const KIND: Kind;
    /// Its name in the stored list.
    const STORED: &'static str;
    fn wrap(r: Arc<Self>) -> Good;
    fn unwrap(g: &Good) -> Option<Arc<Self>>;
}

macro_rules! remembered {
    ($ty:ty, $kind:ident) => {
        impl Remembered for $ty {
            const KIND: Kind = Kind::$kind;
            const STORED: &'static str = stringify!($ty);
            fn wrap(r: Arc<Self>) -> Good {
                Good::$kind(r)
            }
            fn unwrap(g: &Good) -> Option<Arc<Self>> {
                match g {
                    Good::$kind(r) => Some(r.clone()),
                    _ => None,
                }
            }
        }
    };
}
remembered!(ProviderPool, Pool);
remembered!(LLMRoute, Route);
remembered!(BudgetPolicy, Policy);

/// `items`, each refused one replaced by its last accepted generation where there is one.
fn with_last_good<K: Remembered>(
    items: Vec<Arc<K>>,
    st: &State,
    substituted: &mut Vec<Substituted>,
) -> Vec<Arc<K>> {
    items
        .into_iter()
        .map(|r| {
            let k = key(K::KIND, &*r);
            let generation = r.meta().generation;
            let refused = st.refused.get(&k).filter(|(g, _)| *g == generation);
            let good = st.last_good.get(&k).and_then(K::unwrap);
            match (refused, good) {
                (Some((_, msg)), Some(old)) if old.meta().generation != generation => {
                    substituted.push((k, generation, msg.clone()));
                    old
                }
                _ => r,
            }
        })
        .collect()
}

/// The Ready message's note on a cluster pool whose keys some namespaces' gateways do not
/// get (up to five named: a status is no place for a thousand namespaces).
fn withheld_note(namespaces: &[String]) -> Option<String> {
    let names = match namespaces.len() {
        0 => return None,
        n @ 1..=5 => namespaces[..n].join(", "),
        n => format!("{} and {} more", namespaces[..5].join(", "), n - 5),
    };
    Some(format!(
        "; its keys are withheld from the gateways in {names} (namespaces not matching --cluster-keys-namespaces)"
    ))
}

/// The reason pushed for the cluster pools' providers to the gateways of `namespace`, which
/// `selector` does not match: at most about 250 characters (a namespace name has at most 63).
fn withheld_text(namespace: &str, selector: &str) -> String {
    let by = if selector.chars().count() <= 100 {
        format!("the label selector `{selector}`")
    } else {
        "the operator's --cluster-keys-namespaces selector".to_owned()
    };
    format!(
        "namespace {namespace} is not given the cluster's provider keys: {by} does not match it"
    )
}

/// The data key of the last-good ConfigMap.
const LAST_GOOD_KEY: &str = "resources.json";

/// `good` as stored: each resource's kind, name, namespace, generation and spec, in key
/// order.
fn stored_last_good(good: &HashMap<Key, Good>) -> String {
    // Only what identifies and specifies it: a status write changes `resourceVersion`, and
    // the text must change only when an accepted generation does.
    fn one<K: Remembered>(r: &K) -> Value {
        let v = serde_json::to_value(r).unwrap_or_default();
        let m = r.meta();
        json!({"kind": K::STORED, "object": {
            "apiVersion": v.get("apiVersion"),
            "kind": v.get("kind"),
            "metadata": {"name": m.name, "namespace": m.namespace, "generation": m.generation},
            "spec": v.get("spec"),
        }})
    }
    let mut keys: Vec<&Key> = good.keys().collect();
    keys.sort();
    let list: Vec<Value> = keys
        .into_iter()
        .map(|k| match &good[k] {
            Good::Pool(r) => one(&**r),
            Good::Route(r) => one(&**r),
            Good::Policy(r) => one(&**r),
        })
        .collect();
    serde_json::to_string(&list).unwrap_or_default()
}

/// The resources of [`stored_last_good`]'s text, and how many entries could not be read
/// (left out: never a failed start).
fn restored_last_good(text: &str) -> (HashMap<Key, Good>, usize) {
    fn one<K: Remembered>(v: Value) -> Option<(Key, Good)> {
        let r: K = serde_json::from_value(v).ok()?;
        Some((key(K::KIND, &r), K::wrap(Arc::new(r))))
    }
    let Ok(list) = serde_json::from_str::<Vec<Value>>(text) else {
        return (HashMap::new(), 1);
    };
    let total = list.len();
    let restored: HashMap<Key, Good> = list
        .into_iter()
        .filter_map(|mut e| {
            let object = e.get_mut("object").map(Value::take)?;
            match e.get("kind").and_then(Value::as_str)? {
                ProviderPool::STORED => one::<ProviderPool>(object),
                LLMRoute::STORED => one::<LLMRoute>(object),
                BudgetPolicy::STORED => one::<BudgetPolicy>(object),
                _ => None,
            }
        })
        .collect();
    let skipped = total - restored.len();
    (restored, skipped)
}

/// Adds to `good` each of `items` the gateways accepted as compiled now, and for the rest
/// their generation remembered in `last`, if any.
fn keep_good<K: Remembered>(
    items: &[Arc<K>],
    accepted: impl Fn(&Key) -> bool,
    last: &HashMap<Key, Good>,
    good: &mut HashMap<Key, Good>,
) {
    for r in items {
        let k = key(K::KIND, &**r);
        let g = if accepted(&k) {
            Some(K::wrap(r.clone()))
        } else {
            last.get(&k).cloned()
        };
        if let Some(g) = g {
            good.insert(k, g);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    version: u64,
    hash: Option<String>,
    body: Arc<Vec<u8>>,
    pods: BTreeMap<String, PodState>,
    refused: BTreeMap<Key, (Option<i64>, String)>,
    /// Every resource's name and generation when the refusals above were made: a gateway may
    /// refuse a resource for another's fault (a route naming a model only a broken pool
    /// serves), so any change anywhere retries them all.
    refused_in: u64,
    /// Each resource as last accepted by the gateways: when a later generation is refused,
    /// this one is compiled in its place, so one bad edit does not take a working route or
    /// pool away from every gateway.
    last_good: HashMap<Key, Good>,
    /// `last_good` as last written to its ConfigMap.
    last_good_written: Option<String>,
    /// The ConfigMap has been read (until then nothing is written over it).
    last_good_read: bool,
    /// Namespaces given the ConfigMap, and the version last written there: a namespace whose
    /// sidecars are all down keeps getting new versions, so a sidecar starting there reads a
    /// current one.
    config_maps: BTreeMap<String, String>,
    /// The conditions last reported per resource, for events on changes.
    reported: HashMap<Key, String>,
    loaded: bool,
}

/// Everything the controllers share.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// Start-up settings.
    pub settings: Settings,
    /// Watched resources.
    pub pools: Store<ProviderPool>,
    /// Watched resources.
    pub routes: Store<LLMRoute>,
    /// Watched resources.
    pub policies: Store<BudgetPolicy>,
    /// Gateway pods.
    pub pods: Store<Pod>,
    /// The namespaces matching [`Settings::cluster_keys`] (none watched without one).
    pub key_namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set when anything changed; the sync loop waits on it.
    pub wake: Notify,
    state: tokio::sync::Mutex<State>,
    published: RwLock<Published>,
    http: reqwest::Client,
    recorder: Recorder,
    /// The admin token of each namespace with gateways (a team's sidecars accept only their
    /// namespace's, so its Secret cannot steer the shared gateway).
    tokens: tokio::sync::Mutex<HashMap<String, String>>,
    /// Labelled pods outside the operator's namespace already logged as not pushed to
    /// (`namespace/name`): each is logged once, and forgotten when it goes or becomes trusted.
    untrusted_logged: std::sync::Mutex<HashSet<String>>,
}

/// The watched caches the operator works from.
pub struct Stores {
    /// `ProviderPool`s.
    pub pools: Store<ProviderPool>,
    /// `LLMRoute`s.
    pub routes: Store<LLMRoute>,
    /// `BudgetPolicy`s.
    pub policies: Store<BudgetPolicy>,
    /// Gateway pods.
    pub pods: Store<Pod>,
    /// The namespaces given the cluster pools' keys (see [`Settings::cluster_keys`]).
    pub key_namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
}

/// The namespace of a `namespace/name` pod reference.
fn namespace_of(pod: &str) -> &str {
    pod.split('/').next().unwrap_or_default()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Ctx {
    /// The shared context; ensures the admin token Secret exists.
    pub async fn new(
        client: Client,
        settings: Settings,
        stores: Stores,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let token = admin_token(&client, &settings.namespace, &settings.admin_secret).await?;
        let settings_ns = settings.namespace.clone();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(settings.identity.clone()),
            },
        );
        Ok(Arc::new(Self {
            client,
            settings,
            pools: stores.pools,
            routes: stores.routes,
            policies: stores.policies,
            pods: stores.pods,
            key_namespaces: stores.key_namespaces,
            metrics,
            wake: Notify::new(),
            state: tokio::sync::Mutex::default(),
            published: RwLock::default(),
            http: gateways::client(),
            recorder,
            tokens: tokio::sync::Mutex::new(HashMap::from([(settings_ns, token)])),
            untrusted_logged: std::sync::Mutex::default(),
        }))
    }

    /// What the status writers see.
    pub fn published(&self) -> Published {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether every cache this operator compiles from has finished its first list.
    fn caches_listed(&self) -> bool {
        use futures::FutureExt;
        let ready = |f: Option<Result<(), _>>| matches!(f, Some(Ok(())));
        ready(self.pools.wait_until_ready().now_or_never())
            && ready(self.routes.wait_until_ready().now_or_never())
            && ready(self.policies.wait_until_ready().now_or_never())
            && ready(self.pods.wait_until_ready().now_or_never())
            && self
                .key_namespaces
                .as_ref()
                .is_none_or(|n| ready(n.wait_until_ready().now_or_never()))
    }

    /// The namespaces given the cluster pools' keys, sorted (`None`: every one).
    fn given_cluster_keys(&self) -> Option<Vec<String>> {
        let store = self.key_namespaces.as_ref()?;
        let mut names: Vec<String> = store.state().iter().map(|n| n.name_any()).collect();
        names.sort();
        Some(names)
    }

    /// Whether `namespace`'s gateways get the cluster pools' keys (see
    /// [`Settings::cluster_keys`]); `given` is [`Ctx::given_cluster_keys`].
    fn keys_given(&self, namespace: &str, given: Option<&[String]>) -> bool {
        match (&self.settings.cluster_keys, given) {
            (None, _) => true,
            _ if namespace == self.settings.namespace => true,
            (Some(_), Some(g)) => g.iter().any(|n| n == namespace),
            // A selector without its watch (never built so): fail closed.
            (Some(_), None) => false,
        }
    }

    /// Why `namespace`'s gateways do not get the cluster pools' keys, if they do not: short,
    /// whatever the selector (every caller of those providers there reads it, and the
    /// gateway refuses a reason over 500 characters).
    fn withheld_reason(&self, namespace: &str, given: Option<&[String]>) -> Option<String> {
        if self.keys_given(namespace, given) {
            return None;
        }
        let selector = self.settings.cluster_keys.as_deref().unwrap_or_default();
        Some(withheld_text(namespace, selector))
    }

    /// Compiles, stores, pushes (see the module docs). Safe to call any time.
    pub async fn sync(&self) -> anyhow::Result<()> {
        // A replica that has just become leader must not push a configuration compiled from
        // caches still listing: the gateways would lose every pool or route not yet seen. The
        // check does not wait (reconciles call this too, and must return); the sync loop is
        // woken to try again shortly.
        if !self.caches_listed() {
            tracing::debug!("caches still listing; the push waits");
            self.wake.notify_one();
            return Ok(());
        }
        let mut st = self.state.lock().await;
        if !st.loaded {
            self.load_version(&mut st).await;
            st.loaded = true;
        }
        if !st.last_good_read {
            self.read_last_good(&mut st).await;
        }
        let secrets = self.fetch_secrets().await;
        let mut compiled;
        let mut rounds = 0;
        let world = self.fingerprint();
        if world != st.refused_in {
            st.refused.clear();
            st.refused_in = world;
        }
        let mut substituted: Vec<Substituted>;
        let mut given;
        let mut last_round_refused;
        let (mut pools, mut routes, mut policies);
        loop {
            rounds += 1;
            substituted = Vec::new();
            pools = with_last_good(self.pools.state(), &st, &mut substituted);
            routes = with_last_good(self.routes.state(), &st, &mut substituted);
            policies = with_last_good(self.policies.state(), &st, &mut substituted);
            let lookup = |ns: &str, name: &str, key: &str| -> SecretValue {
                match secrets.get(&(ns.to_owned(), name.to_owned())) {
                    None => SecretValue::NoSecret,
                    Some(data) => data
                        .get(key)
                        .map_or(SecretValue::NoKey, |v| SecretValue::Found(v.clone())),
                }
            };
            compiled = compile::compile(&compile::Inputs {
                operator_namespace: &self.settings.namespace,
                pools: &pools,
                routes: &routes,
                policies: &policies,
                secret: &lookup,
                refused_by_gateway: &st.refused,
                base: &self.settings.base,
            });
            // Which namespaces get the cluster's keys is not part of the version: a namespace
            // labelled or unlabelled has its own gateways pushed again (see `push_all`).
            given = self.given_cluster_keys();
            let hash = hex(digest(&SHA256, &serde_json::to_vec(&compiled.config)?).as_ref());
            if st.hash.as_deref() != Some(hash.as_str()) {
                st.version += 1;
                st.hash = Some(hash.clone());
                info!(version = %format!("v{}", st.version), "compiled a new configuration");
            }
            let version = format!("v{}", st.version);
            compiled.config.version = Some(version.clone());
            compiled.public.version = Some(version.clone());
            st.body = Arc::new(serde_json::to_vec(&compiled.config)?);
            // The operator's namespace, and every namespace with sidecars: they mount it.
            let mut namespaces: Vec<String> = self
                .targets()
                .iter()
                .filter_map(|t| t.pod.split('/').next().map(str::to_owned))
                .collect();
            namespaces.push(self.settings.namespace.clone());
            // Namespaces written before, whose sidecars are gone for now: on a new version.
            namespaces.extend(
                st.config_maps
                    .iter()
                    .filter(|(_, v)| **v != version)
                    .map(|(ns, _)| ns.clone()),
            );
            namespaces.sort();
            namespaces.dedup();
            for ns in namespaces {
                match self
                    .write_config_map(&ns, &compiled.public, &version, &hash)
                    .await
                {
                    Ok(()) => {
                        st.config_maps.insert(ns, version.clone());
                    }
                    Err(e) if is_not_found(&e) => {
                        // The namespace is gone.
                        st.config_maps.remove(&ns);
                    }
                    Err(e) => {
                        warn!(namespace = %ns, error = %e, "cannot write the configuration ConfigMap; retrying at the next sync");
                    }
                }
            }
            let refused = self
                .push_all(&mut st, &compiled, &version, given.as_deref())
                .await;
            last_round_refused = !refused.is_empty();
            if refused.is_empty() || rounds >= 4 {
                break;
            }
            for (key, msg) in refused {
                if substituted.iter().any(|(k, _, _)| *k == key) {
                    // The earlier generation is refused too now (what it needs changed):
                    // it is no longer good, and the current one's refusal stands.
                    st.last_good.remove(&key);
                    continue;
                }
                let generation = compiled.verdicts.get(&key).and_then(|v| v.generation);
                warn!(resource = %key, message = %msg, "a gateway refused it; leaving it out until it changes");
                st.refused.insert(key, (generation, msg));
            }
        }
        // What each substitute stands for: the refused generation, and the one serving.
        for (k, generation, msg) in &substituted {
            if let Some(v) = compiled.verdicts.get_mut(k) {
                v.serving = v.generation;
                v.generation = *generation;
                v.refused.insert(
                    0,
                    compile::Problem {
                        reason: "RejectedByGateway",
                        message: msg.clone(),
                    },
                );
            }
        }
        // Resources the gateways run as compiled now are their last good generation.
        let accepted = |k: &Key| {
            compiled
                .verdicts
                .get(k)
                .is_some_and(|v| v.refused.is_empty() && v.serving.is_none())
        };
        let mut good = HashMap::new();
        // "Good" means a gateway runs it: updated only once this version is applied
        // somewhere, and never from a round the gateways refused.
        let applied = !last_round_refused
            && st
                .pods
                .values()
                .any(|p| p.version.as_deref() == Some(format!("v{}", st.version).as_str()));
        if !applied {
            good = st.last_good.clone();
        } else {
            keep_good(&pools, accepted, &st.last_good, &mut good);
            keep_good(&routes, accepted, &st.last_good, &mut good);
            keep_good(&policies, accepted, &st.last_good, &mut good);
        }
        st.last_good = good;
        self.keep_last_good(&mut st).await;
        // Refusals of resources that changed or went away no longer apply.
        st.refused
            .retain(|k, (g, _)| compiled.verdicts.get(k).is_some_and(|v| v.generation == *g));
        let version = format!("v{}", st.version);
        let targets: Vec<Target> = self.targets();
        // A pod runs what it should when it has this version, with or without the cluster's
        // keys as its namespace says now (a pod that kept keys it lost is not in sync).
        let current = |t: &Target, p: &PodState| {
            p.version.as_deref() == Some(version.as_str())
                && p.keys_given == self.keys_given(namespace_of(&t.pod), given.as_deref())
        };
        let in_sync = targets
            .iter()
            .filter(|t| st.pods.get(&t.pod).is_some_and(|p| current(t, p)))
            .count();
        st.pods
            .retain(|pod, _| targets.iter().any(|t| t.pod == *pod));
        let lagging: Vec<String> = targets
            .iter()
            .filter_map(|t| {
                let p = st.pods.get(&t.pod);
                if p.is_some_and(|p| current(t, p)) {
                    return None;
                }
                Some(match p.and_then(|p| p.last_error.as_deref()) {
                    Some(e) => {
                        let e: String = e.chars().take(160).collect();
                        format!("{} ({e})", t.pod)
                    }
                    None => t.pod.clone(),
                })
            })
            .collect();
        let mut withheld_from: Vec<String> = targets
            .iter()
            .map(|t| namespace_of(&t.pod))
            .filter(|ns| !self.keys_given(ns, given.as_deref()))
            .map(str::to_owned)
            .collect();
        withheld_from.sort();
        withheld_from.dedup();
        self.metrics.gateways(in_sync, targets.len());
        self.metrics.version(&version);
        // Figures only a gateway knows, from one running this version.
        let synced = targets.iter().find(|t| {
            st.pods
                .get(&t.pod)
                .is_some_and(|p| p.version.as_deref() == Some(version.as_str()))
        });
        let budgets = match synced {
            Some(t) if !compiled.config.budgets.is_empty() => {
                gateways::budgets(&self.http, t, &self.token_of(&t.pod).await)
                    .await
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let models = match synced {
            Some(t) => gateways::models(&self.http, t, &self.token_of(&t.pod).await)
                .await
                .unwrap_or_default(),
            None => HashMap::new(),
        };
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = Published {
            compiled: Some(Arc::new(compiled)),
            version,
            in_sync,
            total: targets.len(),
            lagging,
            budgets,
            models,
            withheld_from,
        };
        drop(st);
        self.write_statuses().await;
        Ok(())
    }

    /// Whether some ready gateway does not run the current version yet (the sync loop then
    /// tries again soon).
    pub fn behind(&self) -> bool {
        let p = self.published();
        p.in_sync < p.total
    }

    /// A hash of every resource's kind, namespace, name and generation.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        fn add<K: kube::Resource>(h: &mut impl Hasher, kind: &str, items: &[Arc<K>]) {
            let mut ids: Vec<_> = items
                .iter()
                .map(|r| {
                    let m = r.meta();
                    (m.namespace.clone(), m.name.clone(), m.generation)
                })
                .collect();
            ids.sort();
            (kind, ids).hash(h);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        add(&mut h, "pool", &self.pools.state());
        add(&mut h, "route", &self.routes.state());
        add(&mut h, "policy", &self.policies.state());
        h.finish()
    }

    fn targets(&self) -> Vec<Target> {
        let mut untrusted = HashMap::new();
        let mut t: Vec<Target> = self
            .pods
            .state()
            .iter()
            .filter(|p| {
                let ns = p.metadata.namespace.as_deref().unwrap_or_default();
                ns == self.settings.namespace
                    || match gateways::trusted_sidecar(p, &self.settings.sidecar_image) {
                        Ok(()) => true,
                        Err(why) => {
                            untrusted.insert(format!("{ns}/{}", p.name_any()), why);
                            false
                        }
                    }
            })
            .filter_map(|p| gateways::target(p))
            .collect();
        t.sort();
        let mut logged = self
            .untrusted_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        logged.retain(|pod| untrusted.contains_key(pod));
        for (pod, why) in untrusted {
            if !logged.contains(&pod) {
                tracing::warn!(pod = %pod, reason = %why, "not pushing to a gateway-labelled pod that is not a sidecar the webhook made");
                logged.insert(pod);
            }
        }
        t
    }

    /// Pushes the current version to every gateway not running it; returns the resources
    /// gateways refused, with the message.
    async fn push_all(
        &self,
        st: &mut State,
        compiled: &Compiled,
        version: &str,
        given: Option<&[String]>,
    ) -> Vec<(Key, String)> {
        let now = Instant::now();
        let body = st.body.clone();
        // Each namespace's own body (another team's keys stay out of its pods).
        let mut bodies: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
        let due: Vec<Target> = self
            .targets()
            .into_iter()
            .filter(|t| {
                let p = st.pods.get(&t.pod);
                let keys = self.keys_given(namespace_of(&t.pod), given);
                p.is_none_or(|p| {
                    (p.version.as_deref() != Some(version) || p.keys_given != keys)
                        && p.retry_at.is_none_or(|r| r <= now)
                })
            })
            .collect();
        let mut tokens = Vec::with_capacity(due.len());
        for t in &due {
            tokens.push(self.token_of(&t.pod).await);
            let ns = namespace_of(&t.pod);
            if ns != self.settings.namespace && !bodies.contains_key(ns) {
                let why = self.withheld_reason(ns, given);
                let keys = why
                    .as_deref()
                    .map_or(ClusterKeys::Given, ClusterKeys::Withheld);
                let own = compiled.for_namespace(ns, &self.settings.namespace, keys);
                // Never the full body in its place: an empty one is refused, nothing leaks.
                let own_body = Arc::new(serde_json::to_vec(&own).unwrap_or_default());
                bodies.insert(ns.to_owned(), own_body);
            }
        }
        let results = join_all(due.iter().zip(&tokens).map(|(t, token)| {
            let ns = namespace_of(&t.pod);
            let body = bodies.get(ns).cloned().unwrap_or_else(|| body.clone());
            let http = &self.http;
            async move {
                let started = Instant::now();
                let span = tracing::info_span!(
                    "push",
                    otel.name = "push configuration",
                    otel.kind = "client",
                    k8s.pod.name = %t.pod,
                    llm_gateway.config_version = %version,
                );
                let r =
                    tracing::Instrument::instrument(gateways::push(http, t, token, &body), span)
                        .await;
                (t, r, started.elapsed().as_secs_f64())
            }
        }))
        .await;
        let mut refused = Vec::new();
        for (t, r, secs) in results {
            let ps = st.pods.entry(t.pod.clone()).or_default();
            match r {
                Ok(v) => {
                    self.metrics.push("applied", secs);
                    let keys_given = self.keys_given(namespace_of(&t.pod), given);
                    // Who holds the cluster's keys matters to security: each change is logged.
                    let first = ps.version.is_none();
                    if !keys_given && (first || ps.keys_given) {
                        info!(pod = %t.pod, "the cluster pools' keys are withheld from this gateway: its namespace does not match --cluster-keys-namespaces");
                    } else if keys_given && !first && !ps.keys_given {
                        info!(pod = %t.pod, "the cluster pools' keys are given to this gateway: its namespace matches --cluster-keys-namespaces");
                    }
                    *ps = PodState {
                        version: Some(v),
                        keys_given,
                        ..PodState::default()
                    };
                }
                Err(e) => {
                    ps.failures += 1;
                    // Exponential backoff, 0.5 s to 30 s.
                    let wait = Duration::from_millis(500 * (1 << ps.failures.min(6)))
                        .min(Duration::from_secs(30));
                    ps.retry_at = Some(Instant::now() + wait);
                    match e {
                        PushError::Refused { path, message } => {
                            self.metrics.push("refused", secs);
                            ps.last_error = Some(message.clone());
                            match compiled.origins.resource_of(&path) {
                                Some(k) => refused.push((k.clone(), message)),
                                None => {
                                    warn!(pod = %t.pod, %path, %message, "a gateway refused the configuration")
                                }
                            }
                            // The recompiled configuration goes out at once.
                            ps.retry_at = None;
                        }
                        PushError::Failed(m) => {
                            self.metrics.push("failed", secs);
                            warn!(pod = %t.pod, error = %m, "cannot push the configuration; retrying");
                            ps.last_error = Some(m);
                        }
                    }
                }
            }
        }
        refused.sort();
        refused.dedup_by(|a, b| a.0 == b.0);
        refused
    }

    /// The admin token of the namespace of `pod` (`namespace/name`), made if missing.
    async fn token_of(&self, pod: &str) -> String {
        let ns = pod.split('/').next().unwrap_or_default().to_owned();
        let mut tokens = self.tokens.lock().await;
        if let Some(t) = tokens.get(&ns) {
            return t.clone();
        }
        match admin_token(&self.client, &ns, &self.settings.admin_secret).await {
            Ok(t) => {
                tokens.insert(ns, t.clone());
                t
            }
            Err(e) => {
                warn!(namespace = %ns, error = %e, "cannot read or make the admin token");
                String::new()
            }
        }
    }

    /// Reads every Secret the pools name (a Secret not found is simply absent).
    async fn fetch_secrets(&self) -> HashMap<(String, String), BTreeMap<String, String>> {
        let mut wanted: Vec<(String, String)> = self
            .pools
            .state()
            .iter()
            .flat_map(|p| {
                let ns = p.namespace().unwrap_or_default();
                p.spec
                    .providers
                    .iter()
                    .filter_map(|x| x.api_key_secret_ref.as_ref())
                    .map(move |r| (ns.clone(), r.name.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        wanted.sort();
        wanted.dedup();
        let mut out = HashMap::new();
        for (ns, name) in wanted {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            match api.get_opt(&name).await {
                Ok(Some(s)) => {
                    let data = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).trim().to_owned()))
                        .chain(s.string_data.unwrap_or_default())
                        .collect();
                    out.insert((ns, name), data);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(secret = %format!("{ns}/{name}"), error = %e, "cannot read a Secret")
                }
            }
        }
        out
    }

    /// The ConfigMap keeping the resources the gateways last accepted, so that a restarted
    /// operator still compiles them in place of a generation the gateways refuse (else the
    /// restart would take a working route or pool away).
    fn last_good_config_map(&self) -> String {
        format!("{}-last-good", self.settings.config_map)
    }

    /// Writes `st.last_good` to its ConfigMap when it changed (never before the stored one
    /// was read: that would overwrite it).
    async fn keep_last_good(&self, st: &mut State) {
        if !st.last_good_read {
            return;
        }
        let text = stored_last_good(&st.last_good);
        if st.last_good_written.as_deref() == Some(text.as_str()) {
            return;
        }
        let name = self.last_good_config_map();
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.settings.namespace,
                "labels": {"app.kubernetes.io/managed-by": MANAGER},
            },
            "data": {LAST_GOOD_KEY: text},
        });
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        match api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
        {
            Ok(_) => st.last_good_written = Some(text),
            Err(e) => {
                warn!(config_map = %name, error = %e, "cannot keep the last accepted resources; retrying at the next sync")
            }
        }
    }

    /// Reads the resources the gateways last accepted, kept by an earlier run; tried at
    /// each sync until the API server answers. What this run learned meanwhile wins.
    async fn read_last_good(&self, st: &mut State) {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let name = self.last_good_config_map();
        let cm = match api.get_opt(&name).await {
            Ok(cm) => cm,
            Err(e) => {
                warn!(config_map = %name, error = %e, "cannot read the last accepted resources; trying again at the next sync");
                return;
            }
        };
        st.last_good_read = true;
        let Some(text) = cm
            .as_ref()
            .and_then(|c| c.data.as_ref()?.get(LAST_GOOD_KEY))
        else {
            return;
        };
        let (restored, skipped) = restored_last_good(text);
        if skipped > 0 {
            warn!(config_map = %name, skipped, "some stored resources could not be read (a schema change?); they are left out");
        }
        info!(
            resources = restored.len(),
            "continuing with the resources the gateways last accepted"
        );
        for (k, g) in restored {
            st.last_good.entry(k).or_insert(g);
        }
    }

    /// Continues the version numbering of the ConfigMap (so a restarted operator does not
    /// bump the version of an unchanged configuration).
    async fn load_version(&self, st: &mut State) {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        if let Ok(Some(cm)) = api.get_opt(&self.settings.config_map).await {
            let a = cm.annotations();
            st.version = a
                .get(VERSION_ANNOTATION)
                .and_then(|v| v.trim_start_matches('v').parse().ok())
                .unwrap_or(0);
            st.hash = a.get(HASH_ANNOTATION).cloned();
            if let (Some(h), Some(v)) = (&st.hash, a.get(VERSION_ANNOTATION)) {
                info!(version = %v, hash = %&h[..12.min(h.len())], "continuing from the stored configuration");
            }
        }
    }

    async fn write_config_map(
        &self,
        namespace: &str,
        public: &GatewayConfig,
        version: &str,
        hash: &str,
    ) -> anyhow::Result<()> {
        let yaml = format!(
            "# Compiled by llm-gateway-operator from the ProviderPool, LLMRoute and BudgetPolicy\n# resources; API keys are pushed to the gateways, never stored here.\n{}",
            yaml_serde::to_string(public)?
        );
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": self.settings.config_map,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": MANAGER},
                "annotations": {VERSION_ANNOTATION: version, HASH_ANNOTATION: hash},
            },
            "data": {CONFIG_KEY: yaml},
        });
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        api.patch(
            &self.settings.config_map,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
        Ok(())
    }

    /// Writes every resource's status from the last compile (only what changed).
    pub async fn write_statuses(&self) {
        let p = self.published();
        let Some(compiled) = p.compiled.clone() else {
            return;
        };
        for pool in self.pools.state() {
            let key = key(Kind::Pool, &*pool);
            // A resource that came after the last compile has no verdict yet: its status waits
            // for the compile its arrival triggers, rather than saying Ready with nothing in it.
            let Some(v) = compiled.verdicts.get(&key).cloned() else {
                continue;
            };
            let ns = pool.namespace().unwrap_or_default();
            let (mut conditions, changed) =
                self.conditions(&v, &p, &ns, pool.status.as_ref().map(|s| &s.conditions));
            // A cluster pool says which teams' gateways do not get its keys: a call there
            // gets 403 provider_withheld, and this is where the platform team looks.
            if ns == self.settings.namespace && !v.provider_names.is_empty() {
                if let (Some(ready), Some(note)) = (
                    conditions.iter_mut().find(|c| c.type_ == "Ready"),
                    withheld_note(&p.withheld_from),
                ) {
                    ready.message.push_str(&note);
                }
            }
            let status = ProviderPoolStatus {
                observed_generation: v.generation,
                conditions,
                providers: v.providers,
                models_enabled: v
                    .provider_names
                    .iter()
                    .map(|n| p.models.get(n).copied().unwrap_or_default())
                    .sum::<u32>()
                    .max(v.models),
                missing_secrets: v.missing_secrets.clone(),
            };
            self.patch_status(&*pool, pool.status.as_ref() != Some(&status), json!(status))
                .await;
            self.announce(&*pool, &key, &v, changed).await;
        }
        for route in self.routes.state() {
            let key = key(Kind::Route, &*route);
            // A resource that came after the last compile has no verdict yet: its status waits
            // for the compile its arrival triggers, rather than saying Ready with nothing in it.
            let Some(v) = compiled.verdicts.get(&key).cloned() else {
                continue;
            };
            let (conditions, changed) = self.conditions(
                &v,
                &p,
                &route.namespace().unwrap_or_default(),
                route.status.as_ref().map(|s| &s.conditions),
            );
            let status = LLMRouteStatus {
                observed_generation: v.generation,
                conditions,
                virtual_models: (!v.virtual_models.is_empty()).then(|| v.virtual_models.join(",")),
                gateways: Some(format!("{}/{} in sync", p.in_sync, p.total)),
                config_version: Some(p.version.clone()),
            };
            self.patch_status(
                &*route,
                route.status.as_ref() != Some(&status),
                json!(status),
            )
            .await;
            self.announce(&*route, &key, &v, changed).await;
        }
        for policy in self.policies.state() {
            let key = key(Kind::Policy, &*policy);
            // A resource that came after the last compile has no verdict yet: its status waits
            // for the compile its arrival triggers, rather than saying Ready with nothing in it.
            let Some(v) = compiled.verdicts.get(&key).cloned() else {
                continue;
            };
            let (conditions, changed) = self.conditions(
                &v,
                &p,
                &policy.namespace().unwrap_or_default(),
                policy.status.as_ref().map(|s| &s.conditions),
            );
            let source = key.describe();
            let subjects: Vec<SubjectSpend> = p
                .budgets
                .iter()
                .filter(|b| b["declared_by"] == source.as_str())
                .map(|b| SubjectSpend {
                    subject: format!(
                        "{}/{}",
                        b["scope"].as_str().unwrap_or_default(),
                        b["subject"].as_str().unwrap_or_default()
                    ),
                    spent_usd: b["used_usd"].as_f64().unwrap_or_default(),
                    reserved_usd: b["reserved_usd"].as_f64().unwrap_or_default(),
                    remaining_usd: b["remaining_usd"].as_f64(),
                    spent_tokens: b["used_tokens"].as_i64().unwrap_or_default(),
                    remaining_tokens: b["remaining_tokens"].as_i64(),
                })
                .collect();
            let mut status = BudgetPolicyStatus {
                observed_generation: v.generation,
                conditions,
                spent_usd: subjects.iter().map(|s| s.spent_usd).sum(),
                subjects,
                updated_at: policy.status.as_ref().and_then(|s| s.updated_at.clone()),
            };
            let changed_figures = policy.status.as_ref().is_none_or(|s| {
                s.subjects != status.subjects
                    || s.conditions != status.conditions
                    || s.observed_generation != status.observed_generation
            });
            if changed_figures {
                status.updated_at = Some(Timestamp::now().to_string());
            }
            self.patch_status(&*policy, changed_figures, json!(status))
                .await;
            self.announce(&*policy, &key, &v, changed).await;
        }
    }

    /// `Accepted` and `Ready` for a resource, keeping transition times of unchanged ones;
    /// also whether they changed since last reported.
    fn conditions(
        &self,
        v: &Verdict,
        p: &Published,
        ns: &str,
        old: Option<&Vec<Condition>>,
    ) -> (Vec<Condition>, bool) {
        // A team's resource names only its own namespace's pods (and their errors); the
        // operator's namespace's resources, the cluster's, name any.
        let lagging: Vec<&str> = p
            .lagging
            .iter()
            .filter(|pod| ns == self.settings.namespace || pod.starts_with(&format!("{ns}/")))
            .map(String::as_str)
            .collect();
        let (accepted, a_reason, a_msg) = match v.refused.first() {
            None => (
                true,
                "Compiled".to_owned(),
                format!("compiled into configuration {}", p.version),
            ),
            Some(first) => (
                false,
                first.reason.to_owned(),
                v.refused
                    .iter()
                    .map(|x| x.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
        let (ready, r_reason, r_msg) = if let Some(serving) = v.serving {
            (
                false,
                "ServingPreviousGeneration".to_owned(),
                format!(
                    "generation {} was refused (see the Accepted condition); generation {serving}, the last the gateways accepted, keeps serving",
                    v.generation.unwrap_or_default()
                ),
            )
        } else if !accepted {
            // A clash leaves out only the clashing definitions: say what is live.
            let live: Vec<String> = v
                .provider_names
                .iter()
                .chain(&v.virtual_models)
                .chain(&v.subjects)
                .cloned()
                .collect();
            let msg = if live.is_empty() {
                "not compiled: see the Accepted condition".to_owned()
            } else {
                format!(
                    "partly compiled: {} live in configuration {}; the rest: see the Accepted condition",
                    live.join(", "),
                    p.version
                )
            };
            (false, a_reason.clone(), msg)
        } else if let Some(d) = v.degraded.first() {
            (
                false,
                d.reason.to_owned(),
                v.degraded
                    .iter()
                    .map(|x| x.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        } else if p.total == 0 {
            (
                false,
                "NoGateways".to_owned(),
                format!(
                    "no ready gateway pods (label {}=true) to run it",
                    gateways::GATEWAY_LABEL
                ),
            )
        } else if p.in_sync < p.total {
            (
                false,
                "Syncing".to_owned(),
                format!(
                    "{}/{} gateways run configuration {}; the others are being updated{}",
                    p.in_sync,
                    p.total,
                    p.version,
                    // A few by name (a status is no place for a thousand sidecars).
                    match lagging.len() {
                        0 => String::new(),
                        n @ 1..=5 => format!("; not yet: {}", lagging[..n].join(", ")),
                        n => format!("; not yet: {} and {} more", lagging[..5].join(", "), n - 5),
                    }
                ),
            )
        } else {
            (
                true,
                "Live".to_owned(),
                format!(
                    "{}/{} gateways run configuration {}",
                    p.in_sync, p.total, p.version
                ),
            )
        };
        let now = Time(Timestamp::now());
        let make = |type_: &str, ok: bool, reason: String, message: String| {
            let status = if ok { "True" } else { "False" }.to_owned();
            let since = old
                .and_then(|o| {
                    o.iter()
                        .find(|c| c.type_ == type_ && c.status == status && c.reason == reason)
                })
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_owned(),
                status,
                reason,
                message,
                observed_generation: v.generation,
                last_transition_time: since,
            }
        };
        let conditions = vec![
            make("Accepted", accepted, a_reason.clone(), a_msg),
            make("Ready", ready, r_reason.clone(), r_msg),
        ];
        let changed = old.is_none_or(|o| {
            let prev: Vec<_> = o.iter().map(|c| (&c.type_, &c.status, &c.reason)).collect();
            let next: Vec<_> = conditions
                .iter()
                .map(|c| (&c.type_, &c.status, &c.reason))
                .collect();
            prev != next
        });
        (conditions, changed)
    }

    async fn patch_status<K>(&self, obj: &K, changed: bool, status: Value)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        if !changed {
            return;
        }
        let api: Api<K> =
            Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        let body = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        if let Err(e) = api
            .patch_status(
                &obj.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            warn!(resource = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()), error = %e, "cannot write a status");
        }
    }

    /// An Event when a resource's verdict changes: accepted and live, or what is wrong.
    async fn announce<K>(&self, obj: &K, key: &Key, v: &Verdict, changed: bool)
    where
        K: Resource<DynamicType = ()>,
    {
        if !changed {
            return;
        }
        let (type_, reason, note) = match (v.refused.first(), v.degraded.first()) {
            (Some(p), _) | (None, Some(p)) => {
                (EventType::Warning, p.reason.to_owned(), p.message.clone())
            }
            (None, None) => (
                EventType::Normal,
                "Compiled".to_owned(),
                format!("compiled into configuration {}", self.published().version),
            ),
        };
        let mut st = self.state.lock().await;
        let stamp = format!("{reason}:{note}");
        if st.reported.get(key) == Some(&stamp) {
            return;
        }
        st.reported.insert(key.clone(), stamp);
        drop(st);
        let ev = Event {
            type_,
            reason,
            note: Some(note),
            action: "Compile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, "cannot publish an event");
        }
    }
}

fn key<K: Resource<DynamicType = ()>>(kind: Kind, r: &K) -> Key {
    Key {
        kind,
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
    }
}

/// The admin token the gateways of `namespace` accept: from its Secret `name`, created
/// (random) if missing.
pub async fn admin_token(client: &Client, namespace: &str, name: &str) -> anyhow::Result<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(sec) = api.get_opt(name).await? {
        if let Some(t) = sec.data.as_ref().and_then(|d| d.get("token")) {
            return Ok(String::from_utf8_lossy(&t.0).trim().to_owned());
        }
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for the admin token"))?;
    let token = hex(&bytes);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": MANAGER}},
        "stringData": {"token": token},
    }))?;
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(%namespace, secret = %name, "created the gateways' admin token");
            Ok(token)
        }
        // Another replica (or the webhook) created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Box::pin(admin_token(client, namespace, name)).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes `namespace` ready for sidecars before its first one starts: its admin token Secret,
/// and a copy of the compiled configuration (which the leader keeps current).
pub async fn prepare_namespace(
    client: Client,
    settings: Settings,
    namespace: String,
) -> anyhow::Result<()> {
    admin_token(&client, &namespace, &settings.admin_secret).await?;
    let source: Api<ConfigMap> = Api::namespaced(client.clone(), &settings.namespace);
    let target: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    // Without a copy yet the sidecar starts empty (--wait-for-config) and is pushed to.
    if let Some(cm) = source.get_opt(&settings.config_map).await? {
        let copy = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": settings.config_map, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": MANAGER},
                         "annotations": cm.metadata.annotations},
            "data": cm.data,
        });
        if let Err(e) = target
            .patch(
                &settings.config_map,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&copy),
            )
            .await
        {
            warn!(%namespace, error = %e, "cannot copy the configuration for sidecars");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good<K: Remembered>(v: Value) -> (Key, Good) {
        let r: K = serde_json::from_value(v).unwrap();
        (key(K::KIND, &r), K::wrap(Arc::new(r)))
    }

    #[test]
    fn a_cluster_pool_names_at_most_five_namespaces_it_withholds_keys_from() {
        assert_eq!(withheld_note(&[]), None);
        let two = withheld_note(&["team-a".into(), "team-b".into()]).unwrap();
        assert!(
            two.contains("in team-a, team-b (namespaces not matching"),
            "{two}"
        );
        let many: Vec<String> = (0..8).map(|i| format!("team-{i}")).collect();
        let note = withheld_note(&many).unwrap();
        assert!(note.contains("team-4 and 3 more"), "{note}");
        assert!(!note.contains("team-5"), "{note}");
    }

    #[test]
    fn a_withheld_reason_is_one_short_line_whatever_the_selector() {
        let ns = "n".repeat(63);
        let short = withheld_text(&ns, "llmgateway.io/cluster-keys=allowed");
        assert!(
            short.contains("`llmgateway.io/cluster-keys=allowed`"),
            "{short}"
        );
        let long = withheld_text(&ns, &format!("team in ({})", "t,".repeat(400)));
        for r in [short, long] {
            assert!(r.contains(&ns), "{r}");
            // The gateway refuses a reason over 500 characters (then the pool would be
            // blamed and left out everywhere).
            assert!(r.chars().count() <= 250 && !r.contains('\n'), "{r}");
        }
    }

    #[test]
    fn the_last_accepted_resources_survive_their_stored_form() {
        let meta = |ns: &str, name: &str, generation: i64| {
            json!({"name": name, "namespace": ns, "generation": generation,
                   "managedFields": [{"manager": "kubectl"}]})
        };
        let last: HashMap<Key, Good> = [
            good::<ProviderPool>(json!({
                "apiVersion": "llmgateway.io/v1alpha1", "kind": "ProviderPool",
                "metadata": meta("ops", "main", 4),
                "spec": {"providers": [{"name": "openai", "type": "openai",
                         "apiKeySecretRef": {"name": "keys", "key": "openai"}}]},
                "status": {"conditions": []},
            })),
            good::<LLMRoute>(json!({
                "apiVersion": "llmgateway.io/v1alpha1", "kind": "LLMRoute",
                "metadata": meta("team-a", "smart", 7),
                "spec": {"virtualModels": [{"name": "smart", "strategy": "cost"}]},
            })),
            good::<BudgetPolicy>(json!({
                "apiVersion": "llmgateway.io/v1alpha1", "kind": "BudgetPolicy",
                "metadata": meta("team-a", "monthly", 2),
                "spec": {"subjects": [{"kind": "namespace", "name": "team-a"}], "limitUsd": 5.0},
            })),
        ]
        .into_iter()
        .collect();
        let text = stored_last_good(&last);
        assert!(
            !text.contains("managedFields") && !text.contains("conditions"),
            "{text}"
        );
        let (back, skipped) = restored_last_good(&text);
        assert_eq!((back.len(), skipped), (3, 0));
        for (k, g) in &last {
            let generation = |g: &Good| match g {
                Good::Pool(r) => r.meta().generation,
                Good::Route(r) => r.meta().generation,
                Good::Policy(r) => r.meta().generation,
            };
            assert_eq!(generation(&back[k]), generation(g), "{k}");
        }
        assert_eq!(
            stored_last_good(&back),
            text,
            "stable: no rewrite after a restart"
        );
        // A status write (a new resourceVersion) changes nothing stored.
        let mut touched = last.clone();
        for g in touched.values_mut() {
            if let Good::Route(r) = g {
                let mut r2 = (**r).clone();
                r2.metadata.resource_version = Some("12345".into());
                *g = Good::Route(Arc::new(r2));
            }
        }
        assert_eq!(stored_last_good(&touched), text);
        // Anything unreadable is skipped and counted, never a failed start.
        assert_eq!(restored_last_good("not json").0.len(), 0);
        let (none, skipped) =
            restored_last_good(r#"[{"kind": "Mystery", "object": {}}, {"kind": "LLMRoute"}]"#);
        assert_eq!((none.len(), skipped), (0, 2));
    }
}
