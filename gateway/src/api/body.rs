//! Reading a request body within the size limit and parsing it, with errors that name the
//! field at fault.

use axum::body::Body;
use http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Kind};

/// Reads the whole body; more than `limit` bytes is a 413.
pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<bytes::Bytes, Error> {
    let too_large = || {
        Error::new(
            Kind::TooLarge,
            format!("Request body is larger than this gateway's limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(Error::invalid(
            "",
            format!("Could not read the request body: {e}"),
        )),
    }
}

/// A body that must be a JSON object, as its map.
pub fn object(bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    if bytes.is_empty() {
        return Err(Error::invalid(
            "",
            "The request body is empty; send a JSON object.",
        ));
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::invalid(
            "",
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(Error::invalid(
            "",
            format!("The request body is not valid JSON: {e}"),
        )),
    }
}

/// Parses a JSON object body into its raw map and a typed view; a type error names the
/// field path (`messages[2].content`).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<(Map<String, Value>, T), Error> {
    let raw = Value::Object(object(bytes)?);
    // Deserialized from the tree by reference: a 10 MB body is not copied a second time.
    // Tracking the path costs allocations on every field, so it is done only to explain a
    // failure, by reading the tree a second time.
    let typed = T::deserialize(&raw)
        .or_else(|_| serde_path_to_error::deserialize(&raw))
        .map_err(|e| {
            let path = e.path().to_string();
            let mut inner = e.into_inner().to_string();
            // serde's words for a value of none of a field's shapes name a Rust type.
            if inner.starts_with("data did not match any variant of untagged enum") {
                inner = "not one of the forms this field takes (see the API reference)".to_owned();
            }
            if path == "." {
                // A missing or unknown top-level field is named, as OpenAI names it.
                let missing = ["missing field `", "unknown field `"]
                    .iter()
                    .find_map(|p| inner.strip_prefix(p))
                    .and_then(|r| r.split('`').next())
                    .unwrap_or_default();
                Error::invalid(missing, format!("Invalid request: {inner}"))
            } else {
                Error::invalid(path.clone(), format!("Invalid value for `{path}`: {inner}"))
            }
        })?;
    let Value::Object(map) = raw else {
        unreachable!("checked to be an object above")
    };
    Ok((map, typed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ChatRequest;

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"messages":[]}"#, Some("model"), "model"),
            (r#"{"model":"x"}"#, Some("messages"), "messages"),
            (
                r#"{"model":"x","messages":[{"role":"wizard","content":"hi"}]}"#,
                Some("messages[0].role"),
                "wizard",
            ),
            (
                r#"{"model":"x","messages":[{"role":"user"}]}"#,
                Some("messages[0]"),
                "content",
            ),
            (
                r#"{"model":"x","messages":[],"temperature":"hot"}"#,
                Some("temperature"),
                "hot",
            ),
            (
                r#"{"model":"x","messages":[],"max_tokens":-5}"#,
                Some("max_tokens"),
                "-5",
            ),
            (
                r#"{"model":"x","messages":[{"role":"tool","content":"r"}]}"#,
                Some("messages[0]"),
                "tool_call_id",
            ),
            (r#"{"model":"x""#, None, "not valid JSON"),
            (r#"[1,2]"#, None, "JSON object"),
        ];
        for (body, param, words) in cases {
            let e = parse::<ChatRequest>(body.as_bytes()).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {e}");
            assert!(e.message.contains(words), "{body}: {e}");
        }
    }

    #[test]
    fn unknown_fields_are_kept_in_the_raw_map() {
        let (raw, req) = parse::<ChatRequest>(
            br#"{"model":"x","messages":[{"role":"user","content":"hi"}],"seed":7,"logit_bias":{"1":2}}"#,
        )
        .unwrap();
        assert_eq!(req.model, "x");
        assert_eq!(raw["seed"], 7);
        assert_eq!(raw["logit_bias"]["1"], 2);
    }
}
