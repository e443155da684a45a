//! The request-path cost of virtual keys and budgets, measured side by side in one run:
//! authenticating a key (cache warm), then the budget step (count the prompt's tokens,
//! reserve on the key's, its tenant's and the global budget plus the key's per-minute rate,
//! settle) with in-process counters and with Redis counters (127.0.0.1:6379, required).
//! Run: `cargo bench -p llm-gateway --bench budget`

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use llm_gateway::auth::Auth;
use llm_gateway::budget::counters::Shared;
use llm_gateway::budget::{Amount, Budgets};
use llm_gateway::clock::SystemClock;
use llm_gateway::config::budget::{Budget, OnLimit, Period, Scope};
use llm_gateway::router::BreakerFilter;
use llm_gateway::state::{Gateway, Services};
use llm_gateway::store::Store;
use llm_gateway::wire::ChatRequest;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn budgets(key_id: &str) -> Vec<Budget> {
    let b = |scope| Budget {
        scope,
        period: Period::Month,
        limit_usd: Some(1.0e5),
        limit_tokens: Some(1 << 40),
        requests_per_minute: None,
        tokens_per_minute: None,
        on_limit: OnLimit::Reject,
        declared_by: None,
    };
    vec![
        b(Scope::Global),
        b(Scope::Tenant("team-a".into())),
        Budget {
            requests_per_minute: Some(1 << 40),
            tokens_per_minute: Some(1 << 40),
            ..b(Scope::Key(key_id.into()))
        },
    ]
}

async fn run(gw: Arc<Gateway>, key: &str, rounds: usize) -> (Vec<f64>, Vec<f64>) {
    let req: ChatRequest = serde_json::from_value(serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 200, "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Explain how a hash map works, with an example in Rust."}]})).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    let (mut auth, mut budget) = (Vec::new(), Vec::new());
    for i in 0..rounds + rounds / 10 {
        let snapshot = gw.config();
        let routed = snapshot
            .router
            .route(&snapshot.registry, &req, None, None, &[])
            .unwrap();
        let t = Instant::now();
        let caller = gw.auth.authenticate(&headers, None).await.unwrap();
        let a = t.elapsed().as_nanos() as f64;
        let t = Instant::now();
        let (_, held) = llm_gateway::pipeline::budget::reserve(
            &gw,
            &snapshot,
            &caller,
            &req,
            &serde_json::Map::new(),
            routed,
            &BreakerFilter::now(),
        )
        .await
        .unwrap();
        held.unwrap().reservation.settle(Amount {
            nano: 1000,
            tokens: 100,
        });
        let b = t.elapsed().as_nanos() as f64;
        if i >= rounds / 10 {
            auth.push(a);
            budget.push(b);
        }
    }
    (auth, budget)
}

fn main() {
    let (cfg, settings, _, _) = common::twenty_candidates();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/bench.db", dir.path().display()))
            .await
            .unwrap();
        let (rec, key) = store.create_key("team-a", "bench").await.unwrap();
        for b in budgets(&rec.id) {
            store.put_budget(&b).await.unwrap();
        }
        llm_gateway::router::tokens::warm_up();
        let prefix = format!("llm-gateway-bench-{}:", uuid::Uuid::new_v4());
        let mut results = Vec::new();
        for (name, shared, rounds) in [
            ("in-process counters", None, 20_000),
            (
                "redis counters",
                Some(
                    Shared::connect("redis://127.0.0.1:6379")
                        .await
                        .expect("the bench needs Redis at 127.0.0.1:6379"),
                ),
                5_000,
            ),
        ] {
            let engine = Budgets::new(Some(store.clone()), shared, Arc::new(SystemClock), &prefix);
            engine.reload().await.unwrap();
            let gw = llm_gateway::app::assemble(
                &cfg,
                settings.clone(),
                Services {
                    auth: Auth::new(Some(store.clone()), true, Duration::from_secs(3600)),
                    budgets: Some(engine),
                    ..Services::default()
                },
            )
            .await
            .unwrap();
            let (mut auth, mut budget) = run(gw, &key, rounds).await;
            results.push((
                name,
                pct(&mut auth, 0.5),
                pct(&mut auth, 0.99),
                pct(&mut budget, 0.5),
                pct(&mut budget, 0.99),
            ));
        }
        println!("auth + budget step per request (prompt counted, 3 budgets + 1 rate reserved, settled):");
        for (name, a50, a99, b50, b99) in &results {
            println!(
                "  {name:<20} auth p50 {:>6.1} µs p99 {:>6.1} µs | budget p50 {:>7.1} µs p99 {:>7.1} µs | total p50 {:>7.1} µs",
                a50 / 1e3,
                a99 / 1e3,
                b50 / 1e3,
                b99 / 1e3,
                (a50 + b50) / 1e3
            );
        }
        println!("command: cargo bench -p llm-gateway --bench budget");
        // Leave nothing behind in the shared Redis.
        let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut c)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query_async(&mut c).await.unwrap();
        }
    });
}
