//! The LLM Gateway API types.
//!
//! [`GatewayConfig`] is the one document the gateway reads: written by hand as a YAML file
//! (`llm-gateway --config FILE`) or compiled from the CRDs by the operator. It never contains
//! a secret: API keys are referenced by environment variable name or file path.

mod gateway_config;

pub use gateway_config::*;
