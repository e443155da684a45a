//! `GET /admin/config` (the configuration this pod runs: version, hash, when and how it was
//! applied, the document with secrets redacted) and `PUT /admin/config` (replace it, see
//! [`crate::live`]). Both behind the admin token.

use axum::body::Body;
use axum::extract::State;
use axum::Json;
use http::{header, HeaderMap};
use serde_json::{json, Value};

use super::{body, AppState};
use crate::config::DocSource;
use crate::error::{Error, Kind};
use crate::live::{self, Applied, Refused, Source};
use crate::state::Meta;

/// The largest configuration document accepted (a thousand providers fit).
const MAX_DOCUMENT_BYTES: usize = 4 << 20;

fn describe(m: &Meta) -> Value {
    json!({
        "version": m.version,
        "hash": m.hash,
        "applied_at": crate::config::budget::rfc3339(m.applied_at_ms),
        "source": m.source,
    })
}

/// `GET /admin/config`.
pub async fn get(State(gw): State<AppState>) -> Json<Value> {
    let cfg = gw.config();
    let mut v = describe(&cfg.meta);
    // What the configuration enabled: models per provider (catalog and discovery included).
    let providers: Vec<Value> = cfg
        .registry
        .providers()
        .iter()
        .map(|p| {
            let models = cfg
                .registry
                .entries()
                .iter()
                .filter(|e| e.provider.name == p.name)
                .count();
            json!({"name": p.name, "models": models})
        })
        .collect();
    v["providers"] = json!(providers);
    v["config"] = serde_json::to_value(&cfg.meta.redacted).unwrap_or(Value::Null);
    Json(v)
}

/// `PUT /admin/config`: a YAML (`application/yaml`) or JSON (`application/json`) document.
/// 200 with what runs now (`changed: false` if it already did); 422 naming the field, or the
/// settings that need a restart, with the running configuration unchanged.
pub async fn put(
    State(gw): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Error> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let yaml = match media.as_str() {
        "application/json" => false,
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => true,
        _ => {
            return Err(Error::new(
                Kind::UnsupportedMediaType,
                "Send the configuration as application/json or application/yaml.",
            )
            .with_code("unsupported_media_type"))
        }
    };
    let bytes = body::read(&headers, body, MAX_DOCUMENT_BYTES).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::invalid("", "The configuration is not UTF-8 text."))?;
    let source = DocSource::Pushed;
    let parsed = if yaml {
        crate::config::parse_replacement(source.name(), text)
    } else {
        crate::config::parse_json(source.name(), text)
    };
    let doc = match parsed {
        Ok(d) => d,
        Err(e) => {
            let r = Refused::Invalid(e);
            live::report_refused(&gw, Source::Push, &r);
            return Err(refused(r));
        }
    };
    match live::apply(&gw, doc, source, Source::Push).await {
        Ok(Applied::Swapped(m)) => {
            let mut v = describe(&m);
            v["changed"] = json!(true);
            Ok(Json(v))
        }
        Ok(Applied::Unchanged(m)) => {
            let mut v = describe(&m);
            v["changed"] = json!(false);
            Ok(Json(v))
        }
        Err(r) => Err(refused(r)),
    }
}

fn refused(r: Refused) -> Error {
    match r {
        Refused::Invalid(e) => {
            let e2 = Error::new(Kind::Config, e.to_string()).with_code("invalid_config");
            if e.path.is_empty() {
                e2
            } else {
                e2.with_param(&e.path)
            }
        }
        r @ Refused::NeedsRestart(_) => {
            Error::new(Kind::Config, r.to_string()).with_code("needs_restart")
        }
        r @ Refused::Build(_) => Error::new(Kind::Config, r.to_string()).with_code("build_failed"),
    }
}
