//! Routing end to end: all five providers configured against the mocks.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The models a dry run excluded for `reason`, each checked to name `feature`.
fn excluded_for<'a>(decision: &'a Value, reason: &str, feature: &str) -> Vec<&'a str> {
    decision["decision"]["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["reason"] == reason)
        .map(|x| {
            assert_eq!(x["feature"], feature, "{x}");
            x["model"].as_str().unwrap()
        })
        .collect()
}

fn ranking(decision: &Value) -> &Vec<Value> {
    decision["decision"]["ranking"].as_array().unwrap()
}

#[tokio::test]
async fn cheap_picks_the_cheapest() {
    let routing = "  virtual_models:\n  - {name: cheap-remote, strategy: cost, candidates: {providers: [openai, anthropic, groq, together]}}\n";
    let h = gateway().provider_yaml("").routing(routing).start().await;
    for (model, want) in [
        ("cheap", "ollama/"),
        ("cheap-remote", "groq/llama-3.1-8b-instant"),
    ] {
        let (status, d) = h.route(&ask(model, "Summarise the plot of Hamlet.")).await;
        assert_eq!(status, 200, "{d}");
        let r = ranking(&d);
        let min = r
            .iter()
            .map(|c| c["price"].as_f64().unwrap())
            .fold(f64::MAX, f64::min);
        assert_eq!(
            r[0]["price"].as_f64().unwrap(),
            min,
            "{model}: first is not the cheapest: {d}"
        );
        assert!(
            d["chosen"].as_str().unwrap().starts_with(want),
            "{model}: {}",
            d["chosen"]
        );
    }
    let (status, headers, _) = h.chat(&ask("cheap-remote", "hi")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-llm-gateway-model"], "llama-3.1-8b-instant");
}

#[tokio::test]
async fn quality_picks_the_strongest() {
    let h = start().await;
    for prompt in ["Hello!", "Prove that the square root of 2 is irrational."] {
        let (_, d) = h.route(&ask("quality", prompt)).await;
        let r = ranking(&d);
        let best = r
            .iter()
            .map(|c| c["tier_quality"].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(r[0]["tier_quality"].as_f64().unwrap(), best, "{d}");
        assert_eq!(d["chosen"], "anthropic/claude-opus-4-5", "{prompt}");
    }
}

#[tokio::test]
async fn auto_sends_simple_prompts_local_and_hard_reasoning_to_a_strong_remote_model() {
    let h = start().await;
    let (status, headers, _) = h.chat(&ask("auto", "Hi! How are you today?")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-llm-gateway-provider"], "ollama");
    let route = headers["x-llm-gateway-route"].to_str().unwrap();
    assert!(
        route.contains("tier=simple") && route.contains("strategy=balanced"),
        "{route}"
    );

    let hard = "Prove that there are infinitely many primes, then show that the sum of their reciprocals diverges. Reason step by step.";
    let (status, headers, _) = h.chat(&ask("auto", hard)).await;
    assert_eq!(status, 200);
    assert_ne!(headers["x-llm-gateway-provider"], "ollama");
    let route = headers["x-llm-gateway-route"].to_str().unwrap();
    assert!(route.contains("tier=reasoning"), "{route}");
    let (_, d) = h.route(&ask("auto", hard)).await;
    let chosen = &ranking(&d)[0];
    assert!(!chosen["local"].as_bool().unwrap());
    assert!(
        chosen["tier_quality"].as_f64().unwrap() >= 0.9,
        "a strong model: {chosen}"
    );
}

async fn served_by(h: &Harness) -> String {
    let (status, headers, body) = h.chat(&ask("fast", "ping")).await;
    assert_eq!(status, 200, "{body}");
    headers["x-llm-gateway-provider"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn fast_moves_away_from_a_slow_provider_and_comes_back_when_it_recovers() {
    // A 1 s decay constant keeps the test short; the default is 30 s.
    let h = gateway()
        .provider_yaml("")
        .routing("  latency_decay_secs: 1\n")
        .start()
        .await;
    h.fault(json!({"vendor": "groq", "latency_ms": 100})).await;
    for _ in 0..3 {
        assert_eq!(
            served_by(&h).await,
            "ollama",
            "the local model is the fastest"
        );
    }
    h.fault(json!({"vendor": "ollama", "latency_ms": 2000}))
        .await;
    assert_eq!(
        served_by(&h).await,
        "ollama",
        "the slowdown is not known yet"
    );
    assert_eq!(served_by(&h).await, "groq", "measured slow: moved away");
    assert_eq!(served_by(&h).await, "groq");
    h.clear_faults().await;
    h.fault(json!({"vendor": "groq", "latency_ms": 100})).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        served_by(&h).await,
        "ollama",
        "the slowdown decayed: back to the local model"
    );
    assert_eq!(served_by(&h).await, "ollama", "and it is fast again");
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}])
}

#[tokio::test]
async fn requests_with_tools_never_go_to_models_without_tool_support() {
    let h = start().await;
    for model in ["auto", "cheap", "quality", "fast"] {
        let mut body = ask(
            model,
            "Call f for me, then write a long analysis of the result.",
        );
        body["tools"] = tools();
        let (status, d) = h.route(&body).await;
        assert_eq!(status, 200, "{d}");
        let excluded: Vec<&Value> = d["decision"]["excluded"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["reason"] == "no_tools")
            .collect();
        assert!(!excluded.is_empty(), "some catalog models lack tools: {d}");
        for c in ranking(&d) {
            let m = c["model"].as_str().unwrap();
            assert!(
                excluded.iter().all(|x| x["model"] != m),
                "{m} is both ranked and excluded"
            );
            let info: Value = h.get_json(&format!("/v1/models/{m}")).await;
            assert!(
                info["llm_gateway"]["capabilities"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("tools")),
                "{m} ranked without tools"
            );
        }
        let (status, _, resp) = h.chat(&body).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["choices"][0]["finish_reason"], "tool_calls");
    }
}

/// `n > 1`, logprobs, audio and file parts have no equivalent in Anthropic's Messages API
/// (the translation refuses the first and third, and would drop logprobs): a virtual model
/// never picks an Anthropic model for them, and the dry run says why.
#[tokio::test]
async fn requests_only_the_openai_protocol_carries_never_go_to_anthropic() {
    let h = start().await;
    let file = json!([{"type": "text", "text": "Summarise this contract carefully, clause by clause."},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}]);
    for (field, value, feature) in [
        ("n", json!(3), "n > 1"),
        ("logprobs", json!(true), "logprobs"),
        (
            "messages",
            json!([{"role": "user", "content": file}]),
            "audio or file parts",
        ),
        (
            "functions",
            json!([{"name": "f", "parameters": {"type": "object"}}]),
            "the deprecated functions",
        ),
        ("modalities", json!(["text", "audio"]), "audio output"),
        (
            "tools",
            json!([{"type": "custom", "custom": {"name": "grammar"}}]),
            "custom tools",
        ),
    ] {
        for model in ["quality", "auto"] {
            let mut body = ask(
                model,
                "Prove that there are infinitely many primes, rigorously.",
            );
            body[field] = value.clone();
            let (status, d) = h.route(&body).await;
            assert_eq!(status, 200, "{d}");
            let excluded = excluded_for(&d, "openai_only", feature);
            assert!(
                !excluded.is_empty() && excluded.iter().all(|m| m.starts_with("anthropic/")),
                "{field} on {model}: {d}"
            );
            assert!(
                ranking(&d)
                    .iter()
                    .all(|c| !c["model"].as_str().unwrap().starts_with("anthropic/")),
                "{field} on {model}: {d}"
            );
            if field == "n" {
                let (status, headers, resp) = h.chat(&body).await;
                assert_eq!(status, 200, "{resp}");
                assert_ne!(headers["x-llm-gateway-provider"], "anthropic");
            }
        }
    }
}

/// Some OpenAI-protocol APIs refuse or ignore what OpenAI's takes: Groq answers `n > 1` and
/// `logprobs` with a 400, Ollama ignores `n`, OpenAI's reasoning models take no `logprobs`.
/// A virtual model passes them over for such a request, and the dry run says why.
#[tokio::test]
async fn requests_a_providers_api_refuses_never_go_to_it() {
    let h = gateway()
        .routing("  virtual_models:\n  - {name: every, strategy: quality, candidates: {providers: [openai, groq, together, ollama]}}\n")
        .start()
        .await;
    for (field, value, feature, lacking) in [
        ("n", json!(2), "n > 1", &["groq/", "ollama/"][..]),
        (
            "logprobs",
            json!(true),
            "logprobs",
            &["groq/", "openai/o3"][..],
        ),
        (
            "logit_bias",
            json!({"1734": -100}),
            "logit_bias",
            &["groq/"][..],
        ),
        ("name", json!("alice"), "messages[].name", &["groq/"][..]),
    ] {
        let mut body = ask("every", "Name a colour.");
        if field == "name" {
            body["messages"][0][field] = value;
        } else {
            body[field] = value;
        }
        let (status, d) = h.route(&body).await;
        assert_eq!(status, 200, "{d}");
        let excluded = excluded_for(&d, "unsupported_by_provider", feature);
        for prefix in lacking {
            assert!(
                excluded.iter().any(|m| m.starts_with(prefix)),
                "{field}: {prefix} not excluded: {excluded:?}"
            );
        }
        let ranked: Vec<&str> = ranking(&d)
            .iter()
            .map(|c| c["model"].as_str().unwrap())
            .collect();
        assert!(ranked.iter().all(|m| !excluded.contains(m)), "{ranked:?}");
        assert!(
            ranked.iter().any(|m| m.starts_with("together/")),
            "Together takes both: {ranked:?}"
        );
        if field == "logprobs" {
            assert!(ranked.contains(&"openai/gpt-4o-mini"), "{ranked:?}");
        }
    }
    // Served for real: the virtual model answers a named participant; Groq itself, asked
    // by name, refuses as it does (the mock speaks its 400).
    let mut body = ask("every", "Name a colour.");
    body["messages"][0]["name"] = json!("alice");
    let (status, _, v) = h.chat(&body).await;
    assert_eq!(status, 200, "{v}");
    body["model"] = json!("groq/llama-3.1-8b-instant");
    let (status, _, v) = h.chat(&body).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("'name'"),
        "{v}"
    );
}

/// A virtual model never sends a request for more output tokens than a candidate writes:
/// it passes that model over, and the dry run says why.
#[tokio::test]
async fn requests_for_more_output_than_a_model_writes_never_go_to_it() {
    let h = start().await;
    let mut body = ask("auto", "Write a very long essay about rivers.");
    body["max_tokens"] = json!(40000);
    let (status, d) = h.route(&body).await;
    assert_eq!(status, 200, "{d}");
    let limited: Vec<&Value> = d["decision"]["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["reason"] == "output_limit")
        .collect();
    assert!(
        limited
            .iter()
            .any(|x| x["model"] == "openai/gpt-4o-mini" && x["max"] == 16384),
        "{d}"
    );
    for c in ranking(&d) {
        let m = c["model"].as_str().unwrap();
        let info: Value = h.get_json(&format!("/v1/models/{m}")).await;
        if let Some(max) = info["llm_gateway"]["max_output_tokens"].as_u64() {
            assert!(max >= 40000, "{m} ranked with max output {max}");
        }
    }
    let (status, _, resp) = h.chat(&body).await;
    assert_eq!(status, 200, "{resp}");
}

#[tokio::test]
async fn a_prompt_longer_than_a_context_window_never_goes_to_that_model() {
    let h = start().await;
    // About 40k tokens: more than the 32k windows of some catalog models.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(4000);
    let (status, d) = h.route(&ask("cheap", &long)).await;
    assert_eq!(status, 200, "{d}");
    assert!(d["decision"]["prompt_tokens_counted"].as_bool().unwrap());
    let needed = d["decision"]["prompt_tokens"].as_u64().unwrap();
    assert!(needed > 32768, "{needed}");
    let excluded = d["decision"]["excluded"].as_array().unwrap();
    assert!(
        excluded
            .iter()
            .any(|x| x["model"] == "ollama/qwen2.5-coder:7b" && x["reason"] == "context"),
        "{d}"
    );
    for c in ranking(&d) {
        let m = c["model"].as_str().unwrap();
        let info: Value = h.get_json(&format!("/v1/models/{m}")).await;
        assert!(
            info["llm_gateway"]["context_window"].as_u64().unwrap() as u64 > needed,
            "{m}"
        );
    }
    // The local llama3.2 (128k) still fits, so cheap still serves locally.
    let (status, headers, _) = h.chat(&ask("cheap", &long)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-llm-gateway-model"], "llama3.2:latest");
}

#[tokio::test]
async fn no_fitting_candidate_is_a_400_that_says_why() {
    let h = start().await;
    let mut body = ask("auto", "hi");
    body["max_tokens"] = json!(5_000_000);
    let (status, _, resp) = h.chat(&body).await;
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["error"]["code"], "no_suitable_model");
    let msg = resp["error"]["message"].as_str().unwrap();
    assert!(msg.contains("context windows smaller than"), "{msg}");

    let routing = "  virtual_models:\n  - {name: groq-only, strategy: balanced, candidates: {providers: [groq]}}\n";
    let h = gateway().provider_yaml("").routing(routing).start().await;
    let body = json!({"model": "groq-only", "tools": tools(), "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]});
    let (status, d) = h.route(&body).await;
    assert_eq!(status, 200, "llama-4-scout has tools and vision: {d}");
    assert_eq!(
        d["chosen"],
        "groq/meta-llama/llama-4-scout-17b-16e-instruct"
    );
    let mut body = body;
    body["response_format"] = json!({"type": "json_object"});
    body["max_tokens"] = json!(200_000);
    let (status, _, resp) = h.chat(&body).await;
    assert_eq!(status, 400);
    let msg = resp["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("lack image input") && msg.contains("context windows"),
        "{msg}"
    );
}

#[tokio::test]
async fn explicit_names_bypass_scoring_and_dry_run_calls_no_provider() {
    let h = start().await;
    let (_, headers, _) = h.chat(&ask("gpt-4o-mini", "hi")).await;
    assert!(!headers.contains_key("x-llm-gateway-route"));
    let (status, d) = h.route(&ask("gpt-4o-mini", "hi")).await;
    assert_eq!(status, 200);
    assert_eq!(d["virtual"], false);
    assert_eq!(d["chosen"], "openai/gpt-4o-mini");

    let before = h.received("openai").await.len() + h.received("ollama").await.len();
    let (status, d) = h
        .route(&ask("auto", "Explain the CAP theorem with an example."))
        .await;
    assert_eq!(status, 200);
    let after = h.received("openai").await.len() + h.received("ollama").await.len();
    assert_eq!(before, after, "dry run must not call a provider");
    let dec = &d["decision"];
    assert_eq!(dec["virtual_model"], "auto");
    assert!(dec["classification"]["features"]["words"].as_u64().unwrap() > 0);
    let w = &dec["weights"];
    let sum = w["cost"].as_f64().unwrap()
        + w["quality"].as_f64().unwrap()
        + w["latency"].as_f64().unwrap();
    assert!((sum - 1.0).abs() < 1e-9);
    for c in ranking(&d) {
        let parts = ["cost", "quality", "latency"].map(|p| c[p].as_f64().unwrap());
        let expect = w["cost"].as_f64().unwrap() * parts[0]
            + w["quality"].as_f64().unwrap() * parts[1]
            + w["latency"].as_f64().unwrap() * parts[2];
        assert!((c["score"].as_f64().unwrap() - expect).abs() < 1e-9, "{c}");
    }
    assert!(d["route_header"].as_str().unwrap().contains("runner_up="));
}

#[tokio::test]
async fn routing_metrics_are_exported() {
    let h = start().await;
    h.chat(&ask("auto", "hi")).await;
    let text = h.get_text("/metrics").await;
    assert!(text.contains(r#"llm_gateway_routing_decisions_total{virtual_model="auto",tier="simple",provider="ollama""#), "{text}");
    assert!(
        text.contains("llm_gateway_classifier_duration_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("llm_gateway_routing_duration_seconds_bucket"));
}
