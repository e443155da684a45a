//! Budgets through the API, on both counter backends (in-process and Redis): 429s that name
//! the budget, month rollover on an injected clock, rate limits, free local models under a
//! USD cap, downgrades, streamed and estimated usage, the usage API.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use llm_gateway::clock::{Clock, ManualClock, SystemClock};
use llm_gateway::config::budget::{rfc3339, Period};
use serde_json::{json, Value};

/// The start of the next UTC month by the real clock, and a minute before it: the budget
/// clock is injected, but relative to today, so no test goes stale on a later date (and
/// under test-all.sh's shifted clock, an absolute time handed to Redis would show).
fn month_end() -> (i64, i64) {
    let w = Period::Month.window(SystemClock.now_ms());
    (w.end_ms - 60_000, w.end_ms)
}

/// `YYYY-MM-DD` of `ms`.
fn day(ms: i64) -> String {
    rfc3339(ms)[..10].to_owned()
}

struct Setup {
    prefix: Option<String>,
    h: Harness,
    clock: Arc<ManualClock>,
    key: String,
    key_id: String,
}

async fn setup(redis: bool, routing: &str) -> Setup {
    setup_via(redis.then(|| redis_url().to_owned()), routing).await
}

async fn setup_via(redis_url: Option<String>, routing: &str) -> Setup {
    let clock = Arc::new(ManualClock::at(month_end().0));
    let prefix = redis_url
        .is_some()
        .then(|| format!("lgw-test-{}:", uuid::Uuid::new_v4()));
    let h = gateway()
        .routing(routing)
        .budgets(BudgetSetup {
            redis_url,
            database_url: None,
            redis_prefix: prefix.clone(),
            clock: clock.clone(),
        })
        .start()
        .await;
    let (rec, key) = h
        .store
        .as_ref()
        .unwrap()
        .create_key("team-a", "ci")
        .await
        .unwrap();
    Setup {
        prefix,
        h,
        clock,
        key,
        key_id: rec.id,
    }
}

impl Setup {
    /// `GET /v1/budget` as the key.
    async fn my_budget(&self) -> Value {
        self.h
            .http
            .get(format!("{}/v1/budget", self.h.gw))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Deletes this test's Redis keys (the server is shared with other runs).
    async fn cleanup(&self) {
        if let Some(p) = &self.prefix {
            delete_redis_keys(p).await;
        }
    }

    async fn put_budget(&self, b: Value) {
        let r = self
            .h
            .admin(reqwest::Method::PUT, "/admin/budgets")
            .json(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    async fn chat(&self, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .h
            .http
            .post(format!("{}/v1/chat/completions", self.h.gw))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The usage records, once there are any: an answered request's record is queued
    /// before its answer is sent (and a flush writes it at once); a cancelled one's when the
    /// gateway sees the client leave.
    async fn usage_records(&self) -> Vec<llm_gateway::store::usage::UsageRecord> {
        let store = self.h.store.as_ref().unwrap();
        for _ in 0..100 {
            self.h.flush_ledger().await;
            let rows = store.usage_records().await.unwrap();
            if !rows.is_empty() {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no usage records");
    }
}

/// A global monthly budget of `usd`, rejecting past it (for tests that drive the engine).
fn global_usd_budget(usd: f64) -> Arc<llm_gateway::config::budget::Budget> {
    use llm_gateway::config::budget::{Budget, OnLimit, Scope};
    Arc::new(Budget {
        scope: Scope::Global,
        period: Period::Month,
        limit_usd: Some(usd),
        limit_tokens: None,
        requests_per_minute: None,
        tokens_per_minute: None,
        on_limit: OnLimit::Reject,
        declared_by: None,
    })
}

fn ask(model: &str) -> Value {
    json!({"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "Say hello [[words=10]]"}]})
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).map_or("", |v| v.to_str().unwrap())
}

async fn usd_budget_rejects_with_figures_and_resets_next_month(redis: bool) {
    let s = setup(redis, "").await;
    // One request's cost, to size a budget that admits exactly three.
    let (status, h, _) = s.chat(ask("gpt-4o-mini")).await;
    assert_eq!(status, 200);
    assert!(
        h.get("x-llm-gateway-budget-remaining-usd").is_none(),
        "no budget yet"
    );
    let one: f64 = header(&h, "x-llm-gateway-cost-usd").parse().unwrap();
    assert!(one > 0.0);
    // The first request is already recorded: the counter starts from the database.
    s.usage_records().await;
    s.put_budget(json!({"scope": "tenant", "subject": "team-a", "limit_usd": one * 3.5}))
        .await;
    let mut admitted = 1;
    let mut last_left = f64::MAX;
    let refusal = loop {
        let (status, h, body) = s.chat(ask("gpt-4o-mini")).await;
        if status != 200 {
            assert_eq!(status, 429, "{body}");
            break (h, body);
        }
        admitted += 1;
        let left: f64 = header(&h, "x-llm-gateway-budget-remaining-usd")
            .parse()
            .unwrap();
        assert!(left < last_left, "remaining falls with each request");
        last_left = left;
        assert!(admitted < 10, "the budget never refused");
    };
    assert_eq!(
        admitted, 3,
        "3.5 requests' worth admits 3 (the 4th's estimate does not fit)"
    );
    let (h, body) = refusal;
    let e = &body["error"];
    assert_eq!(e["type"], "insufficient_quota", "{body}");
    assert_eq!(e["code"], "budget_exceeded");
    assert_eq!(e["budget"]["scope"], "tenant");
    assert_eq!(e["budget"]["subject"], "team-a");
    assert_eq!(e["budget"]["period"], "month");
    assert_eq!(e["budget"]["limit_kind"], "usd");
    let (_, end) = month_end();
    assert_eq!(e["budget"]["resets_at"], rfc3339(end));
    let used = e["budget"]["used"].as_f64().unwrap();
    assert!(
        (used - 3.0 * one).abs() < 1e-9,
        "used {used} vs {}",
        3.0 * one
    );
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("tenant `team-a`") && msg.contains(&rfc3339(end)),
        "{msg}"
    );
    assert_eq!(header(&h, "retry-after"), "60", "a minute to the reset");

    // The next month: a new period, a fresh budget.
    s.clock.set(end + 1000);
    let (status, h, body) = s.chat(ask("gpt-4o-mini")).await;
    assert_eq!(status, 200, "{body}");
    let left: f64 = header(&h, "x-llm-gateway-budget-remaining-usd")
        .parse()
        .unwrap();
    assert!((left - 2.5 * one).abs() < 1e-8, "left {left}");

    // The key's own view.
    let me = s.my_budget().await;
    let b = &me["budgets"][0];
    assert_eq!(b["scope"], "tenant", "{me}");
    assert_eq!(
        b["resets_at"],
        rfc3339(Period::Month.window(end + 1000).end_ms)
    );
    assert!(
        (b["remaining_usd"].as_f64().unwrap() - 2.5 * one).abs() < 1e-8,
        "{me}"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn usd_budget_in_process() {
    usd_budget_rejects_with_figures_and_resets_next_month(false).await;
}

#[tokio::test]
async fn usd_budget_on_redis() {
    usd_budget_rejects_with_figures_and_resets_next_month(true).await;
}

async fn free_local_models_pass_a_usd_cap_but_not_a_token_cap(redis: bool) {
    let s = setup(redis, "").await;
    s.put_budget(json!({"scope": "key", "subject": s.key_id, "limit_usd": 0.0}))
        .await;
    let (status, _, body) = s.chat(ask("gpt-4o-mini")).await;
    assert_eq!(status, 429, "a paid model is over a $0 cap: {body}");
    let r =
        s.h.http
            .post(format!("{}/v1/embeddings", s.h.gw))
            .bearer_auth(&s.key)
            .json(&json!({"model": "text-embedding-3-small", "input": ["a", "b"]}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 429, "embeddings are held to budgets too");
    let (status, h, body) = s.chat(ask("ollama/llama3.2:latest")).await;
    assert_eq!(status, 200, "a free local model is not: {body}");
    assert_eq!(header(&h, "x-llm-gateway-cost-usd"), "0");
    s.put_budget(
        json!({"scope": "key", "subject": s.key_id, "limit_usd": 0.0, "limit_tokens": 30}),
    )
    .await;
    let (status, _, body) = s.chat(ask("ollama/llama3.2:latest")).await;
    assert_eq!(status, 429, "the token cap binds free models too: {body}");
    assert_eq!(body["error"]["budget"]["limit_kind"], "tokens");
    s.cleanup().await;
}

#[tokio::test]
async fn free_models_and_usd_caps_in_process() {
    free_local_models_pass_a_usd_cap_but_not_a_token_cap(false).await;
}

#[tokio::test]
async fn free_models_and_usd_caps_on_redis() {
    free_local_models_pass_a_usd_cap_but_not_a_token_cap(true).await;
}

async fn rate_limits_per_minute(redis: bool) {
    let s = setup(redis, "").await;
    s.put_budget(json!({"scope": "key", "subject": s.key_id, "requests_per_minute": 2}))
        .await;
    assert_eq!(s.chat(ask("gpt-4o-mini")).await.0, 200);
    assert_eq!(s.chat(ask("gpt-4o-mini")).await.0, 200);
    let (status, h, body) = s.chat(ask("gpt-4o-mini")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_exceeded");
    assert_eq!(body["error"]["budget"]["limit_kind"], "requests_per_minute");
    assert_eq!(header(&h, "retry-after"), "60");
    s.clock.set(month_end().1);
    assert_eq!(s.chat(ask("gpt-4o-mini")).await.0, 200, "the next minute");

    s.put_budget(json!({"scope": "key", "subject": s.key_id, "tokens_per_minute": 100}))
        .await;
    let big = json!({"model": "gpt-4o-mini", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = s.chat(big).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["budget"]["limit_kind"], "tokens_per_minute");
    s.cleanup().await;
}

#[tokio::test]
async fn rate_limits_in_process() {
    rate_limits_per_minute(false).await;
}

#[tokio::test]
async fn rate_limits_on_redis() {
    rate_limits_per_minute(true).await;
}

#[tokio::test]
async fn a_downgrade_budget_moves_virtual_models_to_what_still_fits() {
    let s = setup(false, "").await;
    s.put_budget(json!({"scope": "tenant", "subject": "team-a", "limit_usd": 0.000001, "on_limit": "downgrade"}))
        .await;
    let (status, h, body) = s.chat(ask("quality")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&h, "x-llm-gateway-budget"), "downgraded");
    assert_eq!(
        header(&h, "x-llm-gateway-provider"),
        "ollama",
        "only free models fit"
    );
    // An explicit model is never swapped behind the client's back.
    let (status, _, body) = s.chat(ask("gpt-4o")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["budget"]["on_limit"], "downgrade");
}

#[tokio::test]
async fn streams_are_priced_from_upstream_usage_the_client_did_not_ask_for() {
    let s = setup(false, "").await;
    s.put_budget(json!({"scope": "tenant", "subject": "team-a", "limit_usd": 1.0}))
        .await;
    let mut body = ask("gpt-4o-mini");
    body["stream"] = json!(true);
    let (status, h, text) = s.chat(body).await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap().to_owned();
    let chunks = sse_data(&text);
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "no usage chunk the client did not ask for"
    );
    let before: f64 = header(&h, "x-llm-gateway-budget-remaining-usd")
        .parse()
        .unwrap();
    let rec = s.usage_records().await;
    let r = &rec[0];
    assert!(!r.usage_estimated);
    assert!(r.prompt_tokens > 0 && r.completion_tokens > 0);
    assert!(r.cost_usd.unwrap() > 0.0);
    // Settled: the budget holds the real cost, not the (larger) estimate.
    let me = s.my_budget().await;
    let b = &me["budgets"][0];
    assert!(
        (b["used_usd"].as_f64().unwrap() - r.cost_usd.unwrap()).abs() < 1e-12,
        "{me}"
    );
    assert_eq!(b["reserved_usd"], 0.0);
    assert!(b["remaining_usd"].as_f64().unwrap() >= before);
}

#[tokio::test]
async fn a_stream_the_client_abandons_is_charged_an_estimate_marked_estimated() {
    let s = setup(false, "").await;
    s.h.fault(json!({"vendor": "openai", "chunk_delay_ms": 100}))
        .await;
    let mut body = ask("gpt-4o-mini");
    body["stream"] = json!(true);
    body["messages"][0]["content"] = json!("Tell me a story [[words=60]]");
    let mut r =
        s.h.http
            .post(format!("{}/v1/chat/completions", s.h.gw))
            .bearer_auth(&s.key)
            .json(&body)
            .send()
            .await
            .unwrap();
    // Read a few chunks, then hang up.
    for _ in 0..4 {
        r.chunk().await.unwrap();
    }
    drop(r);
    let rec = s.usage_records().await;
    let r = &rec[0];
    assert_eq!(r.status, 499);
    assert!(r.usage_estimated, "{r:?}");
    assert!(r.completion_tokens > 0 && r.prompt_tokens > 0, "{r:?}");
    assert!(r.cost_usd.unwrap() > 0.0);
}

#[tokio::test]
async fn the_usage_api_reports_spend_per_day_tenant_key_and_model() {
    let s = setup(false, "").await;
    for m in ["gpt-4o-mini", "gpt-4o-mini", "claude-3-5-haiku-latest"] {
        assert_eq!(s.chat(ask(m)).await.0, 200);
    }
    s.usage_records().await;
    let r =
        s.h.http
            .get(format!("{}/admin/usage", s.h.gw))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 401, "admin only");
    let (before_end, _) = month_end();
    let first = day(Period::Month.window(before_end).start_ms);
    let rep: Value =
        s.h.admin(
            reqwest::Method::GET,
            &format!("/admin/usage?from={first}&to={}", day(before_end)),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = rep["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rep}");
    for r in rows {
        assert_eq!(r["day"], day(before_end));
        assert_eq!(r["tenant"], "team-a");
        assert_eq!(r["key_id"], s.key_id.as_str());
    }
    let mini = rows.iter().find(|r| r["model"] == "gpt-4o-mini").unwrap();
    assert_eq!(mini["requests"], 2);
    assert_eq!(rep["total"]["requests"], 3);
    assert!(rep["total"]["cost_usd"].as_f64().unwrap() > 0.0);
    let none: Value =
        s.h.admin(
            reqwest::Method::GET,
            &format!("/admin/usage?from={first}&tenant=team-b"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none["rows"], json!([]));
    let bad =
        s.h.admin(reqwest::Method::GET, "/admin/usage?from=yesterday")
            .send()
            .await
            .unwrap();
    assert_eq!(bad.status(), 400);
    let e: Value = bad.json().await.unwrap();
    assert_eq!(e["error"]["param"], "from");
}

#[tokio::test]
async fn bad_budgets_are_refused_naming_the_field() {
    let s = setup(false, "").await;
    for (body, field) in [
        (
            json!({"scope": "tenant", "subject": "t", "limit_usd": -1}),
            "limit_usd",
        ),
        (json!({"scope": "tenant", "subject": "t"}), ""),
        (
            json!({"scope": "key", "subject": "no-such-key", "limit_usd": 1}),
            "subject",
        ),
        (json!({"scope": "planet", "limit_usd": 1}), ""),
        // A misspelt limit is refused, not stored as no limit.
        (
            json!({"scope": "tenant", "subject": "t", "limit_usd": 5, "requests_per_min": 10}),
            "requests_per_min",
        ),
    ] {
        let r =
            s.h.admin(reqwest::Method::PUT, "/admin/budgets")
                .json(&body)
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        if !field.is_empty() {
            assert_eq!(e["error"]["param"], field, "{e}");
        }
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    }
    let r =
        s.h.http
            .put(format!("{}/admin/budgets", s.h.gw))
            .json(&json!({"scope": "global", "limit_usd": 1}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 401, "admin token required");
    s.put_budget(json!({"scope": "global", "limit_usd": 5}))
        .await;
    let list: Value =
        s.h.admin(reqwest::Method::GET, "/admin/budgets")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(list["budgets"][0]["scope"], "global", "{list}");
    assert_eq!(list["budgets"][0]["remaining_usd"], 5.0);
    // An item as GET gave it, a limit changed, PUT back: its read-only figures are ignored.
    let mut item = list["budgets"][0].clone();
    item["limit_usd"] = json!(6.0);
    let r =
        s.h.admin(reqwest::Method::PUT, "/admin/budgets")
            .json(&item)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let del =
        s.h.admin(reqwest::Method::DELETE, "/admin/budgets/global")
            .send()
            .await
            .unwrap();
    assert_eq!(del.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_budgets_fall_back_to_local_counters_and_resume_after() {
    let proxy = Proxy::start(redis_addr()).await;
    let s = setup_via(Some(format!("redis://{}", proxy.addr)), "").await;
    let (status, h, _) = s.chat(ask("gpt-4o-mini")).await;
    assert_eq!(status, 200);
    let one: f64 = header(&h, "x-llm-gateway-cost-usd").parse().unwrap();
    s.usage_records().await;
    s.put_budget(json!({"scope": "tenant", "subject": "team-a", "limit_usd": one * 3.5}))
        .await;
    assert_eq!(s.chat(ask("gpt-4o-mini")).await.0, 200, "on redis");
    // Recorded (the fallback counters start from the database; an outage starting within
    // the ledger's batch interval would miss the last batch).
    s.h.flush_ledger().await;
    let recorded = s.h.store.as_ref().unwrap().usage_records().await.unwrap();
    assert!(recorded.len() >= 2, "{recorded:?}");

    proxy.cut().await;
    // Served meanwhile, and still held to the budget (this replica's own counters, seeded
    // from the database: the 2 recorded requests).
    let mut admitted = 0;
    for _ in 0..5 {
        let (status, _, body) = s.chat(ask("gpt-4o-mini")).await;
        match status {
            200 => admitted += 1,
            429 => assert_eq!(body["error"]["code"], "budget_exceeded", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(admitted, 1, "3.5 requests' worth, 2 already spent");
    let metrics = s.h.get_text("/metrics").await;
    let errors: f64 = metrics
        .lines()
        .find(|l| l.starts_with("llm_gateway_budget_redis_errors_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(errors >= 1.0, "{errors}");

    proxy.restore();
    // Back on Redis, whose counter said 2 requests spent: the outage's spend is added to it,
    // so it resumes at what the ledger holds and the budget stays spent.
    let recorded = || async {
        s.h.flush_ledger().await;
        let rows = s.h.store.as_ref().unwrap().usage_records().await.unwrap();
        rows.iter().filter_map(|r| r.cost_usd).sum::<f64>()
    };
    let took = std::time::Instant::now();
    let mut used = 0.0;
    while (used - recorded().await).abs() > 1e-9 {
        assert!(
            took.elapsed() < Duration::from_secs(10),
            "redis never counted the outage's spend: {used} against {}",
            recorded().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        used = s.my_budget().await["budgets"][0]["used_usd"]
            .as_f64()
            .unwrap();
    }
    for _ in 0..3 {
        let (status, _, body) = s.chat(ask("gpt-4o-mini")).await;
        assert_eq!(status, 429, "no spend lost, no overspend: {body}");
        assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    }
    let used = s.my_budget().await["budgets"][0]["used_usd"]
        .as_f64()
        .unwrap();
    assert!((used - recorded().await).abs() < 1e-9, "{used}");
    s.cleanup().await;
}

/// A Redis connection that stops answering without closing (a node gone, packets dropped)
/// is replaced: the shared counters count again within seconds, not when the kernel gives
/// up on the connection minutes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_that_goes_silent_is_replaced() {
    let proxy = Proxy::start(redis_addr()).await;
    let s = setup_via(Some(format!("redis://{}", proxy.addr)), "").await;
    s.put_budget(json!({"scope": "tenant", "subject": "team-a", "limit_usd": 1000.0}))
        .await;
    let prefix = s.prefix.clone().unwrap();
    // The USD spent on the shared counters, read from Redis itself.
    let shared_spend = || async {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}budget:*"))
            .query_async(&mut c)
            .await
            .unwrap();
        let mut total = 0i64;
        for k in keys
            .iter()
            .filter(|k| !k.ends_with(":m") && !k.ends_with(":z") && !k.ends_with(":d"))
        {
            let ua: Option<i64> = redis::cmd("HGET")
                .arg(k)
                .arg("ua")
                .query_async(&mut c)
                .await
                .unwrap();
            total += ua.unwrap_or(0);
        }
        total
    };
    let started = std::time::Instant::now();
    let before = loop {
        assert_eq!(s.chat(ask("gpt-4o-mini")).await.0, 200);
        let spent = shared_spend().await;
        if spent > 0 {
            break spent;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing counted in redis"
        );
    };
    proxy.silence();
    let started = std::time::Instant::now();
    loop {
        let (status, _, body) = s.chat(ask("gpt-4o-mini")).await;
        assert_eq!(status, 200, "{body}");
        if shared_spend().await > before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the silent connection was never replaced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.cleanup().await;
}

/// Spend settled while Redis was out of reach is added once, and only to a counter that
/// predates it: one seeded from the database afterwards (Redis restarted empty) has it.
#[tokio::test]
async fn spend_synced_after_an_outage_counts_once_and_never_twice_against_a_fresh_seed() {
    use llm_gateway::budget::counters::{Shared, Unsynced};
    use llm_gateway::budget::{Amount, Budgets};
    let prefix = format!("lgw-test-{}:", uuid::Uuid::new_v4());
    let start = month_end().0 - 3_600_000;
    let clock = Arc::new(ManualClock::at(start));
    let shared = Shared::connect(redis_url()).await.unwrap();
    let engine = Arc::new(Budgets::new(
        None,
        Some(shared.clone()),
        clock.clone(),
        &prefix,
    ));
    let budget = global_usd_budget(1.0);
    // The counter is seeded (at `start`) by a first reservation.
    let r = engine
        .reserve(vec![budget.clone()], Amount { nano: 1, tokens: 1 })
        .await
        .unwrap();
    r.settle(Amount { nano: 0, tokens: 0 });
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}budget:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    let key = keys
        .into_iter()
        .find(|k| !k.ends_with(":m") && !k.ends_with(":z") && !k.ends_with(":d"))
        .unwrap();
    let ua = |c: &mut redis::aio::MultiplexedConnection| {
        let key = key.clone();
        let mut c = c.clone();
        async move {
            let v: i64 = redis::cmd("HGET")
                .arg(&key)
                .arg("ua")
                .query_async(&mut c)
                .await
                .unwrap();
            v
        }
    };
    let spent = |id: &str, at_ms: i64| Unsynced {
        id: id.to_owned(),
        at_ms,
        keys: vec![key.clone()],
        a: 1000,
        b: 10,
    };
    let before = ua(&mut c).await;
    // Settled before the counter was seeded: the seed had it.
    shared
        .add_used(&[spent("early", start - 1000)], start)
        .await
        .unwrap();
    assert_eq!(ua(&mut c).await, before);
    // Settled after: added, once, however often it is sent.
    for _ in 0..3 {
        shared
            .add_used(&[spent("late", start + 1000)], start + 2000)
            .await
            .unwrap();
    }
    assert_eq!(ua(&mut c).await, before + 1000);
    delete_redis_keys(&prefix).await;
}

#[tokio::test]
async fn a_crashed_replicas_reservations_return_to_the_budget_after_their_ttl() {
    use llm_gateway::budget::counters::Shared;
    use llm_gateway::budget::{Amount, Budgets, RESERVATION_TTL_MS};
    let prefix = format!("lgw-test-{}:", uuid::Uuid::new_v4());
    let start = month_end().0 - 3_600_000;
    let clock = Arc::new(ManualClock::at(start));
    let engine = Arc::new(Budgets::new(
        None,
        Some(Shared::connect(redis_url()).await.unwrap()),
        clock.clone(),
        &prefix,
    ));
    let budget = global_usd_budget(1.0);
    let half = Amount {
        nano: 600_000_000,
        tokens: 10,
    };
    // A replica reserves and dies before settling (the reservation is never dropped).
    let held = engine.reserve(vec![budget.clone()], half).await.unwrap();
    std::mem::forget(held);
    let refused = engine
        .reserve(vec![budget.clone()], half)
        .await
        .unwrap_err();
    assert!((refused.reserved - 0.6).abs() < 1e-9, "{refused:?}");
    clock.set(start + RESERVATION_TTL_MS + 1);
    let again = engine.reserve(vec![budget.clone()], half).await.unwrap();
    // Settling the real cost: the reservation leaves, the cost stays.
    again.settle(Amount {
        nano: 100_000_000,
        tokens: 5,
    });
    // On Redis the settlement is written by a task of its own: wait for it (at most 10 s).
    let mut status = engine.status(std::slice::from_ref(&budget)).await;
    for _ in 0..1000 {
        if status[0].reserved_usd == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = engine.status(std::slice::from_ref(&budget)).await;
    }
    assert_eq!(status[0].reserved_usd, 0.0, "{status:?}");
    assert!((status[0].used_usd - 0.1).abs() < 1e-9, "{status:?}");
    delete_redis_keys(&prefix).await;
}

#[tokio::test]
async fn remaining_headers_count_the_real_use_of_a_json_answer_and_the_estimate_of_a_stream() {
    let s = setup(false, "").await;
    s.put_budget(json!({"scope": "key", "subject": s.key_id, "limit_tokens": 100000}))
        .await;
    let (status, h, body) = s.chat(ask("gpt-4o-mini")).await;
    assert_eq!(status, 200, "{body}");
    let used = body["usage"]["total_tokens"].as_i64().unwrap();
    assert_eq!(
        header(&h, "x-llm-gateway-budget-remaining-tokens"),
        (100000 - used).to_string(),
        "a JSON answer's header counts its real tokens"
    );
    // A stream's header is sent before its usage: it counts the reservation (prompt +
    // max_tokens), more than the answer will use.
    let mut b = ask("gpt-4o-mini");
    b["stream"] = json!(true);
    let (_, h, _) = s.chat(b).await;
    let left: i64 = header(&h, "x-llm-gateway-budget-remaining-tokens")
        .parse()
        .unwrap();
    assert!(left < 100000 - used - used, "{left}");
}
