//! The semantic cache's quality on labelled prompt pairs, through the gateway's own code
//! path: for each pair a fresh scope (its own tenant), the first prompt asked and its answer
//! stored with [`Cache::store`], then the second looked up with [`Cache::find`] — embedding,
//! scope, threshold, guard and verifier exactly as a request meets them. A pair whose labels
//! say "same meaning" should hit (a true hit); one that says "different" should not (a hit
//! is a false hit, a wrong answer served).
//!
//! Reads the project's JSONL (`{"a", "b", "same", "kind"}`, optionally `"source"`; the
//! default source is `project`) or any TSV with the header
//! `source  a  b  label` (label 1 = same meaning), e.g. the public paraphrase pairs.

use std::collections::BTreeMap;
use std::path::Path;

use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::embed::cosine;
use super::verify::{features, FEATURES};
use super::{Answer, Cache, Found};
use crate::wire::ChatRequest;

/// One labelled pair.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Where it comes from (`paws_qqp`, …; `project` for the JSONL).
    pub source: String,
    /// The kind of pair, if the file says (the JSONL's `kind`).
    pub kind: Option<String>,
    /// The prompt that is cached.
    pub a: String,
    /// The prompt looked up.
    pub b: String,
    /// Whether the same answer applies.
    pub same: bool,
}

/// Reads pairs from a `.jsonl` or a TSV file.
pub fn load(path: &Path) -> Result<Vec<Pair>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let at = |n: usize, why: &str| format!("{} line {}: {why}", path.display(), n + 1);
    if path.extension().is_some_and(|e| e == "jsonl") {
        return text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| {
                let v: Value = serde_json::from_str(l).map_err(|e| at(n, &e.to_string()))?;
                let s = |k: &str| {
                    v[k].as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| at(n, &format!("`{k}` must be a string")))
                };
                Ok(Pair {
                    source: v["source"].as_str().unwrap_or("project").to_owned(),
                    kind: v["kind"].as_str().map(str::to_owned),
                    a: s("a")?,
                    b: s("b")?,
                    same: v["same"]
                        .as_bool()
                        .ok_or_else(|| at(n, "`same` must be true or false"))?,
                })
            })
            .collect();
    }
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = lines
        .next()
        .map(|(_, h)| h.trim_end_matches('\r').split('\t').collect())
        .unwrap_or_default();
    let col = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| {
            format!(
                "{}: the header needs a `{name}` column (source, a, b, label; tab-separated)",
                path.display()
            )
        })
    };
    let (cs, ca, cb, cl) = (col("source")?, col("a")?, col("b")?, col("label")?);
    lines
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let f: Vec<&str> = l.trim_end_matches('\r').split('\t').collect();
            let get = |i: usize| f.get(i).copied().ok_or_else(|| at(n, "too few columns"));
            Ok(Pair {
                source: get(cs)?.to_owned(),
                kind: None,
                a: get(ca)?.to_owned(),
                b: get(cb)?.to_owned(),
                same: match get(cl)? {
                    "1" => true,
                    "0" => false,
                    other => return Err(at(n, &format!("label must be 0 or 1, not `{other}`"))),
                },
            })
        })
        .collect()
}

/// What happened to one pair.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The pair's index in the input.
    pub index: usize,
    /// Cosine of the two prompts' embeddings.
    pub cosine: f32,
    /// The cache's answer for the second prompt: `Some(similarity)` on a semantic hit.
    pub hit: Option<f32>,
    /// Whether the guard alone agrees (for the "without the verifier" column).
    pub guard: bool,
    /// Whether both prompts read as English.
    pub english: bool,
    /// The verifier's features of the pair.
    pub features: [f32; FEATURES],
}

/// Runs every pair through `cache` (which must be semantic, with its threshold at or below
/// the lowest one to be reported: a hit at a higher threshold is a hit whose similarity
/// clears it).
pub async fn run(cache: &Cache, pairs: &[Pair]) -> Vec<Outcome> {
    let answer = Answer {
        message: json!({"role": "assistant", "content": "the cached answer"}),
        finish_reason: "stop".into(),
        model: "m".into(),
        provider: "p".into(),
        usage: None,
    };
    let headers = http::HeaderMap::new();
    // Sixteen pairs at a time: the embedding thread batches concurrent prompts, as it does
    // for concurrent requests.
    let outcomes = futures::stream::iter(pairs.iter().enumerate())
        .map(|(index, p)| one(cache, &answer, &headers, index, p))
        .buffered(16)
        .collect::<Vec<_>>()
        .await;
    outcomes.into_iter().flatten().collect()
}

/// The first prompt stored in a scope of its own, the second looked up.
async fn one(
    cache: &Cache,
    answer: &Answer,
    headers: &http::HeaderMap,
    index: usize,
    p: &Pair,
) -> Option<Outcome> {
    let tenant = format!("pair-{index}");
    let lookup = |text: &str| {
        // Temperature 0: under any `max_temperature`, so no pair bypasses the cache.
        let body = json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": text}]});
        let raw: Map<String, Value> = body.as_object().cloned().unwrap_or_default();
        let req: ChatRequest = serde_json::from_value(body).ok()?;
        cache
            .prepare(Some(&tenant), "m", None, &raw, &req, headers)
            .ok()
    };
    let (mut first, mut second) = (lookup(&p.a)?, lookup(&p.b)?);
    cache.find(&mut first).await;
    first.resolve_fully().await;
    let (va, pa) = (first.vector.clone(), first.prompt.clone());
    cache.store(first, answer.clone());
    let (found, _) = cache.find(&mut second).await;
    // What the lookups computed (nothing when the embedding failed: queue full, or a prompt
    // too long to compare by meaning).
    let (va, vb, pa, pb) = (va?, second.vector.as_ref()?, pa?, second.prompt.as_ref()?);
    let sim = cosine(&va, vb);
    Some(Outcome {
        index,
        cosine: sim,
        hit: match found {
            Found::Semantic(_, s) => Some(s),
            Found::Exact(_) => Some(1.0),
            Found::Miss => None,
        },
        guard: pb.signature.agrees(&pa.signature),
        english: pa.is_english() && pb.is_english(),
        features: features(&pa, pb, sim),
    })
}

/// Counts for one source at one threshold.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    /// Pairs labelled "same".
    pub positives: usize,
    /// Pairs labelled "different".
    pub negatives: usize,
    /// Positives answered from the cache.
    pub true_hits: usize,
    /// Negatives answered from the cache.
    pub false_hits: usize,
}

impl Rates {
    /// True hits over positives.
    pub fn true_rate(&self) -> f64 {
        self.true_hits as f64 / self.positives.max(1) as f64
    }
    /// False hits over negatives.
    pub fn false_rate(&self) -> f64 {
        self.false_hits as f64 / self.negatives.max(1) as f64
    }
}

/// How a pair is judged a hit at a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The cache as configured (guard and verifier).
    Cache,
    /// Cosine and the guard, no verifier.
    Guard,
    /// Cosine alone.
    Cosine,
}

/// Rates per source (and `all`) at `threshold` under `rule`.
pub fn rates(
    pairs: &[Pair],
    outcomes: &[Outcome],
    threshold: f32,
    rule: Rule,
) -> BTreeMap<String, Rates> {
    let mut by: BTreeMap<String, Rates> = BTreeMap::new();
    for o in outcomes {
        let p = &pairs[o.index];
        let hit = match rule {
            Rule::Cache => o.hit.is_some_and(|s| s >= threshold),
            Rule::Guard => o.cosine >= threshold && o.guard,
            Rule::Cosine => o.cosine >= threshold,
        };
        for key in [p.source.as_str(), "all"] {
            let r = by.entry(key.to_owned()).or_default();
            if p.same {
                r.positives += 1;
                r.true_hits += usize::from(hit);
            } else {
                r.negatives += 1;
                r.false_hits += usize::from(hit);
            }
        }
    }
    by
}

/// The report: per source at `default`, then every source across `thresholds`, with the
/// cache's rule beside the guard alone and cosine alone.
pub fn report(
    verifier: &super::verify::Verifier,
    pairs: &[Pair],
    outcomes: &[Outcome],
    default: f32,
    thresholds: &[f32],
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let pct = |n: usize, d: usize| format!("{:.1}% ({n}/{d})", n as f64 * 100.0 / d.max(1) as f64);
    let _ = writeln!(
        s,
        "At the default threshold {default}, guard and verifier ({}):\n",
        verifier.trained_on
    );
    let _ = writeln!(s, "| source | pairs | true hits | false hits |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for (src, r) in rates(pairs, outcomes, default, Rule::Cache) {
        let _ = writeln!(
            s,
            "| {src} | {} | {} | {} |",
            r.positives + r.negatives,
            pct(r.true_hits, r.positives),
            pct(r.false_hits, r.negatives)
        );
    }
    let _ = writeln!(s, "\nAcross thresholds (true hits / false hits):\n");
    let _ = writeln!(
        s,
        "| threshold | source | cache | guard, no verifier | cosine alone |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|");
    for &t in thresholds {
        let c = rates(pairs, outcomes, t, Rule::Cache);
        let g = rates(pairs, outcomes, t, Rule::Guard);
        let o = rates(pairs, outcomes, t, Rule::Cosine);
        for (src, r) in &c {
            let cell = |r: &Rates| {
                format!(
                    "{:.1}% / {:.1}%",
                    r.true_rate() * 100.0,
                    r.false_rate() * 100.0
                )
            };
            let _ = writeln!(
                s,
                "| {t:.2} | {src} | {} | {} | {} |",
                cell(r),
                cell(&g[src]),
                cell(&o[src])
            );
        }
    }
    s
}

/// The features of every pair as CSV (for `e2e/cache/train_verifier.py`).
pub fn features_csv(pairs: &[Pair], outcomes: &[Outcome]) -> String {
    let mut s = format!(
        "source,label,guard,english,{}\n",
        super::verify::FEATURE_NAMES.join(",")
    );
    for o in outcomes {
        let p = &pairs[o.index];
        let f: Vec<String> = o.features.iter().map(|x| format!("{x:.6}")).collect();
        s += &format!(
            "{},{},{},{},{}\n",
            p.source,
            u8::from(p.same),
            u8::from(o.guard),
            u8::from(o.english),
            f.join(",")
        );
    }
    s
}
