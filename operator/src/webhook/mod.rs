//! The sidecar-injection webhook, served by every operator replica over TLS: the API server
//! calls `POST /mutate` for each Pod created where injection may apply, and gets back the
//! patch that adds the gateway ([`inject`]).
//!
//! **Certificates.** With cert-manager (its Certificate mounted at `--webhook-cert-dir`) the
//! operator serves that and cert-manager's CA injector fills the `caBundle`. Without it the
//! operator makes a CA and a serving certificate, keeps them in the Secret
//! `--webhook-secret`, writes the CA into the `caBundle` of the MutatingWebhookConfiguration
//! `--webhook-config`, and renews both 30 days before they expire (the `caBundle` carries
//! the old CA and the new one while replicas switch over).

pub mod inject;
pub mod tls;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::Json;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use kube::Client;
use tracing::{info, warn};

use inject::Sidecar;

/// What the webhook needs.
pub struct Webhook {
    /// The API client (namespace labels, the copies of the ConfigMap and the admin Secret).
    pub client: Client,
    /// How sidecars are made.
    pub sidecar: Sidecar,
    /// The operator's namespace: its pods are never injected.
    pub operator_namespace: String,
    /// Prepares a namespace for sidecars (the ConfigMap and the admin Secret they mount).
    pub prepare: Arc<
        dyn Fn(String) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync,
    >,
}

/// The webhook's routes.
pub fn router(w: Arc<Webhook>) -> axum::Router {
    axum::Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(w)
}

async fn mutate(
    State(w): State<Arc<Webhook>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "not an admission request");
            return Json(AdmissionResponse::invalid(e.to_string()).into_review());
        }
    };
    let resp = AdmissionResponse::from(&req);
    Json(match review_pod(&w, &req).await {
        Ok(Some(patch)) => match resp.with_patch(patch) {
            Ok(r) => r.into_review(),
            Err(e) => AdmissionResponse::from(&req)
                .deny(format!("cannot encode the patch: {e}"))
                .into_review(),
        },
        Ok(None) => AdmissionResponse::from(&req).into_review(),
        // Injection failing must not make up a pod without its sidecar silently: refuse it
        // with the reason (the namespace's webhook fails closed; the annotation's fails open).
        Err(e) => AdmissionResponse::from(&req).deny(e).into_review(),
    })
}

/// The patch for one pod, if it gets a sidecar.
async fn review_pod(
    w: &Webhook,
    req: &AdmissionRequest<DynamicObject>,
) -> Result<Option<json_patch::Patch>, String> {
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
        return Ok(None);
    }
    let Some(obj) = &req.object else {
        return Ok(None);
    };
    let ns = req.namespace.clone().unwrap_or_default();
    if ns == w.operator_namespace || ns == "kube-system" {
        return Ok(None);
    }
    let original = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    let pod: Pod = serde_json::from_value(original.clone()).map_err(|e| e.to_string())?;
    // The namespace's label matters only when the pod's annotation does not decide; a
    // failed lookup is an error (the namespace webhook fails closed), never a silent "no".
    let decided = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(inject::INJECT))
        .is_some_and(|v| v == "true" || v == "false");
    let ns_enabled = if decided {
        false
    } else {
        Api::<Namespace>::all(w.client.clone())
            .get_opt(&ns)
            .await
            .map_err(|e| format!("cannot read namespace {ns}: {e}"))?
            .and_then(|n| n.metadata.labels)
            .and_then(|l| l.get(inject::INJECT).cloned())
            .is_some_and(|v| v == "enabled")
    };
    if !inject::wants(&pod, ns_enabled) || inject::injected(&pod) {
        return Ok(None);
    }
    // A host-network pod shares the node's loopback: every process on the node would be
    // this workload (and the sidecar's ports would clash). No sidecar for it.
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        info!(namespace = %ns, "host-network pod: not injected");
        return Ok(None);
    }
    // Declared `sideEffects: NoneOnDryRun`: a dry run only computes the patch.
    // Without its token Secret the sidecar could not start: refuse the pod instead.
    if !req.dry_run {
        (w.prepare)(ns.clone())
            .await
            .map_err(|e| format!("cannot prepare namespace {ns} for the sidecar: {e}"))?;
    }
    let patched = inject::inject(&original, &w.sidecar);
    info!(namespace = %ns, pod = %pod.metadata.name.clone().or(pod.metadata.generate_name.clone()).unwrap_or_default(), native = w.sidecar.native, "injecting the gateway sidecar");
    Ok(Some(json_patch::diff(&original, &patched)))
}
