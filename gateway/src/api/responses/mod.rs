//! `POST /v1/responses`: OpenAI's Responses API, stateless, in front of every provider. The
//! request is translated into a chat-completions request and served by the same pipeline as
//! `/v1/chat/completions` (keys, routing, cache, budgets, failover, ledger, metrics under
//! `endpoint="responses"`); the answer, whole or streamed, is translated back.

pub mod events;
pub mod reply;
pub mod request;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use futures::StreamExt;
use http::{header, HeaderMap, StatusCode};

use super::{body, chat, AppState};
use crate::error::Error;
use crate::pipeline::context::RequestContext;

/// `POST /v1/responses`: translate, serve as a chat request, translate the answer back.
pub async fn handle(
    State(gw): State<AppState>,
    Extension(caller): Extension<crate::auth::Caller>,
    req_headers: HeaderMap,
    body: Body,
) -> Response {
    let mut ctx = RequestContext::new(gw.clone(), "responses", super::request_id(&req_headers));
    ctx.set_caller(caller.clone());
    let mut echo = None;
    let parse = |bytes: &[u8]| {
        let (chat_body, e) = request::to_chat(bytes)?;
        echo = Some(e);
        let parsed = body::parse(&chat_body).map_err(responses_names)?;
        chat::validate(&parsed.1).map_err(responses_names)?;
        Ok(parsed)
    };
    let result = chat::serve(&gw, &caller, &req_headers, body, &mut ctx, parse).await;
    let resp = super::respond::respond(&mut ctx, result);
    match echo {
        Some(echo) if resp.status() == StatusCode::OK => {
            translate(resp, reply::Shell::new(ctx.request_id(), echo)).await
        }
        // Errors are OpenAI error JSON on both APIs.
        _ => resp,
    }
}

/// `GET`/`DELETE /v1/responses/{id}`, `…/input_items`, `…/cancel`: nothing is stored, so
/// there is nothing to find; the 404 says why rather than calling the path unknown.
pub async fn not_stored(uri: http::Uri) -> Error {
    let id = uri
        .path()
        .trim_start_matches("/v1/responses/")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    Error::new(
        crate::error::Kind::NotFound,
        format!("Response with id '{id}' not found: this gateway serves /v1/responses without storing responses, so they cannot be retrieved, listed, cancelled or deleted afterwards."),
    )
    .with_code("response_not_stored")
}

/// A chat check's error in the Responses API's field names, where the field maps one to
/// one (a message's index does not: `instructions` adds one, calls merge into turns).
fn responses_names(e: Error) -> Error {
    let Some(param) = e.param.as_deref() else {
        return e;
    };
    let renamed = [
        ("max_completion_tokens", "max_output_tokens"),
        ("response_format", "text.format"),
        ("reasoning_effort", "reasoning.effort"),
    ]
    .iter()
    .find_map(|(chat, responses)| {
        param
            .strip_prefix(chat)
            .map(|rest| format!("{responses}{rest}"))
    });
    match renamed {
        Some(p) => {
            let message = e.message.replace(param, &p);
            Error::invalid(p, message)
        }
        None => e,
    }
}

/// The chat answer (JSON or SSE) as a Responses answer, headers kept.
async fn translate(resp: Response, shell: reply::Shell) -> Response {
    let (mut parts, body) = resp.into_parts();
    let streamed = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    parts.headers.remove(header::CONTENT_LENGTH);
    if streamed {
        let model = parts
            .headers
            .get(super::headers::MODEL)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let t = events::Translator::new(shell, model);
        let events = futures::stream::unfold(
            (body.into_data_stream(), t, false),
            |(mut chunks, mut t, done)| async move {
                if done {
                    return None;
                }
                // After the end event the chat stream is still read to its end: its last
                // steps (ledger, cache store) run as it finishes.
                loop {
                    match chunks.next().await {
                        Some(Ok(bytes)) => {
                            let out = t.push(&bytes);
                            if !out.is_empty() {
                                return Some((Ok(out), (chunks, t, false)));
                            }
                        }
                        Some(Err(e)) if !t.ended() => return Some((Err(e), (chunks, t, true))),
                        Some(Err(_)) => return None,
                        None => {
                            let out = t.cut();
                            return (!out.is_empty()).then_some((Ok(out), (chunks, t, true)));
                        }
                    }
                }
            },
        );
        return Response::from_parts(parts, Body::from_stream(events));
    }
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return axum::response::IntoResponse::into_response(Error::bad_gateway(format!(
                "could not read the answer: {e}"
            )))
        }
    };
    let answer = match serde_json::from_slice(&bytes) {
        Ok(chat) => shell.from_chat(&chat),
        Err(e) => {
            return axum::response::IntoResponse::into_response(Error::bad_gateway(format!(
                "the answer is not JSON: {e}"
            )))
        }
    };
    Response::from_parts(parts, Body::from(answer.to_string()))
}
