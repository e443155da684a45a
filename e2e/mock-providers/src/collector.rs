//! An OTLP/HTTP trace collector (`POST /v1/traces`, protobuf), for the trace tests: spans
//! are decoded with the OpenTelemetry protocol crate and kept; `GET /_mock/spans` lists them
//! as JSON, `DELETE /_mock/spans` forgets them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde::Serialize;

use crate::Mock;

/// One received span.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id (empty for a root).
    pub parent_span_id: String,
    /// Its name.
    pub name: String,
    /// 1 internal, 2 server, 3 client, ...
    pub kind: i32,
    /// Attributes, values as JSON.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The resource's `service.name`.
    pub service: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value(v: Option<&Any>) -> serde_json::Value {
    match v {
        Some(Any::StringValue(s)) => s.clone().into(),
        Some(Any::IntValue(i)) => (*i).into(),
        Some(Any::DoubleValue(d)) => (*d).into(),
        Some(Any::BoolValue(b)) => (*b).into(),
        Some(Any::ArrayValue(a)) => a
            .values
            .iter()
            .map(|x| value(x.value.as_ref()))
            .collect::<Vec<_>>()
            .into(),
        _ => serde_json::Value::Null,
    }
}

/// `POST /v1/traces`.
pub async fn receive(State(m): State<Arc<Mock>>, body: Bytes) -> StatusCode {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut spans = m.spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map(|v| value(Some(v)).as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                spans.push(Span {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                value(a.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    StatusCode::OK
}

/// `GET /_mock/spans`.
pub async fn list(State(m): State<Arc<Mock>>) -> Json<Vec<Span>> {
    Json(m.spans.lock().unwrap().clone())
}

/// `DELETE /_mock/spans`.
pub async fn clear(State(m): State<Arc<Mock>>) -> StatusCode {
    m.spans.lock().unwrap().clear();
    StatusCode::OK
}
