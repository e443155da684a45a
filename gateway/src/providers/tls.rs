//! One TLS client configuration for every upstream client. reqwest builds its own for each
//! client by default, and each build reads and parses the system's CA bundle: about 9 million
//! instructions and a copy of the roots per client, where the gateway keeps a client per
//! provider per serving thread (and builds more when a config push changes connection
//! settings).
//!
//! Two consequences: the CA bundle (`SSL_CERT_FILE`, the system's store) is read once per
//! process, so a rotated bundle takes a restart; and reqwest ignores its own TLS settings
//! (`add_root_certificate`, `identity`, TLS versions, `http1_only`'s ALPN) on a client given
//! this configuration, so a per-provider TLS option must be built here, not on the builder.

use std::sync::{Arc, LazyLock};

/// The shared configuration, unless it could not be built (no CA bundle readable).
static CONFIG: LazyLock<Option<rustls::ClientConfig>> = LazyLock::new(|| {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone()).ok()?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // What reqwest offers itself: HTTP/2 where the upstream speaks it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(config)
});

/// The shared configuration (`None`: no CA bundle could be read).
pub fn config() -> Option<&'static rustls::ClientConfig> {
    CONFIG.as_ref()
}

/// A client builder that uses the shared TLS configuration (the platform's verifier, as
/// reqwest's default, HTTP/2 and HTTP/1.1 offered). Without one (no CA bundle readable),
/// reqwest's own builder, whose `build` then reports what is wrong.
pub fn client_builder() -> reqwest::ClientBuilder {
    match &*CONFIG {
        Some(config) => reqwest::Client::builder().tls_backend_preconfigured(config.clone()),
        None => reqwest::Client::builder(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    #[test]
    fn the_shared_configuration_offers_h2_and_http1() {
        let config = super::CONFIG.as_ref().expect("a CA bundle on this machine");
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    /// Sharing the configuration must not loosen it: an upstream whose certificate no known
    /// authority signed is refused, as reqwest's own default refuses it.
    #[tokio::test]
    async fn an_upstream_with_a_self_signed_certificate_is_refused() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.cert.der().to_vec())],
            PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}/",
            listener.local_addr().unwrap().port()
        );
        // Whether each connection's handshake completed.
        let (tx, mut handshakes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let _ = tx.send(acceptor.accept(tcp).await.is_ok());
            }
        });

        // The control: a client that accepts any certificate completes the handshake, so
        // what fails below is the verification, not the server. (reqwest's own builder needs
        // a process-wide crypto provider; the gateway installs one at start.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let lax = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let _ = lax.get(&url).send().await;
        assert!(handshakes.recv().await.unwrap());

        let client = super::client_builder().build().unwrap();
        let err = client
            .get(&url)
            .send()
            .await
            .expect_err("a self-signed upstream must be refused");
        let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ");
        assert!(chain.contains("certificate"), "{chain}");
        assert!(!handshakes.recv().await.unwrap(), "the handshake completed");
    }
}
