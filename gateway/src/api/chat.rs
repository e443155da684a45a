//! `POST /v1/chat/completions`. The whole request path, in order: read and validate → take a
//! concurrency slot → route (virtual models scored, open breakers skipped) → check
//! capabilities → answer from the cache if it can → reserve on the caller's budgets
//! (downgrade or 429 at a limit) → call the provider, failing over along the ranking →
//! respond (JSON or SSE), storing a complete answer in the cache → ctx usage, cost,
//! latency, breaker outcome and metrics, settling the budgets.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use bytes::BytesMut;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::{body, cache_hit, headers, sse, AppState};
use crate::error::{Error, Failure, Kind, TimeoutKind};
use crate::pipeline::cache as cached;
use crate::pipeline::context::RequestContext;
use crate::pipeline::failover::{self, Committed};
use crate::providers::StreamItem;
use crate::router::BreakerFilter;
use crate::wire::{ChatRequest, TextLen, Usage};
use llm_gateway_crds::AllOpen;
use serde::Deserialize;
use tracing::Instrument;

use crate::telemetry::traces;

/// `POST /v1/chat/completions`: the steps in order (see the module docs), then the response.
pub async fn handle(
    State(gw): State<AppState>,
    Extension(caller): Extension<crate::auth::Caller>,
    req_headers: HeaderMap,
    body: Body,
) -> Response {
    let mut ctx = RequestContext::new(gw.clone(), "chat", super::request_id(&req_headers));
    ctx.set_caller(caller.clone());
    let result = serve(&gw, &caller, &req_headers, body, &mut ctx, body::parse).await;
    super::respond::respond(&mut ctx, result)
}

/// A parsed request: the raw body forwarded upstream and its typed view.
pub type Parsed = (serde_json::Map<String, serde_json::Value>, ChatRequest);

/// The pipeline for one request whose body `parse` reads as a chat request (`/v1/responses`
/// translates its own body here, then serves it the same way).
pub async fn serve(
    gw: &AppState,
    caller: &crate::auth::Caller,
    req_headers: &HeaderMap,
    body: Body,
    ctx: &mut RequestContext,
    parse: impl FnOnce(&[u8]) -> Result<Parsed, Error>,
) -> Result<Response, Error> {
    let cfg = ctx.cfg().clone();
    // 1. Admit (global, tenant and buffered-body limits), then read and validate.
    let admitted = cfg
        .admission
        .admit(caller.tenant(), req_headers, &gw.metrics)
        .await?;
    let (raw, req) = parse(&body::read(req_headers, body, cfg.max_body_bytes).await?)?;
    validate(&req)?;
    let prompt_bytes = crate::router::tokens::upper_bound(&req, raw.get("tools"));
    ctx.set_prompt_bytes(prompt_bytes);
    // The request's deadline counts from its arrival, and the client's own timeout.
    let plan = failover::Plan::new(
        &cfg.failover,
        req_headers,
        ctx.started(),
        &req,
        prompt_bytes,
    );

    // 2. Route: a virtual model is scored across its candidates (open breakers skipped); an
    //    explicit name is resolved.
    let breakers = BreakerFilter::now();
    let allowed = crate::auth::AllowedModels::of(caller);
    let filters: [&dyn crate::router::CandidateFilter; 2] = [&breakers, &allowed];
    let route_span = traces::step("route").entered();
    let routed = match cfg.router.route(
        &cfg.registry,
        &req,
        caller.tenant(),
        raw.get("tools"),
        &filters,
    ) {
        // Every candidate's breaker is open, and config says to try the soonest anyway.
        Err(e)
            if e.kind == crate::error::Kind::NoCandidate
                && cfg.failover.when_all_open == AllOpen::TrySoonest =>
        {
            cfg.router.route(
                &cfg.registry,
                &req,
                caller.tenant(),
                raw.get("tools"),
                &[&allowed],
            )?
        }
        r => r?,
    };
    allowed.check_target(&routed.target.provider, &routed.target.model)?;
    drop(route_span);
    ctx.set_route(&routed);

    // 3. Cache: the same or a rephrased earlier request is answered at once, for free.
    let mut lookup = match cached::lookup(gw, caller, &routed, &raw, &req, req_headers, ctx)
        .instrument(traces::step("cache.lookup"))
        .await
    {
        cached::Step::Hit(hit) => {
            return Ok(cache_hit::response(
                &req,
                &hit.answer,
                hit.outcome,
                hit.similarity,
            ))
        }
        cached::Step::Miss(lookup) => lookup,
    };

    // 4. Budgets: reserve the estimate on every covering budget; at a limit, downgrade to a
    //    model that fits or refuse with 429.
    let (routed, hold) = crate::pipeline::budget::reserve(
        gw,
        &cfg,
        caller,
        &req,
        &raw,
        routed,
        &crate::router::AllOf(&filters),
    )
    .instrument(traces::step("budget.reserve"))
    .await?;
    if hold.as_ref().is_some_and(|h| h.downgraded) {
        ctx.set_route(&routed);
    }
    let budget_left_before = hold.as_ref().map(crate::pipeline::budget::Held::remaining);
    let downgraded = hold.as_ref().is_some_and(|h| h.downgraded);
    if downgraded {
        // The cheaper model's answer is this caller's, at this budget: not one for others
        // who ask the same.
        lookup = None;
    }
    ctx.set_held(hold);

    let record_cache = ctx.cache();
    // 5. Call the provider, failing over along the ranking until a response starts. At the
    //    end of a shutdown's drain the caller gets a 503 it can retry elsewhere (the OpenAI
    //    SDKs do), not a cut connection.
    let mut closing = gw.closing.subscribe();
    if *closing.borrow_and_update() {
        // Too late to start a call (nothing has been sent, so nothing is charged).
        return Err(shutting_down("request"));
    }
    let answer = tokio::select! {
        biased;
        answer = failover::chat(gw, &req, &raw, &routed, &plan, ctx) => answer?,
        Ok(_) = closing.wait_for(|c| *c) => {
            ctx.abandon_calls();
            return Err(shutting_down("request"));
        }
    };

    // 6. Respond, recording usage, cost and the outcome; store a complete answer.
    let mut resp = match answer.committed {
        Committed::Json { body, usage } => {
            ctx.mark_answered();
            if usage.is_none() {
                ctx.add_output_bytes(output_bytes(&body));
            }
            ctx.note_finish_reasons(&body);
            if let Some(mut l) = lookup.take() {
                if let Some(a) =
                    cached::from_json(&body, &answer.target.provider.name, usage.as_ref())
                {
                    l.resolve().await;
                    ctx.keep_for_cache(l, a);
                }
            }
            // The tail: settle, cache store, latency, ledger, metrics (see
            // RequestContext::finish, which lists them in order).
            let cost = ctx.finish(200, usage.as_ref());
            let mut resp = Response::new(Body::from(body));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers::cost_header(h, cost);
            if ctx.usage_estimated() {
                h.insert(headers::USAGE_ESTIMATED, HeaderValue::from_static("true"));
            }
            headers::budget_headers(h, ctx.remaining());
            resp
        }
        Committed::Stream { held, rx, deadline } => {
            let mut resp = stream_response(SseState {
                held,
                rx,
                deadline: tokio::time::Instant::from_std(deadline),
                include_usage: req.wants_stream_usage(),
                usage: None,
                ctx: ctx.detach(),
                capture: lookup.map(|l| (l, cached::Capture::default())),
                finished: false,
                _slots: (admitted.slots, answer.permit),
                closing: gw.closing.subscribe(),
            });
            // A stream's headers leave before its cost is known: what is left once the
            // reserved estimate is spent.
            headers::budget_headers(resp.headers_mut(), budget_left_before);
            resp
        }
    };
    headers::target_headers(resp.headers_mut(), &answer.target);
    headers::attempts_header(resp.headers_mut(), answer.attempts);
    if let Some(c) = record_cache {
        resp.headers_mut()
            .insert(cache_hit::CACHE, HeaderValue::from_static(c.header()));
    }
    if downgraded {
        resp.headers_mut()
            .insert(headers::BUDGET, HeaderValue::from_static("downgraded"));
    }
    if let Some(d) = &routed.decision {
        headers::route_header(resp.headers_mut(), d);
    }
    Ok(resp)
}

/// Bytes of message content and tool calls in a JSON completion (to estimate its tokens
/// when the provider reported no usage).
fn output_bytes(body: &[u8]) -> usize {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.len();
    };
    v["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let m = &c["message"];
            TextLen::deserialize(&m["content"]).map_or(0, |t| t.0)
                + if m["tool_calls"].is_null() {
                    0
                } else {
                    m["tool_calls"].to_string().len()
                }
        })
        .sum()
}

/// Most choices one request may ask for (OpenAI's own limit).
pub const MAX_CHOICES: u32 = 128;
/// Largest `max_tokens` accepted: beyond any model's output, so only absurd values are refused.
pub const MAX_OUTPUT_TOKENS: u32 = 16_777_216;

/// Checks that do not depend on the model.
pub fn validate(req: &ChatRequest) -> Result<(), Error> {
    if req.messages.is_empty() {
        return Err(Error::invalid(
            "messages",
            "`messages` must contain at least one message.",
        ));
    }
    if let Some(t) = req.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(Error::invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {t}."),
        ));
    }
    if let Some(p) = req.top_p.filter(|p| !(0.0..=1.0).contains(p)) {
        return Err(Error::invalid(
            "top_p",
            format!("`top_p` must be between 0 and 1, got {p}."),
        ));
    }
    if let Some(n) = req.n.filter(|n| !(1..=MAX_CHOICES).contains(n)) {
        return Err(Error::invalid(
            "n",
            format!("`n` must be between 1 and {MAX_CHOICES}, got {n}."),
        ));
    }
    for (field, v) in [
        ("max_tokens", req.max_tokens),
        ("max_completion_tokens", req.max_completion_tokens),
    ] {
        if let Some(v) = v.filter(|v| *v == 0 || *v > MAX_OUTPUT_TOKENS) {
            return Err(Error::invalid(
                field,
                format!("`{field}` must be between 1 and {MAX_OUTPUT_TOKENS}, got {v}."),
            ));
        }
    }
    Ok(())
}

/// A committed stream being written to the client.
struct SseState {
    held: VecDeque<StreamItem>,
    rx: crate::providers::StreamRx,
    deadline: tokio::time::Instant,
    include_usage: bool,
    usage: Option<Usage>,
    ctx: RequestContext,
    /// The cache lookup of a miss, and the answer being reassembled to store.
    capture: Option<(crate::cache::Lookup, cached::Capture)>,
    finished: bool,
    /// The global and provider concurrency slots, released when the stream ends.
    _slots: (crate::admission::Slots, crate::providers::limiter::Permit),
    /// Turns true when the gateway's drain timeout is about to end (see `Gateway::closing`).
    closing: tokio::sync::watch::Receiver<bool>,
}

impl SseState {
    async fn next_item(&mut self) -> Option<StreamItem> {
        let item = match self.held.pop_front() {
            Some(item) => Some(item),
            None => tokio::select! {
                // What has arrived goes first (an end already here is an end, not a cut).
                biased;
                got = tokio::time::timeout_at(self.deadline, self.rx.recv()) => match got {
                    Ok(item) => item,
                    Err(_) => Some(StreamItem::Error(
                        Error::gateway_timeout("the stream exceeded the provider's total timeout")
                            .with_failure(Failure::Timeout(TimeoutKind::Total)),
                    )),
                },
                // No failure of the provider's: no breaker hears of it.
                Ok(_) = self.closing.wait_for(|c| *c) => Some(StreamItem::Error(shutting_down("stream"))),
            },
        };
        self.before_end(&item).await;
        item
    }

    /// An item that is already here, without waiting for the upstream (`Some(None)`: the
    /// upstream side is gone); at the end, the prompt's embedding may still be waited for.
    async fn ready_item(&mut self) -> Option<Option<StreamItem>> {
        let item = match self.held.pop_front() {
            Some(item) => Some(Some(item)),
            None => self.rx.ready().await,
        };
        if let Some(item) = &item {
            self.before_end(item).await;
        }
        item
    }

    /// At the stream's end, waits for an embedding of the prompt still running beside the
    /// upstream call (see `cache::Lookup::resolve`), so the answer is stored findable by
    /// similarity before `[DONE]` goes out.
    async fn before_end(&mut self, item: &Option<StreamItem>) {
        if let Some(StreamItem::End) = item {
            self.ctx.mark_answered();
            if let Some((l, _)) = &mut self.capture {
                l.resolve().await;
            }
        }
    }

    /// Appends what the client is sent for one item to `out`, if anything (false if nothing);
    /// marks the end of the stream.
    fn put_frame(&mut self, item: Option<StreamItem>, out: &mut BytesMut) -> bool {
        match item {
            Some(StreamItem::Chunk {
                data,
                usage,
                usage_only,
                content,
            }) => {
                if content > 0 {
                    self.ctx.mark_first_token();
                    self.ctx.add_output_bytes(content);
                }
                if usage.is_some() {
                    self.usage = usage;
                }
                if let Some((_, c)) = &mut self.capture {
                    c.add(&data);
                }
                self.ctx.note_finish_reasons(&data);
                let sent = !usage_only || self.include_usage;
                if sent {
                    sse::put_data(out, &data);
                }
                sent
            }
            Some(StreamItem::End) => {
                self.finished = true;
                failover::report_stream_end(&self.ctx, None);
                // Only a complete stream is stored.
                let provider = self.ctx.target().map(|t| t.provider.name.clone());
                if let (Some((l, c)), Some(p)) = (self.capture.take(), provider) {
                    if let Some(a) = c.finish(&p, self.usage.as_ref()) {
                        self.ctx.keep_for_cache(l, a);
                    }
                }
                out.extend_from_slice(&sse::done(self.ctx.finish(200, self.usage.as_ref())));
                true
            }
            // The client stopped reading for the idle timeout: its doing, not the provider's,
            // so no breaker hears of it.
            None if self.rx.client_stalled() => {
                self.finished = true;
                self.ctx.finish(499, self.usage.as_ref());
                out.extend_from_slice(&sse::error(
                    &Error::new(
                        Kind::ClientTooSlow,
                        "The stream was closed because this client did not read it for server.client_idle_timeout_secs.",
                    )
                    .with_code("client_too_slow"),
                ));
                true
            }
            item => {
                self.finished = true;
                let e = match item {
                    Some(StreamItem::Error(e)) => e,
                    _ => Error::bad_gateway(format!(
                        "provider {} ended the stream before it was complete",
                        self.ctx.target().map_or("?", |t| &*t.provider.name)
                    ))
                    .with_failure(Failure::StreamCut),
                };
                if let Some(f) = e.failure {
                    if let Some(t) = self.ctx.target() {
                        self.ctx
                            .gw()
                            .metrics
                            .upstream_failure(&t.provider.name, f.label());
                    }
                    failover::report_stream_end(&self.ctx, Some(&e));
                }
                self.ctx.finish(e.status(), self.usage.as_ref());
                out.extend_from_slice(&sse::error(&e));
                true
            }
        }
    }
}

/// How many times a frame that has nothing behind it yet lets other tasks run before it goes
/// out alone. An upstream's events reach this task one per pass of the runtime's queue even
/// when they came in one read (its HTTP client hands over one HTTP chunk at a time, and the
/// reading task parses it). hyper polls a body that returned `Pending` a second time in the
/// same turn, so every other wait is spent at once and four make about two passes: what lets
/// the next event of a burst arrive (measured with `strace` on the benchmark's short streams:
/// 3 writes a stream with four, 16 with three, 10 with two; tuned to hyper 1.x's dispatcher).
/// A lone event costs four extra polls of the connection: no timer, no system call.
const BATCH_ROUNDS: u8 = 4;
/// A batch is sent once it holds this many bytes, whatever is still arriving.
const BATCH_BYTES: usize = 16 * 1024;
/// ... or once it is this old when it would wait again (checked before each wait, so a frame
/// can be held this long plus one pass of the queue): a long burst still flows.
const BATCH_TIME: std::time::Duration = std::time::Duration::from_micros(200);

/// The SSE response: chunks as they arrive, the usage chunk only if the client asked, then
/// `[DONE]`; or an error event and no `[DONE]` if the upstream failed after content was sent.
/// Chunks that arrive together are written together, but everything up to and including the
/// first one with content goes out at once (time to first token is never traded for fewer
/// writes).
fn stream_response(state: SseState) -> Response {
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        // Nothing waits before the first content has gone out.
        let batching = st.ctx.first_token_marked();
        let mut out = BytesMut::new();
        loop {
            let item = st.next_item().await;
            if st.put_frame(item, &mut out) {
                break;
            }
        }
        if batching {
            let started = std::time::Instant::now();
            let mut rounds = 0;
            while !st.finished && out.len() < BATCH_BYTES {
                match st.ready_item().await {
                    Some(item) => {
                        rounds = 0;
                        st.put_frame(item, &mut out);
                    }
                    None if rounds < BATCH_ROUNDS && started.elapsed() < BATCH_TIME => {
                        rounds += 1;
                        YieldOnce(false).await;
                    }
                    None => break,
                }
            }
        }
        Some((Ok::<_, Infallible>(out.freeze()), st))
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

/// Puts this task at the back of the runtime's queue once (it is polled again after the tasks
/// already there, or at once by hyper: see [`BATCH_ROUNDS`]). Unlike
/// `tokio::task::yield_now`, whose wake-up waits for the runtime's next poll of the network
/// (a system call), this goes straight to the back of the run queue.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// The error of a request or stream still open when the shutdown's drain timeout ends (no
/// failure of the provider's: no breaker hears of it).
fn shutting_down(what: &str) -> Error {
    Error::new(
        Kind::Unavailable,
        format!("The gateway is shutting down and this {what} reached its drain timeout (server.drain_timeout_secs); retry the request."),
    )
    .with_code("shutting_down")
}

#[cfg(test)]
mod tests {
    use super::output_bytes;

    #[test]
    fn a_completions_output_counts_text_as_a_string_or_as_parts_and_tool_calls() {
        let body = |message: &str| {
            format!(r#"{{"choices":[{{"index":0,"message":{message},"finish_reason":"stop"}}]}}"#)
        };
        assert_eq!(output_bytes(body(r#"{"content":"héllo"}"#).as_bytes()), 6);
        let parts = r#"{"content":[{"type":"text","text":"ab"},{"type":"text","text":"cd"}]}"#;
        assert_eq!(output_bytes(body(parts).as_bytes()), 4);
        let calls = r#"{"content":null,"tool_calls":[{"id":"c"}]}"#;
        assert_eq!(
            output_bytes(body(calls).as_bytes()),
            r#"[{"id":"c"}]"#.len()
        );
        // Not JSON at all: its size is the best estimate there is.
        assert_eq!(output_bytes(b"not json"), 8);
    }
}
