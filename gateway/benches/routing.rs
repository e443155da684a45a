//! Routing decision time for 20 candidates (target: p99 under 50 µs), and classifier time.
//! Run: `cargo bench -p llm-gateway --bench routing`
//!
//! Builds a registry of exactly 20 chat models from the built-in catalog (no network), then
//! times `Router::route` for a mix of prompts (short, code, long, reasoning), classifier
//! included (its rules and the learned strong-need estimate), one decision at a time.

use std::time::Instant;

mod common;

use llm_gateway::router::classifier;
use llm_gateway::wire::ChatRequest;

const ROUNDS: usize = 20_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let (_doc, _settings, registry, router) = common::twenty_candidates();
    classifier::warm_up();
    llm_gateway::router::strong_need::warm_up().unwrap();
    llm_gateway::router::tokens::warm_up();

    let code = "Refactor this module and add tests:\n```rust\nfn main() {\n    let x = 1;\n    println!(\"{x}\");\n}\n```";
    let long = "Summarise the following text. ".to_owned()
        + &"The committee met on Tuesday to discuss the budget. ".repeat(80);
    let prompts = [
        "Hi!",
        "Explain how a hash map works.",
        code,
        &long,
        "Prove that there are infinitely many primes.",
    ];
    let reqs: Vec<ChatRequest> = prompts
        .iter()
        .map(|p| {
            serde_json::from_value(
                serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": p}]}),
            )
            .unwrap()
        })
        .collect();

    // Warm caches and branch predictors.
    for r in reqs.iter().cycle().take(2000) {
        std::hint::black_box(router.route(&registry, r, None, None, &[]).unwrap());
    }
    let mut decide = Vec::with_capacity(ROUNDS);
    let mut classify = Vec::with_capacity(ROUNDS);
    for r in reqs.iter().cycle().take(ROUNDS) {
        let t = Instant::now();
        let routed = std::hint::black_box(router.route(&registry, r, None, None, &[]).unwrap());
        decide.push(t.elapsed().as_secs_f64() * 1e6);
        classify.push(routed.decision.unwrap().classifier_us);
    }
    decide.sort_by(f64::total_cmp);
    classify.sort_by(f64::total_cmp);
    println!("routing decision, 20 candidates, {ROUNDS} decisions over {} prompt shapes (classifier included):", prompts.len());
    println!(
        "  p50 {:.1} µs   p99 {:.1} µs   max {:.1} µs   (target p99 < 50 µs)",
        percentile(&decide, 0.5),
        percentile(&decide, 0.99),
        decide[decide.len() - 1]
    );
    println!(
        "classifier alone: p50 {:.1} µs   p99 {:.1} µs",
        percentile(&classify, 0.5),
        percentile(&classify, 0.99)
    );
    // The learned strong-need estimate alone (it runs inside the classifier above).
    let mut need = Vec::with_capacity(ROUNDS);
    for p in prompts.iter().cycle().take(ROUNDS) {
        let t = Instant::now();
        std::hint::black_box(llm_gateway::router::strong_need::predict(p));
        need.push(t.elapsed().as_secs_f64() * 1e6);
    }
    need.sort_by(f64::total_cmp);
    println!(
        "of which the strong-need estimate: p50 {:.1} µs   p99 {:.1} µs",
        percentile(&need, 0.5),
        percentile(&need, 0.99)
    );
    println!("command: cargo bench -p llm-gateway --bench routing");
}
