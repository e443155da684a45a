//! `POST /v1/chat/completions`. The whole request path, in order: read and validate →
//! resolve the model → check capabilities → call the provider → respond (JSON or SSE) →
//! record usage, cost and metrics.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use llm_gateway_crds::ModelKind;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::record::Record;
use super::{body, headers, sse, AppState};
use crate::models::registry::Target;
use crate::openai::{ChatRequest, Usage};
use crate::providers::{ChatCall, ChatResponse, StreamItem};

/// The handler.
pub async fn handle(State(gw): State<AppState>, req_headers: HeaderMap, body: Body) -> Response {
    let request_id = super::request_id(&req_headers);
    let mut record = Record::new(gw.clone(), "chat", request_id.clone());
    let mut resp = match serve(&gw, &req_headers, body, &mut record).await {
        Ok(resp) => resp,
        Err(e) => {
            record.finish(e.status.as_u16(), None);
            let mut resp = e.into_response();
            if let Some(t) = record.target() {
                headers::target_headers(resp.headers_mut(), t);
            }
            resp
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(headers::REQUEST_ID, v);
    }
    resp
}

async fn serve(
    gw: &AppState,
    req_headers: &HeaderMap,
    body: Body,
    record: &mut Record,
) -> Result<Response, ApiError> {
    // 1. Read and validate.
    let bytes = body::read(req_headers, body, gw.max_body_bytes).await?;
    let (raw, req): (_, ChatRequest) = body::parse(&bytes)?;
    validate(&req)?;

    // 2. Route: a virtual model is scored across its candidates; an explicit name resolved.
    let routed = gw.router.route(&gw.registry, &req, raw.get("tools"), &[])?;
    record.set_route(&routed);
    let target = routed.target.clone();
    check_capabilities(&req, &target)?;

    // 3. Call the provider.
    let call = ChatCall {
        req: &req,
        raw,
        model: &target.model,
        info: target.info.as_deref(),
    };
    let answer = target.provider.chat(call).await?;

    // 4. Respond, recording usage and cost.
    let mut resp = match answer {
        ChatResponse::Json { body, usage } => {
            let cost = record.finish(200, usage.as_ref());
            let mut resp = Response::new(Body::from(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers::cost_header(resp.headers_mut(), cost);
            resp
        }
        ChatResponse::Stream(rx) => stream_response(rx, req.wants_stream_usage(), record.detach()),
    };
    headers::target_headers(resp.headers_mut(), &target);
    if let Some(d) = &routed.decision {
        headers::route_header(resp.headers_mut(), d);
    }
    Ok(resp)
}

/// Checks that do not depend on the model.
pub fn validate(req: &ChatRequest) -> Result<(), ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must contain at least one message.",
        ));
    }
    if let Some(t) = req.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {t}."),
        ));
    }
    if let Some(p) = req.top_p.filter(|p| !(0.0..=1.0).contains(p)) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be between 0 and 1, got {p}."),
        ));
    }
    if req.n == Some(0) {
        return Err(ApiError::invalid("n", "`n` must be at least 1."));
    }
    Ok(())
}

/// Rejects requests the chosen model cannot serve, before spending an upstream call.
fn check_capabilities(req: &ChatRequest, t: &Target) -> Result<(), ApiError> {
    let Some(info) = &t.info else { return Ok(()) };
    if info.kind == ModelKind::Embedding {
        return Err(ApiError::invalid(
            "model",
            format!(
                "`{}` is an embedding model; send it to /v1/embeddings.",
                t.model
            ),
        ));
    }
    let Some(caps) = info.capabilities else {
        return Ok(());
    };
    let missing = [
        (req.has_images() && !caps.vision, "messages", "image input"),
        (
            req.has_tools() && !caps.tools,
            "tools",
            "tools (function calling)",
        ),
        (
            req.wants_json() && !caps.json,
            "response_format",
            "JSON response formats",
        ),
    ];
    match missing.into_iter().find(|(miss, ..)| *miss) {
        Some((_, param, what)) => Err(ApiError::invalid(
            param,
            format!(
                "Model `{}/{}` does not support {what}.",
                t.provider.name, t.model
            ),
        )
        .with_code("unsupported_capability")),
        None => Ok(()),
    }
}

struct SseState {
    rx: mpsc::Receiver<StreamItem>,
    include_usage: bool,
    usage: Option<Usage>,
    record: Record,
    finished: bool,
}

/// The SSE response: chunks as they arrive, the usage chunk only if the client asked, then
/// `[DONE]`; or an error event and no `[DONE]` if the upstream failed.
fn stream_response(
    rx: mpsc::Receiver<StreamItem>,
    include_usage: bool,
    record: Record,
) -> Response {
    let state = SseState {
        rx,
        include_usage,
        usage: None,
        record,
        finished: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let frame = loop {
            match st.rx.recv().await {
                Some(StreamItem::Chunk {
                    data,
                    usage,
                    usage_only,
                    content,
                }) => {
                    if content {
                        st.record.mark_first_token();
                    }
                    if usage.is_some() {
                        st.usage = usage;
                    }
                    if !usage_only || st.include_usage {
                        break sse::data(&data);
                    }
                }
                Some(StreamItem::End) => {
                    st.finished = true;
                    break sse::done(st.record.finish(200, st.usage.as_ref()));
                }
                item => {
                    st.finished = true;
                    let e = match item {
                        Some(StreamItem::Error(e)) => e,
                        _ => ApiError::bad_gateway(format!(
                            "provider {} ended the stream before it was complete",
                            st.record.target().map_or("?", |t| t.provider.name.as_str())
                        )),
                    };
                    st.record.finish(e.status.as_u16(), st.usage.as_ref());
                    break sse::error(&e);
                }
            }
        };
        Some((Ok::<_, Infallible>(frame), st))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
