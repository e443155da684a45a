//! Happy-path cost of the resilience layer, measured side by side in one run: a routing
//! decision over 20 candidates without and with the circuit-breaker filter, and the per-
//! request breaker bookkeeping (admit and record on the provider and model breakers) and
//! concurrency slot.
//! Run: `cargo bench -p llm-gateway --bench resilience`

use std::time::Instant;

mod common;

use llm_gateway::breaker::Outcome;
use llm_gateway::router::BreakerFilter;
use llm_gateway::wire::ChatRequest;

const ROUNDS: usize = 50_000;

fn median_ns(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (_doc, _settings, registry, router) = common::twenty_candidates();
    let req: ChatRequest = serde_json::from_value(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "Explain how a hash map works."}]})).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    let (mut plain, mut filtered, mut bookkeeping) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ROUNDS + 5_000 {
        let t = Instant::now();
        let a = std::hint::black_box(router.route(&registry, &req, None, None, &[]).unwrap());
        let d1 = t.elapsed().as_nanos() as f64;
        let t = Instant::now();
        let filter = BreakerFilter::now();
        let b = std::hint::black_box(
            router
                .route(&registry, &req, None, None, &[&filter])
                .unwrap(),
        );
        let d2 = t.elapsed().as_nanos() as f64;
        // Per-request bookkeeping on the chosen target: a concurrency slot, admit and record
        // on both breakers.
        let target = &b.target;
        let t = Instant::now();
        let permit = rt
            .block_on(
                target
                    .provider
                    .acquire(std::time::Duration::from_secs(5), false),
            )
            .unwrap();
        let now = Instant::now();
        std::hint::black_box(target.provider.breaker.admit(now));
        std::hint::black_box(target.breaker.as_ref().unwrap().admit(now));
        target.provider.breaker.record(now, Outcome::Success, 0.5);
        target
            .breaker
            .as_ref()
            .unwrap()
            .record(now, Outcome::Success, 0.5);
        drop(permit);
        let d3 = t.elapsed().as_nanos() as f64;
        drop(a);
        if i >= 5_000 {
            plain.push(d1);
            filtered.push(d2);
            bookkeeping.push(d3);
        }
    }
    let (p, f, k) = (
        median_ns(plain),
        median_ns(filtered),
        median_ns(bookkeeping),
    );
    println!("resilience layer, happy path, median of {ROUNDS} requests (20 candidates):");
    println!(
        "  routing decision without breaker filter: {:.2} µs",
        p / 1000.0
    );
    println!(
        "  routing decision with breaker filter:    {:.2} µs  (+{:.2} µs)",
        f / 1000.0,
        (f - p) / 1000.0
    );
    println!(
        "  slot + breaker admit/record per request:  {:.2} µs",
        k / 1000.0
    );
    println!(
        "  total added per request:                  {:.2} µs",
        (f - p + k) / 1000.0
    );
    println!("command: cargo bench -p llm-gateway --bench resilience");
}
