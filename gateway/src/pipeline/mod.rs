//! The request path as ordered steps, shared by the chat and embeddings handlers: the
//! routed request's budget reservation, the cache, failover across candidates, and the
//! request's context whose end settles, stores, records and reports.

pub mod budget;
pub mod cache;
pub mod context;
pub mod failover;
pub mod latency;
pub mod ledger;
pub mod report;
pub mod usage;
