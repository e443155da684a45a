//! `GET /v1/models` and `GET /v1/models/{id}`: enabled models, then the virtual ones.

use axum::extract::{Path, State};
use axum::Json;
use llm_gateway_crds::ModelKind;
use serde_json::{json, Value};

use super::AppState;
use crate::error::{Error, Kind};
use crate::models::registry::Entry;

/// `created` of every model: when the configuration serving it was applied, Unix seconds
/// (clients sort and show it; 0 reads as 1970).
fn created(cfg: &crate::state::Snapshot) -> i64 {
    cfg.meta.applied_at_ms / 1000
}

fn model_object(id: String, e: &Entry, created: i64) -> Value {
    let i = &e.info;
    let mut caps = Vec::new();
    if let Some(c) = i.capabilities {
        for (has, name) in [(c.tools, "tools"), (c.vision, "vision"), (c.json, "json")] {
            if has {
                caps.push(name);
            }
        }
    }
    json!({
        "id": id,
        "object": "model",
        "created": created,
        "owned_by": e.provider.name,
        "llm_gateway": {
            "provider": e.provider.name,
            "upstream_model": i.name,
            "kind": match i.kind { ModelKind::Chat => "chat", ModelKind::Embedding => "embedding" },
            "context_window": i.context_window,
            "max_output_tokens": i.max_output_tokens,
            "input_usd_per_mtok": i.price.map(|p| p.input_per_mtok),
            "output_usd_per_mtok": i.price.map(|p| p.output_per_mtok),
            "capabilities": i.capabilities.map(|_| caps),
            "local": e.provider.is_local(),
        },
    })
}

fn virtual_objects(cfg: &crate::state::Snapshot) -> Vec<Value> {
    let created = created(cfg);
    cfg.router
        .virtuals()
        .map(|(v, pool)| {
            json!({
                "id": v.name,
                "object": "model",
                "created": created,
                "owned_by": "llm-gateway",
                "llm_gateway": {
                    "virtual": true,
                    "strategy": crate::router::strategy_name(v.strategy),
                    "candidates": pool,
                    "local_preference": v.local_preference,
                    "classify": v.classify,
                },
            })
        })
        .collect()
}

/// `GET /v1/models`: every enabled model the caller may use (its key's allow-list, and no
/// provider reserved for other namespaces), then the virtual ones.
pub async fn list(
    State(gw): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
) -> Json<Value> {
    let cfg = gw.config();
    let allowed = crate::auth::AllowedModels::of(&caller);
    let entries = cfg.registry.entries();
    let mut data: Vec<Value> = (0..entries.len())
        .filter(|&i| {
            allowed
                .check_target(&entries[i].provider, &entries[i].model)
                .is_ok()
        })
        .map(|i| model_object(cfg.registry.public_name(i), &entries[i], created(&cfg)))
        .collect();
    data.extend(virtual_objects(&cfg));
    Json(json!({"object": "list", "data": data}))
}

/// One model by any name that resolves to it (403 or 404 as a request for it would get,
/// when the caller may not use it).
pub async fn get(
    State(gw): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let cfg = gw.config();
    if let Some(v) = virtual_objects(&cfg)
        .into_iter()
        .find(|v| v["id"] == id.as_str())
    {
        return Ok(Json(v));
    }
    let t = cfg.registry.resolve(&id)?;
    crate::auth::AllowedModels::of(&caller).check_target(&t.provider, &t.model)?;
    let found = cfg.registry.entries().iter().find(|e| {
        e.provider.name == t.provider.name && t.info.as_ref().is_some_and(|i| i.name == e.info.name)
    });
    match found {
        Some(e) => Ok(Json(model_object(id, e, created(&cfg)))),
        None => Err(Error::new(
            Kind::NotFound,
            format!("The model `{id}` is not in the catalog of provider `{}`; it can still be requested by that name.", t.provider.name),
        )
        .with_code("model_not_found")),
    }
}
