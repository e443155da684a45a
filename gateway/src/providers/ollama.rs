//! Ollama model discovery through its native `/api/tags`.

use std::time::Duration;

use serde::Deserialize;

/// How long the start-up probe waits for Ollama.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct Tags {
    models: Vec<Tag>,
}

#[derive(Deserialize)]
struct Tag {
    name: String,
}

/// The names of the models Ollama at `host` has pulled, or why they could not be listed.
pub async fn list_models(host: &str) -> Result<Vec<String>, String> {
    let client = super::tls::client_builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(format!("{}/api/tags", host.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !resp.status().is_success() {
        return Err(format!(
            "/api/tags answered HTTP {}",
            resp.status().as_u16()
        ));
    }
    let tags: Tags = resp
        .json()
        .await
        .map_err(|e| format!("/api/tags answered unexpected JSON: {}", e.without_url()))?;
    Ok(tags.models.into_iter().map(|t| t.name).collect())
}
