//! Browser hygiene for the model endpoints: a request body must be JSON, and where no key is
//! needed (the loopback quick start) the request must come from this machine by name too.
//!
//! Why: a web page the developer visits can POST `text/plain` to `http://127.0.0.1:8080`
//! without a CORS preflight (a "simple" request) and spend their provider keys; with DNS
//! rebinding it can even read the answers. Requiring `application/json` forces a preflight,
//! which fails unless `server.cors_allowed_origins` allows the page; checking `Host` and
//! `Origin` defeats rebinding, whose requests carry the attacker's host name.

use axum::extract::Request;
use http::{header, Method};

use super::AppState;
use crate::error::{Error, Kind};

/// Whether `host` (a `Host` header or an origin's host, port allowed) names this machine.
fn is_loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.');
    // Compared without lowercasing a copy: this runs on every request.
    let ends_with_ci = |suffix: &str| {
        name.len() >= suffix.len()
            && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    name.eq_ignore_ascii_case("localhost")
        || ends_with_ci(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn origin_allowed(gw: &AppState, origin: &str) -> bool {
    gw.fixed
        .cors_allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

/// The check of a `/v1` request.
pub fn verdict(gw: &AppState, req: &Request) -> Result<(), Error> {
    let headers = req.headers();
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !gw.auth.is_required() {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        if !is_loopback_name(host) {
            return Err(forbidden(format!(
                "This gateway runs without keys, so it only answers requests addressed to this machine (localhost, 127.0.0.1); `Host: {host}` is not. Use a virtual key to serve other hosts."
            )));
        }
        if let Some(o) = origin.filter(|o| {
            let host = o.split_once("://").map_or(*o, |(_, h)| h);
            !is_loopback_name(host) && !origin_allowed(gw, o)
        }) {
            return Err(forbidden(format!(
                "Browser requests from `{o}` are refused: this gateway runs without keys. Allow the origin with server.cors_allowed_origins."
            )));
        }
    }
    if req.method() == Method::POST {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| {
                let t = t.trim();
                t.eq_ignore_ascii_case("application/json")
                    || (t.len() > 5 && t[..t.len() - 5].contains('/') && t.ends_with("+json"))
            });
        if !json {
            return Err(Error::new(
                Kind::UnsupportedMediaType,
                "Send the request body as JSON with `Content-Type: application/json`.",
            )
            .with_code("unsupported_media_type"));
        }
    }
    Ok(())
}

fn forbidden(msg: String) -> Error {
    Error::new(Kind::Forbidden, msg).with_code("foreign_origin")
}

/// The CORS layer for the configured origins, if any.
pub fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers(Any)
            .max_age(std::time::Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "127.0.0.2",
            "[::1]:8080",
            "api.localhost",
            "LOCALHOST.",
            "Api.LocalHost:80",
        ] {
            assert!(is_loopback_name(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "xlocalhost",
            "é.localhosť",
            "",
        ] {
            assert!(!is_loopback_name(bad), "{bad}");
        }
    }
}
