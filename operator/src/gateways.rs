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

/// The environment the webhook gives a sidecar; any other variable (a proxy, a CA bundle,
/// a preloaded library) could turn the container against the keys pushed to it.
pub const SIDECAR_ENV: [&str; 6] = [
    "POD_NAMESPACE",
    "POD_SERVICE_ACCOUNT",
    "LLM_GATEWAY_WORKLOAD",
    "LLM_GATEWAY_ADMIN_TOKEN",
    "LLM_GATEWAY_DATA_DIR",
    "LLM_GATEWAY_WORKER_THREADS",
];

/// Whether a gateway pod outside the operator's namespace is a sidecar as the webhook makes
/// it, and so may be pushed the cluster pools' keys: its `llm-gateway` container runs the
/// sidecar image's repository (any tag, so sidecars made before an upgrade still count)
/// with the image's own entrypoint and only the webhook's environment. Anyone who can create
/// a pod can label it a gateway; this is what they cannot fake without being the gateway.
pub fn trusted_sidecar(pod: &Pod, image: &str) -> Result<(), String> {
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == CONTAINER)
        .ok_or("no llm-gateway container")?;
    let theirs = c.image.as_deref().unwrap_or_default();
    if repository(theirs) != repository(image) {
        return Err(format!(
            "its image {theirs} is not the sidecar image's repository {}",
            repository(image)
        ));
    }
    if c.command.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err("it overrides the image's command".into());
    }
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err("it takes environment from envFrom".into());
    }
    if let Some(e) = c
        .env
        .iter()
        .flatten()
        .find(|e| !SIDECAR_ENV.contains(&e.name.as_str()))
    {
        return Err(format!("it sets {}, which the webhook does not", e.name));
    }
    Ok(())
}

/// An image reference without its tag or digest (`registry:5000/org/img:1.0` →
/// `registry:5000/org/img`).
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or_default();
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
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

#[cfg(test)]
mod trust_tests {
    use super::*;
    use serde_json::json;

    fn pod(container: Value) -> Pod {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "team"},
            "spec": {"containers": [{"name": "app", "image": "app:1"}, container]}}))
        .unwrap()
    }

    const IMAGE: &str = "registry.example:5000/org/llm-gateway:0.2.0";

    #[test]
    fn only_a_sidecar_as_the_webhook_makes_it_is_trusted_with_keys() {
        let env = json!([{"name": "LLM_GATEWAY_DATA_DIR", "value": "/var/lib/llm-gateway"},
                         {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]);
        let ok = json!({"name": "llm-gateway", "image": "registry.example:5000/org/llm-gateway:0.1.0",
                        "args": ["--listen", "0.0.0.0:18080"], "env": env});
        assert_eq!(
            trusted_sidecar(&pod(ok.clone()), IMAGE),
            Ok(()),
            "an older tag still counts"
        );
        let mut digest = ok.clone();
        digest["image"] = json!("registry.example:5000/org/llm-gateway@sha256:abc");
        assert_eq!(trusted_sidecar(&pod(digest), IMAGE), Ok(()));
        for (field, value) in [
            ("image", json!("attacker/anything")),
            (
                "image",
                json!("registry.example:5000/org/llm-gateway-fake:0.2.0"),
            ),
            ("command", json!(["sh", "-c", "nc -l 18080"])),
            ("envFrom", json!([{"configMapRef": {"name": "mine"}}])),
            (
                "env",
                json!([{"name": "HTTPS_PROXY", "value": "http://attacker:3128"}]),
            ),
            (
                "env",
                json!([{"name": "SSL_CERT_FILE", "value": "/mine/ca.pem"}]),
            ),
        ] {
            let mut c = ok.clone();
            c[field] = value;
            assert!(trusted_sidecar(&pod(c), IMAGE).is_err(), "{field}");
        }
        let other = json!({"name": "not-the-gateway", "image": IMAGE});
        assert!(trusted_sidecar(&pod(other), IMAGE).is_err());
    }

    #[test]
    fn an_image_reference_loses_its_tag_or_digest_only() {
        assert_eq!(repository("ghcr.io/a/b:1.0"), "ghcr.io/a/b");
        assert_eq!(repository("host:5000/a/b"), "host:5000/a/b");
        assert_eq!(repository("host:5000/a/b:2"), "host:5000/a/b");
        assert_eq!(repository("b@sha256:00"), "b");
        assert_eq!(repository("b"), "b");
    }
}
