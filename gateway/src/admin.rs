//! Key and budget administration: one service, with one set of checks, behind both the CLI
//! (`llm-gateway keys|budgets ...`) and the admin HTTP API (`/admin/keys`, `/admin/budgets`).

use crate::config::budget::{Budget, Scope};
use crate::error::{Error, Kind};
use crate::store::keys::KeyRecord;
use crate::store::{Store, StoreError};

/// Longest tenant and key name.
pub const MAX_NAME: usize = 128;
/// Most model patterns on one key.
pub const MAX_ALLOWED_MODELS: usize = 256;

/// What may go wrong: the request (a field), or the database.
#[derive(Debug)]
pub enum AdminError {
    /// The request is wrong; the error names the field.
    Invalid(Error),
    /// The database failed.
    Store(StoreError),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Store(e)
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::Invalid(e) => f.write_str(&e.message),
            AdminError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// A budget and what was spent under it in its current period.
#[derive(Debug, Clone)]
pub struct BudgetSpend {
    /// The budget.
    pub budget: Budget,
    /// Nano-dollars spent this period.
    pub spent_nano: i64,
    /// Tokens spent this period.
    pub spent_tokens: i64,
}

/// Administration over a key store.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Store,
}

impl Admin {
    /// Administration of `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Creates a key for `tenant`; returns its record and the key itself (shown once).
    pub async fn create_key(
        &self,
        tenant: &str,
        name: &str,
        allowed_models: Option<Vec<String>>,
    ) -> Result<(KeyRecord, String), AdminError> {
        let (tenant, name) = (tenant.trim(), name.trim());
        if tenant.is_empty() || tenant.len() > MAX_NAME {
            return Err(invalid(
                "tenant",
                format!("`tenant` must be 1 to {MAX_NAME} characters."),
            ));
        }
        if name.len() > MAX_NAME {
            return Err(invalid(
                "name",
                format!("`name` must be at most {MAX_NAME} characters."),
            ));
        }
        if let Some(list) = &allowed_models {
            if list.is_empty()
                || list.len() > MAX_ALLOWED_MODELS
                || list.iter().any(|m| m.trim().is_empty())
            {
                return Err(invalid(
                    "allowed_models",
                    format!("`allowed_models` must list 1 to {MAX_ALLOWED_MODELS} non-empty model patterns (`provider/model`, a model name, `provider/*`), or be omitted for every model."),
                ));
            }
        }
        Ok(self
            .store
            .create_key_with(tenant, name, allowed_models)
            .await?)
    }

    /// Every key (never the keys themselves).
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, AdminError> {
        Ok(self.store.list_keys().await?)
    }

    /// Revokes key `id`; `false` if there is no active key with that id.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, AdminError> {
        Ok(self.store.revoke_key(id.trim()).await?)
    }

    /// Creates or replaces the budget of `b`'s scope, after checking its limits and that
    /// its subject exists (a key budget names a key id).
    pub async fn put_budget(&self, b: &Budget) -> Result<(), AdminError> {
        b.validate().map_err(AdminError::Invalid)?;
        let subject = b.scope.subject();
        if b.scope != Scope::Global && (subject.trim().is_empty() || subject.len() > MAX_NAME) {
            return Err(invalid(
                "subject",
                format!("a tenant or key budget names its subject (1 to {MAX_NAME} characters)"),
            ));
        }
        if let Scope::Key(id) = &b.scope {
            if !self.store.list_keys().await?.iter().any(|k| &k.id == id) {
                return Err(AdminError::Invalid(
                    Error::invalid(
                        "subject",
                        format!("No key with id `{id}` (see the list of keys)."),
                    )
                    .with_code("key_not_found"),
                ));
            }
        }
        Ok(self.store.put_budget(b).await?)
    }

    /// Deletes the budget of `scope`; `false` if there was none.
    pub async fn delete_budget(&self, scope: &Scope) -> Result<bool, AdminError> {
        Ok(self.store.delete_budget(scope).await?)
    }

    /// Every budget with its recorded spend in the period that contains `now_ms`.
    pub async fn budgets_with_spend(&self, now_ms: i64) -> Result<Vec<BudgetSpend>, AdminError> {
        let mut out = Vec::new();
        for b in self.store.list_budgets().await? {
            let w = b.period.window(now_ms);
            let (spent_nano, spent_tokens) =
                self.store.spend(&b.scope, w.start_ms, w.end_ms).await?;
            out.push(BudgetSpend {
                budget: b,
                spent_nano,
                spent_tokens,
            });
        }
        Ok(out)
    }

    /// The store behind it.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

fn invalid(field: &str, message: String) -> AdminError {
    AdminError::Invalid(Error::new(Kind::InvalidRequest, message).with_param(field))
}
