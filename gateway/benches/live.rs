//! Live configuration: what loading the snapshot costs each request, and how long from a
//! `PUT /admin/config` to the first request served by the new configuration.
//!
//! `cargo bench -p llm-gateway --bench live`

use std::time::{Duration, Instant};

use llm_gateway::config;
use mock_providers::{Mock, DEFAULT_OLLAMA_MODELS};

const ADMIN: &str = "bench-admin-token-0123456789";

fn doc(mock: &str, n: usize) -> String {
    let model = if n.is_multiple_of(2) {
        "gpt-4o-mini"
    } else {
        "llama-3.1-8b-instant"
    };
    format!(
        r#"
version: "v{n}"
server: {{admin_token: {{env: ADMIN}}}}
routing:
  virtual_models:
    - {{name: pick, strategy: quality, candidates: {{models: [{model}]}}}}
providers:
  - name: openai
    base_url: {mock}/openai/v1
    api_key: {{env: OPENAI_API_KEY}}
  - name: groq
    base_url: {mock}/groq/openai/v1
    api_key: {{env: GROQ_API_KEY}}
"#
    )
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    llm_gateway::install_crypto();
    let ml = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = format!("http://{}", ml.local_addr().unwrap());
    tokio::spawn(mock_providers::serve(
        ml,
        Mock::new(DEFAULT_OLLAMA_MODELS.map(String::from).to_vec()),
    ));
    let env = |k: &str| {
        Some(if k == "ADMIN" {
            ADMIN.to_owned()
        } else {
            format!("key-for-{k}")
        })
    };
    let d = config::parse("bench.yaml", &doc(&mock, 0)).unwrap();
    let settings = config::validate(&d, "bench.yaml", &env).unwrap();
    let gw = llm_gateway::app::assemble(
        &d,
        settings,
        llm_gateway::state::Services {
            env: Some(std::sync::Arc::new(env)),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // 1. The per-request cost: one snapshot load (and its drop), side by side with an Arc
    //    clone of the same snapshot, the least any shared configuration costs.
    let snap = gw.config();
    let rounds = 5_000_000u32;
    let (mut load, mut clone) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(gw.config());
        }
        load.push(t.elapsed().as_nanos() as f64 / f64::from(rounds));
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(snap.clone());
        }
        clone.push(t.elapsed().as_nanos() as f64 / f64::from(rounds));
    }
    println!(
        "snapshot load per request: median {:.1} ns (an Arc clone: {:.1} ns), {rounds} loads x 5",
        pct(&mut load, 0.5),
        pct(&mut clone, 0.5)
    );

    // 2. From a push to the first request the new configuration serves.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(llm_gateway::app::serve(l, gw.clone()));
    let http = reqwest::Client::new();
    let body =
        serde_json::json!({"model": "pick", "messages": [{"role": "user", "content": "hi"}]});
    let mut took = Vec::new();
    for n in 1..=40 {
        let started = Instant::now();
        let r = http
            .put(format!("{base}/admin/config"))
            .bearer_auth(ADMIN)
            .header("content-type", "application/yaml")
            .body(doc(&mock, n))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let want = format!("v{n}");
        loop {
            let r = http
                .post(format!("{base}/v1/chat/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            if r.headers()["x-llm-gateway-config"] == want.as_str() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10));
        }
        took.push(started.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "push to first request served by it (40 pushes, the push's own validation and build included): p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut took, 0.5),
        pct(&mut took, 0.99)
    );
}
