//! The response cache through the API: exact and semantic hits served without an upstream
//! call, as JSON or SSE whichever way they were stored; what is never cached; tenants kept
//! apart; hits recorded at zero cost. Needs `LLM_GATEWAY_EMBEDDING_MODEL`.

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

fn with_cache(mock: &str, extra: &str) -> String {
    format!(
        "{}\ncache:\n  enabled: true\n{extra}",
        config_yaml(mock, "")
    )
}

async fn start() -> Harness {
    assert!(
        llm_gateway::cache::embed::default_model_dir().is_some(),
        "set LLM_GATEWAY_EMBEDDING_MODEL (./e2e/test-all.sh does)"
    );
    gateway().yaml(|m| with_cache(m, "")).start().await
}

/// A cached gateway that requires keys, and its key store.
async fn keyed() -> (Harness, llm_gateway::store::Store) {
    let h = gateway()
        .yaml(|m| with_cache(m, ""))
        .keys(true, std::time::Duration::from_secs(5))
        .start()
        .await;
    let store = h.store.clone().unwrap();
    (h, store)
}

fn ask(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": text}]})
}

async fn send(
    h: &Harness,
    body: &Value,
    key: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, HeaderMap, String) {
    let mut rb = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .json(body);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    let hd = r.headers().clone();
    (s, hd, r.text().await.unwrap())
}

fn cache_of(h: &HeaderMap) -> &str {
    h.get("x-llm-gateway-cache")
        .map_or("", |v| v.to_str().unwrap())
}

fn content(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn upstream_calls(h: &Harness) -> usize {
    h.received("openai").await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_and_rephrased_requests_are_answered_from_the_cache() {
    let h = start().await;
    let (s, hd, first) = send(&h, &ask("What is the capital of France?"), None, &[]).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(cache_of(&hd), "miss");
    assert_eq!(upstream_calls(&h).await, 1);

    let (_, hd, again) = send(&h, &ask("What is the capital of France?"), None, &[]).await;
    assert_eq!(cache_of(&hd), "hit-exact");
    assert_eq!(hd["x-llm-gateway-cost-usd"], "0");
    assert_eq!(content(&again), content(&first));

    let (_, hd, para) = send(&h, &ask("What's the capital of France?"), None, &[]).await;
    assert_eq!(cache_of(&hd), "hit-semantic");
    let sim: f32 = hd["x-llm-gateway-cache-similarity"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sim >= llm_gateway::cache::DEFAULT_THRESHOLD, "{sim}");
    assert_eq!(content(&para), content(&first));
    assert_eq!(
        upstream_calls(&h).await,
        1,
        "neither hit reached the provider"
    );

    // Near in wording, not in meaning: the guard keeps them apart.
    for other in [
        "What is the capital of Australia?",
        "What is not the capital of France?",
    ] {
        let (_, hd, body) = send(&h, &ask(other), None, &[]).await;
        assert_eq!(cache_of(&hd), "miss", "{other}: {body}");
    }
    // Another system prompt is another task.
    let mut b = ask("What is the capital of France?");
    b["messages"][0]["content"] = json!("Answer in French.");
    assert_eq!(cache_of(&send(&h, &b, None, &[]).await.1), "miss");

    // A cached JSON answer streams as SSE, with usage when asked.
    let mut s = ask("What's the capital of France?");
    s["stream"] = json!(true);
    s["stream_options"] = json!({"include_usage": true});
    let (status, hd, text) = send(&h, &s, None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(hd["content-type"], "text/event-stream");
    assert_eq!(cache_of(&hd), "hit-semantic");
    let chunks = sse_data(&text);
    assert_eq!(streamed_text(&chunks), content(&first));
    assert!(
        chunks
            .iter()
            .any(|c| c["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0),
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"));

    let metrics = h.get_text("/metrics").await;
    for line in [
        "llm_gateway_cache_requests_total{outcome=\"hit_exact\"} 1",
        "llm_gateway_cache_requests_total{outcome=\"hit_semantic\"} 2",
        "llm_gateway_cache_entries 4",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_stored_and_served_as_json() {
    let h = start().await;
    let mut s = ask("Explain what a hash map is.");
    s["stream"] = json!(true);
    let (_, hd, text) = send(&h, &s, None, &[]).await;
    assert_eq!(cache_of(&hd), "miss");
    let streamed = streamed_text(&sse_data(&text));
    let (_, hd, body) = send(&h, &ask("Can you explain what a hash map is?"), None, &[]).await;
    assert_eq!(cache_of(&hd), "hit-semantic");
    assert_eq!(content(&body), streamed);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_content_comes_as_parts_is_passed_on_and_stored_as_its_text() {
    let h = start().await;
    // Some OpenAI-compatible servers send `delta.content` as an array of parts.
    h.fault(json!({"vendor": "openai", "content_parts": true, "times": 1}))
        .await;
    let mut s = ask("Describe a binary heap.");
    s["stream"] = json!(true);
    let (status, hd, text) = send(&h, &s, None, &[]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(cache_of(&hd), "miss");
    let chunks = sse_data(&text);
    assert_eq!(chunks.last().unwrap(), "[DONE]", "{text}");
    let parts: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_array())
        .flatten()
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert!(!parts.is_empty(), "{text}");
    // The stored answer is the parts' text joined, served as a plain string.
    let (_, hd, body) = send(&h, &ask("Describe a binary heap."), None, &[]).await;
    assert_eq!(cache_of(&hd), "hit-exact", "{body}");
    assert_eq!(content(&body), parts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_cut_streams_tool_calls_hot_temperatures_and_no_store_are_never_cached() {
    let h = start().await;
    // An upstream error: not stored.
    h.fault(json!({"vendor": "openai", "status": 500, "times": 1}))
        .await;
    let (s, _, _) = send(&h, &ask("Tell me about Rust."), None, &[]).await;
    assert_ne!(s, 200);
    let (s, hd, _) = send(&h, &ask("Tell me about Rust."), None, &[]).await;
    assert_eq!((s, cache_of(&hd)), (200, "miss"));

    // A stream cut mid-way: not stored.
    h.fault(json!({"vendor": "openai", "cut_after": 3, "times": 1}))
        .await;
    let mut st = ask("Tell me about Go [[words=40]]");
    st["stream"] = json!(true);
    send(&h, &st, None, &[]).await;
    assert_eq!(
        cache_of(
            &send(&h, &ask("Tell me about Go [[words=40]]"), None, &[])
                .await
                .1
        ),
        "miss"
    );

    // Tool calls: not stored.
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut t = ask("Weather in Paris?");
    t["tools"] = tools;
    for _ in 0..2 {
        let (_, hd, body) = send(&h, &t, None, &[]).await;
        assert!(body.contains("tool_calls"), "{body}");
        assert_eq!(cache_of(&hd), "miss");
    }

    // Above the temperature bound, and no-store: bypass, and nothing stored.
    let mut hot = ask("Write a limerick.");
    hot["temperature"] = json!(1.5);
    assert_eq!(cache_of(&send(&h, &hot, None, &[]).await.1), "bypass");
    // Log probabilities: a stored answer has none to give, so such requests bypass.
    let mut lp = ask("Name a prime number.");
    lp["logprobs"] = json!(true);
    for _ in 0..2 {
        assert_eq!(cache_of(&send(&h, &lp, None, &[]).await.1), "bypass");
    }
    let q = ask("What is a monad?");
    assert_eq!(
        cache_of(&send(&h, &q, None, &[("cache-control", "no-store")]).await.1),
        "bypass"
    );
    assert_eq!(cache_of(&send(&h, &q, None, &[]).await.1), "miss");
    // no-cache: asks upstream afresh, and refreshes the entry.
    let before = upstream_calls(&h).await;
    assert_eq!(
        cache_of(&send(&h, &q, None, &[("cache-control", "no-cache")]).await.1),
        "miss"
    );
    assert_eq!(upstream_calls(&h).await, before + 1);
    assert_eq!(cache_of(&send(&h, &q, None, &[]).await.1), "hit-exact");
    // The refreshed entry is still found by meaning (it replaced the old one's embedding).
    assert_eq!(
        cache_of(&send(&h, &ask("What's a monad?"), None, &[]).await.1),
        "hit-semantic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_share_entries_and_hits_are_recorded_free() {
    let (h, store) = keyed().await;
    let (_, a) = store.create_key("team-a", "").await.unwrap();
    let (_, b) = store.create_key("team-b", "").await.unwrap();
    let q = ask("What is the capital of France?");
    assert_eq!(cache_of(&send(&h, &q, Some(&a), &[]).await.1), "miss");
    assert_eq!(cache_of(&send(&h, &q, Some(&a), &[]).await.1), "hit-exact");
    assert_eq!(
        cache_of(&send(&h, &q, Some(&b), &[]).await.1),
        "miss",
        "another tenant's entry"
    );
    let para = ask("What's the capital of France?");
    assert_eq!(
        cache_of(&send(&h, &para, Some(&b), &[]).await.1),
        "hit-semantic",
        "its own"
    );

    h.flush_ledger().await;
    let rows = store.usage_records().await.unwrap();
    assert_eq!(rows.len(), 4);
    let hits: Vec<_> = rows
        .iter()
        .filter(|r| r.cache.as_deref().is_some_and(|c| c.starts_with("hit")))
        .collect();
    assert_eq!(hits.len(), 2);
    for r in hits {
        assert_eq!(r.cost_usd, Some(0.0));
        assert_eq!((r.prompt_tokens, r.completion_tokens), (0, 0));
        assert!(!r.usage_estimated);
    }
    assert!(rows
        .iter()
        .any(|r| r.cache.as_deref() == Some("miss") && r.cost_usd.unwrap() > 0.0));
}

/// A key limited by `allowed_models` and a key without a list, in one tenant, never share
/// a virtual model's answers: each would get a model the other's routing could not choose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_different_allowed_models_never_share_a_virtual_models_answers() {
    let (h, store) = keyed().await;
    let (_, open) = store.create_key("team", "open").await.unwrap();
    let (_, local) = store
        .create_key_with(
            "team",
            "local",
            Some(vec!["ollama/*".into(), "ollama/llama3.2".into()]),
        )
        .await
        .unwrap();
    let (_, local2) = store
        .create_key_with(
            "team",
            "local2",
            Some(vec![
                "ollama/llama3.2".into(),
                "ollama/*".into(),
                "ollama/*".into(),
            ]),
        )
        .await
        .unwrap();
    let mut q = ask("Explain how a hash map handles collisions.");
    q["model"] = json!("quality");
    let (_, hd, _) = send(&h, &q, Some(&open), &[]).await;
    assert_eq!(cache_of(&hd), "miss");
    assert_ne!(hd["x-llm-gateway-provider"], "ollama");
    let (_, hd, _) = send(&h, &q, Some(&local), &[]).await;
    assert_eq!(
        cache_of(&hd),
        "miss",
        "the open key's answer reached the limited key"
    );
    assert_eq!(hd["x-llm-gateway-provider"], "ollama");
    // Keys with the same list share, as keys of one tenant do, whatever its order or repeats.
    let (_, hd, _) = send(&h, &q, Some(&local2), &[]).await;
    assert_eq!(cache_of(&hd), "hit-exact");
    assert_eq!(hd["x-llm-gateway-provider"], "ollama");
    let (_, hd, _) = send(&h, &q, Some(&open), &[]).await;
    assert_eq!(cache_of(&hd), "hit-exact");
    assert_ne!(hd["x-llm-gateway-provider"], "ollama");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_model_can_turn_its_cache_off_or_set_its_own_threshold() {
    let routing = "  virtual_models:\n  - {name: fresh, strategy: cost, candidates: {providers: [openai]}, cache: {enabled: false}}\n  - {name: loose, strategy: cost, candidates: {providers: [openai]}, cache: {similarity_threshold: 0.8}}\n";
    let h = gateway()
        .yaml(|m| {
            format!(
                "{}\ncache:\n  enabled: true\n",
                config_yaml_with(m, "", routing)
            )
        })
        .start()
        .await;
    let mut q = ask("How do I cook rice?");
    q["model"] = json!("fresh");
    assert_eq!(cache_of(&send(&h, &q, None, &[]).await.1), "bypass");
    assert_eq!(cache_of(&send(&h, &q, None, &[]).await.1), "bypass");
    q["model"] = json!("loose");
    assert_eq!(cache_of(&send(&h, &q, None, &[]).await.1), "miss");
    let mut p = ask("What's the best way to cook rice?");
    p["model"] = json!("loose");
    let (_, hd, _) = send(&h, &p, None, &[]).await;
    assert_eq!(
        cache_of(&hd),
        "hit-semantic",
        "0.88 similar: a hit at 0.8, not at 0.95"
    );
}

async fn wait_entries(h: &Harness, n: usize) -> Duration {
    let start = std::time::Instant::now();
    while h.state.cache.as_ref().unwrap().len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "entries never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_entries_through_redis_and_new_replicas_load_them() {
    assert!(llm_gateway::cache::embed::default_model_dir().is_some());
    let prefix = format!("lgw-test-{}:", uuid::Uuid::new_v4());
    let a = gateway()
        .yaml(|m| with_cache(m, ""))
        .shared_cache(redis_url(), &prefix)
        .start()
        .await;
    let b = gateway()
        .yaml(|m| with_cache(m, ""))
        .shared_cache(redis_url(), &prefix)
        .start()
        .await;
    let q = ask("How do I undo the last commit in git?");
    assert_eq!(cache_of(&send(&a, &q, None, &[]).await.1), "miss");
    let took = wait_entries(&b, 1).await;
    eprintln!("an entry reached the other replica in {took:?}");
    assert_eq!(cache_of(&send(&b, &q, None, &[]).await.1), "hit-exact");
    let para = ask("How can I undo my last git commit?");
    assert_eq!(
        cache_of(&send(&b, &para, None, &[]).await.1),
        "hit-semantic"
    );
    assert_eq!(
        upstream_calls(&b).await,
        0,
        "replica B never asked its provider"
    );

    // A replica started later loads what Redis holds.
    let c = gateway()
        .yaml(|m| with_cache(m, ""))
        .shared_cache(redis_url(), &prefix)
        .start()
        .await;
    wait_entries(&c, 1).await;
    assert_eq!(
        cache_of(&send(&c, &para, None, &[]).await.1),
        "hit-semantic"
    );
    delete_redis_keys(&prefix).await;
}

/// A replica whose first load of Redis's entries fails (here: its Redis user may subscribe
/// but not yet SCAN) still receives the entries announced meanwhile, and keeps trying the
/// load until it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_load_of_shared_entries_is_retried() {
    assert!(llm_gateway::cache::embed::default_model_dir().is_some());
    let id = uuid::Uuid::new_v4();
    let prefix = format!("lgw-test-{id}:");
    let user = format!("lgw-test-{id}");
    let admin = redis::Client::open(redis_url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let acl = |rules: &[&str]| {
        let mut c = redis::cmd("ACL");
        c.arg("SETUSER").arg(&user).arg(rules);
        c
    };
    let _: () = acl(&["on", ">pw-for-this-test", "~*", "&*", "+@all", "-scan"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let a = gateway()
        .yaml(|m| with_cache(m, ""))
        .shared_cache(redis_url(), &prefix)
        .start()
        .await;
    let (s, hd, _) = send(&a, &ask("What is a monad?"), None, &[]).await;
    assert_eq!((s, cache_of(&hd)), (200, "miss"));
    // The entry reaches Redis in the background; B, started after, can only load it.
    let start = std::time::Instant::now();
    while entries_in_redis(&mut admin, &prefix).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "A never wrote its entry"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut limited = url::Url::parse(redis_url()).unwrap();
    limited.set_username(&user).unwrap();
    limited.set_password(Some("pw-for-this-test")).unwrap();
    let b = gateway()
        .yaml(|m| with_cache(m, ""))
        .shared_cache(limited.as_str(), &prefix)
        .start()
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        b.state.cache.as_ref().unwrap().is_empty(),
        "SCAN was refused"
    );
    // Announced entries still arrive while the load fails.
    send(&a, &ask("Who wrote Hamlet?"), None, &[]).await;
    wait_entries(&b, 1).await;
    let _: () = acl(&["+scan"]).query_async(&mut admin).await.unwrap();
    // The load is retried with a backoff (1 s doubling): the first entry arrives with it.
    let start = std::time::Instant::now();
    while b.state.cache.as_ref().unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the load was never retried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
    delete_redis_keys(&prefix).await;
}

/// How many cache entries Redis holds under `prefix`.
async fn entries_in_redis(c: &mut redis::aio::MultiplexedConnection, prefix: &str) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}cache:e:*"))
        .query_async(c)
        .await
        .unwrap();
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_cache_serves_locally_and_shares_again_when_it_is_back() {
    assert!(llm_gateway::cache::embed::default_model_dir().is_some());
    let prefix = format!("lgw-test-{}:", uuid::Uuid::new_v4());
    let proxy = Proxy::start(redis_addr()).await;
    let a = gateway()
        .yaml(|m| with_cache(m, ""))
        .shared_cache(&format!("redis://{}", proxy.addr), &prefix)
        .start()
        .await;
    let b = gateway()
        .yaml(|m| with_cache(m, ""))
        .shared_cache(redis_url(), &prefix)
        .start()
        .await;
    proxy.cut().await;
    let q = ask("What is the speed of light?");
    let (s, hd, _) = send(&a, &q, None, &[]).await;
    assert_eq!((s, cache_of(&hd)), (200, "miss"), "served normally");
    assert_eq!(
        cache_of(&send(&a, &q, None, &[]).await.1),
        "hit-exact",
        "its own entries still serve"
    );
    let metrics = {
        let start = std::time::Instant::now();
        loop {
            let m = a.get_text("/metrics").await;
            if m.contains("llm_gateway_cache_redis_errors_total 0")
                && start.elapsed() < Duration::from_secs(5)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            break m;
        }
    };
    assert!(
        !metrics.contains("llm_gateway_cache_redis_errors_total 0"),
        "the metric says redis failed"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.state.cache.as_ref().unwrap().is_empty(),
        "nothing shared meanwhile"
    );

    proxy.restore();
    // Back: new entries reach the other replica again.
    let q2 = ask("Who painted the Mona Lisa?");
    let start = std::time::Instant::now();
    loop {
        send(&a, &q2, None, &[("cache-control", "no-cache")]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !b.state.cache.as_ref().unwrap().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sharing never resumed"
        );
    }
    delete_redis_keys(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_embeddings_endpoint_can_replace_the_local_model() {
    let h = gateway()
        .yaml(|m| with_cache(m, "  embedding_provider: openai/text-embedding-3-small\n"))
        .start()
        .await;
    let mut q = ask("What is the capital of France?");
    q["temperature"] = json!(0.1);
    assert_eq!(cache_of(&send(&h, &q, None, &[]).await.1), "miss");
    // Another temperature in the same bucket: not the same request, the same question.
    q["temperature"] = json!(0.2);
    let (_, hd, _) = send(&h, &q, None, &[]).await;
    assert_eq!(cache_of(&hd), "hit-semantic");
    let embeds = h
        .received("openai")
        .await
        .into_iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/embeddings"))
        })
        .count();
    assert_eq!(embeds, 2, "both prompts embedded by the provider");
}

fn with_image(text: &str, url: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url}}]}]})
}

/// Security review, high 2: the image (any non-text part) is part of what must match; a
/// text-only question never gets the answer about someone's image, nor the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_other_parts_are_part_of_the_match() {
    let h = start().await;
    let q = "What does this document say about the payment terms?";
    let a = with_image(q, "data:image/png;base64,AAAA");
    assert_eq!(cache_of(&send(&h, &a, None, &[]).await.1), "miss");
    wait_entries(&h, 1).await;
    assert_eq!(cache_of(&send(&h, &a, None, &[]).await.1), "hit-exact");
    let other = with_image(q, "data:image/png;base64,BBBB");
    assert_eq!(
        cache_of(&send(&h, &other, None, &[]).await.1),
        "miss",
        "the same text about another image"
    );
    assert_eq!(
        cache_of(&send(&h, &ask(q), None, &[]).await.1),
        "miss",
        "the same text with no image"
    );
    // Rephrasings still hit when the image is the same.
    let rephrased = with_image(
        "What does this document say about payment terms?",
        "data:image/png;base64,AAAA",
    );
    assert_eq!(
        cache_of(&send(&h, &rephrased, None, &[]).await.1),
        "hit-semantic"
    );
}

/// Security review, medium 5/7: a prompt longer than the embedding reads is matched exactly
/// or not at all (never by its first few KB, never tokenized whole); answers above
/// `max_entry_bytes` are not cached; Redis holds at most `redis_max_bytes` of entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompts_large_answers_and_the_redis_byte_budget() {
    assert!(llm_gateway::cache::embed::default_model_dir().is_some());
    let prefix = format!("lgw-test-{}:", uuid::Uuid::new_v4());
    let h = gateway()
        .yaml(|m| with_cache(m, "  max_entry_bytes: 20000\n  redis_max_bytes: 6000\n"))
        .shared_cache(redis_url(), &prefix)
        .start()
        .await;
    let long = "lorem ipsum ".repeat(30_000);
    let started = std::time::Instant::now();
    let (status, hd, _) = send(&h, &ask(&format!("{long} first")), None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(cache_of(&hd), "miss");
    wait_entries(&h, 1).await;
    let (_, hd, _) = send(&h, &ask(&format!("{long} second")), None, &[]).await;
    assert_eq!(
        cache_of(&hd),
        "miss",
        "same first 360 KB, different question: no semantic hit"
    );
    eprintln!(
        "two 360 KB prompts through the cache in {:?}",
        started.elapsed()
    );

    // An answer of ~30 KB is over the 20 KB entry limit.
    let big = ask("Write it all out [[words=5000]]");
    send(&h, &big, None, &[]).await;
    assert_eq!(
        cache_of(&send(&h, &big, None, &[]).await.1),
        "miss",
        "not cached"
    );

    // Small entries until Redis's 6 KB budget is spent: the rest stay local.
    for i in 0..12 {
        send(
            &h,
            &ask(&format!("Question number {i} about rust lifetimes?")),
            None,
            &[],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shared = h.state.cache.as_ref().unwrap().shared().unwrap().clone();
    let bytes = shared.bytes().await.unwrap();
    assert!(bytes > 0 && bytes <= 6000, "{bytes}");
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}cache:e:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        keys.len() < 12,
        "the budget stopped some writes: {}",
        keys.len()
    );
    assert!(
        h.state.cache.as_ref().unwrap().len() >= 12,
        "all are cached locally"
    );
    delete_redis_keys(&prefix).await;
}

/// Security review, medium 5: one tenant flooding the embedding queue gets misses; another
/// tenant's prompt is still embedded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_queue_is_shared_fairly_between_tenants() {
    let dir = llm_gateway::cache::embed::default_model_dir().unwrap();
    let e = llm_gateway::cache::embed::Embedder::start(&dir).unwrap();
    let flood: Vec<_> = (0..llm_gateway::cache::embed::QUEUE_PER_TENANT * 2)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move { e.embed_as("a", &format!("prompt {i} ").repeat(40)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    let other = e.embed_as("b", "a question from someone else").await;
    assert!(other.is_ok(), "tenant b is not starved: {other:?}");
    let mut busy = 0;
    for f in flood {
        if matches!(
            f.await.unwrap(),
            Err(llm_gateway::cache::embed::EmbedError::Busy)
        ) {
            busy += 1;
        }
    }
    assert!(busy > 0, "tenant a's excess was turned away, not queued");
}

/// `cache.verifier_weights` replaces the built-in verifier (for another embedding model):
/// weights that refuse every pair turn semantic hits off while exact hits stay; a file that
/// is not a verifier for this build's features is refused at start, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_weights_file_replaces_the_built_in_one() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = llm_gateway::cache::verify::FEATURE_NAMES
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect();
    let mut weights = vec!["0".to_owned(); names.len()];
    weights[0] = "-50".to_owned();
    let refuse_all = dir.path().join("refuse-all.json");
    std::fs::write(
        &refuse_all,
        format!(
            r#"{{"features": [{}], "weights": [{}], "accept_at": 0.5, "non_english_min_cosine": 1.1, "trained_on": "refuses everything"}}"#,
            names.join(","),
            weights.join(",")
        ),
    )
    .unwrap();
    let extra = format!("  verifier_weights: {}\n", refuse_all.display());
    let h = gateway().yaml(move |m| with_cache(m, &extra)).start().await;
    let q = ask("What is the capital of France?");
    assert_eq!(cache_of(&send(&h, &q, None, &[]).await.1), "miss");
    assert_eq!(cache_of(&send(&h, &q, None, &[]).await.1), "hit-exact");
    let para = ask("What's the capital of France?");
    assert_eq!(cache_of(&send(&h, &para, None, &[]).await.1), "miss");

    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, r#"{"features": ["bias"], "weights": [1], "accept_at": 0.5, "non_english_min_cosine": 0.97, "trained_on": "x"}"#).unwrap();
    let yaml = format!(
        "cache: {{enabled: true, semantic: false, verifier_weights: {}}}\n",
        wrong.display()
    );
    let doc = llm_gateway::config::parse("test", &yaml).unwrap();
    let settings = llm_gateway::config::validate(&doc, "test", &|_: &str| None).unwrap();
    let err = llm_gateway::cache::Cache::from_settings(&settings.cache, None)
        .await
        .unwrap_err();
    assert!(err.contains("cache.verifier_weights"), "{err}");
    assert!(err.contains("do not match"), "{err}");
}

/// A gateway whose cache embeds through Together's embeddings endpoint at the mock, where
/// faults can slow or fail the embedding alone.
async fn start_with_together_embeddings() -> Harness {
    gateway()
        .yaml(|m| {
            with_cache(
                m,
                "  embedding_provider: together/togethercomputer/m2-bert-80M-8k-retrieval\n",
            )
        })
        .start()
        .await
}

/// A miss in a scope with nothing in it (usually every later turn of a conversation, a new
/// system prompt) cannot become a semantic hit, so the upstream call does not wait for the prompt's
/// embedding: it goes out while the embedding is still being computed, and the answer is
/// stored with it once both are done, so a rephrased request still hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_in_an_empty_scope_calls_the_upstream_while_the_prompt_is_embedded() {
    let h = start_with_together_embeddings().await;
    // The first embedding takes long enough for the watch below (two requests every 10 ms)
    // to see the chat arrive meanwhile, and short enough to leave a busy machine 600 ms of
    // the 1 s an answer waits for it: longer would risk the second, shorter the first.
    h.fault(json!({"vendor": "together", "latency_ms": 400, "times": 1}))
        .await;
    let in_flight = |v: Value| v["in_flight"].as_u64().unwrap();
    let load = || h.mock_load("together");
    // Whether the embedding was still running when the chat request reached the upstream.
    let watch = async {
        for _ in 0..100 {
            let chats = upstream_calls(&h).await;
            let embedding = in_flight(load().await) == 1;
            if chats == 1 {
                return embedding;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    let mut q = ask("What is the capital of France?");
    q["temperature"] = json!(0.1);
    let ((s, hd, body), chat_seen_while_embedding) = tokio::join!(send(&h, &q, None, &[]), watch);
    assert!(
        chat_seen_while_embedding,
        "the chat request reached the upstream only after the embedding was done"
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(cache_of(&hd), "miss");
    assert_eq!(
        in_flight(load().await),
        0,
        "the answer waited for the embedding"
    );

    // Stored with its embedding: the same question at another temperature of the same bucket
    // (another request, so no exact hit; the mock's embeddings match only the same text) is
    // embedded before deciding, as its scope now has an entry, and hits.
    q["temperature"] = json!(0.2);
    let (_, hd, again) = send(&h, &q, None, &[]).await;
    assert_eq!(cache_of(&hd), "hit-semantic");
    assert_eq!(content(&again), content(&body));
}

/// The embedding beside the upstream call failed: the answer is still stored, for exact hits
/// only (nothing to compare a rephrasing with), and the request does not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_embedding_beside_the_upstream_call_stores_the_answer_for_exact_hits() {
    let h = start_with_together_embeddings().await;
    h.fault(json!({"vendor": "together", "status": 500, "times": 1}))
        .await;
    let mut q = ask("What is the capital of France?");
    q["temperature"] = json!(0.1);
    let (s, hd, body) = send(&h, &q, None, &[]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(cache_of(&hd), "miss");
    assert_eq!(
        h.received("together").await.len(),
        1,
        "the prompt was sent to be embedded (and failed)"
    );
    let (_, hd, again) = send(&h, &q, None, &[]).await;
    assert_eq!(cache_of(&hd), "hit-exact");
    assert_eq!(content(&again), content(&body));
    // The same text in another request of the scope: embedded now, but the stored entry has
    // no embedding to match.
    q["temperature"] = json!(0.2);
    assert_eq!(cache_of(&send(&h, &q, None, &[]).await.1), "miss");
}
