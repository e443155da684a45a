//! Resilience at the default settings (no tuned timeouts or limits): a hung top provider
//! fails over inside the client's own timeout from a cold start, and in seconds once the
//! model's usual time to first token is learned; a provider that slows down as its load
//! grows gets a concurrency limit that settles instead of piling up; one that answers 429
//! under load sheds its traffic to the next candidate with no client error; hedging.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use llm_gateway::clock::Clock;
use serde_json::{json, Value};

/// Two providers on the mock with every timeout and limit at its default, and `pair`: a
/// virtual model whose first candidate is OpenAI's gpt-4o-mini, its second Groq's Llama.
fn yaml(mock: &str, pair_extra: &str) -> String {
    format!(
        r#"
routing:
  virtual_models:
    - {{name: pair, strategy: quality, candidates: {{models: [gpt-4o-mini, llama-3.1-8b-instant]}}{pair_extra}}}
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

fn body(model: &str, stream: bool, words: usize) -> Value {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "user", "content": format!("Say something. [[words={words}]]")}]})
}

/// One request; `(status, provider, attempts, elapsed, complete)`, where `complete` means a
/// JSON answer or a stream that ended with `[DONE]`.
async fn call(
    h: &Harness,
    body: &Value,
    client_timeout: Option<&str>,
) -> (u16, String, String, Duration, bool) {
    let t = Instant::now();
    let mut rb = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .json(body);
    if let Some(s) = client_timeout {
        // What the official OpenAI SDKs send with every request.
        rb = rb.header("x-stainless-read-timeout", s);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let header = |k: &str| {
        r.headers()
            .get(k)
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
    };
    let (provider, attempts) = (
        header("x-llm-gateway-provider"),
        header("x-llm-gateway-attempts"),
    );
    let text = r.text().await.unwrap();
    let complete = status == 200
        && (body["stream"] != json!(true) || text.trim_end().ends_with("data: [DONE]"));
    (status, provider, attempts, t.elapsed(), complete)
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_top_provider_fails_over_inside_the_clients_timeout_from_a_cold_start() {
    let h = gateway().yaml(|m| yaml(m, "")).start().await;
    h.fault(json!({"vendor": "openai", "hang": true})).await;
    // A client that waits 8 s (the SDK declares its timeout): the first attempt gets at most
    // half of the time left, so the second candidate still has time to answer.
    let results = join_all((0..6).map(|i| {
        let h = &h;
        async move { call(h, &body("pair", i % 2 == 0, 5), Some("8.0")).await }
    }))
    .await;
    for (status, provider, attempts, took, complete) in results {
        assert_eq!(status, 200, "{provider} {attempts}");
        assert!(complete);
        assert_eq!(provider, "groq");
        assert_eq!(attempts, "2", "the hung provider was tried first");
        assert!(
            took < Duration::from_secs(8),
            "inside the client's timeout: {took:?}"
        );
    }
    let m = h.get_text("/metrics").await;
    assert!(
        m.contains(r#"llm_gateway_upstream_failures_total{provider="openai",reason="timeout_first_token"} 6"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_learned_a_hung_model_fails_over_in_seconds_without_a_client_timeout() {
    let h = gateway().yaml(|m| yaml(m, "")).start().await;
    // Normal traffic teaches the gateway how fast gpt-4o-mini starts answering.
    for i in 0..48 {
        let (status, provider, ..) = call(&h, &body("pair", i % 2 == 0, 3), None).await;
        assert_eq!((status, provider.as_str()), (200, "openai"));
    }
    let m = h.get_text("/metrics").await;
    let learned = metric(
        &m,
        r#"llm_gateway_first_content_deadline_seconds{provider="openai",model="gpt-4o-mini"}"#,
    );
    assert_eq!(learned, 10.0, "the floor: the mock answers in milliseconds");
    let cold = metric(
        &m,
        r#"llm_gateway_first_content_deadline_seconds{provider="groq",model="llama-3.1-8b-instant"}"#,
    );
    assert_eq!(cold, 30.0, "never used: still the configured value");

    h.fault(json!({"vendor": "openai", "hang": true})).await;
    for stream in [true, false] {
        let (status, provider, attempts, took, complete) =
            call(&h, &body("pair", stream, 3), None).await;
        assert_eq!(
            (status, provider.as_str(), attempts.as_str()),
            (200, "groq", "2")
        );
        assert!(complete);
        // The cold value (30 s) would have taken longer than this.
        assert!(took < Duration::from_secs(20), "stream={stream}: {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_slows_down_under_load_gets_a_limit_that_settles() {
    let h = gateway().yaml(|m| yaml(m, "")).start().await;
    // Each request in progress adds 20 ms to the next one's time to first token.
    h.fault(json!({"vendor": "openai", "latency_per_inflight_ms": 20.0}))
        .await;
    let clients = 100;
    // How long the load runs once the first burst is over, and how long that may take: the
    // first burst ends when the limit has come down, not at a fixed time, because on a busy
    // machine the first answers (and so the first verdicts) come late.
    let measure_for = Duration::from_secs(4);
    let settle_within = Duration::from_secs(20);
    let started = Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // When the first burst was over.
    let settled = std::sync::OnceLock::new();
    let errors = std::sync::atomic::AtomicUsize::new(0);
    let served = std::sync::atomic::AtomicUsize::new(0);
    let limit_now = || async {
        let m = h.get_text("/metrics").await;
        metric(
            &m,
            r#"llm_gateway_provider_concurrency_limit{provider="openai"}"#,
        )
    };
    let mock_load = || async {
        let load = h.mock_load("openai").await;
        (
            load["in_flight"].as_u64().unwrap() as f64,
            load["max_in_flight"].as_u64().unwrap(),
        )
    };
    let load = join_all((0..clients).map(|i| {
        let (h, errors, served, stop) = (&h, &errors, &served, &stop);
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, ..) = call(h, &body("gpt-4o-mini", i % 2 == 0, 3), None).await;
                if status == 200 {
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }));
    // The first burst is over once the limit is below its start and the provider holds no
    // more than the limit (slots owed from before the cut come back as their answers end);
    // from then on the limit is sampled more often than it can move (once per 200 ms window),
    // and the most requests the provider sees at once shows that it was held to it.
    let samples = std::sync::Mutex::new(Vec::new());
    let watch = async {
        while started.elapsed() < settle_within {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let limit = limit_now().await;
            if limit < INITIAL_LIMIT && mock_load().await.0 <= limit + STRAGGLERS {
                settled.get_or_init(|| started.elapsed());
                samples.lock().unwrap().push(limit);
                break;
            }
        }
        h.http
            .delete(format!("{}/_mock/load", h.mock))
            .send()
            .await
            .unwrap();
        let measuring = Instant::now();
        while settled.get().is_some() && measuring.elapsed() < measure_for {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let limit = limit_now().await;
            samples.lock().unwrap().push(limit);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    tokio::join!(load, watch);
    let limit = limit_now().await;
    let (_, most) = mock_load().await;
    let samples = samples.into_inner().unwrap();
    println!(
        "{clients} clients: first burst over after {:?}, limit {samples:?} (last {limit}), at most {most} requests at the provider after it, {} served",
        settled.get(),
        served.into_inner()
    );
    assert!(
        settled.get().is_some(),
        "the limit came down below its start within {settle_within:?}"
    );
    assert_eq!(errors.into_inner(), 0, "the excess waited in the queue");
    let range = |s: &[f64]| {
        s.iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    };
    let (_, hi) = range(&samples);
    assert!(
        hi < INITIAL_LIMIT,
        "the limit stayed below its start: {samples:?}"
    );
    // The first half is still the way down from the burst.
    let (lo_late, hi_late) = range(&samples[samples.len() / 2..]);
    assert!(
        hi_late <= lo_late * 2.0,
        "and settled in a band: {samples:?}"
    );
    assert!(
        most as f64 <= hi + STRAGGLERS,
        "the provider never had more than the limit at once: {most} (limit at most {hi})"
    );
}

/// How many more requests than the limit the mock may count: answers the gateway has read to
/// their end (and so freed their slots) while the mock has not yet dropped their streams.
const STRAGGLERS: f64 = 2.0;

/// Every provider's concurrency limit at start.
const INITIAL_LIMIT: f64 = 64.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_answering_429_under_load_sheds_traffic_without_client_errors() {
    let h = gateway().yaml(|m| yaml(m, "")).start().await;
    h.fault(json!({"vendor": "openai", "latency_ms": 50, "max_inflight": 8, "status": 429, "retry_after": "1"}))
        .await;
    let run_for = Duration::from_secs(5);
    let started = Instant::now();
    let results = join_all((0..60).map(|i| {
        let h = &h;
        async move {
            let mut out = Vec::new();
            while started.elapsed() < run_for {
                let (status, provider, ..) = call(h, &body("pair", i % 2 == 0, 20), None).await;
                out.push((status, provider));
            }
            out
        }
    }))
    .await;
    let all: Vec<(u16, String)> = results.into_iter().flatten().collect();
    let errors: Vec<_> = all.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let by = |p: &str| all.iter().filter(|(_, x)| x == p).count();
    println!(
        "{} requests: openai {}, groq {}",
        all.len(),
        by("openai"),
        by("groq")
    );
    assert!(
        by("groq") > 0 && by("openai") > 0,
        "traffic shifted, not moved wholesale"
    );
    let m = h.get_text("/metrics").await;
    let limit = metric(
        &m,
        r#"llm_gateway_provider_concurrency_limit{provider="openai"}"#,
    );
    assert!(limit < INITIAL_LIMIT, "429s cut openai's limit: {limit}");
}

/// A gateway whose virtual model `pair` (gpt-4o-mini, then Groq's llama) hedges after
/// `after_secs`, with a key of `tenant` held to a 1 USD budget: the gateway, its store, the key.
async fn hedged_pair(
    after_secs: f64,
    tenant: &str,
) -> (Harness, llm_gateway::store::Store, String) {
    let clock = std::sync::Arc::new(llm_gateway::clock::ManualClock::at(
        llm_gateway::clock::SystemClock.now_ms(),
    ));
    let routing = format!("  virtual_models:\n    - {{name: pair, strategy: quality, candidates: {{models: [gpt-4o-mini, llama-3.1-8b-instant]}}, hedge: {{after_secs: {after_secs}}}}}\n");
    let h = gateway()
        .routing(&routing)
        .budgets(BudgetSetup {
            redis_url: None,
            database_url: None,
            redis_prefix: None,
            clock,
        })
        .start()
        .await;
    let store = h.store.clone().unwrap();
    let (_, key) = store.create_key(tenant, "ci").await.unwrap();
    let r = h
        .admin(reqwest::Method::PUT, "/admin/budgets")
        .json(&json!({"scope": "tenant", "subject": tenant, "limit_usd": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (h, store, key)
}

/// The ledger's rows of request `id` (a hedged request has one per call).
async fn rows_of(
    store: &llm_gateway::store::Store,
    id: &str,
) -> Vec<llm_gateway::store::usage::UsageRecord> {
    store
        .usage_records()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.request_id == id)
        .collect()
}

/// The USD `key`'s first budget has used, and the whole `GET /v1/budget` answer.
async fn used_usd(h: &Harness, key: &str) -> (f64, Value) {
    let me: Value = h
        .http
        .get(format!("{}/v1/budget", h.gw))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (me["budgets"][0]["used_usd"].as_f64().unwrap(), me)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_asks_the_next_provider_after_the_delay_and_both_calls_are_paid() {
    let (h, store, key) = hedged_pair(1.0, "team-h").await;
    // OpenAI is slow this time: the hedge to Groq answers first. (The delays are seconds so
    // that a busy machine's own slowness is never mistaken for them.)
    h.fault(json!({"vendor": "openai", "latency_ms": 5000, "times": 1}))
        .await;
    for stream in [false, true] {
        let r = h
            .http
            .post(format!("{}/v1/chat/completions", h.gw))
            .bearer_auth(&key)
            .json(&body("pair", stream, 4))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let hv = |k: &str| r.headers()[k].to_str().unwrap().to_owned();
        let (provider, attempts, id) = (
            hv("x-llm-gateway-provider"),
            hv("x-llm-gateway-attempts"),
            hv("x-request-id"),
        );
        let _ = r.text().await.unwrap();
        if !stream {
            assert_eq!((provider.as_str(), attempts.as_str()), ("groq", "2"));
        } else {
            // OpenAI is fast again: it wins, the hedge (if sent at all) loses.
            assert_eq!(provider, "openai");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let rows = loop {
            assert!(
                Instant::now() < deadline,
                "the usage rows of {id} never came"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let rows = rows_of(&store, &id).await;
            if rows.len() == 2 || (stream && attempts == "1" && rows.len() == 1) {
                break rows;
            }
        };
        if !stream {
            let loser = rows
                .iter()
                .find(|u| u.status == 499)
                .expect("the loser's row");
            assert_eq!(loser.provider.as_deref(), Some("openai"));
            assert!(
                loser.usage_estimated && loser.prompt_tokens > 0,
                "{loser:?}"
            );
            assert!(
                loser.cost_usd.unwrap() > 0.0,
                "the cancelled call is paid for"
            );
            let winner = rows.iter().find(|u| u.status == 200).unwrap();
            assert_eq!(winner.provider.as_deref(), Some("groq"));
            // Both costs are in the tenant's budget.
            let (used, me) = used_usd(&h, &key).await;
            let both = loser.cost_usd.unwrap() + winner.cost_usd.unwrap();
            assert!((used - both).abs() < 1e-12, "{me} vs {both}");
        }
    }
    // OpenAI is slower than the hedge delay but Groq slower still: the hedge is sent and
    // loses, and is cancelled.
    h.fault(json!({"vendor": "openai", "latency_ms": 2000, "times": 1}))
        .await;
    h.fault(json!({"vendor": "groq", "latency_ms": 6000, "times": 1}))
        .await;
    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .bearer_auth(&key)
        .json(&body("pair", false, 4))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llm-gateway-provider"], "openai");
    let m = h.get_text("/metrics").await;
    assert!(
        m.contains(r#"llm_gateway_hedges_total{provider="groq",outcome="won"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"llm_gateway_hedges_total{provider="groq",outcome="lost"}"#),
        "{m}"
    );
}

/// When the first call is refused by its provider (a 400, the request's own fault there)
/// after its hedge has gone out, the hedge's answer is what the client gets: that call was
/// made and is paid for, and another provider took the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_that_answers_stands_when_the_first_call_is_refused() {
    let (h, store, key) = hedged_pair(0.5, "team-x").await;
    // OpenAI refuses after the hedge is sent (0.5 s); Groq answers after that.
    h.fault(json!({"vendor": "openai", "latency_ms": 1500, "status": 400, "times": 1}))
        .await;
    h.fault(json!({"vendor": "groq", "latency_ms": 2500, "times": 1}))
        .await;
    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .bearer_auth(&key)
        .json(&body("pair", false, 4))
        .send()
        .await
        .unwrap();
    let (status, provider) = (r.status(), r.headers()["x-llm-gateway-provider"].clone());
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(provider, "groq");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    h.flush_ledger().await;
    let rows = rows_of(&store, &id).await;
    let answered = rows
        .iter()
        .find(|u| u.status == 200)
        .expect("the answer's row");
    assert_eq!(answered.provider.as_deref(), Some("groq"), "{rows:?}");
    assert!(answered.cost_usd.unwrap() > 0.0, "{rows:?}");
}

/// A client that leaves while both the first call and its hedge are at their providers pays
/// for both (each read the prompt), on the tenant's budget too, as after a decided race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_during_a_hedge_race_pays_for_both_calls() {
    let (h, store, key) = hedged_pair(0.5, "team-r").await;
    for vendor in ["openai", "groq"] {
        h.fault(json!({"vendor": vendor, "latency_ms": 5000, "times": 1}))
            .await;
    }
    let rb = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .bearer_auth(&key)
        .json(&body("pair", false, 4));
    let call = tokio::spawn(async move { rb.send().await });
    h.wait_in_flight("openai", 1).await;
    h.wait_in_flight("groq", 1).await;
    call.abort();
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        assert!(Instant::now() < deadline, "the two rows never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rows = store.usage_records().await.unwrap();
        if rows.len() == 2 {
            break rows;
        }
    };
    let mut providers: Vec<_> = rows.iter().map(|u| u.provider.clone().unwrap()).collect();
    providers.sort();
    assert_eq!(providers, ["groq", "openai"], "{rows:#?}");
    assert_eq!(rows[0].request_id, rows[1].request_id);
    for u in &rows {
        assert_eq!(u.status, 499, "{u:?}");
        assert!(u.usage_estimated && u.prompt_tokens > 0, "{u:?}");
        assert!(u.cost_usd.unwrap() > 0.0, "{u:?}");
    }
    let (used, me) = used_usd(&h, &key).await;
    let both: f64 = rows.iter().map(|u| u.cost_usd.unwrap()).sum();
    assert!((used - both).abs() < 1e-12, "{me} vs {both}");
}
