//! Virtual keys through the API: authentication, the admin key API, revocation.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn hi() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

async fn call(h: &Harness, key: Option<&str>) -> (u16, Value) {
    let mut rb = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .json(&hi());
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn required_keys_reject_missing_unknown_and_revoked_keys() {
    let h = gateway()
        .keys(true, Duration::from_millis(200))
        .start()
        .await;
    let (status, body) = call(&h, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("llm-gateway keys create"));
    assert_eq!(call(&h, Some("sk-anything")).await.0, 401);
    assert_eq!(call(&h, Some("sk-lgw-000000")).await.0, 401);
    let r = h
        .http
        .get(format!("{}/v1/models", h.gw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "every /v1 endpoint needs the key");

    // Create through the admin API: the key comes back once.
    let r = h
        .admin(reqwest::Method::POST, "/admin/keys")
        .json(&json!({"tenant": "team-a", "name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["tenant"], "team-a");
    assert_eq!(call(&h, Some(&key)).await.0, 200);

    let list: Value = h
        .admin(reqwest::Method::GET, "/admin/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = list.to_string();
    assert!(
        text.contains(&id) && !text.contains(&key),
        "listing shows ids, never keys: {text}"
    );
    assert!(!text.contains("hash"), "{text}");

    // Revocation takes effect within the cache TTL (200 ms here, 5 s by default).
    let r = h
        .admin(reqwest::Method::DELETE, &format!("/admin/keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = call(&h, Some(&key)).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let r = h
        .admin(reqwest::Method::DELETE, &format!("/admin/keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "already revoked");
}

#[tokio::test]
async fn the_admin_key_api_needs_the_admin_token_and_valid_input() {
    let h = gateway().keys(true, Duration::from_secs(5)).start().await;
    let r = h
        .http
        .post(format!("{}/admin/keys", h.gw))
        .json(&json!({"tenant": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (_, key) = h
        .store
        .as_ref()
        .unwrap()
        .create_key("t", "n")
        .await
        .unwrap();
    let r = h
        .http
        .get(format!("{}/admin/keys", h.gw))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a virtual key is not an admin token");
    let r = h
        .admin(reqwest::Method::POST, "/admin/keys")
        .json(&json!({"tenant": " "}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["param"], "tenant");
    let r = h
        .admin(reqwest::Method::POST, "/admin/keys")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A misspelt allow-list must not make a key that may use every model.
    let r = h
        .admin(reqwest::Method::POST, "/admin/keys")
        .json(&json!({"tenant": "t", "allowed_model": ["ollama/*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["param"], "allowed_model", "{body}");
}

#[tokio::test]
async fn the_loopback_quick_start_stays_open_but_checks_real_keys() {
    let h = gateway().keys(false, Duration::from_secs(5)).start().await;
    assert_eq!(call(&h, None).await.0, 200, "anonymous");
    assert_eq!(
        call(&h, Some("x")).await.0,
        200,
        "SDKs insist on some key; a non-virtual one is ignored"
    );
    assert_eq!(
        call(&h, Some("sk-lgw-forged")).await.0,
        401,
        "a virtual-looking key is checked"
    );
    let (_, key) = h
        .store
        .as_ref()
        .unwrap()
        .create_key("t", "n")
        .await
        .unwrap();
    assert_eq!(call(&h, Some(&key)).await.0, 200);
}
