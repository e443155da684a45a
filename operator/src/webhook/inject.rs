//! Sidecar injection: what a pod that asks for a gateway becomes.
//!
//! A pod annotated `llmgateway.io/inject: "true"` (or created in a namespace labelled
//! `llmgateway.io/inject=enabled`, unless annotated `"false"`) gets the `llm-gateway`
//! container — a native sidecar (an init container with `restartPolicy: Always`, started
//! before the app and stopped after it) on clusters that have them (1.29+), a regular
//! container before — and every app container that does not set it gets
//! `OPENAI_BASE_URL=http://127.0.0.1:<port>/v1`. The pod's namespace and service account
//! (downward API) are the tenant of calls from localhost, so `BudgetPolicy` subjects of those
//! kinds apply. The pod is labelled as a gateway, so the operator pushes the configuration
//! to it. Injecting an injected pod changes nothing.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

/// The annotation (and namespace label) that asks for a sidecar.
pub const INJECT: &str = "llmgateway.io/inject";
/// Set on an injected pod.
pub const INJECTED: &str = "llmgateway.io/injected";

/// How sidecars are made.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// The gateway image.
    pub image: String,
    /// `IfNotPresent`, `Always`, ...
    pub pull_policy: String,
    /// The API port (also the admin endpoint the operator pushes to).
    pub port: u16,
    /// The metrics port (`llm-metrics`, scraped by the PodMonitor).
    pub metrics_port: u16,
    /// A native sidecar (an init container with `restartPolicy: Always`).
    pub native: bool,
    /// The ConfigMap with the compiled configuration, in the pod's namespace.
    pub config_map: String,
    /// The Secret with the admin token, in the pod's namespace.
    pub admin_secret: String,
    /// CPU and memory requests and the memory limit, e.g. `50m`, `64Mi`, `256Mi`.
    pub requests_cpu: String,
    /// See `requests_cpu`.
    pub requests_memory: String,
    /// See `requests_cpu`.
    pub limits_memory: String,
    /// The sidecar's request-serving threads (it serves one pod; by default the gateway would
    /// start one per CPU of the node).
    pub worker_threads: u16,
}

/// Whether `pod` asks for a sidecar (`namespace_enabled`: its namespace is labelled so).
pub fn wants(pod: &Pod, namespace_enabled: bool) -> bool {
    match pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT))
    {
        // Any case: `"False"` quietly injecting (or `"True"` quietly not) would surprise.
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        _ => namespace_enabled,
    }
}

/// Whether `pod` has the sidecar already.
pub fn injected(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .any(|c| c.name == crate::gateways::CONTAINER)
}

/// The pod (as the API server sent it: fields this operator's types do not know are kept)
/// with its sidecar; unchanged if it has one already.
pub fn inject(pod: &Value, s: &Sidecar) -> Value {
    let mut v = pod.clone();
    let has = |list: &Value| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|c| c["name"] == crate::gateways::CONTAINER))
    };
    if has(&v["spec"]["containers"]) || has(&v["spec"]["initContainers"]) {
        return v;
    }
    let base_url = format!("http://127.0.0.1:{}/v1", s.port);
    let sidecar = json!({
        "name": crate::gateways::CONTAINER,
        "image": s.image,
        "imagePullPolicy": s.pull_policy,
        "args": [
            "--listen", format!("0.0.0.0:{}", s.port),
            "--metrics-listen", format!("0.0.0.0:{}", s.metrics_port),
            "--config", "/etc/llm-gateway/gateway.yaml",
            "--config-poll-secs", "0",
            "--wait-for-config",
            "--log-format", "json",
        ],
        "env": [
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "LLM_GATEWAY_WORKLOAD", "value": "$(POD_NAMESPACE)/$(POD_SERVICE_ACCOUNT)"},
            {"name": "LLM_GATEWAY_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {"name": s.admin_secret, "key": "token"}}},
            {"name": "LLM_GATEWAY_DATA_DIR", "value": "/var/lib/llm-gateway"},
            // A variable, not a flag: a gateway image older than this operator ignores it
            // instead of refusing to start.
            {"name": "LLM_GATEWAY_WORKER_THREADS", "value": s.worker_threads.to_string()},
        ],
        "ports": [
            {"name": crate::gateways::PORT_NAME, "containerPort": s.port},
            {"name": "llm-metrics", "containerPort": s.metrics_port},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": s.port}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": s.port}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": s.requests_cpu, "memory": s.requests_memory},
            "limits": {"memory": s.limits_memory},
        },
        "securityContext": {
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "llm-gateway-config", "mountPath": "/etc/llm-gateway", "readOnly": true},
            {"name": "llm-gateway-data", "mountPath": "/var/lib/llm-gateway"},
        ],
    });
    let spec = &mut v["spec"];
    // App containers reach the sidecar on localhost unless they chose otherwise.
    if let Some(containers) = spec["containers"].as_array_mut() {
        for c in containers {
            let env = c["env"].as_array().cloned().unwrap_or_default();
            let has = |n: &str| env.iter().any(|e| e["name"] == n);
            let mut env2 = env.clone();
            if !has("OPENAI_BASE_URL") {
                env2.push(json!({"name": "OPENAI_BASE_URL", "value": base_url}));
            }
            // SDKs insist on some key; the sidecar knows its caller by where it calls from.
            // A container with envFrom may bring its own, which env would override: leave it.
            if !has("OPENAI_API_KEY") && c["envFrom"].as_array().is_none_or(|l| l.is_empty()) {
                env2.push(json!({"name": "OPENAI_API_KEY", "value": "llm-gateway-sidecar"}));
            }
            c["env"] = Value::Array(env2);
        }
    }
    if s.native {
        let mut sidecar = sidecar;
        sidecar["restartPolicy"] = json!("Always");
        let mut init = spec["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // First, so the app's init containers can already use it.
        init.insert(0, sidecar);
        spec["initContainers"] = Value::Array(init);
    } else if let Some(containers) = spec["containers"].as_array_mut() {
        containers.push(sidecar);
    }
    let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    volumes.push(json!({"name": "llm-gateway-config", "configMap": {"name": s.config_map, "optional": true}}));
    volumes.push(json!({"name": "llm-gateway-data", "emptyDir": {}}));
    spec["volumes"] = Value::Array(volumes);
    let meta = &mut v["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"][crate::gateways::GATEWAY_LABEL] = json!("true");
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][INJECTED] = json!("true");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(native: bool) -> Sidecar {
        Sidecar {
            image: "ghcr.io/example/llm-gateway:1.0".into(),
            pull_policy: "IfNotPresent".into(),
            port: 18080,
            metrics_port: 18090,
            native,
            config_map: "llm-gateway-config".into(),
            admin_secret: "llm-gateway-admin".into(),
            requests_cpu: "50m".into(),
            requests_memory: "64Mi".into(),
            limits_memory: "256Mi".into(),
            worker_threads: 2,
        }
    }

    fn pod(annotations: Value, env: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "app", "namespace": "team-a", "annotations": annotations},
            "spec": {"containers": [
                {"name": "app", "image": "app:1", "env": env},
                {"name": "helper", "image": "helper:1"},
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn who_asks_for_a_sidecar() {
        let p = |a: Value| pod(a, json!([]));
        assert!(wants(&p(json!({INJECT: "true"})), false));
        assert!(wants(&p(json!({INJECT: "True"})), false));
        assert!(!wants(&p(json!({INJECT: "FALSE"})), true));
        assert!(wants(&p(json!({})), true));
        assert!(
            !wants(&p(json!({INJECT: "false"})), true),
            "a pod may opt out"
        );
        assert!(!wants(&p(json!({})), false));
    }

    #[test]
    fn a_regular_container_before_1_29_and_every_app_container_pointed_at_it() {
        let p = pod(
            json!({INJECT: "true"}),
            json!([{"name": "OPENAI_BASE_URL", "value": "http://elsewhere/v1"}]),
        );
        let v = inject(&serde_json::to_value(&p).unwrap(), &sidecar(false));
        let containers = v["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 3);
        assert_eq!(containers[2]["name"], "llm-gateway");
        assert!(v["spec"]["initContainers"].is_null());
        // The app's own choice stays; the helper gets the sidecar.
        let base = |c: &Value| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "OPENAI_BASE_URL")
                .unwrap()["value"]
                .clone()
        };
        assert_eq!(base(&containers[0]), "http://elsewhere/v1");
        assert_eq!(base(&containers[1]), "http://127.0.0.1:18080/v1");
        assert_eq!(v["metadata"]["labels"]["llmgateway.io/gateway"], "true");
        let env = containers[2]["env"].to_string();
        assert!(
            env.contains("$(POD_NAMESPACE)/$(POD_SERVICE_ACCOUNT)"),
            "{env}"
        );
        assert!(env.contains("secretKeyRef"), "{env}");
        let ports = containers[2]["ports"].to_string();
        assert!(
            ports.contains(r#""llm-metrics""#) && ports.contains(r#""http""#),
            "{ports}"
        );
        assert_eq!(
            containers[2]["securityContext"]["readOnlyRootFilesystem"],
            true
        );
        assert!(
            env.contains(r#"{"name":"LLM_GATEWAY_WORKER_THREADS","value":"2"}"#),
            "{env}"
        );
    }

    #[test]
    fn a_native_sidecar_from_1_29_and_injection_is_idempotent() {
        let p = pod(json!({INJECT: "true"}), json!([]));
        let v = inject(&serde_json::to_value(&p).unwrap(), &sidecar(true));
        let init = v["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(
            (init[0]["name"].as_str(), init[0]["restartPolicy"].as_str()),
            (Some("llm-gateway"), Some("Always"))
        );
        assert_eq!(v["spec"]["containers"].as_array().unwrap().len(), 2);
        let again: Pod = serde_json::from_value(v.clone()).unwrap();
        assert!(injected(&again));
        assert_eq!(
            inject(&v, &sidecar(true)),
            v,
            "a re-injected pod is unchanged"
        );
    }

    #[test]
    fn fields_unknown_to_the_operators_types_are_kept() {
        let mut p = serde_json::to_value(pod(json!({INJECT: "true"}), json!([]))).unwrap();
        p["spec"]["someFutureField"] = json!({"x": 1});
        p["spec"]["containers"][0]["anotherNewField"] = json!(true);
        let v = inject(&p, &sidecar(true));
        assert_eq!(v["spec"]["someFutureField"], json!({"x": 1}));
        assert_eq!(v["spec"]["containers"][0]["anotherNewField"], json!(true));
        let patch = json_patch::diff(&p, &v);
        assert!(
            !serde_json::to_string(&patch)
                .unwrap()
                .contains("\"remove\""),
            "the patch only adds and replaces: {patch:?}"
        );
    }
}
