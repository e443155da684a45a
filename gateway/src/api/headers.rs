//! The `x-llm-gateway-*` response headers that say what happened.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::model::{format_usd, format_usd_in};
use crate::models::registry::Target;
use crate::router::Decision;

/// Provider that answered.
pub const PROVIDER: HeaderName = HeaderName::from_static("x-llm-gateway-provider");
/// Upstream model that answered.
pub const MODEL: HeaderName = HeaderName::from_static("x-llm-gateway-model");
/// Routing decision for virtual models.
pub const ROUTE: HeaderName = HeaderName::from_static("x-llm-gateway-route");
/// Cost in USD, when the price is known.
pub const COST: HeaderName = HeaderName::from_static("x-llm-gateway-cost-usd");
/// `unknown` when the model is not in the catalog and so cannot be priced.
pub const PRICE: HeaderName = HeaderName::from_static("x-llm-gateway-price");
/// Upstream attempts made (failover included).
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-llm-gateway-attempts");
/// `true` when the usage (and so the cost) is a tokenizer estimate.
pub const USAGE_ESTIMATED: HeaderName = HeaderName::from_static("x-llm-gateway-usage-estimated");
/// USD left in the tightest covering budget.
pub const BUDGET_REMAINING_USD: HeaderName =
    HeaderName::from_static("x-llm-gateway-budget-remaining-usd");
/// Tokens left in the tightest covering budget.
pub const BUDGET_REMAINING_TOKENS: HeaderName =
    HeaderName::from_static("x-llm-gateway-budget-remaining-tokens");
/// `downgraded` when a budget moved the request to a cheaper model.
pub const BUDGET: HeaderName = HeaderName::from_static("x-llm-gateway-budget");
/// The configuration the request ran on: its `version`, else `sha256:` and its hash's start.
pub const CONFIG: HeaderName = HeaderName::from_static("x-llm-gateway-config");
/// The request id (the client's `x-request-id`, or a new one).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers naming the target.
pub fn target_headers(h: &mut HeaderMap, t: &Target) {
    put(h, PROVIDER, &t.provider.name);
    put(h, MODEL, &t.model);
    if t.info.as_ref().and_then(|i| i.price).is_none() {
        h.insert(PRICE, HeaderValue::from_static("unknown"));
    }
}

/// The routing explanation header.
pub fn route_header(h: &mut HeaderMap, d: &Decision) {
    put(h, ROUTE, &d.header());
}

/// The attempts header.
pub fn attempts_header(h: &mut HeaderMap, n: u32) {
    h.insert(ATTEMPTS, HeaderValue::from(n));
}

/// The cost header.
pub fn cost_header(h: &mut HeaderMap, cost: Option<f64>) {
    if let Some(c) = cost {
        put_usd(h, COST, c);
    }
}

/// The budget-remaining headers, for the budgets that limit USD or tokens.
pub fn budget_headers(h: &mut HeaderMap, r: Option<crate::budget::Remaining>) {
    let Some(r) = r else { return };
    if let Some(usd) = r.usd {
        put_usd(h, BUDGET_REMAINING_USD, usd);
    }
    if let Some(t) = r.tokens {
        h.insert(BUDGET_REMAINING_TOKENS, HeaderValue::from(t));
    }
}

fn put_usd(h: &mut HeaderMap, name: HeaderName, usd: f64) {
    let mut buf = [0u8; 48];
    match format_usd_in(usd, &mut buf) {
        Some(s) => put(h, name, s),
        None => put(h, name, &format_usd(usd)),
    }
}

fn put(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}
