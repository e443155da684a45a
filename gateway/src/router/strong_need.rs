//! A learned estimate of how likely the weak model falls short where a strong one would not:
//! logistic regression over hashed word unigrams and bigrams of the last user message, plus
//! its length. Rules (the [`classifier`](super::classifier)) see what a prompt asks for; this
//! sees how hard prompts like it turned out to be. Trained on one half of RouteLLM's public
//! per-prompt correctness data (`e2e/routing/train.sh`), judged on the other half
//! (`e2e/routing/eval.sh`); the weights ship in `strong_need.bin`.
//!
//! A prediction costs one lowercase copy, one pass of hashing and a sort of the hashed
//! features: microseconds, with the text bounded as the classifier bounds it.

use std::sync::LazyLock;

/// Hashed feature space: large enough that the training vocabulary (≈ 200k unigrams and
/// bigrams) rarely collides, small enough to keep in memory (1 MiB).
pub const DIM: usize = 1 << 18;

/// Where a model trained on other data can be given instead of the shipped one.
pub const MODEL_ENV: &str = "LLM_GATEWAY_STRONG_NEED_MODEL";

static SHIPPED: LazyLock<Model> = LazyLock::new(|| {
    Model::decode(include_bytes!("strong_need.bin"))
        .expect("the shipped strong_need.bin is decodable (checked by a unit test)")
});

/// The model in use: the file `$LLM_GATEWAY_STRONG_NEED_MODEL` names, else the shipped one.
static ACTIVE: LazyLock<Result<Model, String>> =
    // Empty counts as unset (a template that renders the variable without a value).
    LazyLock::new(
            || match std::env::var_os(MODEL_ENV).filter(|p| !p.is_empty()) {
                None => Ok(SHIPPED.clone()),
                Some(path) => std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| Model::decode(&b))
                    .map_err(|e| format!("{MODEL_ENV}={}: {e}", path.to_string_lossy())),
            },
        );

/// Loads the model now, so the first request does not pay for it, and says what is wrong
/// with a file `$LLM_GATEWAY_STRONG_NEED_MODEL` names (the gateway then refuses to start).
pub fn warm_up() -> Result<(), String> {
    ACTIVE.as_ref().map(|_| ()).map_err(Clone::clone)
}

fn active() -> &'static Model {
    // Not `unwrap_or(&SHIPPED)`: that derefs, and so loads, the shipped model on every path.
    match &*ACTIVE {
        Ok(model) => model,
        Err(_) => &SHIPPED,
    }
}

/// The active model's estimate for `text`, in [0, 1].
pub fn predict(text: &str) -> f64 {
    active().predict(text)
}

/// How much the active model's estimate `p` scales a route's quality weight: its odds against
/// the odds of a prompt of which the model knows no word (the intercept alone), between
/// 1/10 and 10. A prompt unlike anything in training (a greeting) leaves the weight as the
/// tier set it; one whose words the weak model failed on raises it, smoothly, so prompts keep
/// their order.
pub fn quality_factor(p: f64) -> f64 {
    active().quality_factor(p)
}

/// Logistic-regression weights over the hashed features.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// One weight per hashed feature, as a signed byte: `weight = byte × scale`. A quarter of
    /// the memory of `f32`s keeps the lookups of a long prompt's features in cache.
    weights: Vec<i8>,
    /// See `weights`.
    scale: f32,
    /// Added to every prompt's logit, outside the normalised features: a short prompt's few
    /// features must not be read as a strong signal of anything.
    intercept: f32,
    /// The training set's mean target (reported; predictions do not use it).
    base: f32,
}

/// One training example.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The prompt.
    pub text: String,
    /// Target in [0, 1]: 1 when the strong model was right and the weak one wrong.
    pub target: f64,
    /// Relative weight of the example (to balance small benchmarks against large ones).
    pub weight: f64,
}

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct Training {
    /// Passes over the data.
    pub epochs: usize,
    /// L2 penalty per update.
    pub l2: f64,
    /// First pass's learning rate; pass `e` uses `rate / (1 + e)`.
    pub rate: f64,
}

impl Default for Training {
    fn default() -> Self {
        // Chosen on a validation quarter of the training half (never the evaluation half).
        Self {
            epochs: 8,
            l2: 1e-5,
            rate: 0.5,
        }
    }
}

const MAGIC: &[u8; 8] = b"LGSN\x04\0\0\0";

impl Model {
    /// Fits weights by stochastic gradient descent in a fixed (seeded) order, so the same
    /// data always gives the same file.
    pub fn train(samples: &[Sample], t: Training) -> Model {
        let mut w = vec![0f32; DIM];
        let mut b = 0f64;
        let feats: Vec<Vec<(u32, f32)>> = samples.iter().map(|s| features(&s.text)).collect();
        let mut order: Vec<usize> = (0..samples.len()).collect();
        let mut rng = fastrand::Rng::with_seed(0);
        for epoch in 0..t.epochs {
            rng.shuffle(&mut order);
            let rate = t.rate / (1 + epoch) as f64;
            for &i in &order {
                let z: f64 = b + feats[i]
                    .iter()
                    .map(|&(k, x)| (w[k as usize] * x) as f64)
                    .sum::<f64>();
                let g = (sigmoid(z) - samples[i].target) * samples[i].weight;
                b -= rate * g;
                for &(k, x) in &feats[i] {
                    let wk = &mut w[k as usize];
                    *wk -= (rate * (g * x as f64 + t.l2 * *wk as f64)) as f32;
                }
            }
        }
        let total: f64 = samples.iter().map(|s| s.weight).sum();
        let base = samples.iter().map(|s| s.target * s.weight).sum::<f64>() / total.max(1e-9);
        let max = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        Model {
            weights: w
                .iter()
                .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
                .collect(),
            scale,
            intercept: b as f32,
            base: base as f32,
        }
    }

    /// The estimate for `text`, in [0, 1].
    pub fn predict(&self, text: &str) -> f64 {
        let h = hashes(text);
        let (runs, norm) = counted(&h);
        let dot: f64 = runs.map(|(k, c)| self.weights[k as usize] as f64 * c).sum();
        sigmoid(self.intercept as f64 + dot * self.scale as f64 / norm)
    }

    /// See [`quality_factor`].
    pub fn quality_factor(&self, p: f64) -> f64 {
        let odds = |x: f64| {
            let x = x.clamp(1e-6, 1.0 - 1e-6);
            x / (1.0 - x)
        };
        (odds(p) / (self.intercept as f64).exp()).clamp(0.1, 10.0)
    }

    /// The file form: a header, the base rate, the intercept, the scale, then every weight's
    /// byte, little-endian: 256 KiB. Rounding trained weights to bytes moves a prediction's
    /// logit by about 0.01.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + 16 + DIM);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(DIM as u32).to_le_bytes());
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&self.intercept.to_le_bytes());
        out.extend_from_slice(&self.scale.to_le_bytes());
        out.extend(self.weights.iter().map(|&w| w as u8));
        out
    }

    /// Reads the file form; says what is wrong with a malformed one.
    pub fn decode(bytes: &[u8]) -> Result<Model, String> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or("not a strong-need model (bad header)")?;
        let word = |at: usize| -> Result<[u8; 4], String> {
            rest.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("truncated at byte {}", at + MAGIC.len()))
        };
        let dim = u32::from_le_bytes(word(0)?) as usize;
        if dim != DIM {
            return Err(format!("feature space {dim}, this build hashes into {DIM}"));
        }
        let base = f32::from_le_bytes(word(4)?);
        let intercept = f32::from_le_bytes(word(8)?);
        let scale = f32::from_le_bytes(word(12)?);
        let body = &rest[16..];
        if body.len() != DIM {
            return Err(format!(
                "{DIM} weights expected, {} bytes follow",
                body.len()
            ));
        }
        if !(base.is_finite() && intercept.is_finite() && scale.is_finite()) {
            return Err("base rate, intercept or scale is not a number".into());
        }
        Ok(Model {
            weights: body.iter().map(|&b| b as i8).collect(),
            scale,
            intercept,
            base,
        })
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a, 64-bit, one byte on: a hash that never changes between builds or platforms, which
/// the shipped weights depend on (std's hasher makes no such promise).
fn fnv_byte(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

/// A feature's bucket: a kind (`salt`) and a word hash, or two for a pair, mixed (the
/// SplitMix64 finaliser) so that pairs cost O(1) instead of rehashing both words.
fn bucket(salt: u64, a: u64, b: u64) -> u32 {
    let mut x = salt ^ a.rotate_left(23) ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % DIM as u64) as u32
}

const UNIGRAM: u64 = 1;
const BIGRAM: u64 = 2;
const LENGTH: u64 = 3;

/// Every feature occurrence of `text`, hashed, sorted (a repeated word or bigram appears as
/// often as it occurs). Words are runs of letters and digits, lowercased, and each other
/// non-space character alone; features are each word, each pair of adjacent words, and the
/// word count's power of two. One pass over the bytes, no allocation but the result: this
/// runs on every routed request.
fn hashes(text: &str) -> Vec<u32> {
    // The same parts of a long message the classifier's keyword search reads.
    let (head, tail) = super::classifier::keyword_windows(text);
    let tail = tail.map_or("", |(_, t)| t);
    let mut out = Vec::with_capacity((head.len() + tail.len()) / 2 + 1);
    let (mut word, mut prev, mut in_word) = (FNV_OFFSET, 0u64, false);
    let mut n_words = 0usize;
    let mut flush = |word: u64, prev: &mut u64, out: &mut Vec<u32>| {
        out.push(bucket(UNIGRAM, word, 0));
        if n_words > 0 {
            out.push(bucket(BIGRAM, *prev, word));
        }
        n_words += 1;
        *prev = word;
    };
    let feed = |h: u64, c: char| -> u64 {
        if c.is_ascii() {
            return fnv_byte(h, c.to_ascii_lowercase() as u8);
        }
        let mut h = h;
        let mut buf = [0u8; 4];
        for lc in c.to_lowercase() {
            for &b in lc.encode_utf8(&mut buf).as_bytes() {
                h = fnv_byte(h, b);
            }
        }
        h
    };
    // The window between head and tail breaks a word, not the chain of pairs.
    for c in head.chars().chain(std::iter::once(' ')).chain(tail.chars()) {
        if c.is_alphanumeric() {
            word = feed(word, c);
            in_word = true;
            continue;
        }
        if in_word {
            flush(word, &mut prev, &mut out);
            (word, in_word) = (FNV_OFFSET, false);
        }
        if !c.is_whitespace() {
            flush(feed(FNV_OFFSET, c), &mut prev, &mut out);
        }
    }
    if in_word {
        flush(word, &mut prev, &mut out);
    }
    let len_bucket = ((n_words + 1) as f64).log2().floor().min(12.0) as u64;
    out.push(bucket(LENGTH, len_bucket, 0));
    out.sort_unstable();
    out
}

/// Each distinct feature of sorted `hashes` with its count, and the counts' L2 norm.
fn counted(hashes: &[u32]) -> (impl Iterator<Item = (u32, f64)> + '_, f64) {
    let runs = hashes
        .chunk_by(|a, b| a == b)
        .map(|r| (r[0], r.len() as f64));
    let norm = runs.clone().map(|(_, c)| c * c).sum::<f64>().sqrt();
    (runs, norm)
}

/// The hashed, L2-normalised feature vector of `text` (sorted by index, repeats summed).
pub fn features(text: &str) -> Vec<(u32, f32)> {
    let h = hashes(text);
    let (runs, norm) = counted(&h);
    runs.map(|(k, c)| (k, (c / norm) as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_weights_decode_and_give_probabilities() {
        let m = Model::decode(include_bytes!("strong_need.bin")).unwrap();
        assert!(m.base > 0.0 && m.base < 1.0, "base rate {}", m.base);
        // What the README promises of the shipped model: a greeting, unlike its training
        // data, leaves the tier's weight about as it is; a word problem of the kind the weak
        // model fails raises it; a plain fact question lowers it.
        let factor = |t: &str| m.quality_factor(m.predict(t));
        let greeting = factor("hi");
        assert!((0.8..1.25).contains(&greeting), "hi: {greeting}");
        let word_problem = factor("A train leaves at 3pm going 60 mph; another leaves at 4pm going 80 mph. When does the second catch up?");
        assert!(word_problem > 1.2, "word problem: {word_problem}");
        let fact = factor("What is the capital of France?");
        assert!(fact < 0.8, "fact: {fact}");
    }

    #[test]
    fn training_learns_which_words_mark_prompts_the_weak_model_fails() {
        // Prompts naming a "lattice" were failed by the weak model; "kettle" ones were not.
        let mut samples = Vec::new();
        for i in 0..200 {
            let hard = i % 2 == 0;
            let noun = if hard { "lattice" } else { "kettle" };
            samples.push(Sample {
                text: format!("question {i} about the {noun} number {}", i * 7),
                target: if hard { 1.0 } else { 0.0 },
                weight: 1.0,
            });
        }
        let m = Model::train(&samples, Training::default());
        let hard = m.predict("a new question about the lattice");
        let easy = m.predict("a new question about the kettle");
        assert!(hard > 0.7 && easy < 0.3, "hard {hard}, easy {easy}");
        assert!((m.base - 0.5).abs() < 1e-6);
        assert!(m.quality_factor(hard) > 1.0 && m.quality_factor(easy) < 1.0);
        let unknown = m.predict("zebra");
        assert!(
            (m.quality_factor(unknown) - 1.0).abs() < 0.2,
            "no evidence, no change"
        );
        // The file round-trips up to its rounding, and the same data gives the same weights.
        let again = Model::decode(&m.encode()).unwrap();
        assert_eq!((again.base, again.intercept), (m.base, m.intercept));
        for text in ["a new question about the lattice", "the kettle", "neither"] {
            assert!(
                (again.predict(text) - m.predict(text)).abs() < 0.01,
                "{text}"
            );
        }
        assert_eq!(Model::train(&samples, Training::default()), m);
    }

    #[test]
    fn malformed_files_are_refused_with_the_reason() {
        assert!(Model::decode(b"nope").unwrap_err().contains("header"));
        let m = Model {
            weights: vec![5; DIM],
            scale: 0.1,
            intercept: -1.0,
            base: 0.2,
        };
        let mut bytes = m.encode();
        bytes.extend_from_slice(&[1, 2, 3]);
        assert!(Model::decode(&bytes).unwrap_err().contains("bytes follow"));
        let mut nan = m.encode();
        nan[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Model::decode(&nan).unwrap_err().contains("not a number"));
        let mut small = m.encode();
        small[8..12].copy_from_slice(&1024u32.to_le_bytes());
        assert!(Model::decode(&small).unwrap_err().contains("feature space"));
    }

    #[test]
    fn long_texts_are_read_only_at_their_ends_and_words_split_as_documented() {
        // Words: "hi", ",", "café", "3", ".", "5x": 6 unigrams, 5 pairs, the length.
        assert_eq!(hashes("Hi, café 3.5x").len(), 12);
        assert_eq!(hashes("Hi, Café 3.5X"), hashes("hi, café 3.5x"));
        let word = |w: &str| w.bytes().fold(FNV_OFFSET, fnv_byte);
        assert_eq!(hashes("a b"), {
            let mut v = vec![
                bucket(UNIGRAM, word("a"), 0),
                bucket(UNIGRAM, word("b"), 0),
                bucket(BIGRAM, word("a"), word("b")),
                bucket(LENGTH, 1, 0),
            ];
            v.sort_unstable();
            v
        });
        assert_ne!(hashes("a b"), hashes("b a"), "pairs are ordered");
        let long = "word ".repeat(10_000);
        let n = features(&long).len();
        assert!(n < 10, "repeated words collapse into few features, got {n}");
        assert_eq!(
            features("").len(),
            1,
            "an empty prompt still has its length"
        );
        assert!(features(&"é".repeat(5000))
            .iter()
            .all(|(_, x)| x.is_finite()));
    }
}
