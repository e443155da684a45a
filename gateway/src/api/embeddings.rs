//! `POST /v1/embeddings`: forwarded to an OpenAI-protocol provider (OpenAI, Together, Ollama).

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use http::{header, HeaderMap, HeaderValue};
use llm_gateway_crds::ModelKind;
use serde::Deserialize;
use serde_json::Value;

use super::{body, headers, AppState};
use crate::error::Error;
use crate::pipeline::context::RequestContext;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
}

/// `POST /v1/embeddings`: admitted, resolved to one model, held to budgets, forwarded.
pub async fn handle(
    State(gw): State<AppState>,
    Extension(caller): Extension<crate::auth::Caller>,
    req_headers: HeaderMap,
    body: Body,
) -> Response {
    let mut ctx = RequestContext::new(gw.clone(), "embeddings", super::request_id(&req_headers));
    ctx.set_caller(caller.clone());
    let result = serve(&gw, &caller, &req_headers, body, &mut ctx).await;
    super::respond::respond(&mut ctx, result)
}

async fn serve(
    gw: &AppState,
    caller: &crate::auth::Caller,
    req_headers: &HeaderMap,
    body: Body,
    ctx: &mut RequestContext,
) -> Result<Response, Error> {
    let cfg = ctx.cfg().clone();
    let _admitted = cfg
        .admission
        .admit(caller.tenant(), req_headers, &gw.metrics)
        .await?;
    let (raw, req): (_, EmbeddingsRequest) =
        body::parse(&body::read(req_headers, body, cfg.max_body_bytes).await?)?;
    let empty = match &req.input {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
        _ => false,
    };
    if empty {
        return Err(Error::invalid("input", "`input` must not be empty."));
    }
    let target = cfg.registry.resolve(&req.model)?;
    crate::auth::AllowedModels::of(caller).check_target(&target.provider, &target.model)?;
    ctx.set_target(&target);
    if target
        .info
        .as_ref()
        .is_some_and(|i| i.kind == ModelKind::Chat)
    {
        return Err(Error::invalid(
            "model",
            format!(
                "`{}` is a chat model; embeddings need an embedding model (GET /v1/models lists them).",
                req.model
            ),
        ));
    }
    let (tokens, bytes) = crate::router::tokens::count_input(&req.input);
    ctx.set_prompt_bytes(bytes);
    let hold = crate::pipeline::budget::hold(gw, caller, &target, tokens as u64, 0).await?;
    ctx.set_held(hold);
    let Some(result) = target.provider.embeddings(raw, &target.model).await else {
        return Err(Error::invalid(
            "model",
            format!(
                "Provider `{}` has no embeddings endpoint.",
                target.provider.name
            ),
        ));
    };
    let (body, usage) = result?;
    let cost = ctx.finish(200, usage.as_ref());
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers::target_headers(resp.headers_mut(), &target);
    headers::cost_header(resp.headers_mut(), cost);
    if ctx.usage_estimated() {
        resp.headers_mut()
            .insert(headers::USAGE_ESTIMATED, HeaderValue::from_static("true"));
    }
    headers::budget_headers(resp.headers_mut(), ctx.remaining());
    Ok(resp)
}
