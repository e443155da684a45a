//! Errors: OpenAI error JSON with the right status, for client mistakes and upstream failures.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn assert_openai_error(body: &Value) {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(e.as_object().unwrap().contains_key("code"), "{body}");
}

#[tokio::test]
async fn client_errors_are_400_404_413_naming_the_problem() {
    let h = start().await;
    let raw = |body: &'static str| {
        h.http
            .post(format!("{}/v1/chat/completions", h.gw))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = raw("{\"model\": ").await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_openai_error(&body);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));

    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            400,
            "model",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": []}),
            400,
            "messages",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]}),
            400,
            "`content` must be a string",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": 7}),
            400,
            "temperature",
        ),
        (
            json!({"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
            400,
            "messages",
        ),
        (
            json!({"model": "text-embedding-3-small", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "model",
        ),
        (
            json!({"model": "claude-3-5-haiku-latest", "n": 3, "messages": [{"role": "user", "content": "x"}]}),
            400,
            "n",
        ),
    ];
    for (req, status, param) in cases {
        let (got, _, body) = h.chat(&req).await;
        assert_eq!(got, status, "{req}: {body}");
        assert_openai_error(&body);
        let p = body["error"]["param"].as_str().unwrap_or_default();
        let m = body["error"]["message"].as_str().unwrap();
        assert!(p == param || m.contains(param), "{req}: {body}");
    }

    let (status, _, body) = h
        .chat(&json!({"model": "gpt-17-ultra", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("GET /v1/models"));

    let big = "x".repeat(1_100_000);
    let (status, _, body) = h
        .chat(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]}))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large");

    let r = h
        .http
        .get(format!("{}/v1/nothing-here", h.gw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_openai_error(&r.json().await.unwrap());
    let r = h
        .http
        .get(format!("{}/v1/chat/completions", h.gw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413_too() {
    let h = start().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..1100).map(|_| Ok(vec![b' '; 1000])).collect();
    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 413, "{body}");
}

#[tokio::test]
async fn upstream_errors_keep_their_status_and_message() {
    let h = start().await;
    let hello = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "x"}]});

    // The upstream's own 404 for a model it does not have.
    let (status, headers, body) = h.chat(&hello("openai/missing-model")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing-model"));
    assert_eq!(headers["x-llm-gateway-provider"], "openai");

    h.fault(json!({"vendor": "openai", "status": 429, "retry_after": "7", "times": 1}))
        .await;
    let (status, headers, body) = h.chat(&hello("gpt-4o-mini")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    h.fault(json!({"vendor": "anthropic", "status": 529, "times": 1}))
        .await;
    let (status, _, body) = h.chat(&hello("claude-3-5-haiku-latest")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "overloaded_error");

    // Anthropic's own validation error, passed on.
    let (status, _, body) = h
        .chat(
            &json!({"model": "claude-3-5-haiku-latest", "temperature": 1.5,
        "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("temperature"));

    h.fault(json!({"vendor": "groq", "status": 500, "times": 1}))
        .await;
    let (status, _, body) = h.chat(&hello("llama-3.1-8b-instant")).await;
    assert_eq!(status, 500, "{body}");
    assert_openai_error(&body);

    h.fault(json!({"vendor": "together", "malformed": true, "times": 1}))
        .await;
    let (status, _, body) = h
        .chat(&hello("together/meta-llama/Llama-3.3-70B-Instruct-Turbo"))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid JSON"));

    // The 429 above said Retry-After: 7, so OpenAI's breaker is open for 7 s: an explicit
    // request to it is refused at once, saying when it will be retried.
    let (status, headers, body) = h.chat(&hello("gpt-4o-mini")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "circuit_open");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=7).contains(&retry), "{retry}");
}

#[tokio::test]
async fn a_provider_that_hangs_is_a_504_after_its_timeout() {
    let h = start().await;
    // The openai provider has timeout_secs: 3 in the test config.
    h.fault(json!({"vendor": "openai", "hang": true, "times": 1}))
        .await;
    let (status, headers, body) = h
        .chat(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(headers["x-llm-gateway-attempts"], "1");
}

#[tokio::test]
async fn unreachable_provider_is_502() {
    let h = gateway()
        .provider_yaml(
            "  - name: dead\n    protocol: openai\n    base_url: http://127.0.0.1:9/v1\n",
        )
        .start()
        .await;
    let (status, headers, body) = h
        .chat(&json!({"model": "dead/x", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    assert_eq!(headers["x-llm-gateway-provider"], "dead");
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event_and_no_done() {
    let h = start().await;
    for vendor in ["openai", "anthropic"] {
        h.fault(json!({"vendor": vendor, "cut_after": 4, "times": 1}))
            .await;
        let model = if vendor == "openai" {
            "gpt-4o-mini"
        } else {
            "claude-3-5-haiku-latest"
        };
        let (status, _, body) = h
            .chat_stream(&json!({"model": model, "stream": true,
            "messages": [{"role": "user", "content": "tell me a long story"}]}))
            .await;
        assert_eq!(status, 200);
        let chunks = sse_data(&body);
        assert_ne!(chunks.last().unwrap(), "[DONE]", "{vendor}: {body}");
        let err = chunks.last().unwrap();
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("before it was complete"),
            "{vendor}: {body}"
        );
    }
    h.fault(json!({"vendor": "openai", "malformed": true, "times": 1}))
        .await;
    // Broken before any content: nothing was sent yet, so it is a plain 502, not a stream.
    let (status, headers, body) = h
        .chat_stream(&json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(body.contains("invalid stream chunk"), "{body}");
}

#[tokio::test]
async fn an_upstream_error_before_a_stream_starts_is_a_json_error() {
    let h = start().await;
    h.fault(json!({"vendor": "anthropic", "status": 429, "retry_after": "3", "times": 1}))
        .await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-3-5-haiku-latest", "stream": true,
        "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn a_rate_limit_stops_its_model_and_a_spent_quota_its_provider() {
    let hello = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "x"}]});
    let h = gateway()
        .routing("  virtual_models:\n  - {name: pair, strategy: quality, candidates: {models: [gpt-4o, gpt-4o-mini]}}\n")
        .start()
        .await;
    let state = |m: String, model: &str| {
        m.lines()
            .find(|l| {
                l.starts_with(&format!(
                    r#"llm_gateway_breaker_state{{provider="openai",model="{model}"}}"#
                ))
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
            .unwrap_or_else(|| "0".into())
    };
    // Within one request: gpt-4o's own limit leaves the provider's other model to answer.
    h.fault(json!({"vendor": "openai", "model": "gpt-4o", "status": 429, "retry_after": "30"}))
        .await;
    let (status, headers, body) = h
        .chat(&json!({"model": "pair", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-llm-gateway-provider"], "openai");
    assert_eq!(headers["x-llm-gateway-attempts"], "2");
    assert_eq!(body["model"], "gpt-4o-mini", "{body}");
    // Across requests: gpt-4o's breaker is open for the 30 s asked, the provider's is not.
    let m = h.get_text("/metrics").await;
    assert_eq!(state(m.clone(), "gpt-4o"), "2", "open");
    assert_eq!(state(m, "*"), "0", "closed");
    let (status, _, body) = h.chat(&hello("openai/gpt-4o")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "circuit_open");
    let (status, _, body) = h.chat(&hello("openai/gpt-4o-mini")).await;
    assert_eq!(status, 200, "{body}");
    // A spent account (OpenAI's insufficient_quota) stops every model of the provider, at
    // once: it is neither a model's limit nor a capacity signal.
    h.fault(json!({"vendor": "openai", "quota_exhausted": true, "times": 1}))
        .await;
    let (status, _, body) = h.chat(&hello("openai/gpt-4o-mini")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    assert_eq!(state(h.get_text("/metrics").await, "*"), "2", "open");
    let (status, _, body) = h.chat(&hello("openai/gpt-4o-mini")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "circuit_open");
}

/// When a model's rate limit resets (its Retry-After has passed), every request goes again
/// at once: concurrent callers are not refused 503 while the breaker probes one a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_rate_limits_reset_all_traffic_resumes_at_once() {
    let h = start().await;
    let hello = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]});
    h.fault(json!({"vendor": "openai", "model": "gpt-4o-mini", "status": 429, "retry_after": "1", "times": 1}))
        .await;
    let (status, _, body) = h.chat(&hello).await;
    assert_eq!(status, 429, "{body}");
    // Past the reset (asked for 1 s; waited until the breaker reads closed).
    let start = std::time::Instant::now();
    while !h
        .get_text("/metrics")
        .await
        .contains(r#"llm_gateway_breaker_state{provider="openai",model="gpt-4o-mini"} 0"#)
    {
        assert!(start.elapsed() < Duration::from_secs(10), "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answers = futures::future::join_all((0..4).map(|_| h.chat(&hello))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 200]);
}

/// The candidates `/v1/route` ranks for `ask`, `provider/model`, best first.
async fn ranking(h: &Harness, ask: &Value) -> Vec<String> {
    let (_, d) = h.route(ask).await;
    d["decision"]["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["model"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn rate_limited_models_never_spend_the_attempts_a_healthy_provider_needs() {
    let h = gateway()
        .routing("  virtual_models:\n  - {name: mix, strategy: quality, candidates: {models: [gpt-5, gpt-4.1, gpt-4o, gpt-4o-mini, claude-3-5-haiku-latest]}}\n")
        .start()
        .await;
    let ask = json!({"model": "mix", "messages": [{"role": "user", "content": "hi"}]});
    // The precondition: at least three OpenAI models rank before Anthropic's one, as many
    // as the attempts a request has.
    let ranking = ranking(&h, &ask).await;
    let anthropic = ranking.iter().position(|m| m.starts_with("anthropic/"));
    assert!(anthropic.is_some_and(|i| i >= 3), "{ranking:?}");
    h.fault(json!({"vendor": "openai", "status": 429, "retry_after": "30"}))
        .await;
    for stream in [false, true] {
        let mut ask = ask.clone();
        ask["stream"] = json!(stream);
        let (status, headers, body) = h.chat_stream(&ask).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-llm-gateway-provider"], "anthropic");
        // One 429 (the top model still closed), then Anthropic: OpenAI's other models were
        // left for last, not tried before it.
        assert_eq!(headers["x-llm-gateway-attempts"], "2");
    }
    assert_eq!(h.received("openai").await.len(), 2);
}

#[tokio::test]
async fn a_hedge_that_met_a_rate_limit_is_not_asked_again_in_the_same_request() {
    let h = gateway()
        .routing("  failover: {max_attempts: 5}\n  virtual_models:\n  - {name: trio, strategy: quality, candidates: {models: [gpt-4o, claude-3-5-haiku-latest, llama-3.1-8b-instant]}, hedge: {after_secs: 0.2}}\n")
        .start()
        .await;
    let ask = json!({"model": "trio", "messages": [{"role": "user", "content": "hi"}]});
    let ranking = ranking(&h, &ask).await;
    assert!(
        ranking[0].starts_with("openai/") && ranking[1].starts_with("anthropic/"),
        "{ranking:?}"
    );
    // OpenAI fails slowly (so the hedge to Anthropic is sent), Anthropic is rate-limited,
    // Groq fails: every candidate fails, and Anthropic is asked once, not again after Groq.
    h.fault(json!({"vendor": "openai", "status": 500, "latency_ms": 600}))
        .await;
    h.fault(json!({"vendor": "anthropic", "status": 429})).await;
    h.fault(json!({"vendor": "groq", "status": 500})).await;
    let (status, _, body) = h.chat(&ask).await;
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{body}"
    );
    assert_eq!(h.received("anthropic").await.len(), 1);
    assert_eq!(h.received("groq").await.len(), 1);
}
