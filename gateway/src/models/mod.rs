//! Models: what is known of each ([`info`]) and how a requested name finds its provider
//! ([`registry`]).

pub mod info;
pub mod registry;
