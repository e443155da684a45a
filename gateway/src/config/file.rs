//! Reading a `GatewayConfig` YAML file, with the field path of any error.

use std::path::Path;

use llm_gateway_crds::GatewayConfig;

use super::ConfigError;

/// Reads and parses a YAML config file. Unknown fields are errors (a typo must not be ignored).
pub fn load_file(path: &Path) -> Result<GatewayConfig, ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::at(&source, "", format!("cannot read the file: {e}")))?;
    parse(&source, &text)
}

/// Reads and parses a YAML config file that replaces a running configuration: as
/// [`load_file`], but a file with no document in it is refused (see [`parse_replacement`]).
pub fn load_replacement(path: &Path) -> Result<GatewayConfig, ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::at(&source, "", format!("cannot read the file: {e}")))?;
    parse_replacement(&source, &text)
}

/// Parses YAML text that replaces a running configuration. Unlike a file read at start, a
/// text with no document (empty, comments only, `null`) is refused: it is far more often a
/// file caught half-written or a truncated push than a wish to drop every provider, which
/// `providers: []` says explicitly.
pub fn parse_replacement(source: &str, text: &str) -> Result<GatewayConfig, ConfigError> {
    let empty = text.trim().is_empty()
        || matches!(
            yaml_serde::from_str::<yaml_serde::Value>(text),
            Ok(yaml_serde::Value::Null)
        );
    if empty {
        return Err(ConfigError::at(
            source,
            "",
            "the new configuration is empty (a file still being written?); the running one stays. To run with no providers, say so: `providers: []`",
        ));
    }
    parse(source, text)
}

/// Parses YAML text; `source` names it in errors.
pub fn parse(source: &str, text: &str) -> Result<GatewayConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(GatewayConfig::default());
    }
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let msg = e.into_inner().to_string();
        // yaml_serde prefixes nested errors with its own path; ours is more precise.
        let msg = match msg.split_once(": ") {
            Some((head, rest)) if !head.contains(' ') => rest.to_owned(),
            _ => msg,
        };
        ConfigError::at(source, path, msg)
    })
}

/// Parses JSON text; `source` names it in errors.
pub fn parse_json(source: &str, text: &str) -> Result<GatewayConfig, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::at(source, path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_with_no_document_is_refused_but_an_explicit_empty_list_is_not() {
        for text in [
            "",
            "  \n",
            "# all commented out\n# providers: []\n",
            "---\n",
            "~\n",
        ] {
            let err = parse_replacement("t.yaml", text).unwrap_err();
            assert!(err.to_string().contains("is empty"), "{text:?}: {err}");
        }
        let none = parse_replacement("t.yaml", "providers: []\n").unwrap();
        assert!(none.providers.is_empty());
        assert!(
            parse("t.yaml", "").is_ok(),
            "a file read at start may be empty"
        );
    }

    #[test]
    fn errors_name_the_field_path() {
        let cases = [
            (
                "providers:\n  - name: a\n    base_url: 3\n    bogus: 1\n",
                "providers[0].bogus",
                "unknown field `bogus`",
            ),
            (
                "providers:\n  - name: openai\n  - name: b\n    api_key: {vault: x}\n",
                "providers[1].api_key.vault",
                "vault",
            ),
            (
                "server:\n  max_body_bytes: lots\n",
                "server.max_body_bytes",
                "lots",
            ),
            (
                "providers:\n  - name: a\n    models:\n      - name: m\n        quality: high\n",
                "providers[0].models[0].quality",
                "high",
            ),
        ];
        for (yaml, path, word) in cases {
            let err = parse("t.yaml", yaml).unwrap_err();
            assert_eq!(err.path, path, "{yaml}: {err}");
            assert!(err.to_string().contains(word), "{err}");
            assert!(err
                .to_string()
                .starts_with("invalid configuration in t.yaml"));
        }
    }

    #[test]
    fn empty_file_is_the_default_config() {
        assert_eq!(parse("t", "  \n").unwrap(), GatewayConfig::default());
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let err = load_file(Path::new("/nonexistent/gw.yaml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/gw.yaml"), "{err}");
    }
}
