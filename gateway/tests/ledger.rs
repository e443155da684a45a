//! The usage ledger: a record for every request, priced from reported usage (streams too),
//! and none lost or doubled across a PostgreSQL outage.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use llm_gateway::ledger::Ledger;
use llm_gateway::store::usage::UsageRecord;
use llm_gateway::store::Store;
use serde_json::json;

fn record(i: usize) -> UsageRecord {
    usage_record(&format!("rec-{i}"), 1_700_000_000_000 + i as i64)
}

#[tokio::test]
async fn every_request_leaves_a_record_priced_from_its_usage() {
    let h = gateway().keys(true, Duration::from_secs(5)).start().await;
    let store = h.store.clone().unwrap();
    let (key_rec, key) = store.create_key("team-a", "ci").await.unwrap();
    let post = |body: serde_json::Value| {
        h.http
            .post(format!("{}/v1/chat/completions", h.gw))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let r = post(json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post(json!({"model": "claude-3-5-haiku-latest", "stream": true, "messages": [{"role": "user", "content": "stream me"}]})).await.unwrap();
    let sse = r.text().await.unwrap();
    assert!(sse.contains("[DONE]"));
    let r = post(json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A request without a key is refused before anything is recorded.
    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.gw))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A record is queued before its answer is sent; the ledger writes them every 250 ms,
    // or now.
    h.flush_ledger().await;
    let rows = store.usage_records().await.unwrap();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for r in &rows {
        assert_eq!(r.key_id.as_deref(), Some(key_rec.id.as_str()));
        assert_eq!(r.tenant.as_deref(), Some("team-a"));
        assert_eq!(r.endpoint, "chat");
    }
    // Two records can share a millisecond, so find each by what it was rather than by position.
    let find = |what: &str, hit: &dyn Fn(&UsageRecord) -> bool| {
        rows.iter()
            .find(|r| hit(r))
            .unwrap_or_else(|| panic!("no record of {what}: {rows:#?}"))
    };
    let by_model = |m: &str| find(m, &|r| r.model.as_deref() == Some(m));
    let chat = by_model("gpt-4o-mini");
    assert_eq!(
        (chat.provider.as_deref(), chat.status),
        (Some("openai"), 200)
    );
    assert!(chat.prompt_tokens > 0 && chat.completion_tokens > 0);
    let expect = (chat.prompt_tokens as f64 * 0.15 + chat.completion_tokens as f64 * 0.60) / 1e6;
    assert!((chat.cost_usd.unwrap() - expect).abs() < 1e-12, "{chat:?}");
    let stream = by_model("claude-3-5-haiku-latest");
    assert_eq!(stream.provider.as_deref(), Some("anthropic"));
    assert!(
        stream.completion_tokens > 0,
        "streamed usage is recorded: {stream:?}"
    );
    let expect = (stream.prompt_tokens as f64 * 0.8 + stream.completion_tokens as f64 * 4.0) / 1e6;
    assert!(
        (stream.cost_usd.unwrap() - expect).abs() < 1e-12,
        "streamed requests are priced, not $0: {stream:?}"
    );
    assert!(stream.ttft_ms.is_some());
    let failed = find("the 404", &|r| r.status == 404);
    assert_eq!(
        (failed.status, failed.cost_usd, failed.prompt_tokens),
        (404, None, 0)
    );

    // A client that gives up while the upstream is working: the provider read the prompt
    // and bills it, so the record estimates and prices it (status 499), rather than $0.
    h.fault(json!({"vendor": "openai", "latency_ms": 3000, "times": 1}))
        .await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        post(json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a question the client stops waiting for"}]})),
    )
    .await;
    assert!(gave_up.is_err(), "the client was meant to give up first");
    h.wait_in_flight("openai", 0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let abandoned = loop {
        h.flush_ledger().await;
        let rows = store.usage_records().await.unwrap();
        if let Some(r) = rows.into_iter().find(|r| r.status == 499) {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no 499 record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(abandoned.usage_estimated, "{abandoned:?}");
    assert!(abandoned.prompt_tokens > 0, "{abandoned:?}");
    assert!(abandoned.cost_usd.unwrap() > 0.0, "{abandoned:?}");
}

/// A client that gives up while its request still waits for the provider's concurrency slot
/// sent nothing upstream: its record says 499 and charges nothing, neither estimated tokens
/// nor cost, and the provider never sees the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_abandoned_in_the_slot_queue_is_not_billed() {
    let h = gateway()
        .keys(true, Duration::from_secs(5))
        .provider_yaml("    max_concurrency: 1\n    queue_timeout_secs: 10\n")
        .start()
        .await;
    let store = h.store.clone().unwrap();
    let (_, key) = store.create_key("team-a", "ci").await.unwrap();
    let send = |content: &str| {
        let rb = h
            .http
            .post(format!("{}/v1/chat/completions", h.gw))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}));
        tokio::spawn(async move { rb.send().await })
    };
    h.fault(json!({"vendor": "openai", "latency_ms": 2000, "times": 1}))
        .await;
    let first = send("the one holding the only slot");
    h.wait_in_flight("openai", 1).await;
    let queued = send("a question that waits for the slot, then is given up");
    let limiter = h
        .state
        .config()
        .registry
        .providers()
        .iter()
        .find(|p| &*p.name == "openai")
        .unwrap()
        .limiter
        .clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while limiter.queued() != 1 {
        assert!(std::time::Instant::now() < deadline, "never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The client gives up while its request waits for the slot.
    queued.abort();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let rows = loop {
        h.flush_ledger().await;
        let rows = store.usage_records().await.unwrap();
        if rows.len() == 2 {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "{rows:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let abandoned = rows.iter().find(|r| r.status == 499).expect("a 499 record");
    assert_eq!(
        (
            abandoned.usage_estimated,
            abandoned.prompt_tokens,
            abandoned.cost_usd
        ),
        (false, 0, None),
        "{abandoned:?}"
    );
    let answered = rows.iter().find(|r| r.status == 200).expect("a 200 record");
    assert!(answered.cost_usd.unwrap() > 0.0, "{answered:?}");
    let sent = h.received("openai").await;
    assert_eq!(
        sent.len(),
        1,
        "only the first reached the provider: {sent:#?}"
    );
}

/// A TCP proxy in front of PostgreSQL that can be cut (existing connections killed, new ones
/// refused) and restored.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_loses_no_record_and_counts_none_twice() {
    // A schema of its own, reached through the proxy.
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let url = format!(
        "postgres://postgres@{}/test?options=-c%20search_path%3D{schema}",
        proxy.addr
    );
    let store = Store::open(&url).await.unwrap();
    let direct = Store::open(&format!(
        "postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}"
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool.jsonl");
    let ledger = Ledger::start(store, spool.clone());

    for i in 0..100 {
        ledger.record(record(i));
    }
    ledger.flush().await;
    assert_eq!(direct.usage_records().await.unwrap().len(), 100);

    // Outage: records keep coming and go to the spool.
    proxy.cut().await;
    for i in 100..400 {
        ledger.record(record(i));
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    ledger.flush().await;
    assert!(
        spool.exists(),
        "records were spooled while PostgreSQL was unreachable"
    );
    assert_eq!(direct.usage_records().await.unwrap().len(), 100);

    // Back: the spool is replayed; everything is there exactly once.
    proxy.restore();
    for i in 400..450 {
        ledger.record(record(i));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        ledger.flush().await;
        let n = direct.usage_records().await.unwrap().len();
        if n == 450 && !spool.exists() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of 450 records after recovery; spool left: {}",
            spool.exists()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Replaying again (as after a crash mid-replay) changes nothing.
    let rows = direct.usage_records().await.unwrap();
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 450);
    direct.insert_usage(&rows[..10]).await.unwrap();
    assert_eq!(direct.usage_records().await.unwrap().len(), 450);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_under_load_keeps_keys_and_budgets_working_and_loses_no_record() {
    let (direct_url, schema) = pg_schema().await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let via_proxy = direct_url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let h = gateway()
        .routing("")
        .budgets(BudgetSetup {
            redis_prefix: None,
            redis_url: None,
            clock: Arc::new(llm_gateway::clock::SystemClock),
            database_url: Some(via_proxy),
        })
        .start()
        .await;
    let direct = Store::open(&direct_url).await.unwrap();
    let (_, key) = direct.create_key("team-a", "load").await.unwrap();
    let r = h
        .admin(reqwest::Method::PUT, "/admin/budgets")
        .json(&json!({"scope": "tenant", "subject": "team-a", "limit_usd": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let chat = || {
        let (http, gw, key) = (h.http.clone(), h.gw.clone(), key.clone());
        async move {
            let r = http
                .post(format!("{gw}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&json!({"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let left = r
                .headers()
                .get("x-llm-gateway-budget-remaining-usd")
                .map(|v| v.to_str().unwrap().parse::<f64>().unwrap());
            (r.status().as_u16(), left)
        }
    };
    let mut sent = 0;
    for _ in 0..10 {
        assert_eq!(chat().await.0, 200);
        sent += 1;
    }

    // PostgreSQL goes away for longer than the key cache lasts, under concurrent load.
    proxy.cut().await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let mut last_left = f64::MAX;
    for _ in 0..10 {
        let batch: Vec<_> = (0..10).map(|_| tokio::spawn(chat())).collect();
        for b in batch {
            let (status, left) = b.await.unwrap();
            assert_eq!(status, 200, "served while the database is down");
            let left = left.expect("the budget is still enforced");
            last_left = last_left.min(left);
        }
        sent += 10;
    }
    assert!(last_left < 1.0);

    // Back: every record arrives exactly once.
    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = direct.usage_records().await.unwrap().len();
        if n == sent {
            break;
        }
        assert!(
            n < sent,
            "{n} records for {sent} requests: some counted twice"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of {sent} records after recovery"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(direct);
    drop_schema(&schema).await;
}

/// The writer drains its queue on its tick, not per record: records queued from many tasks
/// at once, and flushes asked for concurrently, all end with every record stored once; a
/// ledger whose handles are all dropped still writes what was queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_records_and_concurrent_flushes_store_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    let ledger = Ledger::start(store.clone(), dir.path().join("spool.jsonl"));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let l = ledger.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    l.record(record(w * 1000 + i));
                    if i % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let (a, b) = (ledger.clone(), ledger.clone());
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(a.flush(), b.flush())
    })
    .await
    .expect("both flushes return");
    assert_eq!(store.usage_records().await.unwrap().len(), 2000);

    for i in 0..10 {
        ledger.record(record(10_000 + i));
    }
    drop((a, b, ledger));
    // The writer sees the closed queue on its next tick and writes what was left.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.usage_records().await.unwrap().len() < 2010 {
        assert!(
            std::time::Instant::now() < deadline,
            "the last records were not written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.usage_records().await.unwrap().len(), 2010);
}

/// With a low-priority writer, ordinary batches go through it; a batch too large for it to
/// have kept up (more than a tick's worth at 16,000 requests/s) goes through the main store,
/// so a backlog never waits on a writer that yields the CPU. Two databases tell them apart.
#[tokio::test]
async fn a_backlog_is_written_at_normal_priority() {
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("sqlite://{}/{name}", dir.path().display());
    let main = Store::open(&url("main.db")).await.unwrap();
    let low = Store::open(&url("low.db")).await.unwrap();
    let ledger = Ledger::start_with(main.clone(), Some(low.clone()), dir.path().join("s.jsonl"));
    // A current-thread runtime: the writer cannot take part of a loop's records on a tick.
    for i in 0..10 {
        ledger.record(record(i));
    }
    ledger.flush().await;
    assert_eq!(low.usage_records().await.unwrap().len(), 10);
    assert_eq!(main.usage_records().await.unwrap().len(), 0);
    for i in 10..5010 {
        ledger.record(record(i));
    }
    ledger.flush().await;
    assert_eq!(low.usage_records().await.unwrap().len(), 10);
    assert_eq!(main.usage_records().await.unwrap().len(), 5000);
}

/// Retention deletes exactly the records older than the cutoff, a chunk per statement until
/// none is left, on both backends; records at the cutoff and after it stay.
#[tokio::test]
async fn retention_deletes_only_records_older_than_the_cutoff_on_both_backends() {
    use llm_gateway::retention;
    let dir = tempfile::tempdir().unwrap();
    let (pg_url, schema) = pg_schema().await;
    for (backend, store) in [
        (
            "sqlite",
            Store::open(&format!("sqlite://{}/r.db", dir.path().display()))
                .await
                .unwrap(),
        ),
        ("postgres", Store::open(&pg_url).await.unwrap()),
    ] {
        // Times relative to a fixed instant: the database only compares them with the
        // cutoff it is given, never with its own clock.
        let cutoff = 1_800_000_000_000;
        let records: Vec<UsageRecord> = (0..40)
            .map(|i| UsageRecord {
                id: format!("r{i:02}"),
                // 23 before the cutoff (some far before), one at it, 16 after.
                at_ms: cutoff + (i as i64 - 23) * 3_600_000,
                ..record(i)
            })
            .collect();
        store.insert_usage(&records).await.unwrap();
        let deleted = retention::prune(&store, cutoff, 5).await.unwrap();
        assert_eq!(deleted, 23, "{backend}");
        let kept = usage_ids(&store).await;
        let expected: Vec<String> = (23..40).map(|i| format!("r{i:02}")).collect();
        assert_eq!(kept, expected, "{backend}");
        // Nothing left to delete: a second pass is a no-op.
        assert_eq!(retention::prune(&store, cutoff, 5).await.unwrap(), 0);

        // One bounded statement takes the oldest first, whatever order they were stored in.
        let shuffled: Vec<UsageRecord> = [7, 2, 9, 0, 5, 8, 1, 6, 3, 4]
            .into_iter()
            .map(|i| usage_record(&format!("s{i}"), cutoff - 1_000 + i))
            .collect();
        store.insert_usage(&shuffled).await.unwrap();
        assert_eq!(store.prune_usage(cutoff, 4).await.unwrap(), 4);
        let left = usage_ids(&store).await;
        assert_eq!(left[..6], ["s4", "s5", "s6", "s7", "s8", "s9"], "{backend}");
    }
    drop_schema(&schema).await;
}
