//! Budgets and usage over HTTP: the admin API edits budgets and reports spend; a key reads
//! its own remaining budget at `GET /v1/budget`.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{admin, admin_error};
use super::AppState;
use crate::auth::Caller;
use crate::config::budget::{Budget, Period, Scope};
use crate::error::{Error, Kind};

fn engine(gw: &AppState) -> Result<&std::sync::Arc<crate::budget::Budgets>, Error> {
    gw.budgets.as_ref().ok_or_else(|| {
        Error::new(
            Kind::Unavailable,
            "This gateway runs without a database, so without budgets.",
        )
        .with_code("no_database")
    })
}

/// `GET /admin/budgets`: every budget in force (stored, and declared by the configuration:
/// those carry `declared_by`) with its figures in the current period.
pub async fn list(State(gw): State<AppState>) -> Result<Json<Value>, Error> {
    let engine = engine(&gw)?;
    let status = engine.status(&engine.all()).await;
    Ok(Json(json!({ "budgets": status })))
}

/// A declared budget cannot be changed here: its configuration owns it.
fn refuse_declared(gw: &AppState, scope: &Scope) -> Result<(), Error> {
    match engine(gw)?.declared(scope) {
        None => Ok(()),
        Some(d) => Err(Error::new(
            Kind::Forbidden,
            format!(
                "The {} budget is declared by {}; change it there.",
                scope.describe(),
                d.declared_by.as_deref().unwrap_or("the configuration")
            ),
        )
        .with_code("declared_budget")),
    }
}

/// `PUT /admin/budgets` with a budget: creates or replaces the budget of its scope. Applies on
/// this replica at once and on the others within the refresh interval.
pub async fn put(
    State(gw): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    let (raw, b): (_, Budget) = super::body::parse(&body)?;
    // `Budget` flattens its scope, and serde cannot refuse unknown fields through a flatten:
    // a typo (`requests_per_min`) would otherwise store a budget without that limit.
    if let Some(k) = raw
        .keys()
        .find(|k| !BUDGET_FIELDS.contains(&k.as_str()) && !STATUS_FIELDS.contains(&k.as_str()))
    {
        return Err(Error::invalid(
            k.as_str(),
            format!(
                "Unknown field `{k}`: a budget takes {}.",
                BUDGET_FIELDS.join(", ")
            ),
        ));
    }
    refuse_declared(&gw, &b.scope)?;
    admin(&gw)?.put_budget(&b).await.map_err(admin_error)?;
    engine(&gw)?
        .reload()
        .await
        .map_err(|e| admin_error(e.into()))?;
    Ok(Json(serde_json::to_value(&b).unwrap_or_default()))
}

/// The fields `PUT /admin/budgets` takes.
const BUDGET_FIELDS: [&str; 8] = [
    "scope",
    "subject",
    "period",
    "limit_usd",
    "limit_tokens",
    "requests_per_minute",
    "tokens_per_minute",
    "on_limit",
];

/// What `GET /admin/budgets` adds to each budget: read-only figures, ignored when an item is
/// PUT back as it came (get, change a limit, put).
const STATUS_FIELDS: [&str; 9] = [
    "period_start",
    "resets_at",
    "used_usd",
    "reserved_usd",
    "remaining_usd",
    "used_tokens",
    "reserved_tokens",
    "remaining_tokens",
    "declared_by",
];

/// `DELETE /admin/budgets/global`, `/admin/budgets/tenant/{name}`, `/admin/budgets/key/{id}`.
pub async fn delete(
    State(gw): State<AppState>,
    Path(path): Path<String>,
) -> Result<Json<Value>, Error> {
    let (kind, subject) = path.split_once('/').unwrap_or((path.as_str(), ""));
    let scope = Scope::from_parts(kind, subject).ok_or_else(|| {
        Error::invalid(
            "scope",
            "Use /admin/budgets/global, /admin/budgets/tenant/{name} or /admin/budgets/key/{id}.",
        )
    })?;
    refuse_declared(&gw, &scope)?;
    if !admin(&gw)?
        .delete_budget(&scope)
        .await
        .map_err(admin_error)?
    {
        return Err(
            Error::new(Kind::NotFound, format!("No {} budget.", scope.describe()))
                .with_code("budget_not_found"),
        );
    }
    engine(&gw)?
        .reload()
        .await
        .map_err(|e| admin_error(e.into()))?;
    Ok(Json(
        json!({"deleted": true, "scope": scope.kind(), "subject": scope.subject()}),
    ))
}

/// Query of `GET /admin/usage`.
#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    /// First day, `YYYY-MM-DD` (default: the first of this month, UTC).
    from: Option<String>,
    /// Last day, inclusive (default: today).
    to: Option<String>,
    /// Only this tenant.
    tenant: Option<String>,
    /// Only this key.
    key_id: Option<String>,
}

fn day_ms(param: &str, v: &str) -> Result<i64, Error> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(v, &fmt)
        .map(|d| (d.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            Error::invalid(
                param,
                format!("`{param}` must be a date YYYY-MM-DD, got `{v}`."),
            )
        })
}

/// `GET /admin/usage?from=&to=&tenant=&key_id=`: spend per UTC day, tenant, key and model,
/// with totals.
pub async fn report(
    State(gw): State<AppState>,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, Error> {
    let Query(q) = query.map_err(|e| Error::invalid("", e.body_text()))?;
    let now = gw.budgets.as_ref().map_or_else(
        || crate::clock::Clock::now_ms(&crate::clock::SystemClock),
        |e| e.now_ms(),
    );
    let from = match &q.from {
        Some(v) => day_ms("from", v)?,
        None => Period::Month.window(now).start_ms,
    };
    let to = match &q.to {
        Some(v) => day_ms("to", v)? + 86_400_000,
        None => Period::Day.window(now).end_ms,
    };
    if to <= from {
        return Err(Error::invalid("to", "`to` must not be before `from`."));
    }
    let rows = admin(&gw)?
        .store()
        .usage_report(from, to, q.tenant.as_deref(), q.key_id.as_deref())
        .await
        .map_err(|e| admin_error(e.into()))?;
    let total_cost: f64 = rows.iter().map(|r| r.cost_usd).sum();
    let total_requests: i64 = rows.iter().map(|r| r.requests).sum();
    let tokens: i64 = rows
        .iter()
        .map(|r| r.prompt_tokens + r.completion_tokens)
        .sum();
    Ok(Json(json!({
        "from": crate::config::budget::rfc3339(from),
        "to": crate::config::budget::rfc3339(to),
        "rows": rows,
        "total": {"requests": total_requests, "tokens": tokens, "cost_usd": total_cost},
    })))
}

/// `GET /v1/budget`: the calling key's budgets (its own, its tenant's, the global one) with
/// what is left of each in the current period.
pub async fn mine(
    State(gw): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, Error> {
    let Caller::Key(key) = &caller else {
        return Err(Error::new(
            Kind::Unauthenticated,
            "Send a virtual key (Authorization: Bearer sk-lgw-…) to see its budget.",
        )
        .with_code("invalid_api_key"));
    };
    let engine = engine(&gw)?;
    let budgets = engine.covering(&caller);
    let status: Vec<Value> = engine
        .status(&budgets)
        .await
        .into_iter()
        .map(|b| match b.budget.scope {
            // Other tenants' traffic moves the global figures: a key sees only whether it
            // is exhausted.
            Scope::Global => json!({
                "scope": "global",
                "period": b.budget.period.name(),
                "resets_at": b.resets_at,
                "exhausted": b.remaining_usd.is_some_and(|r| r <= 0.0)
                    || b.remaining_tokens.is_some_and(|r| r <= 0),
            }),
            _ => serde_json::to_value(&b).unwrap_or_default(),
        })
        .collect();
    let month = Period::Month.window(engine.now_ms());
    let (nano, tokens) = match gw.auth.store() {
        Some(s) => s
            .spend(&Scope::Key(key.id.clone()), month.start_ms, month.end_ms)
            .await
            .map_err(|e| admin_error(e.into()))?,
        None => (0, 0),
    };
    Ok(Json(json!({
        "key_id": key.id,
        "tenant": key.tenant,
        "budgets": status,
        "this_month": {
            "cost_usd": crate::config::budget::from_nano(nano),
            "tokens": tokens,
            "note": "recorded usage; requests of the last second may still be on their way to the database",
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list names every field a budget is written with, and nothing else.
    fn every_limit(declared_by: Option<String>) -> Budget {
        Budget {
            scope: Scope::Tenant("t".into()),
            period: Default::default(),
            limit_usd: Some(1.0),
            limit_tokens: Some(1),
            requests_per_minute: Some(1),
            tokens_per_minute: Some(1),
            on_limit: Default::default(),
            declared_by,
        }
    }

    fn keys_of(v: impl serde::Serialize) -> Vec<String> {
        let mut keys: Vec<String> = serde_json::to_value(v)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort_unstable();
        keys
    }

    fn sorted(lists: &[&[&str]]) -> Vec<String> {
        let mut all: Vec<String> = lists.concat().into_iter().map(String::from).collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn the_budget_field_list_is_the_budgets_fields() {
        assert_eq!(keys_of(every_limit(None)), sorted(&[&BUDGET_FIELDS]));
    }

    /// An item of `GET /admin/budgets` PUT back as it came must be accepted: every field the
    /// listing writes is either a budget field or a read-only figure.
    #[test]
    fn the_status_field_list_is_what_the_listing_adds() {
        let status = crate::budget::BudgetStatus {
            budget: every_limit(Some("BudgetPolicy team/monthly".into())),
            period_start: String::new(),
            resets_at: String::new(),
            used_usd: 0.0,
            reserved_usd: 0.0,
            remaining_usd: Some(0.0),
            used_tokens: 0,
            reserved_tokens: 0,
            remaining_tokens: Some(0),
        };
        assert_eq!(keys_of(status), sorted(&[&BUDGET_FIELDS, &STATUS_FIELDS]));
    }
}
