//! The gateway pods: which pods are gateways, where their admin endpoint is, and pushing a
//! configuration to one.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::Value;

/// The label every gateway pod carries (the chart's shared Deployment, injected sidecars).
pub const GATEWAY_LABEL: &str = "llmgateway.io/gateway";
/// The container a gateway runs in.
pub const CONTAINER: &str = "llm-gateway";
/// The name of its API port, which also serves `/admin`.
pub const PORT_NAME: &str = "http";

/// A pod to push to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// `namespace/name`.
    pub pod: String,
    /// `http://ip:port`.
    pub base: String,
}

/// The admin endpoint of `pod`, if it is a running gateway: its IP and the `http` port of
/// its `llm-gateway` container. Not necessarily ready: a gateway waiting for its first
/// configuration is not, and this is how it gets one.
pub fn target(pod: &Pod) -> Option<Target> {
    let status = pod.status.as_ref()?;
    let running = status.phase.as_deref() == Some("Running");
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    if !running || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let port = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name == CONTAINER)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(PORT_NAME))?
        .container_port;
    Some(Target {
        pod: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
        base: format!("http://{ip}:{port}"),
    })
}

/// Why a push did not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// The gateway validated the configuration and refused it: the field and its message.
    Refused {
        /// Field path, e.g. `providers[2].base_url` (may be empty).
        path: String,
        /// The gateway's message.
        message: String,
    },
    /// It could not be reached, or answered otherwise.
    Failed(String),
}

/// The client the operator pushes with (pooled, with timeouts).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// `PUT /admin/config` to `t`; the version it runs afterwards.
pub async fn push(
    http: &reqwest::Client,
    t: &Target,
    token: &str,
    body: &[u8],
) -> Result<String, PushError> {
    let r = http
        .put(format!("{}/admin/config", t.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| PushError::Failed(format!("{}: {e}", t.pod)))?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(v["version"].as_str().unwrap_or_default().to_owned());
    }
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_owned();
    if status.as_u16() == 422 {
        Err(PushError::Refused {
            path: v["error"]["param"].as_str().unwrap_or_default().to_owned(),
            message,
        })
    } else {
        Err(PushError::Failed(format!("{}: {status}: {message}", t.pod)))
    }
}

/// `GET /admin/budgets` of `t`: the budgets in force with their figures.
pub async fn budgets(http: &reqwest::Client, t: &Target, token: &str) -> Option<Vec<Value>> {
    let v: Value = http
        .get(format!("{}/admin/budgets", t.base))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["budgets"].as_array().cloned()
}

/// `GET /admin/config` of `t`: models enabled per provider name.
pub async fn models(
    http: &reqwest::Client,
    t: &Target,
    token: &str,
) -> Option<std::collections::HashMap<String, u32>> {
    let v: Value = http
        .get(format!("{}/admin/config", t.base))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(
        v["providers"]
            .as_array()?
            .iter()
            .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["models"].as_u64()? as u32)))
            .collect(),
    )
}
