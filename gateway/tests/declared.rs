//! What the operator compiles into a configuration, as the gateway enforces it: budgets
//! declared in the `budgets` section (namespace scopes included), virtual models defined for
//! some tenants only, and providers whose keys the operator has not pushed yet.

mod common;

use std::sync::Arc;

use common::*;
use llm_gateway::clock::{Clock, ManualClock, SystemClock};
use serde_json::{json, Value};

fn doc(mock: &str, extra: &str) -> String {
    format!(
        r#"
routing:
  virtual_models:
    - {{name: pick, strategy: quality, candidates: {{models: [gpt-4o-mini]}}}}
    - {{name: pick, strategy: quality, candidates: {{models: [llama-3.1-8b-instant]}}, clients: [team-a]}}
providers:
  - name: openai
    base_url: {mock}/openai/v1
    api_key: {{env: OPENAI_API_KEY}}
  - name: groq
    base_url: {mock}/groq/openai/v1
    api_key: {{env: GROQ_API_KEY}}
{extra}"#
    )
}

async fn start(extra: &'static str) -> Harness {
    gateway()
        .yaml(move |m| doc(m, extra))
        .budgets(BudgetSetup {
            redis_url: None,
            database_url: None,
            redis_prefix: None,
            clock: Arc::new(ManualClock::at(SystemClock.now_ms())),
        })
        .start()
        .await
}

async fn chat(h: &Harness, key: &str, model: &str) -> (u16, String, Value) {
    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .bearer_auth(key)
        .json(&json!({"model": model, "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi [[words=3]]"}]}))
        .send()
        .await
        .unwrap();
    let provider = r
        .headers()
        .get("x-llm-gateway-provider")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), provider, r.json().await.unwrap())
}

#[tokio::test]
async fn a_virtual_model_for_a_namespace_wins_for_its_tenants_only() {
    let h = start("").await;
    let store = h.store.as_ref().unwrap();
    let (_, a) = store.create_key("team-a/app", "").await.unwrap();
    let (_, a2) = store.create_key("team-a", "").await.unwrap();
    let (_, b) = store.create_key("team-ab/app", "").await.unwrap();
    assert_eq!(chat(&h, &a, "pick").await.1, "groq");
    assert_eq!(chat(&h, &a2, "pick").await.1, "groq");
    // `team-ab` is not inside namespace `team-a`.
    assert_eq!(chat(&h, &b, "pick").await.1, "openai");
}

#[tokio::test]
async fn declared_budgets_bind_namespaces_and_cannot_be_edited_through_the_api() {
    let h = start(
        "budgets:\n  - {scope: namespace, subject: team-a, limit_tokens: 60, source: BudgetPolicy team-a/tokens}\n",
    )
    .await;
    let store = h.store.as_ref().unwrap();
    let (_, a) = store.create_key("team-a/app", "").await.unwrap();
    let (_, other) = store.create_key("team-b/app", "").await.unwrap();
    // Each request reserves ~10 completion tokens plus its prompt: a few fit in 60.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(chat(&h, &a, "gpt-4o-mini").await.0);
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );
    // Another namespace is not covered.
    assert_eq!(chat(&h, &other, "gpt-4o-mini").await.0, 200);

    let list: Value = h
        .admin(reqwest::Method::GET, "/admin/budgets")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b = &list["budgets"][0];
    assert_eq!(
        (
            b["scope"].as_str(),
            b["subject"].as_str(),
            b["declared_by"].as_str()
        ),
        (
            Some("namespace"),
            Some("team-a"),
            Some("BudgetPolicy team-a/tokens")
        ),
        "{list}"
    );
    assert!(b["used_tokens"].as_i64().unwrap() > 0, "{list}");
    for r in [
        h.admin(reqwest::Method::PUT, "/admin/budgets")
            .json(&json!({"scope": "namespace", "subject": "team-a", "limit_tokens": 1_000_000})),
        h.admin(reqwest::Method::DELETE, "/admin/budgets/namespace/team-a"),
    ] {
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 403);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "declared_budget", "{e}");
    }
}

#[tokio::test]
async fn an_invalid_declared_budget_names_its_field() {
    let bad = "budgets:\n  - {scope: namespace, subject: team-a, limit_usd: -1}\n";
    let cfg = llm_gateway::config::parse("t.yaml", &doc("http://127.0.0.1:9", bad)).unwrap();
    let e = llm_gateway::config::validate(&cfg, "t.yaml", &|k: &str| {
        Some(format!("value-long-enough-for-{k}"))
    })
    .unwrap_err();
    assert_eq!(e.path, "budgets[0].limit_usd", "{e}");
    let twice = "budgets:\n  - {scope: global, limit_usd: 1}\n  - {scope: global, limit_usd: 2}\n";
    let cfg = llm_gateway::config::parse("t.yaml", &doc("http://127.0.0.1:9", twice)).unwrap();
    let e = llm_gateway::config::validate(&cfg, "t.yaml", &|k: &str| {
        Some(format!("value-long-enough-for-{k}"))
    })
    .unwrap_err();
    assert_eq!(e.path, "budgets[1].scope", "{e}");
}

/// OpenAI with `openai_key` (a secret source) and Groq, and the virtual model `pair` of
/// one model of each, plus `more_routes`.
fn openai_and_groq(m: &str, openai_key: &str, more_routes: &str) -> String {
    format!(
        r#"
routing:
  virtual_models:
    - {{name: pair, strategy: quality, candidates: {{models: [gpt-4o-mini, llama-3.1-8b-instant]}}}}
{more_routes}providers:
  - name: openai
    base_url: {m}/openai/v1
    api_key: {openai_key}
  - name: groq
    base_url: {m}/groq/openai/v1
    api_key: {{env: GROQ_API_KEY}}
"#
    )
}

#[tokio::test]
async fn a_provider_waiting_for_its_pushed_key_is_skipped_not_failed() {
    let yaml = |m: &str| openai_and_groq(m, "{pushed: llm-gateway/openai/api-key}", "");
    let h = gateway().yaml(yaml).start().await;
    let (status, _, body) = h
        .chat(&json!({"model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}]}))
        .await
        .into_triple();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "credentials_pending", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("llm-gateway/openai/api-key"));
    let (status, headers, _) = h
        .chat(&json!({"model": "pair", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-llm-gateway-provider"], "groq");
    // Not the provider's fault: its breaker stays closed.
    let m = h.get_text("/metrics").await;
    assert!(
        m.contains(r#"llm_gateway_breaker_state{provider="openai",model="*"} 0"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_provider_whose_key_is_withheld_refuses_with_the_reason_and_is_routed_around() {
    let why = "namespace team-a is not given the cluster's keys";
    let yaml = move |m: &str| {
        openai_and_groq(
            m,
            &format!("{{withheld: \"{why}\"}}"),
            "    - {name: only, strategy: quality, candidates: {models: [gpt-4o-mini]}}\n",
        )
    };
    let h = gateway().yaml(yaml).start().await;
    let (status, _, body) = h
        .chat(&json!({"model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}]}))
        .await
        .into_triple();
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "provider_withheld", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(why));
    // Routing passes it over, with no failed attempt...
    let (status, headers, _) = h
        .chat(&json!({"model": "pair", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-llm-gateway-provider"], "groq");
    assert!(h.received("openai").await.is_empty());
    // ...and says why when it was the only choice.
    let (status, _, body) = h
        .chat(&json!({"model": "only", "messages": [{"role": "user", "content": "hi"}]}))
        .await
        .into_triple();
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 withheld from this gateway"),
        "{body}"
    );
    // Not listed among the models this gateway serves.
    let models = h.get_json("/v1/models").await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(!ids.iter().any(|id| id.contains("gpt-4o-mini")), "{ids:?}");
    assert!(
        ids.iter().any(|id| id.contains("llama-3.1-8b-instant")),
        "{ids:?}"
    );
}

trait Triple {
    fn into_triple(self) -> (u16, reqwest::header::HeaderMap, Value);
}

impl Triple for (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    fn into_triple(self) -> (u16, reqwest::header::HeaderMap, Value) {
        (self.0.as_u16(), self.1, self.2)
    }
}
