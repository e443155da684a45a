//! Two gateway processes sharing PostgreSQL and Redis, as two replicas would: the overspend
//! bound under a concurrent burst, and how fast budget changes and revocations reach the
//! other replica.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use llm_gateway::store::Store;
use mock_providers::{Mock, DEFAULT_OLLAMA_MODELS};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_llm-gateway");

struct Replica {
    child: Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn replica(mock: &str, db: &str, prefix: &str) -> Replica {
    let Listening { child, base, .. } = spawn_listening(
        Command::new(BIN)
            .args(["--database-url", db, "--redis-url", redis_url()])
            .env_clear()
            .env("LLM_GATEWAY_REDIS_PREFIX", prefix)
            .env("LLM_GATEWAY_ADMIN_TOKEN", ADMIN)
            .env("OPENAI_API_KEY", "sk-test")
            .env("OPENAI_BASE_URL", format!("{mock}/openai/v1"))
            .env("OLLAMA_HOST", "127.0.0.1:9")
            .env("RUST_LOG", "warn"),
    );
    // Owned at once, so a failure below still stops the process.
    let r = Replica { child, base };
    let base = r.base.clone();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the gateway did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r
}

fn ask() -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 20,
           "messages": [{"role": "user", "content": "Say hello [[words=10]]"}]})
}

async fn chat(
    http: &reqwest::Client,
    base: &str,
    key: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&ask())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let h = r.headers().clone();
    (s, h, r.json().await.unwrap_or(Value::Null))
}

async fn put_budget(http: &reqwest::Client, base: &str, b: Value) {
    let r = http
        .put(format!("{base}/admin/budgets"))
        .bearer_auth(ADMIN)
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// How long a change may take to reach the other replica in these tests: the refresh
/// interval and key-cache lifetime (5 s) plus room for a busy machine, where each poll is a
/// chat through a debug build (the time taken is printed).
const PROPAGATION_LIMIT: Duration = Duration::from_secs(15);

/// Polls `f` until true; returns how long it took.
async fn until<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_admit_no_more_than_the_budget_and_see_changes_within_the_refresh() {
    llm_gateway::install_crypto();
    let ml = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = format!("http://{}", ml.local_addr().unwrap());
    tokio::spawn(mock_providers::serve(
        ml,
        Mock::new(DEFAULT_OLLAMA_MODELS.map(String::from).to_vec()),
    ));
    let (db, schema) = pg_schema().await;
    let prefix = format!("lgw-test-{}:", uuid::Uuid::new_v4());
    let store = Store::open(&db).await.unwrap();
    let (_, calib_key) = store.create_key("calibration", "").await.unwrap();
    let (_, key) = store.create_key("team-a", "burst").await.unwrap();
    let a = replica(&mock, &db, &prefix).await;
    let b = replica(&mock, &db, &prefix).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    // What one request costs, measured on a key no budget covers.
    let (status, h, _) = chat(&http, &a.base, &calib_key).await;
    assert_eq!(status, 200);
    let one: f64 = h["x-llm-gateway-cost-usd"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let limit = 50.0 * one;
    put_budget(
        &http,
        &a.base,
        json!({"scope": "tenant", "subject": "team-a", "limit_usd": limit}),
    )
    .await;
    // Replica B learns the budget within the refresh interval; before it does, it would
    // admit anything, so wait for the first refusal-capable state by reading its view.
    until(Duration::from_secs(10), || {
        let (http, base, key) = (http.clone(), b.base.clone(), key.clone());
        async move {
            let v: Value = http
                .get(format!("{base}/v1/budget"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["budgets"].as_array().is_some_and(|b| !b.is_empty())
        }
    })
    .await;

    // 200 concurrent requests, half through each replica.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (http, base, key) = (
            http.clone(),
            if i % 2 == 0 {
                a.base.clone()
            } else {
                b.base.clone()
            },
            key.clone(),
        );
        tasks.spawn(async move { chat(&http, &base, &key).await });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (status, _, body) = r.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                refused += 1;
            }
            s => panic!("unexpected status {s}: {body}"),
        }
    }
    eprintln!("admitted {ok} of 200 against a budget for 50 (refused {refused})");
    assert_eq!(ok + refused, 200);
    assert!(ok <= 50, "admitted {ok}: the bound is 50");
    assert!(
        ok >= 25,
        "admitted only {ok}: reservations far too conservative"
    );

    // The source of truth agrees: recorded spend within the limit.
    let spent = until(Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            let rows = store.usage_records().await.unwrap();
            rows.iter()
                .filter(|r| r.tenant.as_deref() == Some("team-a"))
                .count()
                == 200
        }
    })
    .await;
    let _ = spent;
    let rows = store.usage_records().await.unwrap();
    let total: f64 = rows
        .iter()
        .filter(|r| r.tenant.as_deref() == Some("team-a"))
        .filter_map(|r| r.cost_usd)
        .sum();
    assert!(total <= limit + 1e-12, "spent {total} of {limit}");

    // A budget lowered through replica A binds on replica B after the refresh interval
    // (5 s; the check allows `PROPAGATION_LIMIT` and prints the time taken); raised again,
    // it admits again.
    put_budget(
        &http,
        &a.base,
        json!({"scope": "tenant", "subject": "team-a", "limit_usd": total}),
    )
    .await;
    let took = until(PROPAGATION_LIMIT, || {
        let (http, base, key) = (http.clone(), b.base.clone(), key.clone());
        async move { chat(&http, &base, &key).await.0 == 429 }
    })
    .await;
    eprintln!("a lowered budget reached the other replica in {took:?}");
    put_budget(
        &http,
        &a.base,
        json!({"scope": "tenant", "subject": "team-a", "limit_usd": limit * 2.0}),
    )
    .await;
    let took = until(PROPAGATION_LIMIT, || {
        let (http, base, key) = (http.clone(), b.base.clone(), key.clone());
        async move { chat(&http, &base, &key).await.0 == 200 }
    })
    .await;
    eprintln!("a raised budget reached the other replica in {took:?}");

    // A key revoked through replica A stops working on replica B once its cached lookup
    // expires (5 s).
    let keys: Value = http
        .get(format!("{}/admin/keys", a.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["tenant"] == "team-a")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http
        .delete(format!("{}/admin/keys/{id}", a.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let took = until(PROPAGATION_LIMIT, || {
        let (http, base, key) = (http.clone(), b.base.clone(), key.clone());
        async move { chat(&http, &base, &key).await.0 == 401 }
    })
    .await;
    eprintln!("revocation reached the other replica in {took:?}");

    drop((a, b));
    delete_redis_keys(&prefix).await;
    drop(store);
    drop_schema(&schema).await;
}
