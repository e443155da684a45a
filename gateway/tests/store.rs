//! The key store against real SQLite and real PostgreSQL (127.0.0.1:5432, user postgres,
//! database `test`); each PostgreSQL test works in a schema of its own.

mod common;

use common::{drop_schema, pg_schema};
use llm_gateway::config::budget::{Budget, OnLimit, Period, Scope};
use llm_gateway::store::keys::hash_key;
use llm_gateway::store::usage::UsageRecord;
use llm_gateway::store::{Store, StoreError};

async fn exercise(store: &Store) {
    let (a, key_a) = store.create_key("team-a", "ci").await.unwrap();
    let (b, _) = store.create_key("team-b", "").await.unwrap();
    assert!(key_a.starts_with("sk-lgw-") && key_a.len() == 7 + 48);
    assert_eq!(a.key_prefix, &key_a[..14]);
    assert_ne!(a.id, b.id);
    let found = store.find_key(&hash_key(&key_a)).await.unwrap().unwrap();
    assert_eq!(found, a);
    assert!(store
        .find_key(&hash_key("sk-lgw-nope"))
        .await
        .unwrap()
        .is_none());
    let all = store.list_keys().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(store.revoke_key(&a.id).await.unwrap());
    assert!(!store.revoke_key(&a.id).await.unwrap(), "already revoked");
    assert!(!store.revoke_key("no-such-id").await.unwrap());
    assert!(store
        .find_key(&hash_key(&key_a))
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
}

#[tokio::test]
async fn sqlite_keys_roundtrip_and_only_hashes_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/gw.db");
    let url = format!("sqlite://{}", path.display());
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.kind(), "sqlite");
    exercise(&store).await;
    // Reopening runs the migrations again: a no-op.
    let again = Store::open(&url).await.unwrap();
    assert_eq!(again.list_keys().await.unwrap().len(), 2);
    let (_, key) = again.create_key("t", "n").await.unwrap();
    let raw = std::fs::read(&path).unwrap();
    let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
    let hay = [raw, wal].concat();
    assert!(
        !hay.windows(key.len()).any(|w| w == key.as_bytes()),
        "the key itself reached the database file"
    );
}

#[tokio::test]
async fn postgres_keys_roundtrip() {
    let (url, schema) = pg_schema().await;
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.kind(), "postgres");
    exercise(&store).await;
    drop(store);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let (url, schema) = pg_schema().await;
    let opens = (0..4).map(|_| Store::open(&url));
    let stores = futures::future::join_all(opens).await;
    for s in &stores {
        assert!(s.is_ok(), "{:?}", s.as_ref().err());
    }
    let s = stores.into_iter().next().unwrap().unwrap();
    s.create_key("t", "n").await.unwrap();
    assert_eq!(s.list_keys().await.unwrap().len(), 1);
    drop(s);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn bad_database_urls_are_clear_errors_without_passwords() {
    let e = Store::open("mysql://x@y/z").await.unwrap_err();
    assert!(matches!(e, StoreError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("postgres://"));
    let e = Store::open("postgres://postgres:hunter2@127.0.0.1:9/test")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot use the database at postgres://postgres:***@127.0.0.1:9/test"),
        "{e}"
    );
    assert!(!e.contains("hunter2"));
}

#[tokio::test]
async fn processes_opening_a_new_sqlite_file_together_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/race.db", dir.path().display());
    let opens = (0..4).map(|_| Store::open(&url));
    for s in futures::future::join_all(opens).await {
        assert!(s.is_ok(), "{:?}", s.err());
    }
}

fn usage(id: &str, at_ms: i64, tenant: &str, key: &str, model: &str, cost: f64) -> UsageRecord {
    UsageRecord {
        id: id.into(),
        at_ms,
        request_id: id.into(),
        key_id: Some(key.into()),
        tenant: Some(tenant.into()),
        endpoint: "chat".into(),
        virtual_model: None,
        provider: Some("openai".into()),
        model: Some(model.into()),
        prompt_tokens: 10,
        completion_tokens: 5,
        cost_usd: Some(cost),
        usage_estimated: id.ends_with("-est"),
        latency_ms: 3,
        ttft_ms: None,
        cache: None,
        status: 200,
        attempts: 1,
    }
}

/// Budgets and spend, identical on both backends.
async fn exercise_budgets(store: &Store) {
    let b = Budget {
        scope: Scope::Tenant("team-a".into()),
        period: Period::Month,
        limit_usd: Some(10.0),
        limit_tokens: None,
        requests_per_minute: Some(5),
        tokens_per_minute: None,
        on_limit: OnLimit::Downgrade,
        declared_by: None,
    };
    store.put_budget(&b).await.unwrap();
    let mut b2 = b.clone();
    b2.limit_usd = Some(20.0);
    store.put_budget(&b2).await.unwrap();
    let g = Budget {
        scope: Scope::Global,
        limit_usd: None,
        limit_tokens: Some(1000),
        requests_per_minute: None,
        on_limit: OnLimit::Reject,
        ..b.clone()
    };
    store.put_budget(&g).await.unwrap();
    assert_eq!(
        store.list_budgets().await.unwrap(),
        vec![g.clone(), b2.clone()]
    );

    // 2026-11-30 and 2026-12-01, UTC.
    let (nov, dec) = (1_796_000_000_000, 1_796_090_000_000);
    store
        .insert_usage(&[
            usage("1", nov, "team-a", "k1", "gpt-4o-mini", 0.25),
            usage("2", nov + 1, "team-a", "k2", "gpt-4o-mini", 0.5),
            usage("3-est", nov + 2, "team-b", "k3", "gpt-4o", 1.0),
            usage("4", dec, "team-a", "k1", "gpt-4o-mini", 2.0),
        ])
        .await
        .unwrap();
    let month = Period::Month.window(nov);
    let t = |s: &str| Scope::Tenant(s.into());
    assert_eq!(
        store
            .spend(&t("team-a"), month.start_ms, month.end_ms)
            .await
            .unwrap(),
        (750_000_000, 30)
    );
    assert_eq!(
        store
            .spend(&Scope::Key("k3".into()), month.start_ms, month.end_ms)
            .await
            .unwrap(),
        (1_000_000_000, 15)
    );
    assert_eq!(
        store
            .spend(&Scope::Global, month.start_ms, month.end_ms)
            .await
            .unwrap(),
        (1_750_000_000, 45)
    );
    assert_eq!(
        store.spend(&t("nobody"), 0, i64::MAX).await.unwrap(),
        (0, 0)
    );

    let rows = store
        .usage_report(month.start_ms, dec + 1, None, None)
        .await
        .unwrap();
    let days: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.day.as_str(),
                r.tenant.as_str(),
                r.key_id.as_str(),
                r.requests,
            )
        })
        .collect();
    assert_eq!(
        days,
        [
            ("2026-11-30", "team-a", "k1", 1),
            ("2026-11-30", "team-a", "k2", 1),
            ("2026-11-30", "team-b", "k3", 1),
            ("2026-12-01", "team-a", "k1", 1),
        ]
    );
    assert_eq!(rows[2].estimated, 1);
    assert_eq!(rows[2].cost_usd, 1.0);
    let only_b = store
        .usage_report(0, i64::MAX, Some("team-b"), None)
        .await
        .unwrap();
    assert_eq!(only_b.len(), 1);
    let only_k1 = store
        .usage_report(0, i64::MAX, None, Some("k1"))
        .await
        .unwrap();
    assert_eq!(only_k1.len(), 2);

    assert!(store.delete_budget(&Scope::Global).await.unwrap());
    assert!(!store.delete_budget(&Scope::Global).await.unwrap());
    assert_eq!(store.list_budgets().await.unwrap(), vec![b2]);
}

/// Batches of any length land whole, repeats are skipped (the stored version is kept), and
/// every field survives (the store cuts a batch into statements of power-of-two length).
async fn exercise_bulk_usage(store: &Store) {
    let before = store.usage_records().await.unwrap();
    let record = |i: i64| {
        let mut r = usage(
            &format!("bulk-{i:05}"),
            2_000_000_000_000 + i,
            "bulk",
            "kb",
            "m",
            0.5,
        );
        r.ttft_ms = (i % 3 == 0).then_some(i);
        r.cache = (i % 5 == 0).then(|| "miss".to_owned());
        r.usage_estimated = i % 2 == 0;
        r.attempts = 1 + (i % 4) as i32;
        r
    };
    let first: Vec<_> = (0..1_000).map(record).collect();
    store.insert_usage(&first).await.unwrap();
    // Overlaps the first batch by 500 and is 803 long: runs of 256, 256, 256, 32, 2 and 1.
    let later = |i| UsageRecord {
        attempts: 99,
        ..record(i)
    };
    let second: Vec<_> = (500..1_303).map(later).collect();
    store.insert_usage(&second).await.unwrap();
    store.insert_usage(&[]).await.unwrap();
    let all = store.usage_records().await.unwrap();
    assert_eq!(&all[..before.len()], &before[..]);
    // The stored version of a repeat is kept.
    let expected: Vec<_> = (0..1_000)
        .map(record)
        .chain((1_000..1_303).map(later))
        .collect();
    assert_eq!(all.len() - before.len(), expected.len());
    for (got, want) in all[before.len()..].iter().zip(&expected) {
        assert_eq!(got, want);
    }
}

/// A SQLite store in a new folder (kept while the folder lives).
async fn temp_sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .unwrap();
    (dir, store)
}

#[tokio::test]
async fn sqlite_budgets_spend_and_usage_report() {
    let (_dir, store) = temp_sqlite().await;
    exercise_budgets(&store).await;
    exercise_bulk_usage(&store).await;
}

/// A batch cut into several statements is one transaction: when its last statement fails,
/// none of the batch is stored, so a retry never finds half of it.
#[tokio::test]
async fn a_batch_of_several_statements_lands_whole_or_not_at_all() {
    let (_dir, store) = temp_sqlite().await;
    let Store::Sqlite(pool) = &store else {
        unreachable!("a sqlite:// URL opens SQLite")
    };
    sqlx::query(
        "CREATE TRIGGER poison BEFORE INSERT ON usage_records WHEN NEW.id = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
    )
    .execute(pool)
    .await
    .unwrap();
    // 300 records: runs of 256, 32, 8 and 4; the poisoned one is in the last run.
    let mut batch: Vec<_> = (0..300)
        .map(|i| usage(&format!("r{i}"), i, "t", "k", "m", 0.1))
        .collect();
    batch[298].id = "poison".into();
    let err = store.insert_usage(&batch).await.unwrap_err();
    assert!(err.to_string().contains("poisoned"), "{err}");
    assert_eq!(store.usage_records().await.unwrap(), []);
    batch[298].id = "r298".into();
    store.insert_usage(&batch).await.unwrap();
    assert_eq!(store.usage_records().await.unwrap().len(), 300);
}

#[tokio::test]
async fn postgres_budgets_spend_and_usage_report() {
    let (url, schema) = pg_schema().await;
    let store = Store::open(&url).await.unwrap();
    exercise_budgets(&store).await;
    exercise_bulk_usage(&store).await;
    drop(store);
    drop_schema(&schema).await;
}
