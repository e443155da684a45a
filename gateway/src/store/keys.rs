//! Virtual API keys. A key is `sk-lgw-` and 48 hex digits (192 random bits); only its
//! SHA-256 is stored, with its first 14 characters for people to recognise it by.

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// Prefix of every key.
pub const KEY_PREFIX: &str = "sk-lgw-";

/// A stored key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// Stable id.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// A human name.
    pub name: String,
    /// The key's first characters.
    pub key_prefix: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, when revoked.
    pub revoked_at: Option<i64>,
    /// Model patterns this key may use (`provider/model`, a bare name, `provider/*`),
    /// sorted and without repeats (the cache scopes answers by this exact list); `None` for
    /// every model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
}

impl KeyRecord {
    /// Whether this key may use `provider/model`.
    pub fn allows(&self, provider: &str, model: &str) -> bool {
        self.allowed_models.as_ref().is_none_or(|list| {
            list.iter().any(|p| match p.split_once('/') {
                Some((prov, "*")) => prov == provider,
                _ => p == model || *p == format!("{provider}/{model}"),
            })
        })
    }
}

/// SHA-256 of a key, hex.
pub fn hash_key(key: &str) -> String {
    digest(&SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An allow-list in its one stored form: sorted, without repeats.
fn normalized(mut list: Vec<String>) -> Vec<String> {
    list.sort_unstable();
    list.dedup();
    list
}

fn new_key() -> String {
    let mut bytes = [0u8; 24];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random generator works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{KEY_PREFIX}{hex}")
}

fn now() -> i64 {
    crate::clock::unix_now() as i64
}

fn record(row: &impl RowLike) -> Result<KeyRecord, sqlx::Error> {
    Ok(KeyRecord {
        id: row.text("id")?,
        tenant: row.text("tenant")?,
        name: row.text("name")?,
        key_prefix: row.text("key_prefix")?,
        created_at: row.int("created_at")?,
        revoked_at: row.opt_int("revoked_at")?,
        allowed_models: row
            .opt_text("allowed_models")?
            .and_then(|j| serde_json::from_str(&j).ok())
            .map(normalized),
    })
}

/// Column access shared by the two backends' rows.
trait RowLike {
    fn text(&self, c: &str) -> Result<String, sqlx::Error>;
    fn int(&self, c: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, c: &str) -> Result<Option<i64>, sqlx::Error>;
    fn opt_text(&self, c: &str) -> Result<Option<String>, sqlx::Error>;
}

macro_rules! row_like {
    ($t:ty) => {
        impl RowLike for $t {
            fn text(&self, c: &str) -> Result<String, sqlx::Error> {
                self.try_get(c)
            }
            fn int(&self, c: &str) -> Result<i64, sqlx::Error> {
                self.try_get(c)
            }
            fn opt_int(&self, c: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(c)
            }
            fn opt_text(&self, c: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(c)
            }
        }
    };
}
row_like!(sqlx::postgres::PgRow);
row_like!(sqlx::sqlite::SqliteRow);

/// The selected columns, as a literal for `concat!` (sqlx takes only literal SQL).
macro_rules! columns {
    () => {
        "id, tenant, name, key_prefix, created_at, revoked_at, allowed_models"
    };
}

impl Store {
    /// Creates a key; returns its record and the key, which is not stored and cannot be shown
    /// again.
    pub async fn create_key(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<(KeyRecord, String), StoreError> {
        self.create_key_with(tenant, name, None).await
    }

    /// [`Store::create_key`], limited to `allowed_models` when given.
    pub async fn create_key_with(
        &self,
        tenant: &str,
        name: &str,
        allowed_models: Option<Vec<String>>,
    ) -> Result<(KeyRecord, String), StoreError> {
        let key = new_key();
        let rec = KeyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            key_prefix: key[..14].to_owned(),
            created_at: now(),
            revoked_at: None,
            allowed_models: allowed_models.map(normalized),
        };
        let hash = hash_key(&key);
        let allowed = rec
            .allowed_models
            .as_ref()
            .map(|l| serde_json::to_string(l).unwrap_or_default());
        match self {
            Store::Postgres(p) => {
                sqlx::query("INSERT INTO virtual_keys (id, tenant, name, key_hash, key_prefix, created_at, allowed_models) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(&rec.id).bind(&rec.tenant).bind(&rec.name).bind(&hash).bind(&rec.key_prefix).bind(rec.created_at).bind(&allowed)
                    .execute(p).await?;
            }
            Store::Sqlite(p) => {
                sqlx::query("INSERT INTO virtual_keys (id, tenant, name, key_hash, key_prefix, created_at, allowed_models) VALUES (?, ?, ?, ?, ?, ?, ?)")
                    .bind(&rec.id).bind(&rec.tenant).bind(&rec.name).bind(&hash).bind(&rec.key_prefix).bind(rec.created_at).bind(&allowed)
                    .execute(p).await?;
            }
        }
        Ok((rec, key))
    }

    /// Every key, newest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM virtual_keys ORDER BY created_at DESC, id"
        );
        Ok(match self {
            Store::Postgres(p) => sqlx::query(SQL)
                .fetch_all(p)
                .await?
                .iter()
                .map(record)
                .collect::<Result<_, _>>()?,
            Store::Sqlite(p) => sqlx::query(SQL)
                .fetch_all(p)
                .await?
                .iter()
                .map(record)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Revokes a key by id; false if no such key or already revoked.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let n = match self {
            Store::Postgres(p) => sqlx::query(
                "UPDATE virtual_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now())
            .bind(id)
            .execute(p)
            .await?
            .rows_affected(),
            Store::Sqlite(p) => sqlx::query(
                "UPDATE virtual_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            )
            .bind(now())
            .bind(id)
            .execute(p)
            .await?
            .rows_affected(),
        };
        Ok(n == 1)
    }

    /// The key with this hash, revoked or not.
    pub async fn find_key(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(match self {
            Store::Postgres(p) => sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM virtual_keys WHERE key_hash = $1"
            ))
            .bind(hash)
            .fetch_optional(p)
            .await?
            .as_ref()
            .map(record)
            .transpose()?,
            Store::Sqlite(p) => sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM virtual_keys WHERE key_hash = ?"
            ))
            .bind(hash)
            .fetch_optional(p)
            .await?
            .as_ref()
            .map(record)
            .transpose()?,
        })
    }
}
