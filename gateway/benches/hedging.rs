//! What hedging buys at the tail, measured side by side in one run: a virtual model whose first
//! candidate (OpenAI on the mock) is slow on about one request in thirteen (+1.5 s), its second (Groq)
//! always fast; 400 sequential requests each through a gateway without hedging and one with
//! `hedge: {after_quantile: 0.9}`, interleaved. Prints p50/p90/p99 and how many hedges went
//! out (each one is a second paid call).
//! Run: `cargo bench -p llm-gateway --bench hedging`

use std::time::{Duration, Instant};

use llm_gateway::config;
use mock_providers::{Mock, DEFAULT_OLLAMA_MODELS};
use serde_json::json;

const REQUESTS: usize = 400;

fn yaml(mock: &str, hedge: &str) -> String {
    format!(
        r#"
routing:
  virtual_models:
    - {{name: pair, strategy: quality, candidates: {{models: [gpt-4o-mini, llama-3.1-8b-instant]}}{hedge}}}
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

async fn gateway(yaml: &str) -> String {
    let cfg = config::parse("bench.yaml", yaml).unwrap();
    let settings = config::validate(&cfg, "bench.yaml", &|k: &str| {
        (k != "LLM_GATEWAY_ADMIN_TOKEN").then(|| format!("key-for-{k}"))
    })
    .unwrap();
    let gw = llm_gateway::app::assemble(&cfg, settings, Default::default())
        .await
        .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(llm_gateway::app::serve(l, gw));
    url
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
    let http = reqwest::Client::new();
    http.post(format!("{mock}/_mock/faults"))
        .json(&json!({"vendor": "openai", "latency_ms": 20, "tail_every": 13, "tail_ms": 1500}))
        .send()
        .await
        .unwrap();
    http.post(format!("{mock}/_mock/faults"))
        .json(&json!({"vendor": "groq", "latency_ms": 30}))
        .send()
        .await
        .unwrap();
    let plain = gateway(&yaml(&mock, "")).await;
    let hedged = gateway(&yaml(&mock, ", hedge: {after_quantile: 0.9}")).await;
    let body =
        json!({"model": "pair", "messages": [{"role": "user", "content": "hi [[words=5]]"}]});
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut hedges = 0;
    for i in 0..REQUESTS * 2 {
        let (url, out) = if i % 2 == 0 {
            (&plain, &mut a)
        } else {
            (&hedged, &mut b)
        };
        let t = Instant::now();
        let r = http
            .post(format!("{url}/v1/chat/completions"))
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if r.headers()["x-llm-gateway-attempts"] == "2" {
            hedges += 1;
        }
        let _ = r.bytes().await.unwrap();
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "hedging, {REQUESTS} requests each, first candidate +1.5 s on about 1 in 13 requests:"
    );
    for (name, v) in [("no hedging", &mut a), ("hedge after p90", &mut b)] {
        println!(
            "  {name:<16} p50 {:7.1} ms   p90 {:7.1} ms   p99 {:7.1} ms",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99)
        );
    }
    println!(
        "  hedges sent: {hedges} of {REQUESTS} requests ({:.1} %), each a second paid call",
        hedges as f64 * 100.0 / REQUESTS as f64
    );
    println!("command: cargo bench -p llm-gateway --bench hedging");
}
