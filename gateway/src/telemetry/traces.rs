//! OpenTelemetry traces, off unless the standard variables turn them on
//! (`OTEL_TRACES_EXPORTER=otlp`, or `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set; `OTEL_TRACES_EXPORTER=none` wins). The SDK reads
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER(_ARG)` itself.
//!
//! Spans leave through a bounded batch queue exported from the SDK's own thread: a request
//! never waits for the collector, and a dead collector costs only the spans of the batches
//! it did not take (counted in `llm_gateway_trace_spans_dropped_total`).

use std::sync::LazyLock;

use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use prometheus_client::metrics::counter::Counter;

/// Spans in export batches the collector did not take.
pub static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

pub use crate::trace_context::{continue_from, current_trace_id, inject, on};

/// Whether the environment asks for traces.
pub fn wanted(env: &dyn Fn(&str) -> Option<String>) -> bool {
    match env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        Some("none") => false,
        Some("otlp") => true,
        _ => [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|k| env(k).is_some_and(|v| !v.trim().is_empty())),
    }
}

/// The tracer provider when the environment asks for traces (keep it: dropping it flushes
/// and stops the export thread).
pub fn provider(service: &'static str) -> Result<Option<SdkTracerProvider>, String> {
    if !wanted(&|k| std::env::var(k).ok()) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(Counting(exporter))
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    crate::trace_context::turn_on();
    Ok(Some(provider))
}

/// Counts the spans of failed exports.
#[derive(Debug)]
struct Counting<E>(E);

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.0.export(batch).await;
        if r.is_err() {
            DROPPED.inc_by(n);
        }
        r
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// The span of one pipeline step of the current request (`route`, `cache.lookup`,
/// `budget.reserve`); disabled when traces are off.
pub fn step(name: &'static str) -> tracing::Span {
    if !on() {
        return tracing::Span::none();
    }
    tracing::info_span!("step", otel.name = name)
}

/// Runs `inner` (the rest of an API request) inside the request's server span.
pub async fn server_span<F>(
    req: axum::extract::Request,
    inner: impl FnOnce(axum::extract::Request) -> F,
) -> axum::response::Response
where
    F: std::future::Future<Output = axum::response::Response>,
{
    use tracing::Instrument;
    if !on() {
        return inner(req).await;
    }
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {}", req.method(), path),
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        llm_gateway.request_id = tracing::field::Empty,
        llm_gateway.route = tracing::field::Empty,
        llm_gateway.cache = tracing::field::Empty,
        llm_gateway.attempts = tracing::field::Empty,
        llm_gateway.cost_usd = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
    );
    continue_from(&span, req.headers());
    let resp = inner(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_variables_decide() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!wanted(&env(&[])));
        assert!(wanted(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(wanted(&env(&[("OTEL_TRACES_EXPORTER", "otlp")])));
        assert!(!wanted(&env(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
        ])));
    }
}
