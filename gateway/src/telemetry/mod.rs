//! Telemetry: Prometheus metrics (traces arrive with the observability work).

pub mod metrics;
