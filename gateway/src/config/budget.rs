//! What a budget is: whom it covers, over which period, its limits, and what happens at the
//! limit. Budgets are stored in the database (edited through the admin API or the CLI) or
//! declared in the configuration's `budgets` section (what the operator compiles
//! `BudgetPolicy` resources into).

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month, OffsetDateTime, Time};

/// The largest amount (of either unit) one request reserves or settles: 2^53 − 1, the
/// largest integer the Redis scripts' doubles compare exactly (9 million USD in nano-dollars).
pub const MAX_AMOUNT: i64 = (1 << 53) - 1;

/// Whom a budget covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    tag = "scope",
    content = "subject",
    rename_all = "snake_case",
    try_from = "ScopeFields"
)]
pub enum Scope {
    /// Every request through the gateway.
    Global,
    /// Every key of a tenant.
    Tenant(String),
    /// One virtual key, by id.
    Key(String),
    /// Every tenant of a Kubernetes namespace: the tenant `namespace` and every
    /// `namespace/...` (its sidecars' and service accounts' calls).
    Namespace(String),
}

/// `scope` and `subject` as written: read through [`Scope::from_parts`], so `"subject": ""`
/// on a global budget is accepted and a missing subject is named, in words a person can act
/// on rather than serde's variant names.
#[derive(Deserialize)]
struct ScopeFields {
    scope: String,
    #[serde(default)]
    subject: Option<String>,
}

impl TryFrom<ScopeFields> for Scope {
    type Error = String;

    fn try_from(f: ScopeFields) -> Result<Self, String> {
        let subject = f.subject.as_deref().unwrap_or_default();
        match f.scope.as_str() {
            "global" if !subject.is_empty() => Err(format!(
                "a global budget covers every request and takes no `subject` (got `{subject}`)"
            )),
            "tenant" | "key" | "namespace" if subject.is_empty() => Err(format!(
                "a `{}` budget needs its `subject` (the {} it covers)",
                f.scope,
                match f.scope.as_str() {
                    "tenant" => "tenant name",
                    "key" => "key id",
                    _ => "namespace",
                }
            )),
            kind => Scope::from_parts(kind, subject).ok_or_else(|| {
                format!("unknown `scope` `{kind}`: use global, tenant, key or namespace")
            }),
        }
    }
}

impl Scope {
    /// `global`, `tenant`, `key` or `namespace`.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Tenant(_) => "tenant",
            Scope::Key(_) => "key",
            Scope::Namespace(_) => "namespace",
        }
    }

    /// The tenant name, key id or namespace (empty for global).
    pub fn subject(&self) -> &str {
        match self {
            Scope::Global => "",
            Scope::Tenant(s) | Scope::Key(s) | Scope::Namespace(s) => s,
        }
    }

    /// Rebuilds a scope from its stored parts.
    pub fn from_parts(kind: &str, subject: &str) -> Option<Scope> {
        match kind {
            "global" => Some(Scope::Global),
            "tenant" if !subject.is_empty() => Some(Scope::Tenant(subject.to_owned())),
            "key" if !subject.is_empty() => Some(Scope::Key(subject.to_owned())),
            "namespace" if !subject.is_empty() => Some(Scope::Namespace(subject.to_owned())),
            _ => None,
        }
    }

    /// `global`, `tenant team-a`, `key 3f…`: for messages.
    pub fn describe(&self) -> String {
        match self {
            Scope::Global => "global".to_owned(),
            Scope::Tenant(t) => format!("tenant `{t}`"),
            Scope::Key(k) => format!("key `{k}`"),
            Scope::Namespace(n) => format!("namespace `{n}`"),
        }
    }

    /// Whether a namespace scope covers `tenant` (it is the namespace or inside it).
    pub fn covers_tenant_of_namespace(namespace: &str, tenant: &str) -> bool {
        tenant == namespace
            || tenant
                .strip_prefix(namespace)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The period a budget's limits cover; every period starts at 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A UTC calendar month (the default).
    #[default]
    Month,
    /// An ISO week, Monday to Sunday, UTC.
    Week,
    /// A UTC day.
    Day,
}

impl Period {
    /// `month`, `week` or `day`.
    pub fn name(self) -> &'static str {
        match self {
            Period::Month => "month",
            Period::Week => "week",
            Period::Day => "day",
        }
    }

    /// Parses a stored or given period name.
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "month" => Some(Period::Month),
            "week" => Some(Period::Week),
            "day" => Some(Period::Day),
            _ => None,
        }
    }

    /// The window containing `now_ms`: its start and its end (the next start), Unix ms.
    pub fn window(self, now_ms: i64) -> Window {
        let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let today = now.date();
        let (start, end) = match self {
            Period::Day => (today, today + Duration::days(1)),
            Period::Week => {
                let monday =
                    today - Duration::days(i64::from(today.weekday().number_days_from_monday()));
                (monday, monday + Duration::days(7))
            }
            Period::Month => {
                let first = first_of(today.year(), today.month());
                let next = match today.month() {
                    Month::December => first_of(today.year() + 1, Month::January),
                    m => first_of(today.year(), m.next()),
                };
                (first, next)
            }
        };
        Window {
            start_ms: ms(start),
            end_ms: ms(end),
        }
    }
}

fn first_of(year: i32, month: Month) -> Date {
    Date::from_calendar_date(year, month, 1).unwrap_or(Date::MIN)
}

fn ms(d: Date) -> i64 {
    (d.with_time(Time::MIDNIGHT)
        .assume_utc()
        .unix_timestamp_nanos()
        / 1_000_000) as i64
}

/// One period's span, Unix ms, `start` inclusive and `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Inclusive start.
    pub start_ms: i64,
    /// Exclusive end: when the budget resets.
    pub end_ms: i64,
}

/// What happens when a request would exceed a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// 429 with the budget's figures and `Retry-After` (the default).
    #[default]
    Reject,
    /// Virtual models keep only candidates that still fit (cheaper ones, and free local
    /// ones); 429 when none does.
    Downgrade,
}

impl OnLimit {
    /// `reject` or `downgrade`.
    pub fn name(self) -> &'static str {
        match self {
            OnLimit::Reject => "reject",
            OnLimit::Downgrade => "downgrade",
        }
    }
}

/// One budget, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Whom it covers.
    #[serde(flatten)]
    pub scope: Scope,
    /// The period its spend limits cover.
    #[serde(default)]
    pub period: Period,
    /// Spend limit per period, USD.
    #[serde(default)]
    pub limit_usd: Option<f64>,
    /// Token limit per period (prompt + completion).
    #[serde(default)]
    pub limit_tokens: Option<u64>,
    /// Requests per minute.
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// At the limit: reject or downgrade.
    #[serde(default)]
    pub on_limit: OnLimit,
    /// Declared by the configuration (e.g. `BudgetPolicy team-a/monthly`), not stored in the
    /// database: the admin API and CLI cannot change it.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
}

impl Budget {
    /// Checks the figures; the error names the field at fault.
    pub fn validate(&self) -> Result<(), crate::error::Error> {
        use crate::error::Error;
        if let Some(u) = self.limit_usd {
            if !u.is_finite() || u < 0.0 {
                return Err(Error::invalid(
                    "limit_usd",
                    format!("`limit_usd` must be a non-negative number, got {u}"),
                ));
            }
            if u > MAX_USD {
                return Err(Error::invalid(
                    "limit_usd",
                    format!("`limit_usd` must be at most {MAX_USD}, got {u}"),
                ));
            }
        }
        for (name, v) in [
            ("limit_tokens", self.limit_tokens),
            ("requests_per_minute", self.requests_per_minute),
            ("tokens_per_minute", self.tokens_per_minute),
        ] {
            if v.is_some_and(|v| v > MAX_AMOUNT as u64) {
                return Err(Error::invalid(name, format!("`{name}` is too large")));
            }
        }
        if self.limit_usd.is_none()
            && self.limit_tokens.is_none()
            && self.requests_per_minute.is_none()
            && self.tokens_per_minute.is_none()
        {
            return Err(Error::invalid(
                "",
                "a budget needs at least one of `limit_usd`, `limit_tokens`, `requests_per_minute`, `tokens_per_minute`",
            ));
        }
        Ok(())
    }
}

/// The largest USD limit (counters are nano-dollars in 53-bit floats inside Redis scripts).
pub const MAX_USD: f64 = 1.0e6;

/// USD as integer nano-dollars, the unit of every counter (no float drift in sums).
pub fn to_nano(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

/// Nano-dollars as USD.
pub fn from_nano(n: i64) -> f64 {
    n as f64 / 1e9
}

/// Unix ms as RFC 3339 (`2026-12-01T00:00:00Z`).
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn at(t: OffsetDateTime) -> i64 {
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }

    #[test]
    fn months_are_utc_calendar_months() {
        let w = Period::Month.window(at(datetime!(2026-11-27 04:19:08 UTC)));
        assert_eq!(w.start_ms, at(datetime!(2026-11-01 00:00 UTC)));
        assert_eq!(w.end_ms, at(datetime!(2026-12-01 00:00 UTC)));
        let dec = Period::Month.window(at(datetime!(2026-12-31 23:59:59.999 UTC)));
        assert_eq!(dec.end_ms, at(datetime!(2027-01-01 00:00 UTC)));
        // The last millisecond of a month belongs to it; the next starts the new window.
        let edge = at(datetime!(2026-12-01 00:00 UTC));
        assert_eq!(Period::Month.window(edge - 1).end_ms, edge);
        assert_eq!(Period::Month.window(edge).start_ms, edge);
        let feb = Period::Month.window(at(datetime!(2028-02-29 12:00 UTC)));
        assert_eq!(feb.end_ms, at(datetime!(2028-03-01 00:00 UTC)));
    }

    #[test]
    fn weeks_start_on_monday_and_days_at_midnight() {
        // 2026-11-27 is a Friday.
        let w = Period::Week.window(at(datetime!(2026-11-27 10:00 UTC)));
        assert_eq!(w.start_ms, at(datetime!(2026-11-23 00:00 UTC)));
        assert_eq!(w.end_ms, at(datetime!(2026-11-30 00:00 UTC)));
        let d = Period::Day.window(at(datetime!(2026-11-27 23:59 UTC)));
        assert_eq!(d.end_ms, at(datetime!(2026-11-28 00:00 UTC)));
    }

    #[test]
    fn validation_names_the_field() {
        let mut b = Budget {
            scope: Scope::Global,
            period: Period::Month,
            limit_usd: Some(-1.0),
            limit_tokens: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            on_limit: OnLimit::Reject,
            declared_by: None,
        };
        assert_eq!(
            b.validate().unwrap_err().param.as_deref(),
            Some("limit_usd")
        );
        b.limit_usd = None;
        assert!(b.validate().unwrap_err().message.contains("at least one"));
        b.limit_tokens = Some(10);
        assert!(b.validate().is_ok());
    }

    #[test]
    fn nano_dollars_round_trip() {
        assert_eq!(to_nano(0.000_001_5), 1500);
        assert_eq!(from_nano(to_nano(12.345)), 12.345);
        assert_eq!(
            rfc3339(at(datetime!(2026-12-01 00:00 UTC))),
            "2026-12-01T00:00:00Z"
        );
    }

    #[test]
    fn scopes_read_from_scope_and_subject_with_errors_a_person_can_act_on() {
        let read = |j: &str| serde_json::from_str::<Scope>(j).map_err(|e| e.to_string());
        assert_eq!(read(r#"{"scope":"global"}"#), Ok(Scope::Global));
        assert_eq!(
            read(r#"{"scope":"global","subject":""}"#),
            Ok(Scope::Global)
        );
        assert_eq!(
            read(r#"{"scope":"tenant","subject":"team-a"}"#),
            Ok(Scope::Tenant("team-a".into()))
        );
        assert!(read(r#"{"scope":"global","subject":"x"}"#)
            .unwrap_err()
            .contains("takes no `subject`"));
        assert!(read(r#"{"scope":"key"}"#)
            .unwrap_err()
            .contains("needs its `subject`"));
        assert!(read(r#"{"scope":"planet","subject":"x"}"#)
            .unwrap_err()
            .contains("use global, tenant, key or namespace"));
        // Written back as before: a global scope has no subject.
        assert_eq!(
            serde_json::to_value(Scope::Global).unwrap(),
            serde_json::json!({"scope": "global"})
        );
    }
}
