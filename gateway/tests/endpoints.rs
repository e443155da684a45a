//! Embeddings, models, health and metrics.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn embeddings_work_for_openai_together_and_ollama() {
    let h = start().await;
    for (model, provider) in [
        ("text-embedding-3-small", "openai"),
        ("BAAI/bge-large-en-v1.5", "together"),
        ("nomic-embed-text", "ollama"),
    ] {
        let r = h
            .post(
                "/v1/embeddings",
                &json!({"model": model, "input": ["a", "b"]}),
            )
            .await;
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(r.headers()["x-llm-gateway-provider"], provider);
        assert!(r.headers().contains_key("x-llm-gateway-cost-usd"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["data"].as_array().unwrap().len(), 2);
        assert_eq!(body["data"][1]["index"], 1);
        assert!(body["data"][0]["embedding"].as_array().unwrap().len() > 1);
        assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    }
    let r = h
        .post(
            "/v1/embeddings",
            &json!({"model": "text-embedding-3-small", "input": "x", "encoding_format": "base64"}),
        )
        .await;
    let body: Value = r.json().await.unwrap();
    assert!(
        body["data"][0]["embedding"].is_string(),
        "base64 passes through"
    );

    for (req, param) in [
        (json!({"model": "gpt-4o-mini", "input": "x"}), "model"),
        (
            json!({"model": "anthropic/some-embedder", "input": "x"}),
            "model",
        ),
        (
            json!({"model": "text-embedding-3-small", "input": ""}),
            "input",
        ),
        (json!({"model": "text-embedding-3-small"}), "input"),
    ] {
        let r = h.post("/v1/embeddings", &req).await;
        assert_eq!(r.status(), 400, "{req}");
        let body: Value = r.json().await.unwrap();
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            body["error"]["param"] == param || msg.contains(param),
            "{req}: {body}"
        );
    }
}

#[tokio::test]
async fn models_lists_enabled_and_virtual_models() {
    let h = start().await;
    let body: Value = h.get_json("/v1/models").await;
    assert_eq!(body["object"], "list");
    // `created` is a real time (when the serving configuration was applied), not 1970.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for m in body["data"].as_array().unwrap() {
        let created = m["created"].as_i64().unwrap();
        assert!((now - 3600..=now + 60).contains(&created), "{m}");
    }
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for want in [
        "gpt-4o-mini",
        "claude-3-5-haiku-latest",
        "llama-3.1-8b-instant",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "llama3.2:latest",
        "auto",
        "fast",
        "cheap",
        "quality",
    ] {
        assert!(ids.contains(&want), "{want} missing from {ids:?}");
    }
    // Ollama lists what it has pulled, not the whole catalog.
    assert!(!ids.contains(&"mistral"));
    let mini = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "gpt-4o-mini")
        .unwrap();
    assert_eq!(mini["owned_by"], "openai");
    assert_eq!(mini["llm_gateway"]["input_usd_per_mtok"], 0.15);
    assert_eq!(mini["llm_gateway"]["context_window"], 128000);

    let one: Value = h.get_json("/v1/models/groq/llama-3.1-8b-instant").await;
    assert_eq!(one["owned_by"], "groq");
    let r = h
        .http
        .get(format!("{}/v1/models/nope", h.gw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let h = start().await;
    let get = |p: &str| h.http.get(format!("{}{p}", h.gw)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let ready: Value = get("/readyz").await.unwrap().json().await.unwrap();
    assert_eq!(ready["providers"], 5);
    h.chat(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    h.chat(&json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    h.chat(&json!({"model": "openai/unlisted-thing-1", "messages": [{"role": "user", "content": "x"}]})).await;
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"llm_gateway_requests_total{endpoint="chat",provider="openai",model="gpt-4o-mini",status="200"} 1"#), "{text}");
    assert!(text.contains(r#"llm_gateway_requests_total{endpoint="chat",provider="none",model="none",status="404"} 1"#), "{text}");
    assert!(
        text.contains(r#"model="unlisted""#),
        "client-chosen names must not become labels: {text}"
    );
    assert!(!text.contains("unlisted-thing-1"));
    assert!(text.contains("llm_gateway_request_duration_seconds_bucket"));
    assert!(text.contains(
        r#"llm_gateway_tokens_total{provider="openai",model="gpt-4o-mini",kind="prompt"}"#
    ));
    assert!(text.contains("llm_gateway_cost_usd_total"));
    assert!(!text.contains("key-for-"), "no secrets in metrics");
}
