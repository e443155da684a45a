//! `llm-gateway keys ...` and `llm-gateway budgets ...`: the administration service (the same
//! checks as the admin API) with tables for a terminal.

use std::process::ExitCode;

use llm_gateway::admin::{Admin, AdminError};
use llm_gateway::clock::{Clock, SystemClock};
use llm_gateway::config::budget::{from_nano, Budget, OnLimit, Period};

use super::{open_store, BudgetsAction, DbArgs, KeysAction};

/// Exit code and message of a failed command: 2 for a bad argument, 1 for the database.
fn fail(e: AdminError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        AdminError::Invalid(_) => ExitCode::from(2),
        AdminError::Store(_) => ExitCode::FAILURE,
    }
}

/// Runs a `keys` subcommand.
pub async fn keys(action: KeysAction, db: DbArgs) -> ExitCode {
    let admin = match open_store(&db).await {
        Ok(s) => Admin::new(s),
        Err(code) => return code,
    };
    match action {
        KeysAction::Create {
            tenant,
            name,
            allow_models,
        } => {
            let allowed = (!allow_models.is_empty()).then_some(allow_models);
            match admin.create_key(&tenant, &name, allowed).await {
                Ok((rec, key)) => {
                    println!("{key}");
                    eprintln!(
                        "created key {} for tenant {} ({}); the key above is shown only once",
                        rec.id, rec.tenant, rec.key_prefix
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysAction::List => match admin.list_keys().await {
            Ok(keys) => {
                println!(
                    "{:<36}  {:<16}  {:<16}  {:<14}  status",
                    "id", "tenant", "name", "prefix"
                );
                for k in keys {
                    let status = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<36}  {:<16}  {:<16}  {:<14}  {status}",
                        k.id, k.tenant, k.name, k.key_prefix
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        KeysAction::Revoke { id } => match admin.revoke_key(&id).await {
            Ok(true) => {
                eprintln!("revoked {id}");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                eprintln!("error: no active key with id {id}");
                ExitCode::from(1)
            }
            Err(e) => fail(e),
        },
    }
}

/// Runs a `budgets` subcommand.
pub async fn budgets(action: BudgetsAction, db: DbArgs) -> ExitCode {
    let admin = match open_store(&db).await {
        Ok(s) => Admin::new(s),
        Err(code) => return code,
    };
    match action {
        BudgetsAction::Set {
            scope,
            usd,
            tokens,
            period,
            rpm,
            tpm,
            on_limit,
        } => {
            let b = Budget {
                scope: scope.scope(),
                period: Period::parse(&period).unwrap_or_default(),
                limit_usd: usd,
                limit_tokens: tokens,
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
                on_limit: if on_limit == "downgrade" {
                    OnLimit::Downgrade
                } else {
                    OnLimit::Reject
                },
                declared_by: None,
            };
            match admin.put_budget(&b).await {
                Ok(()) => {
                    eprintln!(
                        "set the {} budget; running gateways apply it within 5 seconds",
                        b.scope.describe()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        BudgetsAction::List => match admin.budgets_with_spend(SystemClock.now_ms()).await {
            Ok(list) => {
                println!(
                    "{:<8} {:<38} {:<6} {:>12} {:>12} {:>12} {:>14} {:>8} {:>10}  on limit",
                    "scope",
                    "subject",
                    "period",
                    "limit usd",
                    "spent usd",
                    "limit tok",
                    "spent tok",
                    "rpm",
                    "tpm"
                );
                for s in list {
                    let b = &s.budget;
                    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                    println!(
                        "{:<8} {:<38} {:<6} {:>12} {:>12.6} {:>12} {:>14} {:>8} {:>10}  {}",
                        b.scope.kind(),
                        b.scope.subject(),
                        b.period.name(),
                        opt(b.limit_usd.map(|v| format!("{v:.2}"))),
                        from_nano(s.spent_nano),
                        opt(b.limit_tokens.map(|v| v.to_string())),
                        s.spent_tokens,
                        opt(b.requests_per_minute.map(|v| v.to_string())),
                        opt(b.tokens_per_minute.map(|v| v.to_string())),
                        b.on_limit.name()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        BudgetsAction::Delete { scope } => match admin.delete_budget(&scope.scope()).await {
            Ok(true) => {
                eprintln!("deleted the {} budget", scope.scope().describe());
                ExitCode::SUCCESS
            }
            Ok(false) => {
                eprintln!("error: no {} budget", scope.scope().describe());
                ExitCode::from(1)
            }
            Err(e) => fail(e),
        },
    }
}
