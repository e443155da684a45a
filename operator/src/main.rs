//! The `llm-gateway-operator` binary.

fn main() {}
