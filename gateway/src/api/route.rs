//! `POST /v1/route`: the routing decision for a chat request, without calling a provider.
//! Takes the same body as `/v1/chat/completions`; returns the tier and classifier features,
//! the weights, every candidate with each part of its score, and the excluded models with
//! their reasons.

use axum::body::Body;
use axum::extract::State;
use axum::Json;
use http::HeaderMap;
use serde_json::{json, Value};

use super::{body, chat, AppState};
use crate::error::Error;
use crate::wire::ChatRequest;

/// `POST /v1/route`: the routing decision a chat request would get, without calling anyone.
pub async fn handle(
    State(gw): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Error> {
    let cfg = gw.config();
    let bytes = body::read(&headers, body, cfg.max_body_bytes).await?;
    let (raw, req): (_, ChatRequest) = body::parse(&bytes)?;
    chat::validate(&req)?;
    // The filters the request itself would meet: the decision shown is the one it gets.
    let breakers = crate::router::BreakerFilter::now();
    let allowed = crate::auth::AllowedModels::of(&caller);
    let routed = cfg.router.route(
        &cfg.registry,
        &req,
        caller.tenant(),
        raw.get("tools"),
        &[&breakers, &allowed],
    )?;
    allowed.check_target(&routed.target.provider, &routed.target.model)?;
    Ok(Json(match &routed.decision {
        Some(d) => json!({
            "model": req.model,
            "virtual": true,
            "chosen": d.ranking[0].model,
            "route_header": d.header(),
            "decision": &**d,
        }),
        None => json!({
            "model": req.model,
            "virtual": false,
            "chosen": format!("{}/{}", routed.target.provider.name, routed.target.model),
            "priced": routed.target.info.as_ref().is_some_and(|i| i.price.is_some()),
        }),
    }))
}
