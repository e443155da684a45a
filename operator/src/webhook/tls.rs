//! The webhook's TLS: the serving certificate (cert-manager's, or the operator's own with
//! its CA in the webhook configuration's `caBundle`), renewed before it expires, and the
//! listener that serves HTTPS with it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::json;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// Renew this long before the certificate expires.
pub const RENEW_BEFORE: time::Duration = time::Duration::days(30);
/// How long a certificate the operator makes is valid.
pub const VALIDITY: time::Duration = time::Duration::days(365);

/// One certificate and its key, PEM, with the CA that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The CA, PEM (what `caBundle` carries).
    pub ca: String,
    /// The serving certificate, PEM.
    pub cert: String,
    /// Its key, PEM.
    pub key: String,
    /// When it expires.
    pub not_after: OffsetDateTime,
}

/// A new CA and a serving certificate for `names` (DNS names; IP addresses become IP SANs).
pub fn issue(names: &[String], now: OffsetDateTime) -> Result<Bundle, rcgen::Error> {
    let not_after = now + VALIDITY;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "llm-gateway-operator webhook CA");
    ca.not_before = now - time::Duration::minutes(5);
    ca.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time::Duration::minutes(5);
    leaf.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
        not_after,
    })
}

/// The rustls acceptor for a certificate and key (PEM).
pub fn acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Files (cert-manager's `tls.crt` and `tls.key`), re-read every minute.
    Files(PathBuf),
    /// The operator's own, kept in a Secret; its CA goes into the webhook configuration.
    Own {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret.
        secret: String,
        /// The MutatingWebhookConfiguration whose `caBundle` to keep.
        config: String,
        /// Names the certificate is for (the webhook Service's DNS names, or an address).
        names: Vec<String>,
    },
}

/// Keeps the serving certificate current in `current` (checked every hour).
pub async fn keep(client: Client, source: Source, current: Arc<ArcSwap<TlsAcceptor>>) {
    loop {
        // Often enough that a re-created webhook configuration gets its caBundle back (and a
        // certificate cert-manager rotated is served) within a minute; a no-op otherwise.
        tokio::time::sleep(Duration::from_secs(60)).await;
        match load(&client, &source).await {
            Ok(a) => current.store(Arc::new(a)),
            Err(e) => {
                warn!(error = %e, "cannot renew the webhook certificate; keeping the current one")
            }
        }
    }
}

/// The acceptor for `source`, making or renewing the operator's own certificate if due.
pub async fn load(client: &Client, source: &Source) -> anyhow::Result<TlsAcceptor> {
    match source {
        Source::Files(dir) => {
            let cert = std::fs::read_to_string(dir.join("tls.crt"))?;
            let key = std::fs::read_to_string(dir.join("tls.key"))?;
            acceptor(&cert, &key)
        }
        Source::Own {
            namespace,
            secret,
            config,
            names,
        } => {
            let b = own(client, namespace, secret, names).await?;
            ca_bundle(client, config, &b).await;
            acceptor(&b.cert, &b.key)
        }
    }
}

/// The stored certificate, or a new one if there is none or it expires within
/// [`RENEW_BEFORE`] (the previous CA is kept beside the new one for the switch-over).
async fn own(
    client: &Client,
    namespace: &str,
    name: &str,
    names: &[String],
) -> anyhow::Result<Bundle> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let now = OffsetDateTime::now_utc();
    let stored = api.get_opt(name).await?;
    let read = |s: &Secret, k: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    if let Some(s) = &stored {
        let not_after = read(s, "expires_at").and_then(|t| {
            OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
        });
        // The bundle (new CA and the one before it) is what the caBundle carries, so a
        // replica still serving the previous certificate is trusted until it reloads.
        if let (Some(ca), Some(cert), Some(key), Some(not_after)) = (
            read(s, "ca-bundle.crt").or_else(|| read(s, "ca.crt")),
            read(s, "tls.crt"),
            read(s, "tls.key"),
            not_after,
        ) {
            if not_after - now > RENEW_BEFORE
                && read(s, "names").as_deref() == Some(&names.join(","))
            {
                return Ok(Bundle {
                    ca,
                    cert,
                    key,
                    not_after,
                });
            }
        }
    }
    let mut b = issue(names, now)?;
    info!(secret = %name, expires = %b.not_after, "issued the webhook's certificate");
    // The old CA stays trusted until every replica serves the new certificate.
    let previous_ca = stored
        .as_ref()
        .and_then(|s| read(s, "ca.crt"))
        .unwrap_or_default();
    let bundle_ca = format!("{}{}", b.ca, previous_ca);
    let data = [
        ("ca.crt", b.ca.clone()),
        ("ca-bundle.crt", bundle_ca.clone()),
        ("tls.crt", b.cert.clone()),
        ("tls.key", b.key.clone()),
        (
            "expires_at",
            b.not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        ),
        ("names", names.join(",")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
    .collect();
    let mut secret = Secret {
        data: Some(data),
        type_: Some("kubernetes.io/tls".into()),
        ..Default::default()
    };
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.namespace = Some(namespace.to_owned());
    match stored {
        None => match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            // Another replica made one first: serve theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Box::pin(own(client, namespace, name, names)).await
            }
            Err(e) => return Err(e.into()),
        },
        Some(old) => {
            secret.metadata.resource_version = old.metadata.resource_version;
            match api.replace(name, &PostParams::default(), &secret).await {
                Ok(_) => {}
                // Another replica renewed it first: serve theirs.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Box::pin(own(client, namespace, name, names)).await
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    b.ca = bundle_ca;
    Ok(b)
}

/// Writes the CA into every webhook of the MutatingWebhookConfiguration `config`.
async fn ca_bundle(client: &Client, config: &str, b: &Bundle) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Ok(Some(cfg)) = api.get_opt(config).await else {
        warn!(%config, "no MutatingWebhookConfiguration to write the CA into");
        return;
    };
    let ca = ByteString(b.ca.clone().into_bytes());
    let hooks = cfg.webhooks.as_deref().unwrap_or_default();
    if !hooks.is_empty()
        && hooks
            .iter()
            .all(|w| w.client_config.ca_bundle.as_ref() == Some(&ca))
    {
        return;
    }
    let webhooks: Vec<_> = cfg
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| {
            json!({"name": w.name, "admissionReviewVersions": w.admission_review_versions,
                        "sideEffects": w.side_effects,
                        "clientConfig": {"caBundle": ca}})
        })
        .collect();
    let patch = json!({"webhooks": webhooks});
    // A strategic merge on `webhooks` (merged by name) touches only the caBundle.
    if let Err(e) = api
        .patch(config, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        warn!(%config, error = %e, "cannot write the webhook CA");
    }
}

/// A TCP listener whose connections are TLS with the current certificate. Handshakes run
/// in tasks of their own, so a client that connects and stalls never holds up the next
/// admission request.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
    addr: std::net::SocketAddr,
}

/// How long a client has to finish its handshake.
const HANDSHAKE: Duration = Duration::from_secs(5);

impl TlsListener {
    /// Accepts on `tcp`, handshaking with the certificate in `acceptor` (swapped on renewal).
    pub fn new(tcp: TcpListener, acceptor: Arc<ArcSwap<TlsAcceptor>>) -> std::io::Result<Self> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "webhook: cannot accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.load_full();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => warn!(%addr, error = %e, "webhook: TLS handshake failed"),
                        Err(_) => warn!(%addr, "webhook: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_for_the_service_names_and_an_address_serves_tls() {
        crate::install_crypto();
        let b = issue(
            &[
                "llm-gateway-webhook.llm-gateway.svc".into(),
                "127.0.0.1".into(),
            ],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert!(b.ca.contains("BEGIN CERTIFICATE") && b.key.contains("PRIVATE KEY"));
        assert!(acceptor(&b.cert, &b.key).is_ok());
        assert!(b.not_after - OffsetDateTime::now_utc() > RENEW_BEFORE);
    }
}
