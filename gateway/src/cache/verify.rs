//! The learned verifier: decides whether a cached prompt that passed the cosine filter and
//! the [`guard`](super::guard) asks the same thing as the new one.
//!
//! Cosine similarity of two sentence embeddings sees *which* words a prompt uses far better
//! than *how they relate*: "how would X have reacted to Y as the winner" and the same with X
//! and Y swapped embed almost alike. The verifier looks at the pair the way the embedding
//! cannot — word order (bigram overlap, the longest common subsequence, how many pairs of
//! shared words swapped places), words only one side has, length — and combines those with
//! the cosine in a logistic model whose weights are a small file compiled into the binary
//! (`verifier.json`, written by `e2e/cache/train_verifier.py`, which says what it was trained
//! on). The features are computed from lowercased Unicode word tokens; the content-word
//! features set aside English function words, and the weights were trained on English, so
//! prompts that are not mostly English get the stricter handling of [`Prompt::is_english`]
//! instead.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use super::guard::Signature;

/// What the cache keeps of a prompt for verifying a candidate against it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The guard's view.
    pub signature: Signature,
    /// Lowercased word tokens, in order.
    tokens: Vec<String>,
    /// The tokens that are not function words, in order.
    content: Vec<String>,
    /// Whether the prompt reads as English (the guard's word lists apply).
    english: bool,
    /// The words the embedding may not have read, hashed: they must be the same.
    tail: u64,
}

/// Common English function words.
const ENGLISH: &[&str] = &[
    "the", "a", "an", "is", "are", "was", "be", "to", "of", "and", "in", "on", "for", "with",
    "how", "what", "why", "when", "where", "who", "which", "do", "does", "can", "i", "my", "it",
    "this", "that", "you", "me", "should", "will", "would", "there", "have", "has", "not",
];

/// Common function words of other languages written in the Latin script (German, French,
/// Spanish, Italian, Portuguese, Dutch) that are not English words.
const FOREIGN: &[&str] = &[
    "ich", "ist", "der", "das", "und", "eine", "ein", "wie", "nicht", "mit", "auf", "le", "la",
    "les", "est", "et", "une", "des", "du", "que", "comment", "pour", "avec", "el", "los", "las",
    "es", "una", "cómo", "qué", "por", "para", "con", "il", "di", "che", "per", "sono", "het",
    "een", "niet", "van", "hoe", "não", "como", "uma", "isso", "você",
];

impl Prompt {
    /// A prompt's view for the verifier.
    pub fn of(text: &str) -> Prompt {
        let mut tokens: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase)
            .collect();
        let tail = tail_hash(&tokens);
        tokens.truncate(MAX_WORDS);
        let letters = text.chars().filter(|c| c.is_alphabetic()).count();
        let latin = text.chars().filter(|c| c.is_ascii_alphabetic()).count();
        let count = |list: &[&str]| tokens.iter().filter(|t| list.contains(&t.as_str())).count();
        // Mostly Latin letters, and not more than one foreign function word per two English
        // ones ("Explain hash maps" has neither and is English).
        let english =
            letters > 0 && latin * 10 >= letters * 9 && count(FOREIGN) * 2 <= count(ENGLISH);
        let content = tokens
            .iter()
            .filter(|w| !FUNCTION_WORDS.contains(&w.as_str()))
            .cloned()
            .collect();
        Prompt {
            signature: Signature::of(text),
            tokens,
            content,
            english,
            tail,
        }
    }

    /// Whether the prompt reads as English: the guard's word lists and the learned
    /// verifier were built for English; other prompts need a higher cosine instead.
    pub fn is_english(&self) -> bool {
        self.english
    }
}

/// Words the features compare at most (bounds their quadratic cost).
const MAX_WORDS: usize = 256;

/// Words surely inside what the embedding reads (256 word pieces: English averages about
/// 1.3 pieces a word, punctuation one each). Beyond them neither the cosine nor, past
/// [`MAX_WORDS`], the features see a difference, so two prompts longer than this must have
/// the same words from here on (the same pasted document, asked the same question).
const SEEN_WORDS: usize = 128;

/// A hash of the words after the first [`SEEN_WORDS`] (0 when there are none).
fn tail_hash(words: &[String]) -> u64 {
    use std::hash::{Hash, Hasher};
    match words.get(SEEN_WORDS..) {
        Some(tail) if !tail.is_empty() => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            tail.hash(&mut h);
            h.finish()
        }
        _ => 0,
    }
}

/// Function words and the words that frame a request ("can you explain what … is"): the
/// closed class of English whose swaps and substitutions rarely change what is asked.
/// Content words are the others; their order and presence are what PAWS-style word swaps
/// change ("X beat Y" / "Y beat X").
const FUNCTION_WORDS: &[&str] = &[
    "the", "a", "an", "is", "are", "was", "were", "be", "been", "am", "to", "of", "and", "in",
    "on", "for", "with", "at", "by", "from", "about", "as", "or", "so", "if", "than", "then",
    "how", "what", "why", "when", "where", "who", "which", "whom", "do", "does", "did", "can",
    "could", "should", "would", "will", "shall", "may", "might", "must", "i", "me", "my", "we",
    "our", "you", "your", "it", "its", "this", "that", "these", "those", "there", "have", "has",
    "had", "s", "d", "ll", "re", "ve", "m", "please", "tell", "explain", "know", "want", "way",
    "best", "using", "use", "get", "some", "any",
];

/// The number of features [`features`] computes.
pub const FEATURES: usize = 13;

/// Names of the features, in order (the weights file lists them, and must match).
pub const FEATURE_NAMES: [&str; FEATURES] = [
    "bias",
    "cosine",
    "unigram_jaccard",
    "bigram_jaccard",
    "lcs_ratio",
    "swapped_pairs",
    "same_words_reordered",
    "only_one_side",
    "length_ratio",
    "cosine_x_bigram",
    "content_jaccard",
    "content_swapped_pairs",
    "content_only_one_side",
];

/// The features of a pair: `a` the cached prompt, `b` the new one, `cosine` their
/// embeddings' similarity.
pub fn features(a: &Prompt, b: &Prompt, cosine: f32) -> [f32; FEATURES] {
    let (ta, tb) = (&a.tokens, &b.tokens);
    let sa: HashSet<&str> = ta.iter().map(String::as_str).collect();
    let sb: HashSet<&str> = tb.iter().map(String::as_str).collect();
    let uni = jaccard(&sa, &sb);
    let ba: HashSet<(&str, &str)> = ta
        .windows(2)
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect();
    let bb: HashSet<(&str, &str)> = tb
        .windows(2)
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect();
    let bi = if ba.is_empty() && bb.is_empty() {
        uni
    } else {
        jaccard(&ba, &bb)
    };
    let longest = ta.len().max(tb.len()).max(1) as f32;
    let lcs = lcs(ta, tb) as f32 / longest;
    let mut sorted_a: Vec<&str> = ta.iter().map(String::as_str).collect();
    let mut sorted_b: Vec<&str> = tb.iter().map(String::as_str).collect();
    sorted_a.sort_unstable();
    sorted_b.sort_unstable();
    let reordered = f32::from(u8::from(sorted_a == sorted_b && ta != tb));
    let shorter = ta.len().min(tb.len()) as f32;
    let (ca, cb) = (&a.content, &b.content);
    let sca: HashSet<&str> = ca.iter().map(String::as_str).collect();
    let scb: HashSet<&str> = cb.iter().map(String::as_str).collect();
    [
        1.0,
        cosine,
        uni,
        bi,
        lcs,
        swapped_pairs(ta, tb),
        reordered,
        one_sided(&sa, &sb),
        shorter / longest,
        cosine * bi,
        jaccard(&sca, &scb),
        swapped_pairs(ca, cb),
        one_sided(&sca, &scb),
    ]
}

fn jaccard<T: std::hash::Hash + Eq>(a: &HashSet<T>, b: &HashSet<T>) -> f32 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f32 / union as f32
}

/// The share of the two sets' words that only one of them has.
fn one_sided(a: &HashSet<&str>, b: &HashSet<&str>) -> f32 {
    a.symmetric_difference(b).count() as f32 / (a.len() + b.len()).max(1) as f32
}

/// Longest common subsequence of two token lists (prompts are clipped to a few KB, and the
/// DP runs on two rows).
fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Of the pairs of words each side has exactly once, the share whose order differs between
/// the two (a normalised Kendall distance): a swap of two far-apart words ("X beat Y" / "Y
/// beat X") reverses many pairs, a moved clause few relative to the words it keeps in order.
fn swapped_pairs(a: &[String], b: &[String]) -> f32 {
    let (na, nb) = (occurrences(a), occurrences(b));
    let mut pos: Vec<(usize, usize)> = na
        .iter()
        .filter(|(_, (c, _))| *c == 1)
        .filter_map(|(w, (_, i))| match nb.get(w) {
            Some((1, j)) => Some((*i, *j)),
            _ => None,
        })
        .collect();
    if pos.len() < 2 {
        return 0.0;
    }
    pos.sort_unstable();
    let mut discordant = 0usize;
    for i in 0..pos.len() {
        for j in i + 1..pos.len() {
            discordant += usize::from(pos[j].1 < pos[i].1);
        }
    }
    let pairs = pos.len() * (pos.len() - 1) / 2;
    discordant as f32 / pairs as f32
}

/// Each word's count and first position.
fn occurrences(t: &[String]) -> HashMap<&str, (usize, usize)> {
    let mut n: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, w) in t.iter().enumerate() {
        n.entry(w.as_str()).or_insert((0, i)).0 += 1;
    }
    n
}

/// A logistic model over [`features`], with the probability at which it accepts a pair.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Verifier {
    /// Feature names, checked against [`FEATURE_NAMES`].
    features: Vec<String>,
    /// One weight per feature.
    weights: Vec<f32>,
    /// Accepted when the model's probability of "same meaning" is at least this.
    pub accept_at: f32,
    /// Non-English prompts (no learned weights for them) need at least this cosine.
    pub non_english_min_cosine: f32,
    /// What the weights were trained on (shown by the evaluation).
    pub trained_on: String,
}

impl Verifier {
    /// The verifier compiled into the binary.
    pub fn builtin() -> &'static Verifier {
        static V: OnceLock<Verifier> = OnceLock::new();
        V.get_or_init(|| {
            Verifier::from_json(include_str!("verifier.json"))
                .expect("verifier.json is checked by a unit test")
        })
    }

    /// Reads and checks a weights file (`cache.verifier_weights`).
    pub fn load(path: &std::path::Path) -> Result<Verifier, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cache.verifier_weights {}: {e}", path.display()))?;
        Verifier::from_json(&text)
            .map_err(|e| format!("cache.verifier_weights {}: {e}", path.display()))
    }

    /// Parses and checks a weights file.
    pub fn from_json(text: &str) -> Result<Verifier, String> {
        let v: Verifier = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v.features != FEATURE_NAMES || v.weights.len() != FEATURES {
            return Err(format!(
                "features {:?} do not match this build's {FEATURE_NAMES:?}",
                v.features
            ));
        }
        if !(0.0..=1.0).contains(&v.accept_at) || v.weights.iter().any(|w| !w.is_finite()) {
            return Err("accept_at must be in [0, 1] and the weights finite".into());
        }
        Ok(v)
    }

    /// The probability the model gives that the pair has the same meaning.
    pub fn probability(&self, f: &[f32; FEATURES]) -> f32 {
        let z: f32 = self.weights.iter().zip(f).map(|(w, x)| w * x).sum();
        1.0 / (1.0 + (-z).exp())
    }

    /// Whether the cached prompt `cached` may answer `new`, given their cosine (already at
    /// or above the route's threshold): the guard must agree, and then either the learned
    /// model accepts (English) or the cosine clears the stricter non-English bar.
    pub fn accepts(&self, cached: &Prompt, new: &Prompt, cosine: f32) -> bool {
        if new.tail != cached.tail || !new.signature.agrees(&cached.signature) {
            return false;
        }
        if !(cached.english && new.english) {
            return cosine >= self.non_english_min_cosine;
        }
        self.probability(&features(cached, new, cosine)) >= self.accept_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_weights_load() {
        let v = Verifier::builtin();
        assert_eq!(v.weights.len(), FEATURES);
        assert!(v.accept_at > 0.0 && v.accept_at < 1.0);
    }

    #[test]
    fn a_weights_file_for_other_features_is_refused() {
        let text = r#"{"features":["bias"],"weights":[1.0],"accept_at":0.5,"non_english_min_cosine":0.97,"trained_on":"x"}"#;
        assert!(Verifier::from_json(text)
            .unwrap_err()
            .contains("do not match"));
    }

    #[test]
    fn swapped_words_reverse_pairs() {
        let p = |s: &str| Prompt::of(s).tokens;
        let swap = swapped_pairs(
            &p("how would obama have reacted to trump as the winner"),
            &p("how would trump have reacted to obama as the winner"),
        );
        // obama and trump each pass the words between them: 7 of the 45 pairs reverse.
        assert!((swap - 7.0 / 45.0).abs() < 1e-6, "{swap}");
        assert_eq!(swapped_pairs(&p("a b c d"), &p("a b c d")), 0.0);
        let f = features(
            &Prompt::of("emotionally detached and less available"),
            &Prompt::of("available and less detached emotionally"),
            0.97,
        );
        assert_eq!(f[6], 1.0, "same words, reordered");
    }

    /// The shipped weights on the issue's examples, at the cosine MiniLM gives such pairs.
    #[test]
    fn the_shipped_model_refuses_swapped_roles_and_accepts_rewordings() {
        let v = Verifier::builtin();
        let accepts = |a: &str, b: &str| v.accepts(&Prompt::of(a), &Prompt::of(b), 0.97);
        assert!(!accepts(
            "How would Obama have reacted to Trump as the winner?",
            "How would Trump have reacted to Obama as the winner?"
        ));
        assert!(!accepts(
            "Why is he emotionally detached and less available?",
            "Why is he available and less emotionally detached?"
        ));
        assert!(accepts(
            "How do I reverse a list in Python?",
            "How can I reverse a list in Python?"
        ));
        assert!(accepts(
            "What is the capital of France?",
            "What's the capital of France?"
        ));
    }

    #[test]
    fn english_is_told_from_other_languages() {
        assert!(Prompt::of("How do I reverse a list in Python?").is_english());
        assert!(Prompt::of("Explain hash maps").is_english());
        assert!(!Prompt::of("Wie kehre ich eine Liste in Python um?").is_english());
        assert!(!Prompt::of("Comment inverser une liste en Python ?").is_english());
        assert!(!Prompt::of("Pythonでリストを逆順にするには？").is_english());
        assert!(!Prompt::of("Как перевернуть список в Python?").is_english());
    }

    /// Two long prompts (the same pasted document, another question at the end) embed alike
    /// and share their first words: the words past what the embedding reads must match.
    #[test]
    fn long_prompts_must_agree_past_what_the_embedding_reads() {
        // 330 words of document: the questions lie past the words the features read too,
        // so only the check of the words past what the embedding reads tells them apart.
        let doc = "The parties agree to the following terms of service and payment. ".repeat(30);
        let (a, b) = (
            Prompt::of(&format!("{doc} Question: what is the termination date?")),
            Prompt::of(&format!("{doc} Question: who are the parties?")),
        );
        assert_eq!(a.tokens, b.tokens, "the features see the same words");
        let v = Verifier::builtin();
        assert!(!v.accepts(&a, &b, 0.999));
        assert!(v.accepts(&a, &a.clone(), 0.999));
    }

    /// Prompts that are not English skip the English-trained model: the cosine must clear
    /// the stricter bar, and the guard's numbers still have to agree.
    #[test]
    fn other_languages_need_the_stricter_cosine() {
        let v = Verifier::builtin();
        let (a, b) = (
            Prompt::of("Quelle est la capitale de la France ?"),
            Prompt::of("Quelle est la capitale de la France?"),
        );
        assert!(!v.accepts(&a, &b, v.non_english_min_cosine - 0.01));
        assert!(v.accepts(&a, &b, v.non_english_min_cosine));
        assert!(!v.accepts(
            &Prompt::of("Wie viele Kilometer sind 5 Meilen?"),
            &Prompt::of("Wie viele Kilometer sind 50 Meilen?"),
            0.999
        ));
    }

    #[test]
    fn lcs_counts_the_common_subsequence() {
        let p = |s: &str| Prompt::of(s).tokens;
        assert_eq!(lcs(&p("a b c d"), &p("a x c d")), 3);
        assert_eq!(lcs(&p(""), &p("a")), 0);
    }
}
