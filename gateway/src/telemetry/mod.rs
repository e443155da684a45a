//! Telemetry: Prometheus metrics and OpenTelemetry traces.

pub mod metrics;
pub mod traces;
