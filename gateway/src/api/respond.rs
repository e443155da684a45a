//! A pipeline result as the HTTP response: an error is recorded and rendered as OpenAI error
//! JSON with the headers of the target it reached; every response carries the request id.

use axum::response::{IntoResponse, Response};
use http::HeaderValue;

use super::headers;
use crate::error::Error;
use crate::pipeline::context::RequestContext;

/// The response for `result`, recording an error's outcome.
pub fn respond(ctx: &mut RequestContext, result: Result<Response, Error>) -> Response {
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            ctx.finish(e.status(), None);
            let mut resp = e.into_response();
            if let Some(t) = ctx.target() {
                headers::target_headers(resp.headers_mut(), t);
            }
            if ctx.attempts() > 0 {
                headers::attempts_header(resp.headers_mut(), ctx.attempts());
            }
            resp
        }
    };
    if let Ok(v) = HeaderValue::from_str(ctx.request_id()) {
        resp.headers_mut().insert(headers::REQUEST_ID, v);
    }
    if let Some(v) = &ctx.cfg().meta.header {
        resp.headers_mut().insert(headers::CONFIG, v.clone());
    }
    resp
}
