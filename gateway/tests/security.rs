//! The security review's findings, one test each (see SECURITY.md): each fails on the code the
//! review was done on. Budget arithmetic over the whole amount domain is in
//! `budget_amounts.rs`, the image-blind cache and cache entry bounds in `cache.rs`, memory
//! under many large bodies in `streams_at_scale.rs`, the metrics listener in `cli.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use llm_gateway::clock::{Clock, ManualClock, SystemClock};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello [[words=5]]"}]})
}

async fn keyed(routing: &str) -> Harness {
    gateway()
        .routing(routing)
        .budgets(BudgetSetup {
            redis_url: None,
            database_url: None,
            redis_prefix: None,
            clock: Arc::new(ManualClock::at(SystemClock.now_ms())),
        })
        .start()
        .await
}

async fn put_budget(h: &Harness, b: Value) {
    let r = h
        .admin(reqwest::Method::PUT, "/admin/budgets")
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn chat_as(h: &Harness, key: &str, body: &Value) -> (u16, Value) {
    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// High 1: `n` and `max_tokens` are bounded, and a reservation never exceeds what the model
/// can write, so no product wraps and no request holds a budget's whole remainder.
#[tokio::test]
async fn absurd_token_counts_are_refused_and_reservations_are_bounded() {
    let h = keyed("").await;
    let (_, key) = h.store.as_ref().unwrap().create_key("t", "").await.unwrap();
    put_budget(
        &h,
        json!({"scope": "tenant", "subject": "t", "limit_tokens": 100000}),
    )
    .await;
    let mut b = hello("gpt-4o-mini");
    b["n"] = json!(4294967295u64);
    b["max_tokens"] = json!(4294967295u64);
    let (status, body) = chat_as(&h, &key, &b).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "n");
    b["n"] = json!(1);
    let (status, body) = chat_as(&h, &key, &b).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "max_tokens");
    // 120,000 tokens asked of a model that writes at most 16,384: the reservation is what it
    // can write, which fits (before, the whole 120,000 was reserved and refused).
    b["max_tokens"] = json!(120_000);
    let (status, body) = chat_as(&h, &key, &b).await;
    assert_eq!(status, 200, "{body}");
    let me: Value = h
        .http
        .get(format!("{}/v1/budget", h.gw))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let t = &me["budgets"][0];
    assert_eq!(t["reserved_tokens"], 0, "{me}");
    assert!(t["used_tokens"].as_i64().unwrap() > 0, "{me}");
}

/// Medium 5: one stream with a huge `max_tokens` no longer holds the global budget's remainder.
#[tokio::test]
async fn one_huge_reservation_does_not_lock_other_tenants_out() {
    let h = keyed("").await;
    let store = h.store.as_ref().unwrap();
    let (_, a) = store.create_key("a", "").await.unwrap();
    let (_, b) = store.create_key("b", "").await.unwrap();
    // 120,000 output tokens of gpt-4o-mini would be $0.072 of this $0.0725 budget, were
    // they reserved; the model writes at most 16,384.
    put_budget(&h, json!({"scope": "global", "limit_usd": 0.0725})).await;
    h.fault(json!({"vendor": "openai", "chunk_delay_ms": 200}))
        .await;
    let mut big = hello("gpt-4o-mini");
    big["max_tokens"] = json!(120_000);
    big["stream"] = json!(true);
    let stream = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .bearer_auth(&a)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    h.clear_faults().await;
    let (status, body) = chat_as(&h, &b, &hello("gpt-4o-mini")).await;
    assert_eq!(status, 200, "tenant b is not locked out: {body}");
    drop(stream);
}

/// Medium 5: a reservation has an absolute ceiling, whatever `n` × `max_tokens` asks, and a
/// model the catalog does not list is capped too.
#[tokio::test]
async fn a_request_reserves_at_most_the_per_request_ceiling() {
    let h = keyed("").await;
    let store = h.store.as_ref().unwrap();
    let (_, key) = store.create_key("t", "").await.unwrap();
    // 300,000 tokens: 128 choices × 16,384 (gpt-4o-mini's most) would reserve 2.1 million.
    put_budget(
        &h,
        json!({"scope": "tenant", "subject": "t", "limit_tokens": 300_000}),
    )
    .await;
    let mut many = hello("gpt-4o-mini");
    many["n"] = json!(128);
    many["max_tokens"] = json!(16_384);
    let (status, body) = chat_as(&h, &key, &many).await;
    assert_eq!(status, 200, "{body}");
    // An unlisted model, no window or output cap known: 16 million asked, 32,768 held.
    let mut unknown = hello("openai/some-new-model");
    unknown["max_tokens"] = json!(16_000_000);
    let (status, body) = chat_as(&h, &key, &unknown).await;
    assert_eq!(status, 200, "{body}");
}

/// Medium 5: per-tenant concurrency: one tenant's stalled streams cannot fill the gateway.
#[tokio::test]
async fn one_tenant_cannot_take_every_slot() {
    let limited = gateway()
        .yaml(|m| {
            config_yaml(m, "").replace(
                "server:\n",
                "server:\n  max_concurrency: 4\n  max_concurrency_per_tenant: 2\n",
            )
        })
        .keys(true, std::time::Duration::from_secs(5))
        .start()
        .await;
    let store = limited.store.as_ref().unwrap();
    let (_, a) = store.create_key("a", "").await.unwrap();
    let (_, b) = store.create_key("b", "").await.unwrap();
    limited
        .fault(json!({"vendor": "openai", "chunk_delay_ms": 1000}))
        .await;
    let mut slow = hello("gpt-4o-mini");
    slow["stream"] = json!(true);
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let r = limited
            .http
            .post(format!("{}/v1/chat/completions", limited.gw))
            .bearer_auth(&a)
            .json(&slow)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => open.push(r),
            429 => {
                let e: Value = r.json().await.unwrap();
                assert_eq!(e["error"]["code"], "concurrency_limit_exceeded", "{e}");
                refused += 1;
            }
            s => panic!("{s}"),
        }
    }
    assert_eq!((open.len(), refused), (2, 2));
    limited.clear_faults().await;
    let (status, body) = chat_as(&limited, &b, &hello("gpt-4o-mini")).await;
    assert_eq!(status, 200, "tenant b still gets in: {body}");
}

/// High 3: connections that send nothing or drip their headers are closed; beyond the cap
/// new ones are closed at once; the gateway keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_reaped_and_capped() {
    let h = gateway()
        .yaml(|m| {
            config_yaml(m, "").replace(
                "server:\n",
                "server:\n  header_read_timeout_secs: 1\n  max_connections: 40\n",
            )
        })
        .start()
        .await;
    let addr = h.gw.trim_start_matches("http://").to_owned();
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert_eq!(
        soft, hard,
        "the soft open-file limit was raised to the hard one"
    );
    let mut idle = Vec::new();
    for i in 0..60 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            // One header byte, then nothing more.
            s.write_all(b"P").await.unwrap();
        }
        idle.push(s);
    }
    // The twenty over the cap are closed at once; the rest after the header timeout.
    let started = std::time::Instant::now();
    let mut closed = 0;
    for s in &mut idle {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(
        closed,
        60,
        "every idle connection was closed ({:?})",
        started.elapsed()
    );
    let m = h.get_text("/metrics").await;
    assert!(
        m.contains("llm_gateway_connections_rejected_total 20")
            || m.lines()
                .any(|l| l.starts_with("llm_gateway_connections_rejected_total")
                    && l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 20.0),
        "{m}"
    );
    assert_eq!(h.get_json("/healthz").await["status"], "ok");
}

/// Medium 4: a stream the client stops reading is not the provider's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_trip_the_providers_breaker() {
    // Two failures would open the breaker; on the old code three stalled streams did.
    let h =
        gateway()
            .yaml(|m| {
                config_yaml(m, "")
            .replace("server:\n", "server:\n  client_idle_timeout_secs: 0.3\n")
            .replace(
                "    base_url: {mock}/anthropic\n"
                    .replace("{mock}", m)
                    .as_str(),
                &format!("    base_url: {m}/anthropic\n    breaker: {{consecutive_failures: 2}}\n"),
            )
            })
            .start()
            .await;
    let mut body = hello("claude-3-5-haiku-latest");
    body["stream"] = json!(true);
    // Long enough to fill the socket buffers while the client pauses.
    body["messages"][0]["content"] = json!("a long story [[words=60000]]");
    let addr: std::net::SocketAddr = h.gw.trim_start_matches("http://").parse().unwrap();
    let payload = body.to_string();
    for _ in 0..3 {
        // A client with a small receive buffer that reads a little, pauses, then reads on.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        s.write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
                payload.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.contains("client_too_slow"),
            "the stream says why it ended: {} bytes, ending {:?}",
            rest.len(),
            &rest[rest.len().saturating_sub(300)..]
        );
    }
    let breakers = h
        .admin(reqwest::Method::GET, "/admin/breakers")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let anthropic = breakers["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["provider"] == "anthropic" && b["model"].is_null())
        .unwrap()["status"]
        .clone();
    assert_eq!(anthropic["state"], "closed", "{anthropic}");
    assert_eq!(anthropic["consecutive_failures"], 0, "{anthropic}");
    let (status, _, body) = h.chat(&hello("claude-3-5-haiku-latest")).await;
    assert_eq!(status, 200, "{body}");
}

/// Medium 8: in keyless mode, only JSON from this machine by name is served (no CSRF, no DNS
/// rebinding); CORS only for configured origins.
#[tokio::test]
async fn keyless_mode_refuses_foreign_hosts_origins_and_non_json() {
    let h = gateway()
        .yaml(|m| {
            config_yaml(m, "").replace(
                "server:\n",
                "server:\n  cors_allowed_origins: ['http://app.localtest:3000']\n",
            )
        })
        .start()
        .await;
    let url = format!("{}/v1/chat/completions", h.gw);
    let body = hello("gpt-4o-mini").to_string();
    let post = |ct: &'static str| {
        h.http
            .post(&url)
            .header("content-type", ct)
            .body(body.clone())
    };
    let r = post("text/plain").send().await.unwrap();
    assert_eq!(
        r.status(),
        415,
        "a form or text/plain POST needs no preflight"
    );
    let r = post("application/json")
        .header("host", "evil.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "DNS rebinding: a foreign Host");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "foreign_origin");
    let r = post("application/json")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a foreign page");
    let r = post("application/json")
        .header("origin", "http://app.localtest:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a configured origin");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.localtest:3000"
    );
    let pre = h
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://app.localtest:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    assert!(pre.headers().contains_key("access-control-allow-methods"));
    let r = post("application/json; charset=utf-8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the SDKs' own requests");
}

/// Low 9: a key sees its own and its tenant's figures, and of the global budget only whether
/// it is exhausted.
#[tokio::test]
async fn the_global_budgets_figures_are_not_shown_to_tenants() {
    let h = keyed("").await;
    let (_, key) = h.store.as_ref().unwrap().create_key("t", "").await.unwrap();
    put_budget(&h, json!({"scope": "global", "limit_usd": 0.0000001})).await;
    put_budget(
        &h,
        json!({"scope": "tenant", "subject": "t", "limit_usd": 10.0}),
    )
    .await;
    let me: Value = h
        .http
        .get(format!("{}/v1/budget", h.gw))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let g = me["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["scope"] == "global")
        .unwrap();
    assert!(
        g.get("used_usd").is_none() && g.get("reserved_usd").is_none(),
        "{g}"
    );
    assert_eq!(g["exhausted"], false);
    let t = me["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["scope"] == "tenant")
        .unwrap();
    assert!(t.get("used_usd").is_some(), "its own tenant's figures: {t}");
    let (status, body) = chat_as(&h, &key, &hello("gpt-4o-mini")).await;
    assert_eq!(status, 429, "{body}");
    let b = &body["error"]["budget"];
    assert_eq!(b["scope"], "global");
    assert!(
        b.get("used").is_none() && b.get("reserved").is_none(),
        "{body}"
    );
    assert!(
        !body["error"]["message"].as_str().unwrap().contains("used"),
        "{body}"
    );
}

/// Low 10 and 11: upstream redirects are not followed (the key is not re-sent), and upstream
/// error bodies reach clients only as the provider's message, redacted.
#[tokio::test]
async fn redirects_are_refused_and_upstream_errors_are_sanitised() {
    let h = start().await;
    let other = start().await;
    h.fault(json!({"vendor": "anthropic", "redirect_to": format!("{}/anthropic/v1/messages", other.mock), "times": 1}))
        .await;
    let (status, _, body) = h.chat(&hello("claude-3-5-haiku-latest")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("redirect"));
    assert!(
        other.received("anthropic").await.is_empty(),
        "the prompt and x-api-key went nowhere else"
    );

    h.fault(json!({"vendor": "openai", "status": 500, "times": 1,
        "message": "Incorrect API key provided: sk-proj-abc*********wxyz via 10.3.4.5"}))
        .await;
    let (_, _, body) = h.chat(&hello("gpt-4o-mini")).await;
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        !msg.contains("sk-proj") && !msg.contains("10.3.4.5"),
        "{msg}"
    );
    assert!(msg.contains("[redacted]"), "{msg}");

    h.fault(json!({"vendor": "openai", "status": 502, "times": 1,
        "error_body": "<html><body>nginx at 172.16.0.9 upstream down</body></html>"}))
        .await;
    let (status, _, body) = h.chat(&hello("gpt-4o-mini")).await;
    assert_eq!(status, 502);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(!msg.contains("nginx") && !msg.contains("172.16"), "{msg}");

    h.fault(json!({"vendor": "openai", "status": 401, "times": 1}))
        .await;
    let (status, _, body) = h.chat(&hello("gpt-4o-mini")).await;
    assert_eq!(
        status, 502,
        "the gateway's credential, not the client's: {body}"
    );
    assert_eq!(body["error"]["code"], "upstream_auth_failed");
}

/// Low 13: invalid keys from one client are rate-limited without database queries; unpriced
/// cost-raising features are refused under a USD budget; keys can be held to a model list;
/// upstream answers are read within a size limit.
#[tokio::test]
async fn keys_features_models_and_answer_sizes_are_held_to_limits() {
    let h = keyed("").await;
    let store = h.store.as_ref().unwrap();
    // The valid key is used once first: a client address over its failure allowance has
    // even unknown-but-valid keys refused until the window passes (see SECURITY.md).
    let (_, key) = store
        .create_key_with("t", "", Some(vec!["openai/gpt-4o-mini".into()]))
        .await
        .unwrap();
    assert_eq!(chat_as(&h, &key, &hello("gpt-4o-mini")).await.0, 200);
    let mut codes = Vec::new();
    for i in 0..25 {
        let (status, body) = chat_as(&h, &format!("sk-lgw-{i:048x}"), &hello("gpt-4o-mini")).await;
        codes.push((
            status,
            body["error"]["code"].as_str().unwrap_or("").to_owned(),
        ));
    }
    assert!(codes[..20].iter().all(|(s, _)| *s == 401), "{codes:?}");
    assert!(
        codes[20..]
            .iter()
            .all(|(s, c)| *s == 429 && c == "too_many_invalid_keys"),
        "{codes:?}"
    );

    let (status, body) = chat_as(&h, &key, &hello("claude-3-5-haiku-latest")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "model_not_allowed");
    // Everything this key asks goes through one helper: a method, a path, maybe a body.
    let as_key = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let rb = h
            .http
            .request(method, format!("{}{path}", h.gw))
            .bearer_auth(&key);
        let rb = match body {
            Some(b) => rb.json(&b),
            None => rb,
        };
        async move { rb.send().await.unwrap() }
    };
    use reqwest::Method;
    let r = as_key(Method::POST, "/v1/chat/completions", Some(hello("auto"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-llm-gateway-model"],
        "gpt-4o-mini",
        "auto stays inside the list"
    );
    // It is shown only the models it may use (and the virtual ones).
    let list: Value = as_key(Method::GET, "/v1/models", None)
        .await
        .json()
        .await
        .unwrap();
    let real: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["llm_gateway"]["virtual"] != true)
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(real, ["gpt-4o-mini"], "{list}");
    let r = as_key(Method::GET, "/v1/models/claude-3-5-haiku-latest", None).await;
    assert_eq!(r.status(), 403);
    // The dry run shows the decision this key gets, inside its list too.
    let r = as_key(Method::POST, "/v1/route", Some(hello("auto"))).await;
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["chosen"], "openai/gpt-4o-mini", "{d}");
    let r = as_key(
        Method::POST,
        "/v1/route",
        Some(hello("claude-3-5-haiku-latest")),
    )
    .await;
    assert_eq!(r.status(), 403);

    put_budget(
        &h,
        json!({"scope": "tenant", "subject": "t", "limit_usd": 5.0}),
    )
    .await;
    for (field, value) in [
        ("service_tier", json!("priority")),
        ("web_search_options", json!({})),
        ("tools", json!([{"type": "web_search_preview"}])),
        ("modalities", json!(["text", "audio"])),
    ] {
        let mut b = hello("gpt-4o-mini");
        b[field] = value;
        let (status, body) = chat_as(&h, &key, &b).await;
        assert_eq!(status, 403, "{field}: {body}");
        assert_eq!(body["error"]["code"], "unpriced_feature", "{field}");
    }
    let mut b = hello("gpt-4o-mini");
    b["service_tier"] = json!("flex");
    assert_eq!(chat_as(&h, &key, &b).await.0, 200, "a cheaper tier is fine");

    let small = gateway()
        .yaml(|m| config_yaml(m, "    max_response_bytes: 2000\n"))
        .start()
        .await;
    let mut long = hello("gpt-4o-mini");
    long["messages"][0]["content"] = json!("[[words=2000]]");
    let (status, _, body) = small.chat(&long).await;
    assert_eq!(status, 502, "{body}");
    long["stream"] = json!(true);
    let (_, _, text) = small.chat_stream(&long).await;
    assert!(!text.contains("[DONE]"), "a stream over the limit is cut");
}
