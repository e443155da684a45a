//! The key store against real SQLite and real PostgreSQL (127.0.0.1:5432, user postgres,
//! database `test`); each PostgreSQL test works in a schema of its own.

mod common;

use common::{drop_schema, pg_schema};
use llm_gateway::store::keys::hash_key;
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
