//! How a requested model name finds its provider ([`registry`]).

pub mod registry;
